from __future__ import annotations

import pytest
import torch

from medmamba.networks import build_network
from medmamba.networks.profiling import stage_activation_weights
from network_specs import tiny_kwargs, tiny_patch


@pytest.mark.parametrize("family", ["plainconv_unet", "resenc_unet", "umamba_bot"])
def test_stage_activation_weights_count_feature_maps_per_stage(family: str, spatial_dims: int) -> None:
    kwargs = tiny_kwargs(spatial_dims)
    with torch.device("meta"):  # as scripts/measure_memory.py builds it: no memory touched
        network = build_network(family, deep_supervision=True, **kwargs)
    weights = stage_activation_weights(network, kwargs["in_channels"], tiny_patch(spatial_dims),
                                       kwargs["features_per_stage"], kwargs["strides"])
    assert len(weights) == len(kwargs["features_per_stage"])
    # Every stage writes at least the two convolutions of its encoder block (1.0 = one
    # feature map of the stage).
    assert all(w >= 2.0 for w in weights), weights
    if family == "plainconv_unet":
        # Stages 0-1: two encoder convs, the transposed conv up into the stage, two decoder
        # convs and a 3-class head over 4 and 8 features; the bottleneck: its two convs.
        assert weights == pytest.approx([2 + 1 + 2 + 3 / 4, 2 + 1 + 2 + 3 / 8, 2.0])
