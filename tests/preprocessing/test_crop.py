from __future__ import annotations

import numpy as np

from medmamba.preprocessing.crop import bounding_box, crop_to_nonzero, nonzero_mask, paste_into


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
