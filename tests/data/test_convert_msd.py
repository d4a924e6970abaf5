"""medmamba convert-msd: Decathlon (4D images, value->name labels) -> nnU-Net v2 raw layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from medmamba.cli import app
from medmamba.data.dataset import discover_cases, discover_images, load_dataset_json
from medmamba.data.msd import convert_msd
from medmamba.data.validate import validate_dataset
from medmamba.errors import DatasetError

SHAPE = (5, 6, 7)  # z, y, x
# A 3D direction that is not the identity (x flipped, y and z swapped), embedded in 4D.
DIRECTION_3D = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def write_4d(path: Path, channels: np.ndarray) -> None:
    """(C, z, y, x) -> a 4D NIfTI whose 4th axis is the channel, as the Decathlon ships them."""
    image = sitk.GetImageFromArray(channels, isVector=False)
    direction = np.eye(4)
    direction[:3, :3] = DIRECTION_3D
    image.SetSpacing((0.8, 0.9, 2.5, 1.0))
    image.SetOrigin((10.0, -20.0, 30.0, 0.0))
    image.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(image, str(path))


def write_3d(path: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(tuple(DIRECTION_3D.ravel()))
    sitk.WriteImage(image, str(path))


def make_msd(root: Path, channels: int = 2) -> Path:
    """A tiny Decathlon task: 2 training cases, 1 test case, macOS '._' junk beside them."""
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in ("brain_001", "brain_002", "brain_009"):
        folder = "imagesTs" if case == "brain_009" else "imagesTr"
        data = rng.normal(size=(channels, *SHAPE)).astype(np.float32)
        if channels == 1:
            write_3d(root / folder / f"{case}.nii.gz", data[0])
        else:
            write_4d(root / folder / f"{case}.nii.gz", data)
        if folder == "imagesTr":
            label = rng.integers(0, 3, SHAPE).astype(np.uint8)
            write_3d(root / "labelsTr" / f"{case}.nii.gz", label)
        (root / folder / f"._{case}.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    dataset = {
        "name": "BRATS-mini", "description": "test", "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "4D" if channels > 1 else "3D",
        "modality": {str(c): name for c, name in zip(range(channels), ("FLAIR", "T1w"))},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "numTraining": 2, "numTest": 1,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in ("brain_001", "brain_002")]
        + [{"image": "./imagesTr/._brain_001.nii.gz", "label": "./labelsTr/._brain_001.nii.gz"}],
        "test": ["./imagesTs/brain_009.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def test_converts_4d_images_to_channel_files(tmp_path: Path) -> None:
    src = make_msd(tmp_path / "Task01_BrainTumour")
    dst = convert_msd(src, tmp_path / "Dataset001_Brain", workers=1)
    info = load_dataset_json(dst)
    assert info.channel_names == ("FLAIR", "T1w")
    assert info.labels == {"background": 0, "edema": 1, "tumour": 2}
    assert info.num_training == 2 and info.file_ending == ".nii.gz"
    raw = json.loads((dst / "dataset.json").read_text())
    assert raw["name"] == "BRATS-mini" and "training" not in raw and "modality" not in raw

    cases = discover_cases(info)
    assert [case.case_id for case in cases] == ["brain_001", "brain_002"]
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "imagesTr" / "brain_002.nii.gz")))
    for channel in range(2):
        image = sitk.ReadImage(str(dst / "imagesTr" / f"brain_002_{channel:04d}.nii.gz"))
        assert image.GetDimension() == 3
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), source[channel])
        np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.9, 2.5))
        np.testing.assert_allclose(image.GetOrigin(), (10.0, -20.0, 30.0))
        np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), DIRECTION_3D)
    label = dst / "labelsTr" / "brain_002.nii.gz"
    assert label.read_bytes() == (src / "labelsTr" / "brain_002.nii.gz").read_bytes()
    assert [case.case_id for case in discover_images(dst / "imagesTs", ".nii.gz", 2)] == ["brain_009"]
    assert not any(path.name.startswith(".") for path in dst.rglob("*"))
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # no stage left

    report = validate_dataset(dst, workers=1)
    assert report.ok, report.errors


def test_single_channel_3d_images_are_copied(tmp_path: Path) -> None:
    src = make_msd(tmp_path / "Task04_Hippocampus", channels=1)
    dst = convert_msd(src, tmp_path / "out", workers=1)
    copied = dst / "imagesTr" / "brain_001_0000.nii.gz"
    assert copied.read_bytes() == (src / "imagesTr" / "brain_001.nii.gz").read_bytes()
    assert load_dataset_json(dst).channel_names == ("FLAIR",)
    assert validate_dataset(dst, workers=1).ok


def _edit(src: Path, **changes) -> None:
    data = json.loads((src / "dataset.json").read_text())
    data.update(changes)
    (src / "dataset.json").write_text(json.dumps(data))


@pytest.mark.parametrize("breaker, where, words", [
    (lambda src: (src / "dataset.json").unlink(), "dataset.json", "missing dataset.json"),
    (lambda src: _edit(src, channel_names={"0": "CT"}, modality=None), "dataset.json", "'modality' must be"),
    (lambda src: (src / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}})),
     "dataset.json", "already in the nnU-Net v2 layout"),
    (lambda src: _edit(src, training=None), "dataset.json", "must be a non-empty list"),
    (lambda src: (src / "labelsTr" / "brain_002.nii.gz").unlink(), "labelsTr/brain_002.nii.gz",
     "listed in dataset.json 'training' but missing"),
    (lambda src: _edit(src, modality={"0": "FLAIR", "1": "T1w", "2": "T2"}), "imagesTr/brain_001.nii.gz",
     "has 2 channels but dataset.json 'modality' lists 3"),
    (lambda src: (src / "imagesTr" / "brain_002.nii.gz").write_bytes(b"not an image"),
     "imagesTr/brain_002.nii.gz", "cannot read image"),
], ids=["no-json", "bad-modality", "already-nnunet", "no-training", "missing-label", "channel-count", "corrupt"])
def test_bad_source_is_one_line_and_writes_nothing(tmp_path: Path, breaker, where: str, words: str) -> None:
    src = make_msd(tmp_path / "src")
    breaker(src)
    dst = tmp_path / "dst"
    result = CliRunner().invoke(app, ["convert-msd", str(src), str(dst), "-j", "1"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith(f"error: {src / where}: ") and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not dst.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]  # no stage left behind


def test_existing_destination_is_refused(tmp_path: Path) -> None:
    src = make_msd(tmp_path / "src")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists"):
        convert_msd(src, dst, workers=1)
    assert [path.name for path in dst.iterdir()] == ["keep.txt"]


def test_cli_with_worker_processes(tmp_path: Path) -> None:
    src = make_msd(tmp_path / "src")
    result = CliRunner().invoke(app, ["convert-msd", str(src), str(tmp_path / "dst"), "-j", "2"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "dst" / "imagesTr").iterdir())) == 4
