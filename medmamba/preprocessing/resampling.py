"""Resampling of images, label maps and predictions between spacings.

``resample_to_shape(array, new_shape, current_spacing, new_spacing, order, is_seg)``
maps a (C, *spatial) array onto ``new_shape`` with voxel centres aligned (the first and
last voxel cover the same extent; as skimage ``resize`` and nnU-Net). ``current_spacing``
and ``new_spacing`` only choose the anisotropic path:

- nnU-Net's separate-z rule: when max/min of the current spacing (else of the new one)
  exceeds ``anisotropy_threshold`` (3) and one axis is the unique coarsest, that axis is
  resampled on its own with ``order_out_of_plane`` (0 = nearest) after an in-plane pass
  with ``order``; otherwise all axes are resampled together with ``order``.
- ``is_seg=True``: ``array`` holds integer labels; each label's mask is interpolated
  (linear when order >= 1, i.e. linear on the one-hot encoding) and the result is the
  argmax (ties: the smaller label). order 0 is nearest neighbour.

Inference maps predictions back with ``resample_to_shape(probabilities, cropped_shape,
spacing_after_resampling, original_spacing, order=1, is_seg=False)`` (or
``is_seg=True`` on a label map), then pastes into the original array with
medmamba.preprocessing.crop.paste_into.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import affine_transform


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float],
                      new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape covering the same extent at ``new_spacing`` (rounded, at least 1)."""
    return tuple(max(1, int(round(s * sp / nsp)))
                 for s, sp, nsp in zip(shape, spacing, new_spacing))


def separate_axis(current_spacing: Sequence[float], new_spacing: Sequence[float],
                  anisotropy_threshold: float = 3.0) -> int | None:
    """The axis resampled on its own (nnU-Net's determine_do_sep_z_and_axis), or None."""
    for spacing in (current_spacing, new_spacing):
        spacing = np.asarray(spacing, dtype=np.float64)
        if spacing.max() / spacing.min() > anisotropy_threshold:
            axes = np.flatnonzero(spacing == spacing.max())
            # Two equally coarse axes (e.g. 0.24 x 1.25 x 1.25) are not "out of plane".
            return int(axes[0]) if len(axes) == 1 else None
    return None


def _resize(volume: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resize one spatial volume (float) to ``new_shape`` with aligned voxel centres."""
    if tuple(volume.shape) == tuple(new_shape):
        return volume.copy()
    scale = np.array(volume.shape, dtype=np.float64) / np.array(new_shape, dtype=np.float64)
    offset = 0.5 * scale - 0.5
    return affine_transform(volume, scale, offset=offset, output_shape=tuple(new_shape),
                            order=order, mode="nearest", prefilter=order > 1)


def _resize_volume(volume: np.ndarray, new_shape: Sequence[int], order: int,
                   axis: int | None, order_out_of_plane: int) -> np.ndarray:
    if axis is None:
        return _resize(volume, new_shape, order)
    in_plane = list(new_shape)
    in_plane[axis] = volume.shape[axis]
    moved = np.moveaxis(volume, axis, 0)
    target = [s for a, s in enumerate(in_plane) if a != axis]
    slices = np.stack([_resize(plane, target, order) for plane in moved])
    volume = np.moveaxis(slices, 0, axis)
    return _resize(volume, new_shape, order_out_of_plane)


def resample_to_shape(array: np.ndarray, new_shape: Sequence[int],
                      current_spacing: Sequence[float], new_spacing: Sequence[float],
                      order: int, is_seg: bool, order_out_of_plane: int = 0,
                      anisotropy_threshold: float = 3.0) -> np.ndarray:
    """Resample every channel of ``array`` (C, *spatial) to ``new_shape``.

    Images come back as float32; label maps (``is_seg``) keep ``array``'s dtype.
    """
    if array.ndim != len(new_shape) + 1:
        raise ValueError(f"array must be (C, *spatial) with {len(new_shape)} spatial axes, "
                         f"got shape {array.shape}")
    new_shape = tuple(int(s) for s in new_shape)
    axis = separate_axis(current_spacing, new_spacing, anisotropy_threshold)
    if is_seg:
        return np.stack([_resample_labels(channel, new_shape, order, axis, order_out_of_plane)
                         for channel in array]).astype(array.dtype, copy=False)
    if tuple(array.shape[1:]) == new_shape:
        return array.astype(np.float32, copy=True)
    return np.stack([
        _resize_volume(channel.astype(np.float32, copy=False), new_shape, order, axis,
                       order_out_of_plane)
        for channel in array]).astype(np.float32, copy=False)


def _resample_labels(labels: np.ndarray, new_shape: tuple[int, ...], order: int,
                     axis: int | None, order_out_of_plane: int) -> np.ndarray:
    if tuple(labels.shape) == new_shape:
        return labels.copy()
    if order == 0:
        return _resize_volume(labels, new_shape, 0, axis, 0)
    values = np.unique(labels)
    best = np.full(new_shape, -np.inf, dtype=np.float32)
    result = np.zeros(new_shape, dtype=labels.dtype)
    for value in values:  # ascending: '>' keeps the smaller label on ties
        score = _resize_volume((labels == value).astype(np.float32), new_shape, min(order, 1),
                               axis, order_out_of_plane)
        better = score > best
        best[better] = score[better]
        result[better] = value
    return result
