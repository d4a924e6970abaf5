"""Raw case -> preprocessed case, in memory (``preprocess_case``) and for a whole
dataset (``preprocess_dataset``, behind ``medmamba preprocess``).

Order (as nnU-Net v2): crop to the nonzero box -> normalise (statistics of the cropped
image) -> resample to the configuration's spacing (images: spline order 3, the coarse
axis of anisotropic data with order 0; labels: linear on the one-hot encoding, argmax).
A 2d configuration keeps each case's own axis-0 spacing and resamples in-plane only.

``preprocess_case(images, geometry, configuration, seg=None, case_id="case")`` is pure;
inference calls it on a new image. Its properties dict (also ``<case>.json``) holds what
maps a prediction back exactly: ``original_geometry`` (Geometry.to_dict()),
``crop_bbox`` ([start, stop) per axis, original array indices), ``shape_after_crop``,
``spacing_after_crop`` (= original spacing), ``spacing_after_resampling``,
``shape_after_resampling``, and ``class_locations`` ({label: [[z, y, x], ...]}, up to
``CLASS_LOCATION_SAMPLES`` voxels per foreground label, for foreground oversampling).
"""

from __future__ import annotations

import functools
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmamba.data.dataset import Case, discover_cases, load_dataset_json
from medmamba.data.io import Geometry, read_channels, read_image
from medmamba.data.parallel import map_with_progress
from medmamba.errors import DatasetError
from medmamba.planning.plans import PLANS_FILE, ConfigurationPlan, LabelResampling, Plans
from medmamba.preprocessing.crop import crop_to_nonzero
from medmamba.preprocessing.normalization import normalize
from medmamba.preprocessing.resampling import compute_new_shape, resample_to_shape
from medmamba.preprocessing.storage import (
    PROPERTIES_SCHEMA_VERSION, is_case_done, save_case, write_manifest,
)

logger = logging.getLogger(__name__)
CLASS_LOCATION_SAMPLES = 10_000


def target_spacing_for(configuration: ConfigurationPlan, spacing: Sequence[float]) -> tuple[float, ...]:
    """Spacing a case is resampled to (2d: its own axis-0 spacing, in-plane from the plan)."""
    if configuration.spatial_dims == 2:
        return (float(spacing[0]), *configuration.target_spacing)
    return tuple(configuration.target_spacing)


def seg_dtype(max_label: int) -> type:
    return np.int8 if max_label < 128 else np.int16


def sample_class_locations(seg: np.ndarray, labels: Sequence[int], case_id: str,
                           samples: int = CLASS_LOCATION_SAMPLES) -> dict[str, list[list[int]]]:
    """Up to ``samples`` seeded random voxel coordinates per foreground label."""
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    locations: dict[str, list[list[int]]] = {}
    for label in labels:
        coordinates = np.argwhere(seg == label)
        if len(coordinates) > samples:
            coordinates = coordinates[np.sort(rng.choice(len(coordinates), samples, replace=False))]
        locations[str(int(label))] = coordinates.astype(int).tolist()
    return locations


def preprocess_case(images: np.ndarray, geometry: Geometry, configuration: ConfigurationPlan,
                    seg: np.ndarray | None = None, case_id: str = "case",
                    foreground_labels: Sequence[int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Crop, normalise and resample one case (pure: no file access).

    ``images`` is (C, z, y, x) as read by medmamba.data.io.read_channels; ``seg`` is
    (z, y, x) or (1, z, y, x) integral labels. Returns (data float32 (C, *new),
    seg int8/int16 (1, *new) or None, properties).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (C, z, y, x), got shape {images.shape}")
    if seg is not None:
        seg = np.rint(seg).astype(np.int16).reshape((1, *images.shape[1:]))
    data, seg, mask, box = crop_to_nonzero(images.astype(np.float32, copy=False), seg)
    data = normalize(data, configuration.normalization, mask)
    spacing = tuple(float(s) for s in geometry.spacing)
    new_spacing = target_spacing_for(configuration, spacing)
    new_shape = compute_new_shape(data.shape[1:], spacing, new_spacing)
    resampling = configuration.resampling
    resampled = resample_to_shape(
        data, new_shape, spacing, new_spacing, resampling.image_order, is_seg=False,
        order_out_of_plane=resampling.image_order_out_of_plane,
        anisotropy_threshold=resampling.anisotropy_threshold)
    properties: dict = {
        "schema_version": PROPERTIES_SCHEMA_VERSION,
        "case_id": case_id,
        "original_geometry": geometry.to_dict(),
        "crop_bbox": box,
        "shape_after_crop": list(data.shape[1:]),
        "spacing_after_crop": list(spacing),
        "spacing_after_resampling": list(new_spacing),
        "shape_after_resampling": list(new_shape),
    }
    out_seg = None
    if seg is not None:
        linear = resampling.label_mode is LabelResampling.ONEHOT_LINEAR
        out_seg = resample_to_shape(
            seg, new_shape, spacing, new_spacing, 1 if linear else 0, is_seg=True,
            order_out_of_plane=0, anisotropy_threshold=resampling.anisotropy_threshold)
        max_label = int(out_seg.max(initial=0))
        out_seg = out_seg.astype(seg_dtype(max_label))
        labels = foreground_labels if foreground_labels is not None else [
            v for v in np.unique(out_seg) if v > 0]
        properties["class_locations"] = sample_class_locations(out_seg[0], labels, case_id)
    return resampled, out_seg, properties


def _preprocess_one(case: Case, jobs: tuple[tuple[Path, ConfigurationPlan], ...],
                    foreground_labels: tuple[int, ...]) -> str:
    """Read one raw case and write it into every folder of ``jobs`` still missing it."""
    images, geometry = read_channels(case.images)
    seg = None
    if case.label is not None:
        seg, _ = read_image(case.label)
        if seg.shape != images.shape[1:]:
            raise DatasetError(f"label shape {seg.shape} differs from image shape "
                               f"{images.shape[1:]}", case.label)
    for folder, configuration in jobs:
        if is_case_done(folder, case.case_id, needs_seg=seg is not None):
            continue
        data, out_seg, properties = preprocess_case(
            images, geometry, configuration, seg, case.case_id, foreground_labels)
        save_case(folder, case.case_id, data, out_seg, properties)
    return case.case_id


def preprocess_dataset(work: Path, configurations: Sequence[str] | None = None,
                       workers: int | None = None, show_progress: bool = True) -> list[Path]:
    """Preprocess every training case for each configuration; returns the folders.

    Finished cases (JSON present) are skipped, so an interrupted run resumes.
    """
    work = Path(work)
    plans = Plans.load(work / PLANS_FILE)
    names = list(configurations) if configurations else list(plans.configurations)
    folders = {name: plans.preprocessed_folder(work, name) for name in names}  # validates names
    info = load_dataset_json(Path(plans.raw_dataset))
    cases = discover_cases(info)
    foreground = info.foreground_labels
    base_manifest = {
        "schema_version": 1, "dataset_name": plans.dataset_name, "complete": False,
        "cases": [c.case_id for c in cases],
    }
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        configuration = plans.configuration(name)
        write_manifest(folder, {**base_manifest, "configuration": name,
                                "data_hash": configuration.data_hash(),
                                "data_fields": configuration.data_fields()})
    jobs = tuple((folders[name], plans.configuration(name)) for name in names)
    todo = [case for case in cases
            if not all(is_case_done(folder, case.case_id) for folder, _ in jobs)]
    logger.info("preprocessing %d of %d cases into %s", len(todo), len(cases),
                ", ".join(str(f) for f in folders.values()))
    map_with_progress(functools.partial(_preprocess_one, jobs=jobs, foreground_labels=foreground),
                      todo, workers=workers, description="preprocess", progress=show_progress)
    for name, folder in folders.items():
        configuration = plans.configuration(name)
        write_manifest(folder, {**base_manifest, "complete": True, "configuration": name,
                                "data_hash": configuration.data_hash(),
                                "data_fields": configuration.data_fields()})
    return list(folders.values())
