"""``medmamba demo --quick``: every stage runs and leaves its outputs where it says."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medmamba.cli import app


@pytest.mark.slow
def test_demo_quick_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    assert "mean Dice on 2 held-out phantom case(s)" in result.output
    report = json.loads((out / "demo.json").read_text())
    assert list(report["seconds"]) == ["phantom", "validate", "plan", "preprocess", "train",
                                       "predict", "evaluate"]
    assert 0.0 <= report["mean_dice"] <= 1.0
    assert (out / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "predictions").glob("*.nii.gz"))) == 2
    assert len(list((out / "data" / "imagesTr").glob("*.nii.gz"))) == 5
    assert json.loads((out / "data" / "dataset.json").read_text())["numTraining"] == 5
    assert (out / "work" / "results" / "plainconv_unet" / "3d_fullres" / "fold_0" /
            "checkpoint_latest.pt").is_file()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["demo", str(tmp_path), "--quick"])
    assert result.exit_code == 2 and "holds no earlier demo" in result.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"
