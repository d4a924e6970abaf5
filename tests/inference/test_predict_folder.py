"""Predicting folders with a trained phantom model: end to end, bad input, parts, overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medmamba import api
from medmamba.cli import app
from medmamba.data.dataset import Case
from medmamba.data.io import read_image
from medmamba.errors import CheckpointError, DatasetError, PlansError
from medmamba.inference.folder import select_part

# The session fixture `trained_work` (conftest.py beside this file) trains these.
NETWORK = "plainconv_unet"
CONFIGURATION = "3d_fullres"
runner = CliRunner()


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(lines) >= 1, result.output
    assert "Traceback" not in result.output
    return "\n".join(lines)


@pytest.mark.slow
def test_train_predict_evaluate_end_to_end(trained_work, tmp_path):
    out = tmp_path / "pred"
    report = api.predict(trained_work.work, trained_work.data / "imagesTs", out, tta=True,
                         save_probabilities=True, device="cpu", batch_windows=2)
    assert report.ok and len(report.written) == 3
    assert (report.network, report.configuration, report.folds) == (NETWORK, CONFIGURATION, [0])
    for path in report.written:
        mask, geometry = read_image(path)
        _, reference = read_image(trained_work.data / "labelsTs" / path.name)
        assert geometry == reference and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2, 3}
        assert (out / path.name.replace(".nii.gz", ".npz")).is_file()
    summary_path = api.evaluate(out, trained_work.data / "labelsTs",
                                dataset_json=trained_work.data / "dataset.json")
    summary = json.loads(summary_path.read_text())
    assert summary["num_cases"] == 3 and set(summary["per_label"]) == {"core", "rim", "vessel"}
    assert 0.0 <= summary["mean"]["dice"] <= 1.0
    assert summary_path.with_suffix(".csv").is_file()


def test_cli_predict_writes_skips_and_overwrites(trained_work, tmp_path):
    out = tmp_path / "pred"
    args = ["predict", str(trained_work.work), str(trained_work.data / "imagesTs"), str(out),
            "--no-tta", "--device", "cpu", "-f", "0"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    written = sorted(out.glob("*.nii.gz"))
    assert len(written) == 3
    stamps = [p.stat().st_mtime_ns for p in written]
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.output.count("skipped:") == 3
    assert [p.stat().st_mtime_ns for p in written] == stamps
    forced = runner.invoke(app, [*args, "--overwrite"])
    assert forced.exit_code == 0 and "skipped:" not in forced.output
    assert all(p.stat().st_mtime_ns != s for p, s in zip(written, stamps))


def test_mask_without_its_probabilities_is_predicted_again(trained_work, tmp_path):
    out = tmp_path / "pred"
    first = api.predict(trained_work.work, trained_work.data / "imagesTs", out, tta=False,
                        device="cpu")
    assert len(first.written) == 3 and not list(out.glob("*.npz"))
    again = api.predict(trained_work.work, trained_work.data / "imagesTs", out, tta=False,
                        device="cpu", save_probabilities=True)
    assert len(again.written) == 3 and not again.skipped
    assert len(list(out.glob("*.npz"))) == 3
    third = api.predict(trained_work.work, trained_work.data / "imagesTs", out, tta=False,
                        device="cpu", save_probabilities=True)
    assert len(third.skipped) == 3 and not third.written


def test_corrupt_case_is_reported_and_the_rest_are_written(trained_work, tmp_path):
    images = trained_work.images(tmp_path)
    victim = sorted(images.iterdir())[0]
    victim.write_bytes(b"this is not a nifti file")
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(trained_work.work), str(images), str(out),
                                 "--no-tta", "--device", "cpu"])
    errors = one_line_error(result)
    case_id = victim.name[: -len("_0000.nii.gz")]
    assert errors.count("\n") == 0 and case_id in errors and victim.name in errors
    assert len(list(out.glob("*.nii.gz"))) == 2
    assert not (out / f"{case_id}.nii.gz").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # nothing half-written


def test_wrong_channel_count_is_a_clear_error(trained_work, tmp_path):
    images = trained_work.images(tmp_path)
    first = sorted(images.iterdir())[0]
    (images / first.name.replace("_0000", "_0001")).write_bytes(first.read_bytes())
    with pytest.raises(DatasetError, match=r"channel 1 but the model expects 1 channel"):
        api.predict(trained_work.work, images, tmp_path / "pred", tta=False, device="cpu")
    result = runner.invoke(app, ["predict", str(trained_work.work), str(images),
                                 str(tmp_path / "pred"), "--device", "cpu"])
    assert "expects 1 channel" in one_line_error(result)


def test_missing_fold_is_a_clear_error(trained_work, tmp_path):
    with pytest.raises(CheckpointError, match="fold 3 is missing"):
        api.predict(trained_work.work, trained_work.data / "imagesTs", tmp_path / "pred",
                    folds=[0, 3], device="cpu")
    result = runner.invoke(app, ["predict", str(trained_work.work),
                                 str(trained_work.data / "imagesTs"), str(tmp_path / "p"),
                                 "-f", "3", "--device", "cpu"])
    assert "fold 3 is missing" in one_line_error(result)


def test_unknown_network_and_configuration_suggest_names(trained_work, tmp_path):
    with pytest.raises(Exception, match="did you mean 'plainconv_unet'"):
        api.predict(trained_work.work, trained_work.data / "imagesTs", tmp_path / "p",
                    network="plainconv_unt", device="cpu")
    with pytest.raises(CheckpointError, match="no trained configuration '2d'"):
        api.predict(trained_work.work, trained_work.data / "imagesTs", tmp_path / "p",
                    configuration="2d", device="cpu")


def _copy_work(trained_work, tmp_path: Path) -> Path:
    import shutil

    work = tmp_path / "work"
    shutil.copytree(trained_work.work, work, ignore=shutil.ignore_patterns("preprocessed"))
    return work


def test_plans_changed_since_training_is_a_clear_error(trained_work, tmp_path):
    work = _copy_work(trained_work, tmp_path)
    plans = json.loads((work / "plans.json").read_text())
    spacing = plans["configurations"][CONFIGURATION]["target_spacing"]
    plans["configurations"][CONFIGURATION]["target_spacing"] = [s * 1.5 for s in spacing]
    (work / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(PlansError, match="plans hash"):
        api.predict(work, trained_work.data / "imagesTs", tmp_path / "pred", device="cpu")
    result = runner.invoke(app, ["predict", str(work), str(trained_work.data / "imagesTs"),
                                 str(tmp_path / "pred"), "--device", "cpu"])
    assert "re-train" in one_line_error(result)


def test_corrupt_checkpoint_is_a_clear_error(trained_work, tmp_path):
    work = _copy_work(trained_work, tmp_path)
    checkpoint = work / "results" / NETWORK / CONFIGURATION / "fold_0" / "checkpoint_latest.pt"
    payload = bytearray(checkpoint.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(payload))
    result = runner.invoke(app, ["predict", str(work), str(trained_work.data / "imagesTs"),
                                 str(tmp_path / "pred"), "--device", "cpu"])
    assert "checkpoint_latest.pt" in one_line_error(result)


def test_parts_split_the_sorted_cases():
    cases = [Case(f"c{i}", (), None) for i in (4, 0, 3, 1, 2)]
    parts = [[c.case_id for c in select_part(cases, 2, i)] for i in range(2)]
    assert parts == [["c0", "c2", "c4"], ["c1", "c3"]]
    assert [c.case_id for c in select_part(cases, 1, 0)] == ["c0", "c1", "c2", "c3", "c4"]
    for bad in ((0, 0), (2, 2), (2, -1)):
        with pytest.raises(Exception, match="num_parts|part_id"):
            select_part(cases, *bad)


def test_cli_parts_together_cover_every_case_once(trained_work, tmp_path):
    out = tmp_path / "pred"
    for part in range(2):
        result = runner.invoke(app, ["predict", str(trained_work.work),
                                     str(trained_work.data / "imagesTs"), str(out), "--no-tta",
                                     "--num-parts", "2", "--part-id", str(part), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert f"wrote {2 - part}," in result.output
    assert len(list(out.glob("*.nii.gz"))) == 3
