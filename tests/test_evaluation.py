"""Dice, HD95 and NSD against hand-computed values; summary files; the evaluate command."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medmamba.cli import app
from medmamba.data.io import Geometry, write_image
from medmamba.errors import DatasetError
from medmamba.evaluation import evaluate_folder, label_scores

SHAPE = (8, 9, 10)


def test_single_voxels_apart_give_the_distance_in_millimetres():
    pred, ref = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    pred[2, 4, 4] = ref[5, 4, 4] = True  # 3 voxels apart along z at 2 mm spacing: 6 mm
    scores = label_scores(pred, ref, spacing=(2.0, 1.0, 1.0), tolerance_mm=1.0)
    assert scores.dice == 0.0 and scores.hd95 == pytest.approx(6.0) and scores.nsd == 0.0
    assert label_scores(pred, ref, (2.0, 1.0, 1.0), tolerance_mm=6.0).nsd == pytest.approx(1.0)


def test_overlapping_boxes():
    pred, ref = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    pred[2:4, 2:4, 2:4] = True  # 8 voxels
    ref[2:5, 2:4, 2:4] = True  # 12 voxels, 8 shared: Dice = 16 / 20
    scores = label_scores(pred, ref, (1.0, 1.0, 1.0))
    assert scores.dice == pytest.approx(0.8)
    assert scores.hd95 == pytest.approx(1.0)  # the extra face is one voxel from pred's surface
    assert scores.nsd == pytest.approx(1.0)  # every surface voxel within 1 mm
    assert (scores.reference_voxels, scores.predicted_voxels) == (12, 8)


def test_identical_masks_are_perfect():
    mask = np.zeros(SHAPE, bool)
    mask[1:6, 2:7, 3:5] = True
    assert label_scores(mask, mask, (1.0, 0.7, 0.7)) == label_scores(mask, mask, (1.0, 0.7, 0.7))
    scores = label_scores(mask, mask, (1.0, 0.7, 0.7))
    assert (scores.dice, scores.hd95, scores.nsd) == (1.0, 0.0, 1.0)


def test_empty_mask_policy():
    empty, full = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    full[3, 3, 3] = True
    both = label_scores(empty, empty, (1, 1, 1))
    assert (both.dice, both.hd95, both.nsd) == (1.0, 0.0, 1.0)
    for pred, ref in ((empty, full), (full, empty)):
        one = label_scores(pred, ref, (1, 1, 1))
        assert one.dice == 0.0 and one.nsd == 0.0 and math.isnan(one.hd95)


def _write_pair(folder_pred: Path, folder_ref: Path, case: str, pred: np.ndarray, ref: np.ndarray,
                spacing=(2.0, 1.0, 1.0)) -> None:
    geometry = Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0),
                        direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=pred.shape)
    write_image(pred.astype(np.uint8), geometry, folder_pred / f"{case}.nii.gz")
    write_image(ref.astype(np.uint8), geometry, folder_ref / f"{case}.nii.gz")


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "labels"
    pred_dir.mkdir(), ref_dir.mkdir()
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:5, 2:4, 2:4] = 1
    ref[6, 6:8, 6:8] = 2
    pred = ref.copy()
    pred[4] = 0  # label 1: 8 of 12 voxels -> Dice 0.8
    _write_pair(pred_dir, ref_dir, "case_a", pred, ref)
    pred_b = np.zeros(SHAPE, np.uint8)
    pred_b[2:5, 2:4, 2:4] = 1  # perfect label 1, label 2 missed -> Dice 0, HD95 NaN
    _write_pair(pred_dir, ref_dir, "case_b", pred_b, ref)
    return pred_dir, ref_dir


def test_summary_json_and_csv(folders):
    pred_dir, ref_dir = folders
    summary_path = evaluate_folder(pred_dir, ref_dir, labels={"background": 0, "a": 1, "b": 2})
    summary = json.loads(summary_path.read_text())
    assert summary["num_cases"] == 2 and summary["labels"] == {"a": 1, "b": 2}
    dice_a = summary["per_label"]["a"]["dice"]
    assert dice_a["mean"] == pytest.approx(0.9) and dice_a["median"] == pytest.approx(0.9)
    hd_b = summary["per_label"]["b"]["hd95"]
    assert hd_b["n"] == 1 and hd_b["mean"] == pytest.approx(0.0)  # NaN of case_b left out
    assert summary["cases"][1]["labels"]["b"]["hd95"] is None
    assert summary["mean"]["dice"] == pytest.approx((0.9 + 0.5) / 2)
    rows = list(csv.DictReader(summary_path.with_suffix(".csv").open()))
    # z spacing 2 mm: the reference's extra slice (4 of its 12 surface voxels) is 2 mm from
    # the prediction, beyond the 1 mm tolerance: NSD = (8 + 8) / (12 + 8).
    assert rows[0] == {"case_id": "case_a", "label": "a", "dice": "0.8", "hd95": "2", "nsd": "0.8"}
    assert {"case_id": "case_b", "label": "b", "dice": "0", "hd95": "", "nsd": "0"} in rows
    assert [r["case_id"] for r in rows[-4:]] == ["mean", "mean", "median", "median"]


def test_labels_found_in_files_without_dataset_json(folders):
    summary = json.loads(evaluate_folder(*folders).read_text())
    assert summary["labels"] == {"label_1": 1, "label_2": 2}


def test_prediction_without_reference_is_an_error(folders):
    pred_dir, ref_dir = folders
    (ref_dir / "case_b.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case_b"):
        evaluate_folder(pred_dir, ref_dir)


def test_evaluate_command_reads_label_names(folders, tmp_path):
    pred_dir, ref_dir = folders
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    result = CliRunner().invoke(app, ["evaluate", str(pred_dir), str(ref_dir),
                                      "--dataset-json", str(dataset_json)])
    assert result.exit_code == 0, result.output
    assert "Anterior" in result.output and "summary.json" in result.output
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert set(summary["per_label"]) == {"Anterior", "Posterior"}


def test_evaluate_command_missing_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nope"), str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "does not exist" in result.output
