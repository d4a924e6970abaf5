"""Windows per forward pass when the caller leaves it to the predictor (window_batch.py)."""

from __future__ import annotations

import pytest
import torch
from test_predict_geometry import configuration_plan

from medmamba.inference import predictor as predictor_module
from medmamba.inference import window_batch
from medmamba.inference.predictor import FoldModel, Predictor
from medmamba.inference.sliding_window import sliding_window_logits
from medmamba.inference.window_batch import (
    MAX_WINDOW_BATCH,
    auto_window_batch,
    halve_on_out_of_memory,
    stitching_bytes,
    window_count,
)


class BatchRecorder(torch.nn.Module):
    """Two-class logits of its input; remembers the batch of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return torch.cat([-x[:, :1], x[:, :1]], dim=1)


@pytest.mark.parametrize("shape, patch, overlap", [
    ((155, 240, 240), (96, 160, 160), 0.5),  # BraTS: 3 x 2 x 2
    ((36, 50, 35), (40, 56, 40), 0.5),  # smaller than the patch: padded, one window
    ((40, 57, 41), (40, 56, 40), 0.5),  # equal on one axis, one voxel over on two
    ((23, 31), (8, 16), 0.25),
    ((100, 100, 100), (32, 32, 32), 0.0),
    ((9, 9, 9), (4, 4, 4), 0.9),  # step 0 rounds up to 1
], ids=str)
def test_window_count_is_what_sliding_window_inference_runs(shape, patch, overlap):
    network = BatchRecorder()
    image = torch.zeros((1, 1, *shape))
    sliding_window_logits(network, image, patch, sw_batch_size=1, overlap=overlap, tta=False)
    assert window_count(shape, patch, overlap) == len(network.batches)


@pytest.mark.parametrize("windows, per_window, free, expected", [
    (12, 1, 10**12, 12),  # all of a case's windows fit: one pass
    (40, 1, 10**12, MAX_WINDOW_BATCH),  # never more than the cap
    (12, 10, 100, 5),  # half of 100 bytes holds 5 windows of 10
    (12, 10**9, 10, 4),  # nothing fits: the old fixed 4 (an out-of-memory pass is halved)
    (3, 10**9, 10, 3),  # ... or the case's windows, if fewer
    (12, 10, -50, 4),  # stitching alone over the free memory
])
def test_auto_window_batch(windows, per_window, free, expected):
    assert auto_window_batch(windows, per_window, free) == expected


def test_out_of_memory_halves_the_batch_until_it_fits(caplog):
    tried = []

    def run(batch: int) -> str:
        tried.append(batch)
        if batch > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return f"ran {batch}"

    with caplog.at_level("WARNING"):
        assert halve_on_out_of_memory(run, 12) == ("ran 3", 3)
    assert tried == [12, 6, 3]
    assert "out of GPU memory at 12 windows a pass; trying 6" in caplog.text


def test_out_of_memory_at_one_window_is_raised():
    def run(batch: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.OutOfMemoryError):
        halve_on_out_of_memory(run, 2)


def test_other_errors_are_not_retried():
    tried = []

    def run(batch: int) -> None:
        tried.append(batch)
        raise RuntimeError("not a memory problem")

    with pytest.raises(RuntimeError, match="not a memory problem"):
        halve_on_out_of_memory(run, 8)
    assert tried == [8]


def _predictor(device: str, patch=(8, 16, 16), **options) -> tuple[Predictor, BatchRecorder]:
    network = BatchRecorder()
    model = FoldModel(0, network, {"patch_size": list(patch)})
    return Predictor([model], configuration_plan(len(patch), (1.0,) * len(patch)), [0, 1],
                     torch.device(device), tta=False, **options), network


def _stub_gpu_memory(monkeypatch, per_window: int, free: dict) -> list:
    """window_bytes and free_device_bytes stubbed (no GPU here); returns the probe calls."""
    probes = []
    monkeypatch.setattr(predictor_module, "window_bytes",
                        lambda *args: probes.append(args) or per_window)
    monkeypatch.setattr(predictor_module, "free_device_bytes", lambda device: free["bytes"])
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    return probes


def test_cpu_default_runs_four_windows_a_pass():
    predictor, network = _predictor("cpu")
    predictor.probabilities(torch.zeros((1, 20, 40, 40)).numpy())  # 4 x 4 x 4 windows
    assert max(network.batches) == 4 and sum(network.batches) == 64


def test_an_asked_batch_is_kept():
    predictor, network = _predictor("cpu", sw_batch_size=5)
    predictor.probabilities(torch.zeros((1, 20, 40, 40)).numpy())
    assert network.batches[:-1] == [5] * 12 and network.batches[-1] == 4


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_gpu_default_takes_the_case_windows_as_memory_allows(monkeypatch, compile):
    """The choice on a GPU, without one: the memory probe and the free memory stubbed."""
    free = {"bytes": 10**6}
    probes = _stub_gpu_memory(monkeypatch, 100, free)
    predictor, _ = _predictor("cuda", compile=compile)
    two_by_two = torch.zeros((1, 1, 12, 24, 24))  # 2 x 2 x 2 windows of 8 x 16 x 16
    assert predictor._window_batch(two_by_two) == 8
    many = torch.zeros((1, 1, 40, 40, 40))  # 9 x 4 x 4 windows
    # after the case's own stitching buffers (2 classes), half of 1200 bytes: 6 windows
    free["bytes"] = stitching_bytes(40**3, 2) + 1200
    # compiled: fixed at the first case, so every pass keeps one shape (one compile)
    assert predictor._window_batch(many) == (8 if compile else 6)
    assert len(probes) == 1  # measured once per predictor


def test_gpu_default_counts_the_windows_of_every_slice_in_2d(monkeypatch):
    _stub_gpu_memory(monkeypatch, 1, {"bytes": 10**9})
    predictor, _ = _predictor("cuda", patch=(16, 16))
    slices = torch.zeros((3, 1, 24, 24))  # slices as the batch, 2 x 2 windows each
    assert predictor._window_batch(slices) == 12


def test_compiled_gpu_batch_is_not_fixed_below_four_by_a_one_window_first_case(monkeypatch):
    _stub_gpu_memory(monkeypatch, 1, {"bytes": 10**9})
    predictor, _ = _predictor("cuda", compile=True)
    assert predictor._window_batch(torch.zeros((1, 1, 8, 16, 16))) == 4
    assert predictor._window_batch(torch.zeros((1, 1, 12, 24, 24))) == 4


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_gpu_batch_that_ran_out_of_memory_caps_later_cases(monkeypatch, compile):
    _stub_gpu_memory(monkeypatch, 1, {"bytes": 10**12})
    predictor, _ = _predictor("cuda", compile=compile)
    tried = []

    def fold_average(image, batch):
        tried.append(batch)
        if batch > 5:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return image

    monkeypatch.setattr(predictor, "_fold_average", fold_average)
    many = torch.zeros((1, 1, 40, 40, 40))  # 144 windows: the cap of 16 to start with
    predictor._windows_fold_average(many)
    assert predictor.last_window_batch == 4
    predictor._windows_fold_average(many)
    assert tried == [MAX_WINDOW_BATCH, 8, 4, 4]


def test_an_asked_batch_that_runs_out_of_memory_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    predictor, _ = _predictor("cuda", sw_batch_size=8)

    def fold_average(image, batch):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(predictor, "_fold_average", fold_average)
    with pytest.raises(torch.OutOfMemoryError):
        predictor._windows_fold_average(torch.zeros((1, 1, 12, 24, 24)))


@pytest.mark.gpu
def test_one_window_memory_is_measured_on_the_gpu():
    device = torch.device("cuda")
    network = torch.nn.Conv3d(2, 8, 3, padding=1).to(device)
    small = window_batch.window_bytes(network, 2, (16, 32, 32), device,
                                      lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    large = window_batch.window_bytes(network, 2, (32, 64, 64), device,
                                      lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    assert small < large
    assert window_batch.free_device_bytes(device) > 0

