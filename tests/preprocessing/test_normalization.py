from __future__ import annotations

import numpy as np
import pytest

from medmamba.planning.plans import ChannelNormalization, NormScheme
from medmamba.preprocessing.normalization import normalize, normalize_channel


def _plan(scheme, mask=False, **stats):
    values = {"clip_low": None, "clip_high": None, "mean": None, "std": None} | stats
    return ChannelNormalization(channel_name="c", scheme=scheme, use_nonzero_mask=mask, **values)


def test_ct_clips_then_uses_dataset_stats():
    image = np.array([-2000.0, 0.0, 100.0, 5000.0], np.float32)
    plan = _plan(NormScheme.CT, clip_low=-1000.0, clip_high=1000.0, mean=0.0, std=100.0)
    np.testing.assert_allclose(normalize_channel(image, plan), [-10, 0, 1, 10])


def test_zscore_per_image():
    image = np.random.default_rng(0).normal(7, 3, size=(10, 10, 10)).astype(np.float32)
    out = normalize_channel(image, _plan(NormScheme.ZSCORE))
    assert out.mean() == pytest.approx(0, abs=1e-5) and out.std() == pytest.approx(1, abs=1e-4)


def test_zscore_inside_nonzero_mask():
    image = np.zeros((10, 10), np.float32)
    image[2:8, 2:8] = np.random.default_rng(1).normal(50, 5, size=(6, 6))
    mask = image != 0
    out = normalize_channel(image, _plan(NormScheme.ZSCORE, mask=True), mask)
    assert out[mask].mean() == pytest.approx(0, abs=1e-5)
    assert out[mask].std() == pytest.approx(1, abs=1e-4)
    assert (out[~mask] == 0).all()


def test_constant_image_does_not_divide_by_zero():
    out = normalize_channel(np.full((4, 4), 3.0, np.float32), _plan(NormScheme.ZSCORE))
    assert np.isfinite(out).all()


def test_none_and_channel_count():
    image = np.arange(8, dtype=np.float32).reshape(1, 2, 4)
    np.testing.assert_array_equal(normalize(image, (_plan(NormScheme.NONE),)), image)
    with pytest.raises(ValueError, match="channels"):
        normalize(image, (_plan(NormScheme.NONE),) * 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
def test_in_place_normalisation_equals_the_plain_formulas_bit_for_bit(dtype):
    """The in-place arithmetic changes no bit against the textbook expressions."""
    rng = np.random.default_rng(1)
    image = (rng.random((9, 10, 11)) * 200).astype(dtype)
    image[:2] = 0
    mask = image != 0
    x = image.astype(np.float32)
    ct = _plan(NormScheme.CT, clip_low=20.0, clip_high=150.0, mean=70.5, std=33.25)
    expected = {
        ct: ((np.clip(x, 20.0, 150.0) - 70.5) / 33.25).astype(np.float32),
        _plan(NormScheme.ZSCORE): ((x - x.mean()) / max(float(x.std()), 1e-8)).astype(np.float32),
        _plan(NormScheme.NONE): x,
    }
    masked = np.zeros_like(x)
    masked[mask] = (x[mask] - x[mask].mean()) / max(float(x[mask].std()), 1e-8)
    expected[_plan(NormScheme.ZSCORE, mask=True)] = masked
    for plan, want in expected.items():
        got = normalize_channel(image, plan, mask)
        assert got.dtype == np.float32 and got.tobytes() == want.tobytes(), plan.scheme
        if dtype == np.float32:  # written into the image itself
            same = image.copy()
            assert normalize_channel(same, plan, mask, out=same).tobytes() == want.tobytes()
    with pytest.raises(ValueError, match="float32 of shape"):
        normalize_channel(image, _plan(NormScheme.NONE), out=np.empty((2, 2), np.float32))
