from __future__ import annotations

import numpy as np
import pytest

from medmamba.preprocessing.resampling import compute_new_shape, resample_to_shape, separate_axis


def test_new_shape_keeps_extent():
    assert compute_new_shape((10, 100, 100), (5.0, 0.5, 0.5), (2.5, 1.0, 1.0)) == (20, 50, 50)


@pytest.mark.parametrize("current, new, axis", [
    ((5.0, 1.0, 1.0), (2.0, 1.0, 1.0), 0),   # current spacing anisotropic
    ((1.0, 1.0, 1.0), (1.0, 4.0, 1.0), 1),   # only the new spacing is
    ((1.0, 1.0, 1.0), (2.0, 1.0, 1.0), None),
    ((0.24, 1.25, 1.25), (0.24, 1.25, 1.25), None),  # two coarse axes: not separate
])
def test_separate_axis_rule(current, new, axis):
    assert separate_axis(current, new) == axis


def test_identity_when_shape_unchanged():
    array = np.random.default_rng(0).normal(size=(2, 5, 6, 7)).astype(np.float32)
    out = resample_to_shape(array, (5, 6, 7), (1, 1, 1), (1, 1, 1), 3, is_seg=False)
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("order, atol", [(1, 1e-5), (3, 5e-3)])
def test_linear_ramps_are_reproduced_with_aligned_centres(order, atol):
    y = np.arange(16, dtype=np.float32)
    array = np.broadcast_to(y[None, None, :, None], (1, 4, 16, 8)).copy()
    out = resample_to_shape(array, (4, 32, 16), (1, 1, 1), (1, 0.5, 0.5), order, is_seg=False)
    expected = (np.arange(32) + 0.5) / 2 - 0.5  # output voxel centres in input indices
    # away from the border (clamped there, and the spline's edge extension bends it)
    np.testing.assert_allclose(out[0, 0, 6:-6, 5], expected[6:-6], atol=atol)


def test_out_of_plane_axis_uses_nearest_on_anisotropic_data():
    slices = np.arange(4, dtype=np.float32)  # each z-slice constant, value = index
    array = np.broadcast_to(slices[None, :, None, None], (1, 4, 6, 6)).copy()
    out = resample_to_shape(array, (8, 6, 6), (4.0, 1.0, 1.0), (2.0, 1.0, 1.0), 3, is_seg=False)
    # order 0 along z: only original slice values appear, each twice
    np.testing.assert_allclose(out[0, :, 3, 3], [0, 0, 1, 1, 2, 2, 3, 3], atol=1e-5)
    isotropic = resample_to_shape(array, (8, 6, 6), (1.0, 1.0, 1.0), (0.5, 1.0, 1.0), 3,
                                  is_seg=False)
    assert not np.allclose(isotropic[0, :, 3, 3], np.round(isotropic[0, :, 3, 3]))


def test_labels_stay_labels_and_keep_dtype():
    seg = np.zeros((1, 10, 10, 10), np.int16)
    seg[0, 2:8, 2:8, 2:8] = 1
    seg[0, 4:6, 4:6, 4:6] = 4
    for order in (0, 1):
        out = resample_to_shape(seg, (20, 5, 15), (1, 1, 1), (0.5, 2, 2 / 1.5), order, is_seg=True)
        assert out.dtype == np.int16 and out.shape == (1, 20, 5, 15)
        assert set(np.unique(out)) <= {0, 1, 4}
    down_up = resample_to_shape(
        resample_to_shape(seg, (20, 20, 20), (1, 1, 1), (0.5, 0.5, 0.5), 1, is_seg=True),
        (10, 10, 10), (0.5, 0.5, 0.5), (1, 1, 1), 1, is_seg=True)
    np.testing.assert_array_equal(down_up, seg)


def test_channel_axis_required():
    with pytest.raises(ValueError, match=r"\(C, \*spatial\)"):
        resample_to_shape(np.zeros((4, 4, 4)), (4, 4, 4), (1, 1, 1), (1, 1, 1), 3, False)
