from __future__ import annotations

import pytest
from network_specs import tiny_kwargs

from medmamba.errors import ConfigError
from medmamba.networks import available_networks, build_network, get_family

FAMILIES = {"umamba_bot", "umamba_enc", "lightm_unet", "mhs_unet", "plainconv_unet", "resenc_unet"}


def test_every_family_is_registered() -> None:
    assert set(available_networks()) == FAMILIES


def test_unknown_name_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'umamba_bot'"):
        build_network("umamba_bto", **tiny_kwargs(2))


def test_unknown_keyword_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="n_blocks_per_stage"):
        build_network("resenc_unet", n_block_per_stage=[1, 2, 2], **tiny_kwargs(2))


def test_missing_stage_spec_is_named() -> None:
    kwargs = tiny_kwargs(3)
    del kwargs["strides"]
    with pytest.raises(ConfigError, match="strides"):
        build_network("plainconv_unet", **kwargs)


def test_cnn_refuses_an_ssm_and_bad_ssm_values_suggest() -> None:
    with pytest.raises(ConfigError, match="without a state space model"):
        build_network("plainconv_unet", ssm="mamba", **tiny_kwargs(2))
    with pytest.raises(ConfigError, match="did you mean 'none'"):
        build_network("umamba_bot", ssm="nne", **tiny_kwargs(2))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"strides": [[1, 1], [2, 2]]}, "strides must have 3 entries"),
        ({"kernel_sizes": [[3, 3, 3]] * 3}, r"kernel_sizes\[0\] must have 2 entries"),
    ],
)
def test_bad_stage_spec_names_the_argument(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_network("plainconv_unet", **{**tiny_kwargs(2), **change})


def test_knobs_are_the_keyword_only_arguments() -> None:
    assert get_family("mhs_unet").knobs["mhs_heads"] == 4
    assert "n_rvm_per_stage" in get_family("lightm_unet").knobs
    assert get_family("resenc_unet").knobs["n_blocks_per_stage"][:4] == (1, 3, 4, 6)


@pytest.mark.parametrize(
    ("name", "knob", "match"),
    [
        ("plainconv_unet", {"n_conv_per_stage": [2, 0, 2]}, "n_conv_per_stage must be >= 1"),
        ("resenc_unet", {"n_blocks_per_stage": -1}, "n_blocks_per_stage must be >= 1"),
        ("mhs_unet", {"n_mhs_per_stage": [0, -1, 1]}, "n_mhs_per_stage must be >= 0"),
        ("mhs_unet", {"mhs_heads": 0}, "mhs_heads must be >= 1"),
    ],
)
def test_bad_counts_name_the_knob(name: str, knob: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_network(name, **knob, **tiny_kwargs(2))
