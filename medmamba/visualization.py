"""PNG montages of axial slices with prediction and ground-truth overlays (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medmamba.data.io import atomic_write, read_image
from medmamba.errors import DatasetError

#: Label value -> colour (RGB, 0..1); values beyond the table cycle through it.
_COLOURS = np.array([
    (0.90, 0.10, 0.10), (0.10, 0.70, 0.20), (0.15, 0.40, 0.95), (0.95, 0.80, 0.10),
    (0.80, 0.20, 0.85), (0.10, 0.85, 0.85), (1.00, 0.50, 0.00), (0.60, 0.40, 0.20),
])


def choose_slices(masks: list[np.ndarray], depth: int, count: int) -> list[int]:
    """``count`` axial slice indices spread evenly over the slices holding foreground.

    Falls back to the whole volume when every mask is empty.
    """
    occupied = np.zeros(depth, dtype=bool)
    for mask in masks:
        occupied |= mask.reshape(depth, -1).any(axis=1)
    indices = np.flatnonzero(occupied)
    low, high = (int(indices[0]), int(indices[-1])) if indices.size else (0, depth - 1)
    count = max(1, min(count, high - low + 1))
    # Interior points of an even split, so the first and last panels are not the rims.
    positions = np.linspace(low, high, count + 2)[1:-1] if high > low else [low] * count
    return sorted({int(round(p)) for p in positions})


def _rgba(label_slice: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros((*label_slice.shape, 4))
    for value in np.unique(label_slice):
        if value == 0:
            continue
        colour = _COLOURS[(int(value) - 1) % len(_COLOURS)]
        rgba[label_slice == value] = (*colour, alpha)
    return rgba


def _window(image: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(image, [0.5, 99.5])
    return float(low), float(high if high > low else low + 1)


def save_montage(image: np.ndarray, prediction: np.ndarray | None, reference: np.ndarray | None,
                 output: Path, spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
                 num_slices: int = 6, title: str | None = None, alpha: float = 0.45) -> Path:
    """Write a montage: one column per axial slice, one row per overlay (prediction, reference).

    Arrays are (z, y, x); ``spacing`` (array order) sets the in-plane aspect ratio.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if image.ndim == 2:
        image = image[None]
        prediction = None if prediction is None else prediction[None]
        reference = None if reference is None else reference[None]
        spacing = (1.0, *spacing[-2:])
    for name, mask in (("prediction", prediction), ("reference", reference)):
        if mask is not None and mask.shape != image.shape:
            raise DatasetError(f"{name} shape {mask.shape} differs from the image's {image.shape}")
    overlays = [(n, m) for n, m in (("prediction", prediction), ("ground truth", reference))
                if m is not None]
    slices = choose_slices([m for _, m in overlays], image.shape[0], num_slices)
    rows = max(1, len(overlays))
    low, high = _window(image)
    aspect = float(spacing[-2]) / float(spacing[-1])
    output = Path(output)
    fig, axes = plt.subplots(rows, len(slices), figsize=(2.4 * len(slices), 2.6 * rows),
                             squeeze=False)
    try:
        for column, z in enumerate(slices):
            for row in range(rows):
                ax = axes[row][column]
                ax.imshow(image[z], cmap="gray", vmin=low, vmax=high, aspect=aspect,
                          interpolation="nearest")
                if overlays:
                    name, mask = overlays[row]
                    ax.imshow(_rgba(mask[z], alpha), aspect=aspect, interpolation="nearest")
                    if column == 0:
                        ax.set_ylabel(name)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"z = {z}", fontsize=9)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        atomic_write(output, lambda handle: fig.savefig(handle, dpi=100, format="png"))
    finally:
        plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return output


def overlay_files(image_path: Path, prediction_path: Path, output: Path,
                  label_path: Path | None = None, num_slices: int = 6) -> Path:
    """Montage of an image file with its predicted (and optionally reference) mask files."""
    image, geometry = read_image(Path(image_path))
    prediction, pred_geometry = read_image(Path(prediction_path))
    if pred_geometry.shape != geometry.shape:
        raise DatasetError(
            f"shape {pred_geometry.shape} differs from the image's {geometry.shape}", prediction_path)
    reference = None
    if label_path is not None:
        reference, ref_geometry = read_image(Path(label_path))
        if ref_geometry.shape != geometry.shape:
            raise DatasetError(
                f"shape {ref_geometry.shape} differs from the image's {geometry.shape}", label_path)
    return save_montage(image.astype(np.float32), prediction, reference, output,
                        spacing=geometry.spacing, num_slices=num_slices,
                        title=Path(prediction_path).name)
