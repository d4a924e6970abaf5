"""Sliding-window prediction with batched windows and mirroring test-time augmentation.

MONAI's ``sliding_window_inference`` cuts the volume into windows of the plan's patch
size (overlap 0.5), runs ``sw_batch_size`` windows per forward pass, and stitches the
logits with a gaussian importance map into an output buffer on the device. Mirroring TTA
happens per window batch (as in nnU-Net): every flip of the configured axes is applied to
the batch, predicted, flipped back and averaged, so the stitching runs once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

Predictor = Callable[[torch.Tensor], torch.Tensor]


def mirror_axes_subsets(spatial_dims: int, axes: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Every subset of the mirrored axes (spatial indices), the empty one first.

    For 3 spatial axes this is the 8 flips nnU-Net uses.
    """
    axes = tuple(range(spatial_dims)) if axes is None else tuple(axes)
    for axis in axes:
        if not 0 <= axis < spatial_dims:
            raise ValueError(f"mirror axis {axis} outside 0..{spatial_dims - 1}")
    return [subset for r in range(len(axes) + 1) for subset in itertools.combinations(axes, r)]


def mirrored(predictor: Predictor, spatial_dims: int,
             axes: Sequence[int] | None = None) -> Predictor:
    """Wrap ``predictor`` so it averages its output over all flips of ``axes``.

    The wrapped predictor takes and returns (batch, channels, *spatial) tensors.
    """
    subsets = mirror_axes_subsets(spatial_dims, axes)

    def predict(windows: torch.Tensor) -> torch.Tensor:
        total = None
        for subset in subsets:
            dims = [2 + axis for axis in subset]
            x = torch.flip(windows, dims) if dims else windows
            y = predictor(x).float()
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total + y
        return total / len(subsets)

    return predict


def sliding_window_logits(predictor: Predictor, image: torch.Tensor, patch_size: Sequence[int],
                          *, sw_batch_size: int = 4, overlap: float = 0.5,
                          device: torch.device | str | None = None,
                          mirror_axes: Sequence[int] | None = None, tta: bool = True,
                          ) -> torch.Tensor:
    """Stitched logits of ``image`` (batch, channels, *spatial) on ``device``.

    ``patch_size`` has one entry per spatial axis; windows larger than the image are padded
    with zeros and the output cropped back (MONAI). ``batch`` > 1 lets 2d configurations
    run a volume's slices as one batch of images. Returns fp32 (batch, classes, *spatial).
    """
    from monai.inferers import sliding_window_inference

    spatial_dims = image.ndim - 2
    if len(patch_size) != spatial_dims:
        raise ValueError(
            f"patch_size {tuple(patch_size)} has {len(patch_size)} axes; image has {spatial_dims}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    device = torch.device(device) if device is not None else image.device

    def fp32(windows: torch.Tensor) -> torch.Tensor:
        return predictor(windows).float()

    window_predictor = mirrored(fp32, spatial_dims, mirror_axes) if tta else fp32
    with torch.inference_mode():
        return sliding_window_inference(
            image.to(device=device, dtype=torch.float32),
            roi_size=tuple(int(p) for p in patch_size),
            sw_batch_size=sw_batch_size,
            predictor=window_predictor,
            overlap=overlap,
            mode="gaussian",
            sw_device=device,
            device=device,
        )
