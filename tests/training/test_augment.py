import math

import numpy as np
import pytest
import torch

from medmamba.training.augment import (
    CENTER_KEY,
    RandCropRotateScaled,
    crop_padded,
    resample_patch,
    seed_transforms,
    training_transforms,
)


def _sample(shape=(20, 24, 22), seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros((1, *shape), dtype=np.int16)
    label[0, 5:12, 6:14, 4:15] = 1
    label[0, 12:15, 6:14, 4:15] = 3
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    return {"image": image, "label": label, CENTER_KEY: [s // 2 for s in shape]}


def test_crop_padded_pads_with_zeros_outside():
    array = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5) + 1
    out = crop_padded(array, (0, 0), (4, 4))
    assert out.shape == (2, 4, 4)
    assert out[:, :2].sum() == 0 and out[:, :, :2].sum() == 0
    np.testing.assert_array_equal(out[:, 2:, 2:], array[:, :2, :2])


def test_resample_identity_and_rotation():
    region = torch.randn(1, 9, 9, 9)
    np.testing.assert_allclose(resample_patch(region, np.eye(3), (9, 9, 9), "bilinear"), region, atol=1e-5)
    from monai.transforms.utils import create_rotate

    rotated = resample_patch(region, create_rotate(3, (math.pi / 2, 0, 0))[:3, :3], (9, 9, 9), "nearest")
    assert torch.equal(rotated, torch.rot90(region, 3, (2, 3)))


@pytest.mark.parametrize("patch", [(16, 16, 16), (12, 20, 9), (16, 16)])
def test_pipeline_shapes_dtypes_and_label_integrity(patch):
    pipeline = training_transforms(patch, augment=True)
    for seed in range(12):
        data = _sample(seed=seed)
        if len(patch) == 2:
            data = {"image": data["image"][:, 8], "label": data["label"][:, 8], CENTER_KEY: [12, 11]}
        seed_transforms(pipeline, seed)
        out = pipeline(data)
        assert tuple(out["image"].shape) == (2, *patch) and out["image"].dtype == torch.float32
        assert tuple(out["label"].shape) == (1, *patch)
        assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 3}
        assert torch.isfinite(out["image"]).all()


def test_rotation_and_scaling_probabilities():
    transform = RandCropRotateScaled(patch_size=(8, 8, 8))
    transform.set_random_state(0)
    rotated = scaled = 0
    for _ in range(2000):
        transform.randomize()
        rotated += transform._angles is not None
        scaled += transform._scale is not None
    assert rotated / 2000 == pytest.approx(0.2, abs=0.03)
    assert scaled / 2000 == pytest.approx(0.2, abs=0.03)


def test_same_seed_same_patch():
    pipeline = training_transforms((16, 16, 16))
    outs = []
    for _ in range(2):
        seed_transforms(pipeline, 123)
        outs.append(pipeline(_sample()))
    assert torch.equal(outs[0]["image"], outs[1]["image"])
    assert torch.equal(outs[0]["label"], outs[1]["label"])


def test_validation_pipeline_only_crops():
    data = _sample()
    out = training_transforms((8, 8, 8), augment=False)(dict(data))
    expected = crop_padded(data["image"], data[CENTER_KEY], (8, 8, 8))
    np.testing.assert_array_equal(out["image"].numpy(), expected)
