"""``medmamba validate``: check a raw dataset and list every problem, not only the first.

Errors make the dataset unusable (missing files, mismatched geometry, undeclared label
values, NaN voxels...). Warnings are legal but odd (float-typed labels holding integers,
mixed image dtypes, cases with different origins, declared labels that never occur) and
do not fail validation. Each problem names one file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medmamba.data.dataset import (
    REQUIRED_KEYS,
    _CHANNEL_SUFFIX,
    _parse_ending,
    _parse_int,
    _parse_labels,
    parse_channel_map,
    read_json_object,
)
from medmamba.data.io import SUPPORTED_ENDINGS, Geometry, read_header, read_image
from medmamba.data.parallel import map_with_progress
from medmamba.errors import DatasetError

# NIfTI stores geometry in float32, so two files written from the same scan may differ
# in the last bits; these tolerances accept that and nothing a resampler would notice.
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4
#: Origins that agree to this many decimals (mm) count as the same across cases.
ORIGIN_DECIMALS = 3
_HEADER_ONLY_ENDINGS = (".mhd", ".nhdr")
_DETACHED_DATA_ENDINGS = (".raw", ".zraw", ".raw.gz")


@dataclass(frozen=True)
class Problem:
    """One problem with one file."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class ValidationReport:
    """Everything ``validate_dataset`` found; ``ok`` when there is no error."""

    root: Path
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    num_cases: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, path: Path, message: str) -> None:
        self.errors.append(Problem(Path(path), message))

    def warning(self, path: Path, message: str) -> None:
        self.warnings.append(Problem(Path(path), message))


@dataclass(frozen=True)
class _Header:
    """What could be parsed from dataset.json; None where the key is missing or bad."""

    num_channels: int | None
    labels: dict[str, int] | None
    num_training: int | None
    file_ending: str | None


@dataclass(frozen=True)
class _CaseTask:
    case_id: str
    images: tuple[Path, ...]  # channel files present, in channel order
    label: Path | None
    declared_labels: tuple[int, ...] | None


@dataclass(frozen=True)
class _CaseResult:
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    image_dtypes: tuple[str, ...]
    label_values: tuple[int, ...]
    label_read: bool
    origin: tuple[float, ...] | None


def validate_dataset(root: Path, workers: int | None = None, progress: bool = False) -> ValidationReport:
    """Check every case of the raw dataset at ``root``; never raises for bad data."""
    root = Path(root)
    report = ValidationReport(root)
    if not root.is_dir():
        report.error(root, "dataset folder does not exist")
        return report
    header = _check_dataset_json(root, report)
    if header.file_ending is None:
        return report  # without the file ending no file can be matched to a case
    tasks = _collect_cases(root, header, report)
    report.num_cases = len(tasks)
    if not tasks:
        report.error(root / "imagesTr", f"empty dataset: no images named CASE_0000{header.file_ending}")
        return report
    if header.num_training is not None and header.num_training != len(tasks):
        report.error(root / "dataset.json",
                     f"numTraining is {header.num_training} but imagesTr holds {len(tasks)} case(s)")
    results = map_with_progress(_check_case, tasks, workers, "validating", progress)
    for result in results:
        report.errors.extend(result.errors)
        report.warnings.extend(result.warnings)
    _check_across_cases(root, header, tasks, results, report)
    return report


def _check_dataset_json(root: Path, report: ValidationReport) -> _Header:
    path = root / "dataset.json"
    nothing = _Header(None, None, None, None)
    if not path.is_file():
        report.error(path, "missing dataset.json (nnU-Net v2 raw layout expected)")
        return nothing
    try:
        raw = read_json_object(path)
    except DatasetError as error:
        report.error(path, error.message)
        return nothing
    decathlon = "modality" in raw and "channel_names" not in raw
    hint = " (this looks like a Decathlon dataset.json: convert it with medmamba convert-msd)" if decathlon else ""
    for key in REQUIRED_KEYS:
        if key not in raw:
            report.error(path, f"missing key '{key}'{hint}")

    def parse(key, parser):
        if key not in raw:
            return None
        try:
            return parser(raw[key], path)
        except DatasetError as error:
            report.error(path, error.message)
            return None

    channels = parse("channel_names", parse_channel_map)
    return _Header(
        num_channels=len(channels) if channels is not None else None,
        labels=parse("labels", _parse_labels),
        num_training=parse("numTraining", lambda value, p: _parse_int(value, "numTraining", p)),
        file_ending=parse("file_ending", _parse_ending),
    )


def _collect_cases(root: Path, header: _Header, report: ValidationReport) -> list[_CaseTask]:
    """Match channel files and labels by name; report missing, stray and misnamed files."""
    ending = header.file_ending
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        report.error(images_dir, "missing images folder")
        return []
    if not labels_dir.is_dir():
        report.error(labels_dir, "missing labels folder")
    channels: dict[str, dict[int, Path]] = {}
    for path in _dataset_files(images_dir, ending, report):
        match = _CHANNEL_SUFFIX.match(path.name[: -len(ending)])
        if match is None:
            report.error(path, f"image name must end in a channel number, e.g. CASE_0000{ending}")
            continue
        channels.setdefault(match["case"], {})[int(match["channel"])] = path
    labels = {path.name[: -len(ending)]: path for path in _dataset_files(labels_dir, ending, report)}

    num_channels = header.num_channels
    if num_channels is None:  # dataset.json is broken: judge channels by what is there
        num_channels = max((max(found) + 1 for found in channels.values()), default=1)
    declared = tuple(sorted(set(header.labels.values()))) if header.labels is not None else None
    tasks = []
    for case_id, found in sorted(channels.items()):
        for channel in range(num_channels):
            if channel not in found:
                report.error(images_dir / f"{case_id}_{channel:04d}{ending}",
                             f"missing channel {channel} of case {case_id}")
        for channel in sorted(c for c in found if c >= num_channels):
            report.error(found[channel], f"channel {channel} is not declared in dataset.json "
                                         f"channel_names ({num_channels} channel(s))")
        label = labels.get(case_id)
        if label is None and labels_dir.is_dir():
            report.error(labels_dir / f"{case_id}{ending}", f"missing label of case {case_id}")
        images = tuple(found[c] for c in sorted(found) if c < num_channels)
        tasks.append(_CaseTask(case_id, images, label, declared))
    for case_id, path in sorted(labels.items()):
        if case_id not in channels:
            report.error(path, f"label with no image (expected {images_dir.name}/{case_id}_0000{ending})")
    return tasks


def _dataset_files(folder: Path, ending: str, report: ValidationReport) -> list[Path]:
    """Files of ``folder`` with the dataset's ending; hidden files skipped, others warned."""
    if not folder.is_dir():
        return []
    kept = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and path.name.endswith(ending):
            kept.append(path)
        elif any(path.name.lower().endswith(other) for other in SUPPORTED_ENDINGS):
            report.error(path, f"file ending differs from dataset.json file_ending '{ending}'")
        elif ending in _HEADER_ONLY_ENDINGS and path.name.lower().endswith(_DETACHED_DATA_ENDINGS):
            continue  # the voxels of a .mhd/.nhdr header
        else:
            report.warning(path, "ignored: not an image file of this dataset")
    return kept


def _check_case(task: _CaseTask) -> _CaseResult:
    """Read every file of one case (in a worker process) and check it."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    dtypes: list[str] = []
    reference: tuple[Path, Geometry] | None = None
    for path in task.images:
        loaded = _read(path, errors)
        if loaded is None:
            continue
        array, geometry, dtype = loaded
        dtypes.append(dtype)
        bad = _count_nonfinite(array)
        if bad:
            errors.append(Problem(path, f"{bad} NaN/inf voxel(s)"))
        if reference is None:
            reference = (path, geometry)
        else:
            errors.extend(_compare_geometry(path, geometry, *reference))
    values: tuple[int, ...] = ()
    label_read = False
    if task.label is not None:
        loaded = _read(task.label, errors)
        if loaded is not None:
            array, geometry, _ = loaded
            label_read = True
            if reference is not None:
                errors.extend(_compare_geometry(task.label, geometry, *reference))
            values = _check_label(task.label, array, task.declared_labels, errors, warnings)
    origin = reference[1].origin if reference is not None else None
    return _CaseResult(tuple(errors), tuple(warnings), tuple(dtypes), values, label_read, origin)


def _read(path: Path, errors: list[Problem]) -> tuple[np.ndarray, Geometry, str] | None:
    """Voxels, geometry and stored dtype of one file; None (and an error) if unusable.

    ITK before 6.0 turns NaN/inf into 0 when reading NIfTI (InsightSoftwareConsortium/ITK
    PR 6683), so the voxels of float NIfTI files come from nibabel instead, geometry
    still from ITK. Their axis order differs, which checks of values do not mind.
    """
    try:
        header = read_header(path) if path.name.lower().endswith((".nii", ".nii.gz")) else None
        if header is not None and header.components == 1 and header.dtype is not None \
                and header.dtype.kind == "f":
            array, geometry, dtype = _nibabel_voxels(path), header.geometry, str(header.dtype)
        else:
            array, geometry = read_image(path)
            dtype = str(array.dtype)
    except DatasetError as error:
        errors.append(Problem(path, error.message))
        return None
    if len(geometry.shape) not in (2, 3):
        errors.append(Problem(path, f"is {len(geometry.shape)}D; expected one 2D or 3D image per channel "
                                    "file (convert Decathlon 4D images with medmamba convert-msd)"))
        return None
    return array, geometry, dtype


def _nibabel_voxels(path: Path) -> np.ndarray:
    import zlib

    import nibabel
    from nibabel.filebasedimages import ImageFileError

    try:
        return np.asanyarray(nibabel.load(path).dataobj)
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as error:
        raise DatasetError(f"cannot read image voxels ({error})", path) from None


def _count_nonfinite(array: np.ndarray) -> int:
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v + 0.0:g}" for v in values) + ")"  # + 0.0: no "-0"


def _compare_geometry(path: Path, geometry: Geometry, ref_path: Path, ref: Geometry) -> list[Problem]:
    """Problems of ``path`` whose geometry differs from the case's first channel."""
    other = ref_path.name
    problems = []
    if geometry.shape != ref.shape:
        problems.append(Problem(path, f"shape {_fmt(geometry.shape)} differs from {other} {_fmt(ref.shape)}"))
    checks = (
        ("spacing", geometry.spacing, ref.spacing, dict(rtol=SPACING_RTOL, atol=0.0)),
        ("origin", geometry.origin, ref.origin, dict(rtol=0.0, atol=ORIGIN_ATOL_MM)),
        ("direction", geometry.direction, ref.direction, dict(rtol=0.0, atol=DIRECTION_ATOL)),
    )
    for name, mine, theirs, tolerance in checks:
        if len(mine) != len(theirs) or not np.allclose(mine, theirs, **tolerance):
            problems.append(Problem(path, f"{name} {_fmt(mine)} differs from {other} {_fmt(theirs)}"))
    return problems


def _check_label(path: Path, array: np.ndarray, declared: tuple[int, ...] | None,
                 errors: list[Problem], warnings: list[Problem]) -> tuple[int, ...]:
    """Check a label map's values; returns the values it holds (empty if unusable)."""
    if np.issubdtype(array.dtype, np.floating):
        bad = _count_nonfinite(array)
        if bad:
            errors.append(Problem(path, f"label holds {bad} NaN/inf voxel(s)"))
            return ()
        fractional = array[array != np.round(array)]
        if fractional.size:
            errors.append(Problem(path, f"label values must be integers; {fractional.size} voxel(s) "
                                        f"are not (e.g. {float(fractional[0]):g})"))
            return ()
        warnings.append(Problem(path, f"float-typed label ({array.dtype}) holding integers; "
                                      "read as integers"))
        array = array.astype(np.int64)
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        errors.append(Problem(path, f"label has unsupported voxel type {array.dtype}"))
        return ()
    values = _unique(array)
    if declared is not None:
        undeclared = sorted(set(values) - set(declared))
        if undeclared:
            errors.append(Problem(path, f"label value(s) {', '.join(map(str, undeclared))} not declared "
                                        f"in dataset.json labels ({', '.join(map(str, declared))})"))
    return values


def _unique(array: np.ndarray) -> tuple[int, ...]:
    """Distinct values of an integer array; bincount when small and non-negative (faster)."""
    flat = array.ravel(order="K")  # no copy for Fortran-ordered (nibabel) arrays
    low, high = int(flat.min()), int(flat.max())
    if low >= 0 and high < 65536:
        return tuple(int(v) for v in np.flatnonzero(np.bincount(flat.astype(np.intp, copy=False))))
    return tuple(int(v) for v in np.unique(flat))


def _check_across_cases(root: Path, header: _Header, tasks: list[_CaseTask],
                        results: list[_CaseResult], report: ValidationReport) -> None:
    """Warnings about the dataset as a whole: mixed dtypes, origins, unused labels."""
    dtypes = Counter(dtype for result in results for dtype in result.image_dtypes)
    if len(dtypes) > 1:
        listed = ", ".join(f"{dtype} ({count} files)" for dtype, count in dtypes.most_common())
        report.warning(root / "imagesTr", f"mixed image dtypes across cases: {listed}")
    origins: dict[tuple[float, ...], str] = {}
    for task, result in zip(tasks, results):
        if result.origin is not None:
            origins.setdefault(tuple(np.round(result.origin, ORIGIN_DECIMALS)), task.case_id)
    if len(origins) > 1:
        (first, a), (second, b) = list(origins.items())[:2]
        report.warning(root / "imagesTr", f"cases have {len(origins)} different origins "
                                          f"(e.g. {a} {_fmt(first)}, {b} {_fmt(second)})")
    if header.labels is not None and any(result.label_read for result in results):
        found = {value for result in results for value in result.label_values}
        for name, value in header.labels.items():
            if value not in found:
                report.warning(root / "dataset.json",
                               f"label '{name}' ({value}) is declared but occurs in no label file")
