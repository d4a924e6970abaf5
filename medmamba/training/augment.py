"""Augmentation as MONAI dictionary transforms, with nnU-Net v2's default probabilities.

Keys: ``image`` (C, *spatial) float and ``label`` (1, *spatial). The first transform,
:class:`RandCropRotateScaled`, cuts the patch out of the (memory-mapped) case: when it
rotates or scales a sample it first crops a region large enough to hold the rotated and
scaled patch (nnU-Net crops a larger patch for the same reason), then resamples it to the
patch size (image bilinear, label nearest), so no zeros enter from the patch border.

| transform | probability | range |
|---|---|---|
| rotation (each axis; in 2D in-plane) | 0.2 | +-30 deg (3D), +-180 deg (2D) |
| scaling | 0.2 | 0.7 .. 1.4 |
| gaussian noise | 0.1 | std up to 0.1 ** 0.5 |
| gaussian blur | 0.2 | sigma 0.5 .. 1.0 |
| brightness (multiplicative) | 0.15 | 0.75 .. 1.25 |
| contrast (around mean, range kept) | 0.15 | 0.75 .. 1.25 |
| low resolution simulation | 0.25 | zoom 0.5 .. 1.0 |
| gamma on the inverted image | 0.1 | 0.7 .. 1.5, statistics kept |
| gamma | 0.3 | 0.7 .. 1.5, statistics kept |
| mirroring | 0.5 per axis | |

All randomness comes from one ``numpy.random.RandomState`` handed to every transform
(:func:`seed_transforms`), seeded per sample by the data loader, so a batch is a pure
function of (seed, epoch, iteration, rank).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
)
from monai.transforms.utils import create_rotate

CENTER_KEY = "center"


def crop_padded(array: np.ndarray, center: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``array[:, box]`` for a box of ``size`` around ``center``, zero-padded outside."""
    spatial = array.shape[1:]
    lower = [int(c) - s // 2 for c, s in zip(center, size)]
    src, dst = [slice(None)], [slice(None)]
    for lo, s, dim in zip(lower, size, spatial):
        a, b = max(lo, 0), min(lo + s, dim)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - lo, a - lo + max(0, b - a)))
    out = np.zeros((array.shape[0], *size), dtype=array.dtype)
    out[tuple(dst)] = array[tuple(src)]
    return out


@functools.lru_cache(maxsize=8)
def _centred_offsets(patch_size: tuple[int, ...]) -> torch.Tensor:
    axes = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2 for p in patch_size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*patch, dims)


def resample_patch(
    region: torch.Tensor, matrix: np.ndarray, patch_size: Sequence[int], mode: str
) -> torch.Tensor:
    """Sample ``patch_size`` voxels from ``region`` (C, *spatial): output voxel offsets from
    the centre, mapped by ``matrix`` (rotation x scale), read around the region's centre."""
    sizes = np.asarray(region.shape[1:], dtype=np.float64)
    # grid_sample wants x (last axis) first and [-1, 1] with align_corners=True: fold the
    # normalisation and the axis flip into the matrix, applied to the cached offsets.
    normalised = (np.asarray(matrix, dtype=np.float64) / ((sizes - 1) / 2)[:, None])[::-1]
    grid = _centred_offsets(tuple(patch_size)) @ torch.from_numpy(normalised.T.astype(np.float32))
    out = torch.nn.functional.grid_sample(
        region.unsqueeze(0), grid.unsqueeze(0), mode=mode, padding_mode="zeros", align_corners=True
    )
    return out[0]


class RandCropRotateScaled(RandomizableTransform, MapTransform):
    """Crop ``patch_size`` around ``data["center"]``, rotating/scaling with nnU-Net odds."""

    def __init__(
        self,
        keys: Sequence[str] = ("image", "label"),
        patch_size: Sequence[int] = (64, 64, 64),
        rotate_prob: float = 0.2,
        rotate_range: float | None = None,
        scale_prob: float = 0.2,
        scale_range: tuple[float, float] = (0.7, 1.4),
        label_key: str = "label",
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, keys)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.dims = len(self.patch_size)
        if rotate_range is None:
            rotate_range = math.pi if self.dims == 2 else math.pi / 6
        self.rotate_prob, self.rotate_range = rotate_prob, rotate_range
        self.scale_prob, self.scale_range = scale_prob, scale_range
        self.label_key = label_key
        self._angles: tuple[float, ...] | None = None
        self._scale: float | None = None

    def randomize(self, data: Any = None) -> None:
        n_angles = 1 if self.dims == 2 else 3
        rotate = self.R.uniform() < self.rotate_prob
        angles = self.R.uniform(-self.rotate_range, self.rotate_range, size=n_angles)
        scale_on = self.R.uniform() < self.scale_prob
        scale = self.R.uniform(*self.scale_range)
        self._angles = tuple(float(a) for a in angles) if rotate else None
        self._scale = float(scale) if scale_on else None

    def _needed_size(self) -> tuple[int, ...]:
        size = np.asarray(self.patch_size, dtype=np.float64)
        if self._angles is not None:
            rot = np.abs(create_rotate(self.dims, self._angles)[: self.dims, : self.dims])
            size = np.maximum(rot @ size, rot.T @ size)
        if self._scale is not None:
            size = size * max(self._scale, 1.0)
        needed = np.ceil(size).astype(int) + 2
        # Same parity as the patch keeps the resampled patch centred on the centre voxel.
        needed += (needed - np.asarray(self.patch_size)) % 2
        return tuple(int(n) for n in np.maximum(needed, self.patch_size))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        center = [int(c) for c in d.pop(CENTER_KEY)]
        if self._angles is None and self._scale is None:
            for key in self.key_iterator(d):
                d[key] = torch.from_numpy(crop_padded(d[key], center, self.patch_size))
            return d
        size = self._needed_size()
        matrix = np.eye(self.dims)
        if self._angles is not None:
            matrix = create_rotate(self.dims, self._angles)[: self.dims, : self.dims]
        if self._scale is not None:
            matrix = matrix * self._scale
        for key in self.key_iterator(d):
            region = torch.from_numpy(crop_padded(d[key], center, size))
            nearest = key == self.label_key
            out = resample_patch(region.float(), matrix, self.patch_size, "nearest" if nearest else "bilinear")
            d[key] = out.to(region.dtype) if nearest else out
        return d


def training_transforms(patch_size: Sequence[int], augment: bool = True) -> Compose:
    """The training pipeline; ``augment=False`` only crops (used for validation)."""
    dims = len(patch_size)
    crop = RandCropRotateScaled(
        patch_size=patch_size,
        rotate_prob=0.2 if augment else 0.0,
        scale_prob=0.2 if augment else 0.0,
    )
    if not augment:
        return Compose([crop])
    sigma = (0.5, 1.0)
    transforms = [
        crop,
        RandGaussianNoised("image", prob=0.1, std=0.1**0.5),
        RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=0.2),
        RandScaleIntensityd("image", factors=0.25, prob=0.15),
        RandScaleIntensityFixedMeand("image", factors=0.25, fixed_mean=True, preserve_range=True, prob=0.15),
        RandSimulateLowResolutiond(
            "image", prob=0.25, zoom_range=(0.5, 1.0), upsample_mode="trilinear" if dims == 3 else "bilinear"
        ),
        RandAdjustContrastd("image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
        RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
    ]
    transforms += [RandFlipd(("image", "label"), prob=0.5, spatial_axis=axis) for axis in range(dims)]
    return Compose(transforms)


def seed_transforms(pipeline: Compose, seed: int) -> None:
    """Give every transform the same fresh RandomState (cheaper than Compose.set_random_state,
    which draws a new seed and builds a RandomState per transform)."""
    state = np.random.RandomState(seed)
    for transform in pipeline.transforms:
        if isinstance(transform, RandomizableTransform):
            transform.set_random_state(state=state)
