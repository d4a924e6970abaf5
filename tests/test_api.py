"""The Python API and the CLI agree on defaults; overlay montages."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from typer.testing import CliRunner

from medmamba import api
from medmamba.cli import app
from medmamba.data.io import Geometry, write_image
from medmamba.visualization import choose_slices, save_montage


def _cli_defaults(command: str) -> dict[str, object]:
    from medmamba import cli

    defaults = {}
    for name, parameter in inspect.signature(getattr(cli, command)).parameters.items():
        defaults[name] = parameter.default
    return defaults


@pytest.mark.parametrize("command, shared", [
    ("predict", ["configuration", "network", "tta", "save_probabilities", "device", "overwrite",
                 "num_parts", "part_id", "batch_windows", "checkpoint"]),
    ("evaluate", ["dataset_json"]),
])
def test_cli_and_api_share_defaults(command, shared):
    api_defaults = {n: p.default for n, p in inspect.signature(getattr(api, command)).parameters.items()}
    cli_defaults = _cli_defaults(command)
    for name in shared:
        assert cli_defaults[name] == api_defaults[name], name


def test_choose_slices_spread_over_the_foreground():
    mask = np.zeros((40, 4, 4), bool)
    mask[10:21] = True
    slices = choose_slices([mask], 40, 5)
    assert len(slices) == 5 and min(slices) > 10 and max(slices) < 20
    assert slices == sorted(slices)
    assert choose_slices([np.zeros((7, 2, 2), bool)], 7, 3) == [2, 3, 4]  # empty: whole volume
    many = choose_slices([mask], 40, 100)
    assert set(many) <= set(range(10, 21)) and len(many) == len(set(many))


def test_overlay_command_writes_a_png(tmp_path):
    geometry = Geometry(spacing=(2.0, 1.0, 0.5), origin=(0.0, 0.0, 0.0),
                        direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=(9, 20, 30))
    image = np.random.default_rng(0).normal(size=geometry.shape).astype(np.float32)
    label = np.zeros(geometry.shape, np.uint8)
    label[3:6, 5:12, 8:20] = 1
    label[4, 14:17, 20:25] = 2
    for name, array in (("image", image), ("pred", label), ("label", label)):
        write_image(array, geometry, tmp_path / f"{name}.nii.gz")
    out = tmp_path / "montage.png"
    result = CliRunner().invoke(app, ["overlay", str(tmp_path / "image.nii.gz"),
                                      str(tmp_path / "pred.nii.gz"), str(out),
                                      "--label", str(tmp_path / "label.nii.gz")])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(app, ["overlay", str(tmp_path / "image.nii.gz"),
                                   str(tmp_path / "missing.nii.gz"), str(out)])
    assert bad.exit_code == 2 and "missing.nii.gz" in bad.output


def test_montage_rejects_mismatched_shapes(tmp_path):
    from medmamba.errors import DatasetError

    with pytest.raises(DatasetError, match="prediction shape"):
        save_montage(np.zeros((4, 5, 6)), np.zeros((4, 5, 7)), None, tmp_path / "x.png")
