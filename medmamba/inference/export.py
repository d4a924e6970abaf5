"""Map predicted probabilities back to the input image's grid and write the mask.

Order (nnU-Net's): probabilities in the preprocessed grid -> resample to the shape of the
cropped original -> paste into the full original shape (background outside the crop box)
-> argmax -> label values -> write with the input's exact geometry.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medmamba.data.io import Geometry, atomic_write_bytes, file_ending, write_image

Resampler = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


def uncrop_probabilities(probabilities: np.ndarray, box: Sequence[Sequence[int]],
                         full_shape: tuple[int, ...]) -> np.ndarray:
    """Paste (K, *box shape) probabilities into (K, *full_shape); outside the box is background."""
    box_shape = tuple(int(stop) - int(start) for start, stop in box)
    if tuple(probabilities.shape[1:]) != box_shape:
        raise ValueError(f"probabilities {probabilities.shape[1:]} do not fit crop box {box_shape}")
    full = np.zeros((probabilities.shape[0], *full_shape), dtype=probabilities.dtype)
    full[0] = 1
    full[(slice(None), *(slice(int(a), int(b)) for a, b in box))] = probabilities
    return full


def label_lookup(label_values: Sequence[int]) -> np.ndarray:
    """Class index -> label value, in the smallest dtype of a mask holding them."""
    values = np.asarray(label_values)
    return values.astype(np.uint8 if values.max() < 256 and values.min() >= 0 else np.int32)


def labels_from_probabilities(probabilities: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Argmax over the class axis, mapped to the dataset's label values (smallest dtype)."""
    if probabilities.shape[0] != len(label_values):
        raise ValueError(f"{probabilities.shape[0]} classes but {len(label_values)} label values")
    indices = np.argmax(probabilities, axis=0)
    lookup = label_lookup(label_values)
    if list(label_values) == list(range(len(label_values))):
        return indices.astype(lookup.dtype)  # labels are the class indices: no lookup pass
    return lookup[indices]


def to_original_grid(probabilities: np.ndarray, box: Sequence[Sequence[int]],
                     geometry: Geometry, resample: Resampler) -> np.ndarray:
    """(K, *preprocessed shape) -> (K, *geometry.shape) in the input's voxel grid."""
    box_shape = tuple(int(stop) - int(start) for start, stop in box)
    if tuple(probabilities.shape[1:]) != box_shape:
        probabilities = resample(probabilities, box_shape)
    return uncrop_probabilities(probabilities.astype(np.float32, copy=False), box, geometry.shape)


def write_prediction(mask: np.ndarray, geometry: Geometry, path: Path,
                     probabilities: np.ndarray | None = None,
                     label_values: Sequence[int] | None = None) -> None:
    """Write the mask with the input's geometry (atomic) and optionally ``CASE.npz``.

    The .npz holds ``probabilities`` (K, z, y, x) float16 in the input grid, plus
    ``label_values`` and ``spacing`` to read them back without the dataset. It is written
    first: the mask marks a finished case, so a kill between the two writes never leaves
    a mask without its probabilities.
    """
    if tuple(mask.shape) != tuple(geometry.shape):
        raise ValueError(f"mask shape {mask.shape} differs from the input's {geometry.shape}")
    if probabilities is not None:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, probabilities=probabilities.astype(np.float16),
            label_values=np.asarray(label_values if label_values is not None else
                                    range(probabilities.shape[0])),
            spacing=np.asarray(geometry.spacing))
        atomic_write_bytes(probabilities_path(path), buffer.getvalue())
    write_image(mask, geometry, path)


def probabilities_path(mask_path: Path) -> Path:
    """``CASE.npz`` beside ``CASE<ending>``."""
    name = mask_path.name[: -len(file_ending(mask_path))]
    return mask_path.with_name(f"{name}.npz")
