"""Sliding-window stitching and mirroring TTA against predictors with known exact output."""

from __future__ import annotations

import pytest
import torch

from medmamba.inference.sliding_window import mirror_axes_subsets, mirrored, sliding_window_logits


def pointwise(windows: torch.Tensor) -> torch.Tensor:
    """A 'network' whose output at a voxel depends only on the input there: known exactly."""
    return torch.cat([2 * windows + 1, windows.sum(1, keepdim=True) ** 2], dim=1)


@pytest.mark.parametrize("shape, patch", [
    ((23, 31, 17), (8, 12, 8)),  # odd shape, many windows per axis
    ((7, 7, 7), (8, 12, 8)),  # image smaller than a window: padded then cropped
    ((40, 33), (16, 16)),  # 2d
], ids=["3d-odd", "3d-small", "2d"])
@pytest.mark.parametrize("sw_batch_size", [1, 3, 8])
def test_gaussian_stitching_reproduces_a_position_wise_predictor(shape, patch, sw_batch_size):
    torch.manual_seed(0)
    image = torch.randn(1, 2, *shape)
    out = sliding_window_logits(pointwise, image, patch, sw_batch_size=sw_batch_size, tta=False)
    assert out.shape == (1, 3, *shape)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, pointwise(image), rtol=1e-5, atol=1e-5)


def test_batched_windows_equal_one_window_at_a_time():
    torch.manual_seed(1)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1)  # not position-wise: stitching really matters
    image = torch.randn(1, 1, 21, 26, 19)
    with torch.no_grad():
        one = sliding_window_logits(conv, image, (8, 8, 8), sw_batch_size=1, tta=False)
        many = sliding_window_logits(conv, image, (8, 8, 8), sw_batch_size=7, tta=False)
    torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)


def test_two_d_slices_as_batch_equal_slice_by_slice():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    volume = torch.randn(5, 2, 20, 27)  # (z, C, y, x)
    with torch.no_grad():
        together = sliding_window_logits(conv, volume, (16, 16), sw_batch_size=4, tta=False)
        apart = torch.cat([sliding_window_logits(conv, volume[z:z + 1], (16, 16), sw_batch_size=1,
                                                 tta=False) for z in range(5)])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-6)


def test_mirror_subsets_cover_all_eight_flips_in_3d():
    subsets = mirror_axes_subsets(3)
    assert len(subsets) == 8 and subsets[0] == () and (0, 1, 2) in subsets
    assert mirror_axes_subsets(2) == [(), (0,), (1,), (0, 1)]
    assert mirror_axes_subsets(3, axes=(1, 2)) == [(), (1,), (2,), (1, 2)]
    with pytest.raises(ValueError, match="mirror axis 3"):
        mirror_axes_subsets(3, axes=(3,))


def test_tta_leaves_a_flip_equivariant_predictor_unchanged():
    torch.manual_seed(3)
    image = torch.randn(1, 2, 13, 18, 11)
    with_tta = sliding_window_logits(pointwise, image, (8, 8, 8), sw_batch_size=4, tta=True)
    without = sliding_window_logits(pointwise, image, (8, 8, 8), sw_batch_size=4, tta=False)
    torch.testing.assert_close(with_tta, without, rtol=1e-5, atol=1e-5)


def test_tta_averages_flipped_predictions_of_an_asymmetric_predictor():
    torch.manual_seed(4)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    image = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        expected = sum(torch.flip(conv(torch.flip(image, [2 + a for a in s])), [2 + a for a in s])
                       for s in mirror_axes_subsets(3)) / 8
        # One window covering the image: TTA per window equals TTA of the whole image.
        out = sliding_window_logits(conv, image, (8, 8, 8), sw_batch_size=2, tta=True)
        direct = mirrored(conv, 3)(image)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(direct, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(conv(image), expected, atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"patch_size": (8, 8)}, "patch_size"),
    ({"sw_batch_size": 0}, "sw_batch_size"),
    ({"overlap": 1.0}, "overlap"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    arguments = {"patch_size": (8, 8, 8), "sw_batch_size": 2, "overlap": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        sliding_window_logits(pointwise, torch.zeros(1, 1, 8, 8, 8), arguments.pop("patch_size"),
                              **arguments)


@pytest.mark.gpu
def test_cuda_bf16_windows_match_cpu_fp32():
    from medmamba.inference.predictor import FoldModel, Predictor

    torch.manual_seed(5)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1)
    data = torch.randn(1, 19, 26, 21).numpy()
    results = {}
    for device in ("cpu", "cuda"):
        model = FoldModel(0, conv.to(device), {"patch_size": [8, 16, 16]})
        predictor = Predictor([model], None, [0, 1, 2], torch.device(device), sw_batch_size=4)
        results[device] = predictor.probabilities(data).cpu()
    assert results["cuda"].dtype == torch.float32
    torch.testing.assert_close(results["cuda"], results["cpu"], atol=2e-2, rtol=0)
