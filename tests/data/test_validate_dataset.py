"""medmamba validate: one test per problem, warnings, the real data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medmamba.cli import app
from medmamba.data.dataset import discover_cases, load_dataset_json
from medmamba.data.io import Geometry, write_image
from medmamba.data.validate import validate_dataset

SHAPE = (4, 5, 6)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
CASES = ("case_000", "case_001")


def geometry(spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=IDENTITY, shape=SHAPE) -> Geometry:
    return Geometry(spacing=spacing, origin=origin, direction=direction, shape=shape)


def label_array(shape=SHAPE, dtype=np.uint8) -> np.ndarray:
    label = np.zeros(shape, dtype=dtype)
    label[1, 1:3, 1:3] = 1
    label[2, 2:4, 2:5] = 2
    return label


def image_array(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 10.0, shape).astype(np.float32)


def make_dataset(root: Path, channels: int = 2, ending: str = ".nii.gz") -> Path:
    """A valid 2-case, 2-channel dataset with labels 0, 1, 2 (no warnings either)."""
    dataset = {
        "channel_names": {str(c): f"MR{c}" for c in range(channels)},
        "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": len(CASES),
        "file_ending": ending,
    }
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(dataset))
    for index, case in enumerate(CASES):
        for channel in range(channels):
            write_image(image_array(10 * index + channel), geometry(), image_path(root, case, channel, ending))
        write_image(label_array(), geometry(), label_path(root, case, ending))
    return root


def image_path(root: Path, case: str = "case_001", channel: int = 0, ending: str = ".nii.gz") -> Path:
    return root / "imagesTr" / f"{case}_{channel:04d}{ending}"


def label_path(root: Path, case: str = "case_001", ending: str = ".nii.gz") -> Path:
    return root / "labelsTr" / f"{case}{ending}"


def edit_json(root: Path, **changes) -> None:
    data = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    (root / "dataset.json").write_text(json.dumps(data))


def validate_cli(root: Path, *options: str):
    result = CliRunner().invoke(app, ["validate", str(root), "-j", "1", *options])
    assert "Traceback" not in result.output
    return result


def test_valid_dataset_passes_without_warnings(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    report = validate_dataset(root, workers=1)
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.num_cases == 2
    result = validate_cli(root)
    assert result.exit_code == 0, result.output
    assert "2 case(s), 0 error(s), 0 warning(s)" in result.output


@pytest.mark.parametrize("ending", [".nii", ".nrrd", ".mha", ".mhd"])
def test_other_formats_validate(tmp_path: Path, ending: str) -> None:
    root = make_dataset(tmp_path / "data", ending=ending)
    report = validate_dataset(root, workers=1)
    assert report.ok and report.warnings == [], (report.errors, report.warnings)
    assert report.num_cases == 2


def test_unrelated_files_are_ignored_with_a_warning(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    (root / "imagesTr" / "notes.txt").write_text("scanner protocol")
    (root / "labelsTr" / ".DS_Store").write_bytes(b"")
    report = validate_dataset(root, workers=1)
    assert report.ok
    assert [str(problem) for problem in report.warnings] == [
        f"{root / 'imagesTr' / 'notes.txt'}: ignored: not an image file of this dataset"]


# Each problem: how to break the valid dataset, which file the message must name, and
# words it must contain.
Breaker = Callable[[Path], None]


def _remove(path_of: Callable[[Path], Path]) -> Breaker:
    return lambda root: path_of(root).unlink()


def _rewrite_label(array=None, **geometry_changes) -> Breaker:
    def apply(root: Path) -> None:
        label = label_array() if array is None else array
        write_image(label, geometry(**{"shape": label.shape, **geometry_changes}), label_path(root))
    return apply


def _rewrite_image(array=None, channel: int = 0, **geometry_changes) -> Breaker:
    def apply(root: Path) -> None:
        image = image_array(0) if array is None else array
        write_image(image, geometry(**{"shape": image.shape, **geometry_changes}), image_path(root, channel=channel))
    return apply


def _nan_image() -> np.ndarray:
    image = image_array(0)
    image[1, 2, 3] = np.nan
    image[0, 0, 0] = -np.inf
    return image


def _label_with(value, dtype=np.uint8) -> np.ndarray:
    label = label_array(dtype=dtype)
    label[0, 0, 0] = value
    return label


def _write_bytes(path_of: Callable[[Path], Path], payload: bytes) -> Breaker:
    return lambda root: path_of(root).write_bytes(payload)


def _empty_images(root: Path) -> None:
    for path in (root / "imagesTr").iterdir():
        path.unlink()
    for path in (root / "labelsTr").iterdir():
        path.unlink()


def _write_4d(root: Path) -> None:
    import SimpleITK as sitk

    volume = sitk.GetImageFromArray(np.zeros((2, *SHAPE), np.float32), isVector=False)
    sitk.WriteImage(volume, str(image_path(root)))


PROBLEMS: dict[str, tuple[Breaker, Callable[[Path], Path], tuple[str, ...]]] = {
    "no-dataset-json": (_remove(lambda r: r / "dataset.json"), lambda r: r / "dataset.json",
                        ("missing dataset.json",)),
    "invalid-json": (_write_bytes(lambda r: r / "dataset.json", b"{not json"), lambda r: r / "dataset.json",
                     ("not valid JSON",)),
    "json-missing-key": (lambda r: edit_json(r, labels=None), lambda r: r / "dataset.json",
                         ("missing key 'labels'",)),
    "json-wrong-type": (lambda r: edit_json(r, numTraining="many"), lambda r: r / "dataset.json",
                        ("numTraining", "integer")),
    "json-no-background": (lambda r: edit_json(r, labels={"a": 1}), lambda r: r / "dataset.json",
                           ("background",)),
    "missing-channel": (_remove(lambda r: image_path(r, channel=1)), lambda r: image_path(r, channel=1),
                        ("missing channel 1", "case_001")),
    "undeclared-channel": (_rewrite_image(channel=2), lambda r: image_path(r, channel=2),
                           ("channel 2", "not declared")),
    "missing-label": (_remove(label_path), label_path, ("missing label", "case_001")),
    "label-without-image": (lambda r: write_image(label_array(), geometry(), label_path(r, "case_999")),
                            lambda r: label_path(r, "case_999"), ("label with no image",)),
    "misnamed-image": (lambda r: write_image(image_array(0), geometry(), r / "imagesTr" / "nochannel.nii.gz"),
                       lambda r: r / "imagesTr" / "nochannel.nii.gz", ("channel number",)),
    "wrong-ending": (lambda r: write_image(image_array(0), geometry(), r / "imagesTr" / "case_002_0000.nrrd"),
                     lambda r: r / "imagesTr" / "case_002_0000.nrrd", ("file_ending",)),
    "shape": (_rewrite_label(np.zeros((4, 5, 7), np.uint8)), label_path, ("shape (4, 5, 7) differs",)),
    "spacing-channel": (_rewrite_image(channel=1, spacing=(2.5, 1.0, 1.0)), lambda r: image_path(r, channel=1),
                        ("spacing", "differs from case_001_0000")),
    "spacing-label": (_rewrite_label(spacing=(2.0, 1.0, 1.2)), label_path, ("spacing",)),
    "origin-label": (_rewrite_label(origin=(0.0, 0.5, 0.0)), label_path, ("origin", "differs")),
    "direction-label": (_rewrite_label(direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)), label_path,
                        ("direction", "differs")),
    "non-integral-label": (_rewrite_label(_label_with(0.5, np.float32)), label_path, ("integers", "0.5")),
    "undeclared-label": (_rewrite_label(_label_with(7)), label_path, ("label value(s) 7 not declared",)),
    "nan-image": (_rewrite_image(_nan_image()), image_path, ("2 NaN/inf voxel(s)",)),
    "nan-label": (_rewrite_label(_label_with(np.nan, np.float32)), label_path, ("label holds 1 NaN/inf",)),
    "corrupt-image": (_write_bytes(image_path, b"\x1f\x8b garbage"), image_path, ("cannot read image",)),
    "corrupt-label": (_write_bytes(label_path, b""), label_path, ("cannot read image",)),
    "4d-image": (_write_4d, image_path, ("is 4D", "convert-msd")),
    "empty-dataset": (_empty_images, lambda r: r / "imagesTr", ("empty dataset",)),
    "num-training": (lambda r: edit_json(r, numTraining=5), lambda r: r / "dataset.json",
                     ("numTraining is 5", "2 case(s)")),
    "no-images-folder": (lambda r: __import__("shutil").rmtree(r / "imagesTr"), lambda r: r / "imagesTr",
                         ("missing images folder",)),
}


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_each_problem_is_one_line_naming_the_file(tmp_path: Path, problem: str) -> None:
    breaker, path_of, words = PROBLEMS[problem]
    root = make_dataset(tmp_path / "data")
    breaker(root)
    result = validate_cli(root)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(f"error: {path_of(root)}: ")]
    assert any(all(word in line for word in words) for line in lines), result.output
    assert "FAILED" in result.output


def test_all_problems_are_listed_not_only_the_first(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    for name in ("missing-channel", "nan-image", "undeclared-label", "num-training"):
        PROBLEMS[name][0](root)
    _rewrite_label(origin=(1.0, 0.0, 0.0))(root)  # replaces the undeclared-label file of case_001
    write_image(_label_with(9), geometry(), label_path(root, "case_000"))
    report = validate_dataset(root, workers=1)
    messages = [str(problem) for problem in report.errors]
    assert len(messages) == 5, messages
    for expected in ("missing channel 1", "NaN/inf", "origin", "label value(s) 9", "numTraining is 5"):
        assert any(expected in message for message in messages), (expected, messages)


def test_worker_processes_give_the_same_report(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    PROBLEMS["nan-image"][0](root)
    PROBLEMS["undeclared-label"][0](root)
    single = validate_dataset(root, workers=1)
    pooled = validate_dataset(root, workers=2)
    assert single.errors == pooled.errors and single.warnings == pooled.warnings
    assert len(single.errors) == 2


def test_missing_folder_exits_2(tmp_path: Path) -> None:
    result = validate_cli(tmp_path / "nowhere")
    assert result.exit_code == 2
    assert f"error: {tmp_path / 'nowhere'}: dataset folder does not exist" in result.output


@pytest.mark.parametrize("oddity, path_of, words", [
    ("float-label", label_path, ("float-typed label",)),
    ("mixed-dtypes", lambda r: r / "imagesTr", ("mixed image dtypes", "float32", "int16")),
    ("origins", lambda r: r / "imagesTr", ("2 different origins",)),
    ("absent-label", lambda r: r / "dataset.json", ("label 'c' (3) is declared but occurs in no label file",)),
])
def test_legal_oddities_are_warnings(tmp_path: Path, oddity: str, path_of, words) -> None:
    root = make_dataset(tmp_path / "data")
    if oddity == "float-label":
        write_image(label_array(dtype=np.float32), geometry(), label_path(root))
    elif oddity == "mixed-dtypes":
        for channel in range(2):
            write_image(image_array(channel).astype(np.int16), geometry(), image_path(root, channel=channel))
    elif oddity == "origins":
        moved = geometry(origin=(10.0, -5.0, 3.0))
        for channel in range(2):
            write_image(image_array(channel), moved, image_path(root, channel=channel))
        write_image(label_array(), moved, label_path(root))
    else:
        edit_json(root, labels={"background": 0, "a": 1, "b": 2, "c": 3})
    result = validate_cli(root)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(f"warning: {path_of(root)}: ")]
    assert any(all(word in line for word in words) for line in lines), result.output
    assert "0 error(s), 1 warning(s)" in result.output


def test_discover_cases_agrees_with_validate(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    cases = discover_cases(load_dataset_json(root))
    assert [case.case_id for case in cases] == list(CASES)
    assert validate_dataset(root, workers=1).num_cases == len(cases)


@pytest.mark.parametrize("name, expected_warnings", [
    ("Dataset004_Hippocampus", ("float-typed label", "mixed image dtypes", "different origins")),
    ("Dataset101_BraTS2015DeepMedicSample", ("float-typed label",)),
])
def test_real_data_validates_with_warnings(shared_dataset, name: str, expected_warnings) -> None:
    root = shared_dataset(name)
    result = CliRunner().invoke(app, ["validate", str(root), "-j", "2"])
    assert result.exit_code == 0, result.output
    assert " 0 error(s)" in result.output
    for words in expected_warnings:
        assert any(line.startswith("warning: ") and words in line for line in result.output.splitlines()), words
