"""predict(compile=True): the same probabilities as eager, one window shape per compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmamba import api
from medmamba.inference.predictor import FoldModel, Predictor

pytestmark = pytest.mark.slow


def test_a_partial_window_batch_is_padded_to_the_compiled_shape():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    compiled_calls = []

    class Recording(torch.nn.Module):  # sees the shapes the compiled network is called with
        def forward(self, x):
            compiled_calls.append(tuple(x.shape))
            return net(x)

    model = FoldModel(0, Recording(), {"patch_size": [4, 8, 8]})
    predictor = Predictor([model], None, [0, 1], torch.device("cpu"), sw_batch_size=4, compile=True)
    windows = torch.randn(3, 1, 4, 8, 8)
    with torch.inference_mode():
        out = predictor._window_runners[0](windows, full=4)
        expected = net(windows)
    assert out.shape == (3, 2, 4, 8, 8)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert compiled_calls and all(shape[0] == 4 for shape in compiled_calls)


def test_compiled_prediction_equals_eager(trained_work, tmp_path):
    images = trained_work.images(tmp_path)
    outputs = {}
    for compiled in (False, True):
        out = tmp_path / f"compiled_{compiled}"
        report = api.predict(trained_work.work, images, out, folds=[0], tta=False, device="cpu",
                             save_probabilities=True, compile=compiled)
        assert report.ok
        outputs[compiled] = {p.name: np.load(p)["probabilities"] for p in sorted(out.glob("*.npz"))}
    assert outputs[True].keys() == outputs[False].keys() and outputs[True]
    for name, eager in outputs[False].items():
        # Saved as float16: a fused kernel's last-bit difference can flip one fp16 step (4.9e-4 near 0.5).
        np.testing.assert_allclose(outputs[True][name], eager, atol=1e-3)
