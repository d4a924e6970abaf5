"""Geometry round trip: odd shapes, anisotropic spacing, oblique direction, crop/resample/uncrop.

The 'network' thresholds the normalised intensity (logits [-x, x]), so the predicted mask
must be the bright box of the input wherever preprocessing moved it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medmamba.data.dataset import Case
from medmamba.data.io import Geometry, read_image, write_image
from medmamba.inference.folder import PredictionReport, predict_cases
from medmamba.inference.predictor import FoldModel, Predictor
from medmamba.planning.plans import ConfigurationPlan

SHAPE = (13, 37, 29)  # odd, and z coarse
SPACING = (3.2, 0.8, 1.1)  # array order (z, y, x)
BOX = (slice(4, 9), slice(12, 25), slice(9, 20))


def oblique_direction() -> tuple[float, ...]:
    rotation = sitk.VersorTransform((0.3, -0.5, 0.8), 0.6).GetMatrix()
    return tuple(float(v) for v in rotation)


class Threshold(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x[:, :1], x[:, :1]], dim=1)


def configuration_plan(spatial_dims: int, target_spacing: tuple[float, ...]) -> ConfigurationPlan:
    return ConfigurationPlan.model_validate_json(json.dumps({
        "spatial_dims": spatial_dims, "target_spacing": target_spacing,
        "median_shape": (20,) * spatial_dims,
        "normalization": [{"channel_name": "MRI", "scheme": "zscore", "use_nonzero_mask": True,
                           "clip_low": None, "clip_high": None, "mean": None, "std": None}],
        "resampling": {"image_order": 3, "image_order_out_of_plane": 0,
                       "label_mode": "onehot_linear", "anisotropy_threshold": 3.0},
        "out_of_plane_axis": 0 if spatial_dims == 3 else None, "networks": {},
    }))


def phantom_case(folder, case_id="oblique") -> tuple[Case, np.ndarray, Geometry]:
    image = np.zeros(SHAPE, np.float32)
    image[1:12, 3:34, 2:27] = 100  # the 'body': crop-to-nonzero removes the zero rim
    image[BOX] = 400
    geometry = Geometry(spacing=SPACING, origin=(-12.5, 40.25, 7.0),
                        direction=oblique_direction(), shape=SHAPE)
    path = folder / f"{case_id}_0000.nii.gz"
    write_image(image, geometry, path)
    expected = np.zeros(SHAPE, np.uint8)
    expected[BOX] = 1
    return Case(case_id, (path,), None), expected, geometry


@pytest.mark.parametrize("dims, target, patch", [
    (3, (2.0, 1.0, 1.0), (8, 16, 16)),  # resampled on all axes, several windows
    (2, (0.6, 1.3), (16, 16)),  # slice-wise, in-plane resampling only
], ids=["3d", "2d"])
def test_mask_has_input_geometry_and_lands_on_the_box(tmp_path, dims, target, patch):
    case, expected, geometry = phantom_case(tmp_path)
    model = FoldModel(0, Threshold(), {"patch_size": list(patch)})
    predictor = Predictor([model], configuration_plan(dims, target), [0, 1], torch.device("cpu"),
                          tta=True, sw_batch_size=3)
    report = predict_cases(predictor, [case], tmp_path / "out", ".nii.gz",
                           PredictionReport(tmp_path / "out"), save_probabilities=True,
                           progress=False)
    assert report.ok and len(report.written) == 1
    mask, written = read_image(report.written[0])
    assert written.shape == geometry.shape and mask.shape == SHAPE
    np.testing.assert_allclose(written.spacing, geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(written.origin, geometry.origin, rtol=1e-6)
    np.testing.assert_allclose(written.direction, geometry.direction, atol=1e-6)
    overlap = np.logical_and(mask == 1, expected == 1).sum()
    dice = 2 * overlap / ((mask == 1).sum() + (expected == 1).sum())
    assert dice > 0.9, dice
    assert not mask[:1].any() and not mask[:, :3].any()  # outside the crop box: background
    probabilities = np.load(tmp_path / "out" / "oblique.npz")["probabilities"]
    assert probabilities.shape == (2, *SHAPE)
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(0), 1.0, atol=2e-3)


def test_two_d_image_is_reported_not_crashed(tmp_path):
    geometry = Geometry(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0),
                        shape=(12, 14))
    path = tmp_path / "flat_0000.nii.gz"
    write_image(np.ones((12, 14), np.float32), geometry, path)
    model = FoldModel(0, Threshold(), {"patch_size": [8, 8, 8]})
    predictor = Predictor([model], configuration_plan(3, (1.0, 1.0, 1.0)), [0, 1],
                          torch.device("cpu"))
    report = predict_cases(predictor, [Case("flat", (path,), None)], tmp_path / "out", ".nii.gz",
                           PredictionReport(tmp_path / "out"), progress=False)
    assert not report.ok and "3D volumes" in report.failed["flat"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("target, label_values", [
    (SPACING, [0, 1]),  # the crop's own grid: the argmax runs where the probabilities are
    (SPACING, [0, 7]),  # label values that are not class indices
    ((2.0, 1.0, 1.0), [0, 3]),  # resampled back first, on the CPU
], ids=["crop-grid", "label-values", "resampled"])
def test_mask_path_equals_the_labels_of_the_probabilities(tmp_path, device, target, label_values):
    case, expected, geometry = phantom_case(tmp_path)
    images, _ = read_image(case.images[0])
    model = FoldModel(0, Threshold().to(device), {"patch_size": [8, 16, 16]})
    predictor = Predictor([model], configuration_plan(3, target), label_values, torch.device(device),
                          tta=False)
    mask = predictor.predict_mask(images[None], geometry)
    reference = predictor.labels(predictor.predict_case(images[None], geometry))
    assert mask.dtype == reference.dtype == np.uint8 and mask.shape == SHAPE
    np.testing.assert_array_equal(mask, reference)
    assert (mask[BOX] == label_values[1]).mean() > 0.9 and mask[0].max() == label_values[0]
    if device == "cuda":
        assert torch.backends.cudnn.benchmark  # fixed window shape: autotuned once per batch size


@pytest.mark.parametrize("dims, target, patch, label_values, folds", [
    (2, SPACING[1:], (16, 16), [0, 5], 1),  # 2d: slices as the batch, on the crop's grid
    (2, (0.6, 1.3), (16, 16), [0, 5], 1),  # 2d, resampled in-plane
    (3, SPACING, (8, 16, 16), [0, 300], 2),  # int32 labels, a two-fold ensemble
], ids=["2d-crop-grid", "2d-resampled", "int32-two-folds"])
def test_mask_path_holds_for_2d_ensembles_and_wide_labels(tmp_path, dims, target, patch, label_values, folds):
    case, _, geometry = phantom_case(tmp_path)
    images, _ = read_image(case.images[0])

    class Shifted(Threshold):  # a second fold that disagrees near the threshold
        def forward(self, x):
            return super().forward(x) + torch.tensor([0.3, 0.0]).view(1, 2, *([1] * (x.ndim - 2)))

    models = [FoldModel(f, net, {"patch_size": list(patch)}) for f, net in enumerate([Threshold(), Shifted()][:folds])]
    predictor = Predictor(models, configuration_plan(dims, target), label_values, torch.device("cpu"), tta=True)
    mask = predictor.predict_mask(images[None], geometry)
    reference = predictor.labels(predictor.predict_case(images[None], geometry))
    assert mask.dtype == reference.dtype and mask.shape == SHAPE
    np.testing.assert_array_equal(mask, reference)


def test_folder_prediction_times_each_stage_and_writes_masks_through_the_mask_path(tmp_path, monkeypatch):
    case, expected, _ = phantom_case(tmp_path)
    model = FoldModel(0, Threshold(), {"patch_size": [8, 16, 16]})
    predictor = Predictor([model], configuration_plan(3, (2.0, 1.0, 1.0)), [0, 1], torch.device("cpu"), tta=False)
    monkeypatch.setattr(predictor, "predict_case", None)  # without --save-probabilities it is not needed
    report = predict_cases(predictor, [case], tmp_path / "out", ".nii.gz", PredictionReport(tmp_path / "out"),
                           progress=False)
    assert report.ok and not (tmp_path / "out" / "oblique.npz").exists()
    stages = report.stage_seconds["oblique"]
    assert set(stages) == {"read", "preprocess", "predict", "write"} and min(stages.values()) > 0
    assert report.seconds_per_case["oblique"] == pytest.approx(sum(stages.values()))
    assert 0 < report.completed_at["oblique"]
    mask, _ = read_image(report.written[0])
    assert (mask[BOX] == 1).mean() > 0.9
