"""Per-case inference timings of scripts/bench_vs_nnunet.py on BraTS-sized cases.

Two spans, with one predictor (so the compile, if any, is paid once, on the first case):

- **array -> mask**, nnU-Net's own span (anchors/nnunet_h100/infer_time.py times
  ``predict_single_npy_array`` the same way): the channels are read beforehand, then each
  case is preprocessed and predicted alone, CUDA synchronised around it.
- **files -> file**, as ``medmamba predict`` runs a folder: reading, preprocessing and
  writing overlap the networks, so a case costs the time between consecutive cases'
  written outputs.

Both are medians over the cases after the first (the warm-up).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from medmamba.data.io import read_channels
from medmamba.inference.folder import PredictionReport, list_input_cases, load_run, predict_cases


def median_after_first(values: list[float]) -> float:
    """The median without the first value (the warm-up case), unless it is the only one."""
    return statistics.median(values[1:] or values)


def stage_medians(report: PredictionReport) -> dict[str, float]:
    """Median seconds of each stage of a folder's written cases, the first left out."""
    return {name: median_after_first([s[name] for s in report.stage_seconds.values()])
            for name in ("read", "preprocess", "predict", "write")}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cases(work: Path, network: str, configuration: str, images: Path, out: Path, tta: bool,
               device: str, compile_windows: bool, batch_windows: int | None = None) -> dict[str, Any]:
    """Both spans for every case of ``images`` (module docstring) and the folder's stages."""
    run = load_run(work, configuration=configuration, network=network, folds=[0], tta=tta,
                   device=device, compile=compile_windows, batch_windows=batch_windows)
    predictor = run.predictor
    if predictor.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cases = list_input_cases(images, run.plans.file_ending, run.plans.num_channels)
    spans = []
    for case in cases:
        channels, geometry = read_channels(case.images)
        _synchronise(predictor.device)
        start = time.perf_counter()
        predictor.predict_mask(channels, geometry)
        _synchronise(predictor.device)
        spans.append(time.perf_counter() - start)
    report = predict_cases(predictor, cases, out, run.plans.file_ending, PredictionReport(out),
                           overwrite=True, progress=False)
    if report.failed:
        raise RuntimeError(f"prediction failed for {report.failed}")
    done = sorted(report.completed_at.values())
    intervals = [b - a for a, b in zip(done, done[1:])]
    stages = stage_medians(report)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if predictor.device.type == "cuda"
            else None)
    # asked (None: the predictor's choice), and what the last case ran with
    return {"cases": len(cases), "compile": compile_windows, "batch_windows": batch_windows,
            "window_batch_used": predictor.last_window_batch,
            "array_to_mask_s": spans,
            "first_case_s": spans[0], "median_array_to_mask_s_after_first": median_after_first(spans),
            "median_interval_s_after_first": statistics.median(intervals) if intervals else None,
            "median_stage_s_after_first": stages, "peak_alloc_gib": peak}
