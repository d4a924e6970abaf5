from __future__ import annotations

import numpy as np
import pytest

from medmamba.errors import PlansError
from medmamba.planning.planner import (
    channel_normalization, fullres_target_spacing, plan_experiment, plan_network,
)
from medmamba.planning.plans import NormScheme
from medmamba.planning.templates import load_template


def _hippocampus_like(factory, n=40):
    rng = np.random.default_rng(0)
    shapes = [(int(s0), int(s1), int(s2)) for s0, s1, s2 in
              zip(rng.integers(31, 42, n), rng.integers(45, 56, n), rng.integers(30, 41, n))]
    return factory([(1.0, 1.0, 1.0)] * n, shapes)


def test_isotropic_matches_nnunet_hippocampus(fingerprint_factory):
    fingerprint = fingerprint_factory([(1.0, 1.0, 1.0)] * 208, [(36, 50, 35)] * 208)
    plans = plan_experiment(fingerprint, families=["plainconv_unet"])
    assert set(plans.configurations) == {"2d", "3d_fullres"}
    full = plans.configuration("3d_fullres").network("plainconv_unet")
    assert full.patch_size == (40, 56, 40) and full.batch_size == 7  # 5% cap, as nnU-Net
    assert full.features_per_stage == (32, 64, 128, 256)
    two = plans.configuration("2d").network("plainconv_unet")
    assert two.patch_size == (56, 40) and two.batch_size == 292
    assert plans.configuration("2d").target_spacing == (1.0, 1.0)


def test_anisotropic_takes_10th_percentile_out_of_plane(fingerprint_factory):
    z = [5.0] * 18 + [1.5, 2.0]  # a few fine cases pull the 10th percentile down
    spacings = [(s, 0.8, 0.8) for s in z]
    fingerprint = fingerprint_factory(spacings, [(30, 256, 256)] * 20)
    target = fullres_target_spacing(fingerprint.spacings, fingerprint.shapes_after_crop)
    assert target[1:].tolist() == [0.8, 0.8]
    assert target[0] == pytest.approx(np.percentile(z, 10))
    plans = plan_experiment(fingerprint, families=["plainconv_unet"])
    configuration = plans.configuration("3d_fullres")
    assert configuration.out_of_plane_axis == 0
    network = configuration.network("plainconv_unet")
    assert network.kernel_sizes[0][0] == 1 and network.strides[1][0] == 1


def test_anisotropic_spacing_without_few_slices_keeps_median(fingerprint_factory):
    # nnU-Net needs both: coarse spacing AND few voxels along that axis.
    spacings = [(4.0, 1.0, 1.0)] * 10 + [(2.0, 1.0, 1.0)] * 2
    fingerprint = fingerprint_factory(spacings, [(200, 200, 200)] * 12)
    target = fullres_target_spacing(fingerprint.spacings, fingerprint.shapes_after_crop)
    assert target.tolist() == [4.0, 1.0, 1.0]


def test_two_channel_ct_normalisation(fingerprint_factory):
    fingerprint = fingerprint_factory([(1.0, 1.0, 1.0)] * 5, [(64, 64, 64)] * 5,
                                      channel_names=("ct", "T2"))
    ct, t2 = channel_normalization(fingerprint)
    assert ct.scheme is NormScheme.CT and (ct.clip_low, ct.clip_high) == (-900.0, 2000.0)
    assert (ct.mean, ct.std) == (100.0, 50.0) and not ct.use_nonzero_mask
    assert t2.scheme is NormScheme.ZSCORE and t2.clip_low is None


def test_nonzero_mask_when_cropping_shrinks_images(fingerprint_factory):
    shapes = [(100, 100, 100)] * 5
    cropped = [(60, 80, 80)] * 5  # 0.384 of the volume < 3/4
    fingerprint = fingerprint_factory([(1.0, 1.0, 1.0)] * 5, shapes, shapes_after_crop=cropped)
    assert channel_normalization(fingerprint)[0].use_nonzero_mask
    same = fingerprint_factory([(1.0, 1.0, 1.0)] * 5, shapes)
    assert not channel_normalization(same)[0].use_nonzero_mask


def test_tiny_images_get_tiny_patches(fingerprint_factory):
    fingerprint = fingerprint_factory([(1.0, 1.0, 1.0)] * 3, [(9, 12, 10)] * 3)
    plans = plan_experiment(fingerprint, families=["plainconv_unet"])
    network = plans.configuration("3d_fullres").network("plainconv_unet")
    assert max(network.patch_size) <= 16
    assert network.batch_size == 2  # the minimum even though 5% of 3 tiny cases is less


def test_huge_images_fit_the_budget_and_trigger_lowres(fingerprint_factory):
    fingerprint = fingerprint_factory([(0.8, 0.8, 0.8)] * 30, [(500, 512, 512)] * 30)
    plans = plan_experiment(fingerprint, gpu_memory_gb=10.0, families=["plainconv_unet", "umamba_enc"])
    assert "3d_lowres" in plans.configurations
    full = plans.configuration("3d_fullres")
    low = plans.configuration("3d_lowres")
    assert all(l > f for l, f in zip(low.target_spacing, full.target_spacing))
    low_net = low.network("plainconv_unet")
    assert np.prod(low_net.patch_size) / np.prod(low.median_shape) >= 0.2
    for configuration in plans.configurations.values():
        for network in configuration.networks.values():
            assert network.estimated_memory_gb <= 10.0
            assert network.batch_size >= 2
    # the Mamba encoder family costs more memory per voxel: smaller patch
    assert np.prod(full.network("umamba_enc").patch_size) < np.prod(
        full.network("plainconv_unet").patch_size)


def test_no_lowres_when_patch_covers_the_image(fingerprint_factory):
    fingerprint = fingerprint_factory([(1.0, 1.0, 1.0)] * 6, [(155, 240, 240)] * 6,
                                      channel_names=("FLAIR", "T1c"))
    plans = plan_experiment(fingerprint, families=["plainconv_unet"])
    assert "3d_lowres" not in plans.configurations
    network = plans.configuration("3d_fullres").network("plainconv_unet")
    assert network.batch_size == 2 and network.num_stages == 6
    assert 96 * 160 * 160 <= np.prod(network.patch_size) <= 128 * 192 * 192


def test_more_memory_more_voxels_per_step(fingerprint_factory):
    fingerprint = fingerprint_factory([(1.0, 1.0, 1.0)] * 50, [(300, 300, 300)] * 50)
    small = plan_experiment(fingerprint, gpu_memory_gb=6, families=["resenc_unet"])
    large = plan_experiment(fingerprint, gpu_memory_gb=24, families=["resenc_unet"])
    s = small.configuration("3d_fullres").network("resenc_unet")
    g = large.configuration("3d_fullres").network("resenc_unet")
    assert np.prod(g.patch_size) * g.batch_size > np.prod(s.patch_size) * s.batch_size


def test_budget_too_small_is_a_clear_error():
    template = load_template("umamba_enc")
    with pytest.raises(PlansError, match="does not fit in 0.5 GB"):
        plan_network(template, (1.0, 1.0, 1.0), (128, 128, 128), 1, 2, 1e9, 0.5e9)


def test_batch_cap_covers_at_most_5_percent(fingerprint_factory):
    fingerprint = _hippocampus_like(fingerprint_factory, n=400)
    plans = plan_experiment(fingerprint, families=["plainconv_unet"])
    configuration = plans.configuration("3d_fullres")
    network = configuration.network("plainconv_unet")
    dataset_voxels = np.prod(configuration.median_shape) * 400
    assert 2 < network.batch_size
    assert network.batch_size * np.prod(network.patch_size) <= 0.05 * dataset_voxels * 1.1


def test_network_kwargs_hold_stage_spec_and_knobs(fingerprint_factory):
    fingerprint = _hippocampus_like(fingerprint_factory)
    network = plan_experiment(fingerprint, families=["resenc_unet"]).configuration(
        "3d_fullres").network("resenc_unet")
    kwargs = network.network_kwargs()
    assert {"in_channels", "num_classes", "spatial_dims", "features_per_stage", "kernel_sizes",
            "strides"} <= set(kwargs)
    assert kwargs["num_classes"] == 3 and kwargs["in_channels"] == 1
    assert kwargs["n_blocks_per_stage"] == [1, 3, 4, 6]
    assert kwargs["strides"][0] == [1, 1, 1]


def test_planner_is_deterministic(fingerprint_factory):
    fingerprint = _hippocampus_like(fingerprint_factory)
    assert plan_experiment(fingerprint).to_json() == plan_experiment(fingerprint).to_json()
