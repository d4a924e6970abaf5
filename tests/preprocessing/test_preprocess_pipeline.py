"""preprocess_case (pure), storage (atomic, resume) and the phantom end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medmamba import api
from medmamba.cli import app
from medmamba.data.dataset import discover_cases, load_dataset_json
from medmamba.data.io import Geometry, read_channels, read_image
from medmamba.errors import ConfigError, PlansError
from medmamba.planning.plans import Plans
from medmamba.preprocessing import preprocess as preprocess_module
from medmamba.preprocessing.crop import paste_into
from medmamba.preprocessing.preprocess import preprocess_case
from medmamba.preprocessing.resampling import resample_to_shape
from medmamba.preprocessing.storage import is_case_done, list_cases, load_case, save_case


def _first_case(data):
    case = discover_cases(load_dataset_json(data))[0]
    images, geometry = read_channels(case.images)
    seg, _ = read_image(case.label)
    return case, images, geometry, seg


def test_preprocess_case_properties_map_back_exactly(phantom_data, phantom_work):
    plans = Plans.load(phantom_work)
    configuration = plans.configuration("3d_fullres")
    case, images, geometry, seg = _first_case(phantom_data)
    data, out_seg, props = preprocess_case(images, geometry, configuration, seg, case.case_id)
    assert data.dtype == np.float32 and data.shape[0] == 2
    assert out_seg.dtype == np.int8 and out_seg.shape == (1, *data.shape[1:])
    assert props["shape_after_resampling"] == list(data.shape[1:])
    assert props["spacing_after_resampling"] == list(configuration.target_spacing)
    assert Geometry.from_dict(props["original_geometry"]) == geometry
    # labels back on the original grid: resample to the crop shape, paste into the box
    back = resample_to_shape(out_seg, props["shape_after_crop"], props["spacing_after_resampling"],
                             props["spacing_after_crop"], 1, is_seg=True)
    full = paste_into(back, props["crop_bbox"], geometry.shape)[0]
    agreement = (full == np.rint(seg)).mean()
    assert agreement > 0.97
    for label, coordinates in props["class_locations"].items():
        coordinates = np.array(coordinates)
        assert (out_seg[0][tuple(coordinates.T)] == int(label)).all()


def test_2d_keeps_each_cases_axis0_spacing(phantom_data, phantom_work):
    configuration = Plans.load(phantom_work).configuration("2d")
    _, images, geometry, _ = _first_case(phantom_data)
    data, seg, props = preprocess_case(images, geometry, configuration)
    assert seg is None and "class_locations" not in props
    assert props["spacing_after_resampling"][0] == geometry.spacing[0]
    assert data.shape[1] == props["shape_after_crop"][0]


def test_end_to_end_cli_writes_folders_and_resumes(phantom_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    work = tmp_path / "work"
    runner = CliRunner()
    result = runner.invoke(app, ["plan", str(phantom_data), str(work), "-n", "plainconv_unet",
                                 "-j", "1"])
    assert result.exit_code == 0, result.output
    assert "3d_fullres" in result.output and "plainconv_unet" in result.output
    result = runner.invoke(app, ["preprocess", str(work), "-j", "1"])
    assert result.exit_code == 0, result.output
    plans = Plans.load(work)
    for name in plans.configurations:
        folder = plans.preprocessed_folder(work, name)
        assert len(list_cases(folder)) == 4
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["data_hash"] == plans.configuration(name).data_hash()
        data, seg, props = load_case(folder, list_cases(folder)[0])
        assert isinstance(data, np.memmap) and seg.shape[1:] == data.shape[1:]
        assert not list(folder.glob(".*tmp"))
    # a second run does no work
    calls = []
    monkeypatch.setattr(preprocess_module, "preprocess_case",
                        lambda *a, **k: calls.append(1) or pytest.fail("re-preprocessed"))
    assert runner.invoke(app, ["preprocess", str(work), "-j", "1"]).exit_code == 0
    assert not calls


def test_unfinished_case_is_redone_and_unknown_configuration_rejected(phantom_work, monkeypatch):
    folders = api.preprocess(phantom_work, ["3d_fullres"], workers=1)
    folder = folders[0]
    case_id = list_cases(folder)[0]
    (folder / f"{case_id}.json").unlink()  # as if killed before the JSON was written
    assert not is_case_done(folder, case_id)
    api.preprocess(phantom_work, ["3d_fullres"], workers=1)
    assert is_case_done(folder, case_id)
    with pytest.raises(ConfigError, match="did you mean '3d_fullres'"):
        api.preprocess(phantom_work, ["3d_fulres"], workers=1)


def test_interrupted_write_leaves_no_finished_case(tmp_path, monkeypatch):
    data = np.zeros((1, 2, 3, 4), np.float32)
    seg = np.zeros((1, 2, 3, 4), np.int8)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_case(tmp_path, "c1", data, seg, {"case_id": "c1"})
    assert not is_case_done(tmp_path, "c1")
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_load_case_of_missing_case_names_it(tmp_path):
    with pytest.raises(PlansError, match="case 'nope' is not preprocessed"):
        load_case(tmp_path, "nope")


def test_damaged_properties_file_is_a_one_line_error(tmp_path):
    data = np.zeros((1, 2, 3, 4), dtype=np.float32)
    save_case(tmp_path, "c1", data, None, {"case_id": "c1"})
    (tmp_path / "c1.json").write_text('{"case_id": ')
    with pytest.raises(PlansError, match="c1.json.*not valid JSON"):
        load_case(tmp_path, "c1")


def test_plan_refingerprints_only_when_the_dataset_changed(phantom_data, phantom_work, monkeypatch):
    calls = []
    original = api.fingerprint
    monkeypatch.setattr(api, "fingerprint", lambda *a, **k: calls.append(1) or original(*a, **k))
    api.plan(phantom_data, phantom_work, families=["plainconv_unet"], workers=1)
    assert not calls
    (phantom_work / "fingerprint.json").write_text("{}")  # unreadable -> recomputed
    api.plan(phantom_data, phantom_work, families=["plainconv_unet"], workers=1)
    assert calls == [1]
