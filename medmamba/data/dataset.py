"""Discovery of datasets in the nnU-Net v2 raw layout.

``DATA/dataset.json`` + ``imagesTr/CASE_XXXX<ending>`` (one file per channel XXXX) +
``labelsTr/CASE<ending>`` (+ optional ``imagesTs/``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from medmamba.data.io import SUPPORTED_ENDINGS
from medmamba.errors import DatasetError

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class DatasetInfo:
    """The parsed dataset.json."""

    root: Path
    name: str
    channel_names: tuple[str, ...]  # index = channel number
    labels: dict[str, int]  # name -> value, includes background: 0
    num_training: int
    file_ending: str

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.labels.values())))

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        return tuple(v for v in self.label_values if v != 0)


@dataclass(frozen=True)
class Case:
    """One case: its channel files in channel order and its label (None for test data)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


def load_dataset_json(root: Path) -> DatasetInfo:
    """Parse and check ``root/dataset.json``; raises DatasetError naming the problem."""
    path = Path(root) / "dataset.json"
    if not Path(root).is_dir():
        raise DatasetError("dataset folder does not exist", root)
    if not path.is_file():
        raise DatasetError("missing dataset.json (nnU-Net v2 raw layout expected)", path)
    raw = read_json_object(path)
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise DatasetError(f"missing key(s): {', '.join(missing)}", path)
    return DatasetInfo(
        root=Path(root),
        name=str(raw.get("name", Path(root).name)),
        channel_names=parse_channel_map(raw["channel_names"], path),
        labels=_parse_labels(raw["labels"], path),
        num_training=_parse_int(raw["numTraining"], "numTraining", path),
        file_ending=_parse_ending(raw["file_ending"], path),
    )


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path``; DatasetError if it is not valid JSON or not an object."""
    try:
        raw = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"not valid JSON ({error})", path) from None
    if not isinstance(raw, dict):
        raise DatasetError("must hold a JSON object", path)
    return raw


def parse_channel_map(value: object, path: Path, key: str = "channel_names",
                      example: str = "CT") -> tuple[str, ...]:
    """``{"0": name, "1": name, ...}`` (keys exactly 0..n-1) -> names in channel order."""
    if not isinstance(value, dict) or not value:
        raise DatasetError(f"'{key}' must be a non-empty object {{\"0\": \"{example}\", ...}}", path)
    try:
        indexed = {int(k): str(name) for k, name in value.items()}
    except ValueError:
        raise DatasetError(f"'{key}' keys must be channel numbers \"0\", \"1\", ...", path) from None
    if sorted(indexed) != list(range(len(indexed))):
        raise DatasetError(f"'{key}' keys must be 0..{len(indexed) - 1}", path)
    return tuple(indexed[i] for i in range(len(indexed)))


def _parse_labels(value: object, path: Path) -> dict[str, int]:
    if not isinstance(value, dict) or not value:
        raise DatasetError("'labels' must be a non-empty object {\"background\": 0, ...}", path)
    labels: dict[str, int] = {}
    for name, label in value.items():
        if isinstance(label, list):
            raise DatasetError(f"label '{name}': region-based labels (lists) are not supported", path)
        labels[str(name)] = _parse_int(label, f"labels.{name}", path)
    if labels.get("background") != 0:
        raise DatasetError("'labels' must contain \"background\": 0", path)
    if len(set(labels.values())) != len(labels):
        raise DatasetError("'labels' values must be distinct", path)
    return labels


def _parse_int(value: object, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DatasetError(f"'{key}' must be an integer, got {value!r}", path)
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"'{key}' must be an integer, got {value!r}", path) from None
    if number != int(number) or number < 0:
        raise DatasetError(f"'{key}' must be a non-negative integer, got {value!r}", path)
    return int(number)


def _parse_ending(value: object, path: Path) -> str:
    if not isinstance(value, str) or value.lower() not in SUPPORTED_ENDINGS:
        raise DatasetError(
            f"'file_ending' {value!r} not supported; use one of {', '.join(SUPPORTED_ENDINGS)}",
            path,
        )
    return value


def _strip_ending(name: str, ending: str) -> str | None:
    return name[: -len(ending)] if name.endswith(ending) else None


def group_channel_files(folder: Path, ending: str) -> dict[str, dict[int, Path]]:
    """Map case id -> {channel number: file} for ``CASE_XXXX<ending>`` files in ``folder``."""
    cases: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return cases
    for path in sorted(folder.iterdir()):
        stem = _strip_ending(path.name, ending)
        if stem is None or path.name.startswith("."):
            continue
        match = _CHANNEL_SUFFIX.match(stem)
        if match is None:
            continue
        cases.setdefault(match["case"], {})[int(match["channel"])] = path
    return cases


def discover_cases(info: DatasetInfo, images_folder: str = "imagesTr",
                   labels_folder: str | None = "labelsTr") -> list[Case]:
    """List the cases of a folder, checking each has all channels (and a label).

    Raises DatasetError at the first incomplete case; ``medmamba validate`` reports
    every problem instead (see medmamba.data.validate).
    """
    folder = info.root / images_folder
    if not folder.is_dir():
        raise DatasetError("missing images folder", folder)
    grouped = group_channel_files(folder, info.file_ending)
    cases = []
    for case_id, channels in sorted(grouped.items()):
        missing = [c for c in range(info.num_channels) if c not in channels]
        if missing:
            expected = folder / f"{case_id}_{missing[0]:04d}{info.file_ending}"
            raise DatasetError(f"missing channel {missing[0]} of case {case_id}", expected)
        label = None
        if labels_folder is not None:
            label = info.root / labels_folder / f"{case_id}{info.file_ending}"
            if not label.is_file():
                raise DatasetError(f"missing label of case {case_id}", label)
        images = tuple(channels[c] for c in range(info.num_channels))
        cases.append(Case(case_id=case_id, images=images, label=label))
    if not cases:
        raise DatasetError(f"no images named CASE_0000{info.file_ending} found", folder)
    return cases


def discover_images(folder: Path, file_ending: str, num_channels: int) -> list[Case]:
    """Cases of an inference input folder (no labels), in the dataset's channel layout."""
    grouped = group_channel_files(Path(folder), file_ending)
    cases = []
    for case_id, channels in sorted(grouped.items()):
        missing = [c for c in range(num_channels) if c not in channels]
        if missing:
            expected = Path(folder) / f"{case_id}_{missing[0]:04d}{file_ending}"
            raise DatasetError(
                f"missing channel {missing[0]} of case {case_id} "
                f"(the model expects {num_channels} channel(s))", expected)
        extra = sorted(c for c in channels if c >= num_channels)
        if extra:
            raise DatasetError(
                f"case {case_id} has channel {extra[0]} but the model expects "
                f"{num_channels} channel(s)", channels[extra[0]])
        cases.append(Case(case_id, tuple(channels[c] for c in range(num_channels)), None))
    return cases
