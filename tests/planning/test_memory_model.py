from __future__ import annotations

import pytest

from medmamba.planning.memory import estimate_training_bytes, ssm_stage_mask
from medmamba.planning.templates import FAMILIES, load_template

STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
FEATURES = (32, 64, 128, 256)


def _bytes(family, patch=(64, 64, 64), batch=2, features=FEATURES):
    return estimate_training_bytes(load_template(family), patch, batch, features, STRIDES,
                                   in_channels=1, num_classes=3, spatial_dims=3)


@pytest.mark.parametrize("family", FAMILIES)
def test_monotonic_in_patch_batch_and_features(family):
    base = _bytes(family)
    assert _bytes(family, patch=(64, 64, 80)) > base
    assert _bytes(family, batch=3) > base
    assert _bytes(family, features=(32, 64, 128, 320)) > base
    assert base > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_in_batch(family):
    b0, b1, b4 = (_bytes(family, batch=b) for b in (0, 1, 4))
    assert b4 - b0 == pytest.approx(4 * (b1 - b0))


def test_ssm_families_cost_more_than_their_cnn_twin():
    assert _bytes("umamba_enc") > _bytes("umamba_bot") > _bytes("plainconv_unet")


def test_ssm_stage_selection():
    assert ssm_stage_mask(load_template("umamba_bot"), 5).tolist() == [False] * 4 + [True]
    assert ssm_stage_mask(load_template("umamba_enc"), 3).tolist() == [True] * 3
    assert not ssm_stage_mask(load_template("plainconv_unet"), 4).any()


def test_nnunet_brats_plan_is_near_its_reported_memory():
    # Calibration point: nnU-Net's BraTS plan uses ~7.7 GB (nnU-Net Revisited).
    estimate = estimate_training_bytes(
        load_template("plainconv_unet"), (96, 160, 160), 2, (32, 64, 128, 256, 320, 320),
        ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)), 2, 5, 3)
    assert 6.5e9 < estimate < 9e9


def test_wrong_patch_dims_rejected():
    with pytest.raises(ValueError, match="axes"):
        estimate_training_bytes(load_template("plainconv_unet"), (64, 64), 2, FEATURES,
                                STRIDES, 1, 3, 3)
