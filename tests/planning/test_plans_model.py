from __future__ import annotations

import json

import pytest

from medmamba.errors import ConfigError, PlansError
from medmamba.planning.planner import plan_experiment
from medmamba.planning.plans import Plans


@pytest.fixture
def plans(fingerprint_factory) -> Plans:
    fingerprint = fingerprint_factory([(2.0, 1.0, 1.0)] * 8, [(40, 64, 64)] * 8,
                                      channel_names=("CT",))
    return plan_experiment(fingerprint, families=["umamba_bot", "plainconv_unet"])


def _edit(plans: Plans, tmp_path, change) -> str:
    data = json.loads(plans.to_json())
    change(data)
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlansError) as info:
        Plans.load(path)
    return str(info.value)


def test_round_trip(plans, tmp_path):
    plans.save(tmp_path / "plans.json")
    loaded = Plans.load(tmp_path)  # a WORK folder is accepted too
    assert loaded == plans
    assert loaded.to_json() == plans.to_json()


def test_frozen(plans):
    with pytest.raises(Exception):
        plans.gpu_memory_gb = 3.0  # type: ignore[misc]


def test_unknown_key_is_named(plans, tmp_path):
    def change(d):
        d["configurations"]["3d_fullres"]["networks"]["umamba_bot"]["patchsize"] = [1, 2, 3]
    message = _edit(plans, tmp_path, change)
    assert "configurations.3d_fullres.networks.umamba_bot.patchsize: unknown key" in message


def test_missing_key_is_named(plans, tmp_path):
    message = _edit(plans, tmp_path, lambda d: d["configurations"]["2d"].pop("target_spacing"))
    assert "configurations.2d.target_spacing: missing key" in message


def test_mistyped_key_is_named(plans, tmp_path):
    def change(d):
        d["configurations"]["3d_fullres"]["networks"]["umamba_bot"]["patch_size"] = "40x56x40"
    message = _edit(plans, tmp_path, change)
    assert ("configurations.3d_fullres.networks.umamba_bot.patch_size: expected list of int, "
            "got '40x56x40'") in message


def test_no_coercion_of_strings_or_floats(plans, tmp_path):
    def change(d):
        d["configurations"]["3d_fullres"]["networks"]["plainconv_unet"]["batch_size"] = "2"
    assert "batch_size: expected int, got '2'" in _edit(plans, tmp_path, change)


def test_bad_enum_and_unknown_configuration(plans, tmp_path):
    def change(d):
        d["configurations"]["2d"]["normalization"][0]["scheme"] = "zscroe"
    assert "normalization[0].scheme: expected one of 'ct', 'zscore', 'none'" in _edit(
        plans, tmp_path, change)
    message = _edit(plans, tmp_path, lambda d: d["configurations"].update(
        {"3d_cascade": d["configurations"]["2d"]}))
    assert "configurations.3d_cascade" in message


def test_inconsistent_patch_is_rejected(plans, tmp_path):
    def change(d):
        d["configurations"]["3d_fullres"]["networks"]["umamba_bot"]["patch_size"] = [41, 64, 64]
    assert "not divisible by the total stride" in _edit(plans, tmp_path, change)


def test_ct_needs_its_statistics(plans, tmp_path):
    def change(d):
        d["configurations"]["2d"]["normalization"][0]["clip_low"] = None
    assert "needs clip_low, clip_high, mean and std" in _edit(plans, tmp_path, change)


def test_schema_version_checked(plans, tmp_path):
    assert "schema_version" in _edit(plans, tmp_path, lambda d: d.update(schema_version=2))


def test_invalid_json_and_missing_file(tmp_path):
    (tmp_path / "plans.json").write_text("{not json")
    with pytest.raises(PlansError, match="not valid JSON"):
        Plans.load(tmp_path / "plans.json")
    with pytest.raises(PlansError, match="run `medmamba plan"):
        Plans.load(tmp_path / "elsewhere")


def test_lookup_errors_suggest(plans):
    with pytest.raises(ConfigError, match="did you mean '3d_fullres'"):
        plans.configuration("3d_fulres")
    with pytest.raises(ConfigError, match="did you mean 'umamba_bot'"):
        plans.configuration("2d").network("umamba_bt")


def test_data_hash_tracks_data_fields_only(plans):
    configuration = plans.configuration("3d_fullres")
    same = configuration.model_copy(update={"median_shape": (1, 2, 3)})
    assert same.data_hash() == configuration.data_hash()
    respaced = configuration.model_copy(update={"target_spacing": (2.0, 1.0, 0.9)})
    assert respaced.data_hash() != configuration.data_hash()
    norm = configuration.normalization[0].model_copy(update={"clip_high": 1.0})
    renormed = configuration.model_copy(update={"normalization": (norm,)})
    assert renormed.data_hash() != configuration.data_hash()
    resampling = configuration.resampling.model_copy(update={"image_order": 1})
    assert configuration.model_copy(update={"resampling": resampling}).data_hash() != \
        configuration.data_hash()


def test_preprocessed_folder_name(plans, tmp_path):
    folder = plans.preprocessed_folder(tmp_path, "3d_fullres")
    assert folder == tmp_path / "preprocessed" / f"3d_fullres-{plans.configuration('3d_fullres').data_hash()}"
