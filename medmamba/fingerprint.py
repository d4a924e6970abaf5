"""Dataset fingerprint: the facts about a raw dataset that planning needs.

``compute_fingerprint(DATA)`` reads every training case once (worker processes, progress
bar) and records per case the spacing (array order z, y, x), the original shape and the
shape after crop-to-nonzero, and per channel foreground intensity statistics (mean, std,
min, max, median, p0.5, p99.5) over a seeded random sample of at most
``SAMPLES_PER_CASE`` foreground voxels per case (foreground = label > 0). The result is
``WORK/fingerprint.json`` (versioned); its ``signature`` identifies the dataset files it
was computed from so ``medmamba plan`` can tell when it is stale.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from medmamba.data.dataset import Case, DatasetInfo, discover_cases, load_dataset_json
from medmamba.data.io import atomic_write_text, read_channels, read_image
from medmamba.data.parallel import map_with_progress
from medmamba.errors import DatasetError, PlansError
from medmamba.planning.validation import StrictModel, load_json_model
from medmamba.preprocessing.crop import nonzero_box

FINGERPRINT_SCHEMA_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"
#: Foreground voxels sampled per case for the intensity statistics (nnU-Net pools a
#: bounded number per case too; 10k keeps the fingerprint fast on large volumes).
SAMPLES_PER_CASE = 10_000
SAMPLE_SEED = 1234


class IntensityStats(StrictModel):
    mean: float
    std: float
    min: float
    max: float
    median: float
    percentile_00_5: float
    percentile_99_5: float


class CaseFingerprint(StrictModel):
    case_id: str
    spacing: tuple[float, ...]  # array order (z, y, x)
    shape: tuple[int, ...]
    shape_after_crop: tuple[int, ...]


class Fingerprint(StrictModel):
    schema_version: Literal[1]
    dataset_name: str
    raw_dataset: str
    signature: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    file_ending: str
    samples_per_case: int
    cases: tuple[CaseFingerprint, ...]
    intensity: tuple[IntensityStats, ...]  # one per channel

    @property
    def spacings(self) -> np.ndarray:
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes_after_crop(self) -> np.ndarray:
        return np.array([c.shape_after_crop for c in self.cases], dtype=np.float64)

    @property
    def median_relative_size_after_cropping(self) -> float:
        """Median over cases of (cropped voxels / original voxels); nnU-Net's mask rule."""
        ratios = [np.prod(c.shape_after_crop) / np.prod(c.shape) for c in self.cases]
        return float(np.median(ratios))

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Fingerprint:
        return load_json_model(cls, Path(path))


def dataset_signature(info: DatasetInfo, cases: list[Case]) -> str:
    """Short hash of dataset.json and every training file's name, size and mtime."""
    digest = hashlib.sha256((info.root / "dataset.json").read_bytes())
    for case in cases:
        for path in (*case.images, *([case.label] if case.label else [])):
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _case_rng(case_id: str) -> np.random.Generator:
    return np.random.default_rng([SAMPLE_SEED, zlib.crc32(case_id.encode())])


def _fingerprint_case(case: Case, samples: int) -> tuple[CaseFingerprint, np.ndarray]:
    """One case's geometry and a (C, n<=samples) sample of its foreground intensities."""
    images, geometry = read_channels(case.images)
    label, label_geometry = read_image(case.label)
    if label.shape != images.shape[1:]:
        raise DatasetError(
            f"label shape {label.shape} differs from image shape {images.shape[1:]}", case.label)
    box = nonzero_box(images)
    foreground = images[:, label > 0]
    if foreground.shape[1] > samples:
        chosen = _case_rng(case.case_id).choice(foreground.shape[1], samples, replace=False)
        foreground = foreground[:, np.sort(chosen)]
    record = CaseFingerprint(
        case_id=case.case_id,
        spacing=tuple(float(s) for s in geometry.spacing),
        shape=tuple(int(s) for s in images.shape[1:]),
        shape_after_crop=tuple(int(stop - start) for start, stop in box),
    )
    return record, foreground.astype(np.float32, copy=False)


def _intensity_stats(values: np.ndarray) -> IntensityStats:
    if values.size == 0:
        # No foreground anywhere: neutral statistics keep planning going; CT clipping
        # then is a no-op and z-scoring falls back to the identity.
        return IntensityStats(mean=0.0, std=1.0, min=0.0, max=0.0, median=0.0,
                              percentile_00_5=0.0, percentile_99_5=0.0)
    values = values.astype(np.float64)
    low, median, high = np.percentile(values, [0.5, 50.0, 99.5])
    return IntensityStats(
        mean=float(values.mean()), std=float(values.std()), min=float(values.min()),
        max=float(values.max()), median=float(median),
        percentile_00_5=float(low), percentile_99_5=float(high),
    )


def compute_fingerprint(data: Path, workers: int | None = None, show_progress: bool = True,
                        samples_per_case: int = SAMPLES_PER_CASE) -> Fingerprint:
    """Fingerprint the training cases of the raw dataset at ``data``."""
    info = load_dataset_json(Path(data))
    cases = discover_cases(info)
    results = map_with_progress(
        functools.partial(_fingerprint_case, samples=samples_per_case), cases,
        workers=workers, description="fingerprint", progress=show_progress)
    pooled = np.concatenate([sample for _, sample in results], axis=1)
    return Fingerprint(
        schema_version=FINGERPRINT_SCHEMA_VERSION,
        dataset_name=info.name,
        raw_dataset=str(Path(data).resolve()),
        signature=dataset_signature(info, cases),
        channel_names=info.channel_names,
        labels=dict(info.labels),
        file_ending=info.file_ending,
        samples_per_case=samples_per_case,
        cases=tuple(record for record, _ in results),
        intensity=tuple(_intensity_stats(pooled[c]) for c in range(info.num_channels)),
    )


def fingerprint_is_current(path: Path, data: Path) -> bool:
    """True when ``path`` holds a valid fingerprint of the dataset at ``data`` as it is now."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        existing = Fingerprint.load(path)
    except PlansError:  # unreadable or older schema: recompute rather than fail
        return False
    info = load_dataset_json(Path(data))
    return (existing.raw_dataset == str(Path(data).resolve())
            and existing.signature == dataset_signature(info, discover_cases(info)))
