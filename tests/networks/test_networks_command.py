from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medmamba import api
from medmamba.api import list_networks
from medmamba.cli import app
from medmamba.networks import available_networks


def test_list_networks_without_work_covers_every_family() -> None:
    rows = list_networks()
    assert [r["network"] for r in rows] == available_networks()
    for row in rows:
        assert row["parameters"] > 0 and row["macs"] > 0
        assert (row["parameters_no_ssm"] is None) == (row["network"] in ("plainconv_unet", "resenc_unet"))


def test_networks_command_prints_a_table_and_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [
        {"network": name, "configuration": "3d_fullres", "patch_size": [8, 8, 8], "batch_size": 2,
         "parameters": 1_500_000, "macs": 2_000_000_000, "parameters_no_ssm": None, "macs_no_ssm": None}
        for name in available_networks()
    ]
    monkeypatch.setattr(api, "list_networks", lambda work, configuration: rows)
    runner = CliRunner()
    result = runner.invoke(app, ["networks", str(tmp_path), "-c", "3d_fullres"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for name in available_networks():
        assert name in result.output
    assert "1.50" in result.output and "8x8x8" in result.output
    monkeypatch.undo()
    missing = runner.invoke(app, ["networks", str(tmp_path)])
    assert missing.exit_code == 2
    assert "plans.json" in missing.output
