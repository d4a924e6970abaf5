from __future__ import annotations

import numpy as np
import pytest

from medmamba.preprocessing.crop import bounding_box, crop_to_nonzero, nonzero_box, nonzero_mask, paste_into


def test_box_of_any_channel_with_holes_filled():
    images = np.zeros((2, 10, 12, 14), np.float32)
    images[0, 2:5, 3:6, 4:7] = 1
    images[1, 6, 8, 10] = -2  # another channel extends the box
    images[0, 3, 4, 5] = 0  # a hole inside stays in the mask
    mask = nonzero_mask(images)
    assert mask[3, 4, 5]
    assert bounding_box(mask) == [[2, 7], [3, 9], [4, 11]]


def test_crop_and_paste_back_round_trip():
    rng = np.random.default_rng(0)
    images = np.zeros((1, 8, 9, 10), np.float32)
    images[0, 1:7, 2:5, 3:9] = rng.normal(size=(6, 3, 6)) + 5
    seg = (images > 5).astype(np.int16)
    cropped, cropped_seg, mask, box = crop_to_nonzero(images, seg)
    assert cropped.shape == (1, 6, 3, 6) and cropped_seg.shape == cropped.shape
    assert mask.all()
    np.testing.assert_array_equal(paste_into(cropped, box, images.shape[1:]), images)


def test_empty_image_keeps_everything():
    images = np.zeros((1, 4, 5, 6), np.float32)
    assert bounding_box(nonzero_mask(images)) == [[0, 4], [0, 5], [0, 6]]


@pytest.mark.parametrize("seed", range(6))
def test_holes_filled_inside_the_box_equal_holes_filled_in_the_whole_array(seed):
    """Filling within the bounding box (and skipping a full mask) changes no voxel."""
    from scipy.ndimage import binary_fill_holes

    rng = np.random.default_rng(seed)
    images = np.zeros((2, 20, 24, 28), dtype=np.float32)
    z0, y0, x0 = rng.integers(0, 6, 3)
    body = rng.random((12, 14, 16)) < (0.5 if seed % 2 else 0.95)  # many or few holes
    body[:, 0] = body[0] = True  # shells touching the box's faces
    images[seed % 2, z0:z0 + 12, y0:y0 + 14, x0:x0 + 16] = body * rng.random(body.shape) + body
    expected = binary_fill_holes(np.any(images != 0, axis=0))
    np.testing.assert_array_equal(nonzero_mask(images), expected)
    _, _, mask, box = crop_to_nonzero(images)
    np.testing.assert_array_equal(mask, expected[tuple(slice(a, b) for a, b in box)])
    assert nonzero_box(images) == box


def test_a_mask_without_zeros_is_its_own_filled_mask():
    images = np.ones((1, 5, 6, 7), dtype=np.float32)
    _, _, mask, box = crop_to_nonzero(images)
    assert mask.all() and mask.shape == (5, 6, 7) and box == [[0, 5], [0, 6], [0, 7]]
