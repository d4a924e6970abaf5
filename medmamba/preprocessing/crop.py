"""Crop a case to the bounding box of its nonzero region (nnU-Net's crop-to-nonzero).

The nonzero mask is the union over channels of ``voxel != 0`` with holes filled, so
dark structures inside the body are kept. Bounding boxes are ``[[start, stop], ...]``
per array axis in the indices of the uncropped array (stop exclusive), which is what
inference needs to paste a prediction back.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes

BBox = list[list[int]]


def nonzero_mask(images: np.ndarray) -> np.ndarray:
    """Boolean mask (spatial shape) of voxels where any channel is nonzero, holes filled."""
    _, _, mask, box = crop_to_nonzero(images)
    return paste_into(mask[None], box, images.shape[1:], fill=False)[0]


def nonzero_box(images: np.ndarray) -> BBox:
    """Bounding box of the voxels where any channel of ``images`` (C, *spatial) is nonzero
    (the box of :func:`nonzero_mask`: filling holes never moves it)."""
    return bounding_box(_any_nonzero(images))


def _any_nonzero(images: np.ndarray) -> np.ndarray:
    return np.any(images != 0, axis=0)


def _filled(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled. Filling within the mask's bounding box gives what
    filling the whole array gives: a background region that reaches the box's faces joins
    the background outside the box, so only regions inside it are holes. A full mask (a
    BraTS case: no zeros) has none, and scipy would take 66 ms to find that out."""
    return mask.copy() if mask.all() else binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> BBox:
    """Tight ``[start, stop)`` box of ``mask`` per axis; the whole array if it is empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return [[0, int(size)] for size in mask.shape]
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def crop_slices(box: BBox) -> tuple[slice, ...]:
    return tuple(slice(start, stop) for start, stop in box)


def crop_to_nonzero(images: np.ndarray, seg: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, BBox]:
    """Crop ``images`` (C, *spatial) and ``seg`` (1, *spatial) to the nonzero box.

    Returns (images, seg, mask, box) where ``mask`` is the cropped nonzero mask.
    """
    raw = _any_nonzero(images)
    box = bounding_box(raw)  # filling holes never moves the box
    slices = crop_slices(box)
    mask = _filled(raw[slices])
    cropped_seg = None if seg is None else seg[(slice(None), *slices)]
    return images[(slice(None), *slices)], cropped_seg, mask, box


def paste_into(cropped: np.ndarray, box: BBox, full_shape: tuple[int, ...],
               fill: float = 0) -> np.ndarray:
    """Inverse of cropping: place ``cropped`` (C, *box shape) into a (C, *full_shape) array."""
    out = np.full((cropped.shape[0], *full_shape), fill, dtype=cropped.dtype)
    out[(slice(None), *crop_slices(box))] = cropped
    return out
