"""``medmamba convert-msd``: Medical Segmentation Decathlon layout -> nnU-Net v2 raw layout.

Decathlon tasks keep all channels of a case in one 4D NIfTI and list cases in
dataset.json (``training``: image/label pairs, ``test``: images; ``modality`` and
``labels`` map number -> name). nnU-Net v2 wants one 3D file per channel
(``CASE_XXXX.nii.gz``) and ``labels`` as name -> number. The whole output is written
into a hidden sibling folder and renamed into place at the end, so an interrupted
conversion leaves nothing that looks like a dataset.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmamba.data.dataset import parse_channel_map, read_json_object
from medmamba.data.io import read_sitk, staged_directory
from medmamba.data.parallel import map_with_progress
from medmamba.errors import DatasetError

_ENDINGS = (".nii.gz", ".nii")
_KEPT_KEYS = ("name", "description", "reference", "licence", "release")


@dataclass(frozen=True)
class _Job:
    image: Path
    label: Path | None
    out_images: Path
    out_labels: Path | None
    case_id: str
    num_channels: int


def convert_msd(src: Path, dst: Path, workers: int | None = None, progress: bool = False) -> Path:
    """Convert the Decathlon task folder ``src`` into a new nnU-Net v2 raw dataset ``dst``."""
    src, dst = Path(src), Path(dst)
    raw = _read_msd_json(src)
    channels = parse_channel_map(raw["modality"], src / "dataset.json", "modality", "FLAIR")
    labels = _invert_labels(raw["labels"], src / "dataset.json")
    training = _training_pairs(raw["training"], src)
    test = _test_images(raw.get("test", []), src)
    with staged_directory(dst) as stage:
        jobs = [_Job(image, label, stage / "imagesTr", stage / "labelsTr", case_id, len(channels))
                for case_id, image, label in training]
        jobs += [_Job(image, None, stage / "imagesTs", None, case_id, len(channels))
                 for case_id, image in test]
        map_with_progress(_convert_case, jobs, workers, "converting", progress)
        dataset = {key: raw[key] for key in _KEPT_KEYS if key in raw}
        dataset.update({
            "channel_names": {str(i): name for i, name in enumerate(channels)},
            "labels": labels,
            "numTraining": len(training),
            "file_ending": ".nii.gz",
        })
        (stage / "dataset.json").write_text(json.dumps(dataset, indent=4) + "\n")
    return dst


def _read_msd_json(src: Path) -> dict:
    if not src.is_dir():
        raise DatasetError("Decathlon source folder does not exist", src)
    path = src / "dataset.json"
    if not path.is_file():
        raise DatasetError("missing dataset.json (Decathlon task folder expected)", path)
    raw = read_json_object(path)
    if "channel_names" in raw and "modality" not in raw:
        raise DatasetError("already in the nnU-Net v2 layout (has 'channel_names'); "
                           "no conversion needed", path)
    missing = [key for key in ("modality", "labels", "training") if key not in raw]
    if missing:
        raise DatasetError(f"not a Decathlon dataset.json: missing key(s) {', '.join(missing)}", path)
    return raw


def _invert_labels(value: object, path: Path) -> dict[str, int]:
    """Decathlon {"0": "background", "1": "edema"} -> nnU-Net {"background": 0, "edema": 1}."""
    if not isinstance(value, dict) or not value:
        raise DatasetError("'labels' must be a non-empty object {\"0\": \"background\", ...}", path)
    try:
        by_value = sorted((int(key), str(name)) for key, name in value.items())
    except ValueError:
        raise DatasetError("'labels' keys must be label values \"0\", \"1\", ...", path) from None
    if by_value[0][0] != 0:
        raise DatasetError("'labels' must define value \"0\" (background)", path)
    labels: dict[str, int] = {}
    for number, name in by_value:
        if number < 0:
            raise DatasetError(f"label value {number} is negative", path)
        name = "background" if number == 0 else name
        labels[name if name not in labels else f"{name}_{number}"] = number
    return labels


def _case_id(path: Path) -> str:
    for ending in _ENDINGS:
        if path.name.endswith(ending):
            return path.name[: -len(ending)]
    raise DatasetError(f"unsupported file type; Decathlon images are {' or '.join(_ENDINGS)}", path)


def _source_file(src: Path, entry: object, what: str) -> Path:
    if not isinstance(entry, str) or not entry:
        raise DatasetError(f"{what} must be a relative file path, got {entry!r}", src / "dataset.json")
    path = src / entry  # "./imagesTr/x.nii.gz" -> SRC/imagesTr/x.nii.gz
    if not path.is_file():
        raise DatasetError(f"listed in dataset.json '{what}' but missing", path)
    return path


def _is_macos_junk(entry: object) -> bool:
    return isinstance(entry, str) and Path(entry).name.startswith("._")


def _training_pairs(value: object, src: Path) -> list[tuple[str, Path, Path]]:
    if not isinstance(value, list) or not value:
        raise DatasetError("'training' must be a non-empty list of {\"image\", \"label\"}",
                           src / "dataset.json")
    pairs = []
    for entry in value:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetError(f"'training' entries need 'image' and 'label', got {entry!r}",
                               src / "dataset.json")
        if _is_macos_junk(entry["image"]):
            continue
        image = _source_file(src, entry["image"], "training")
        label = _source_file(src, entry["label"], "training")
        pairs.append((_case_id(image), image, label))
    _check_unique([case_id for case_id, _, _ in pairs], src)
    return pairs


def _test_images(value: object, src: Path) -> list[tuple[str, Path]]:
    if not isinstance(value, list):
        raise DatasetError("'test' must be a list of image paths", src / "dataset.json")
    images = []
    for entry in value:
        if isinstance(entry, dict):  # some converters list test cases as {"image": ...}
            entry = entry.get("image")
        if _is_macos_junk(entry):
            continue
        image = _source_file(src, entry, "test")
        images.append((_case_id(image), image))
    _check_unique([case_id for case_id, _ in images], src)
    return images


def _check_unique(case_ids: list[str], src: Path) -> None:
    seen = set()
    for case_id in case_ids:
        if case_id in seen:
            raise DatasetError(f"case {case_id} is listed twice", src / "dataset.json")
        seen.add(case_id)


def _convert_case(job: _Job) -> None:
    """Split one (possibly 4D) image into channel files and copy its label (worker process)."""
    _split_channels(job.image, job.out_images, job.case_id, job.num_channels)
    if job.label is not None and job.out_labels is not None:
        _copy_as_nifti_gz(job.label, job.out_labels / f"{job.case_id}.nii.gz")


def _split_channels(path: Path, out: Path, case_id: str, num_channels: int) -> None:
    import SimpleITK as sitk

    image = read_sitk(path)
    dimension = image.GetDimension()
    if dimension == 3 and image.GetNumberOfComponentsPerPixel() == 1:
        if num_channels != 1:
            raise DatasetError(f"3D image but dataset.json 'modality' lists {num_channels} channels", path)
        _copy_as_nifti_gz(path, out / f"{case_id}_0000.nii.gz")
        return
    if dimension != 4:
        raise DatasetError(f"expected a 3D or 4D image, got {dimension}D", path)
    array = sitk.GetArrayFromImage(image)  # (channel, z, y, x)
    if array.shape[0] != num_channels:
        raise DatasetError(f"has {array.shape[0]} channels but dataset.json 'modality' lists "
                           f"{num_channels}", path)
    # The 4th axis is the channel: drop its row and column from the geometry.
    spacing = image.GetSpacing()[:3]
    origin = image.GetOrigin()[:3]
    direction = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3].ravel()
    out.mkdir(parents=True, exist_ok=True)
    for channel in range(num_channels):
        volume = sitk.GetImageFromArray(np.ascontiguousarray(array[channel]))
        volume.SetSpacing(spacing)
        volume.SetOrigin(origin)
        volume.SetDirection(tuple(float(v) for v in direction))
        sitk.WriteImage(volume, str(out / f"{case_id}_{channel:04d}.nii.gz"), useCompression=True)


def _copy_as_nifti_gz(path: Path, target: Path) -> None:
    """Copy bytes when already .nii.gz, else rewrite (the output's file_ending is .nii.gz)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".nii.gz"):
        shutil.copyfile(path, target)
        return
    import SimpleITK as sitk

    sitk.WriteImage(read_sitk(path), str(target), useCompression=True)
