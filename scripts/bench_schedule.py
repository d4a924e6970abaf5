"""Fitting a training run into a wall-time budget (scripts/bench_vs_nnunet.py).

A warm-up measures what the budget must cover (:class:`Calibration`); :func:`choose_schedule`
turns it into epochs x iterations; :func:`epoch_overhead` reads back from a finished run's
log what each epoch cost outside its steps.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


# Share of the budget the schedule aims at. The warm-up's one steady epoch underestimates
# the per-epoch overhead by up to 0.15 s, which 50 epochs turn into ~8 s: at 0.98 four H200
# runs (2026-11-30, scripts/results/vs_nnunet_h200_2026-11-30_s13) took 240-253 s of 250.
# The script warns above 102%.
BUDGET_TARGET = 0.96


@dataclass(frozen=True)
class Calibration:
    startup_s: float  # before epoch 2 less one steady epoch (compile included), plus the wait for the
    # last epoch's writes
    iters_per_s: float
    val_s: float  # per epoch outside the steps: validation, handing the outputs to the writer
    final_s_per_case: float  # predict one more validation case with TTA, and score it
    final_fixed_s: float = 0.0  # the final validation's cost whatever the cases (model loading)


def choose_schedule(cal: Calibration, budget_s: float, iters_per_epoch: int, val_cases: int,
                    max_iters: int | None = None) -> tuple[int, int]:
    """(epochs, iterations per epoch) that fill ``budget_s`` after start-up and final validation.

    As many epochs of ``iters_per_epoch`` as fit, then the time a whole epoch would not
    fill is spread over them as extra iterations, so no budget is left unused.
    """
    left = (BUDGET_TARGET * budget_s - cal.startup_s - cal.final_fixed_s
            - cal.final_s_per_case * val_cases)
    epochs = int(left // (iters_per_epoch / cal.iters_per_s + cal.val_s))
    iters = iters_per_epoch
    if epochs >= 1:
        iters = max(iters_per_epoch, int((left / epochs - cal.val_s) * cal.iters_per_s))
    else:
        epochs, iters = 1, max(1, int((left - cal.val_s) * cal.iters_per_s))
    if max_iters is not None and epochs * iters > max_iters:
        iters = min(iters, max_iters)
        epochs = max(1, max_iters // iters)
    return epochs, iters


def training_costs(called_at: float, returned_at: float, epochs: list[dict], iters: int
                   ) -> tuple[float, float, float]:
    """(start-up s, iterations/s, per-epoch overhead s) of a 3-epoch warm-up run.

    Epoch 2 is the steady one: its rate, and its wall time up to epoch 3's start less its
    steps is what every epoch costs outside its steps (validation, handing the outputs to
    the background writer, which then overlap the next epoch). Start-up is everything
    before epoch 2 less one steady epoch, plus what the end of a run costs beyond a steady
    epoch (the wait for the last epoch's writes).
    """
    if len(epochs) < 3:
        raise ValueError(f"the warm-up needs 3 epochs, its log has {len(epochs)}")
    rate = epochs[1]["iters_per_s"]
    steady_s = epochs[2]["started_at"] - epochs[1]["started_at"]
    finish_s = (returned_at - epochs[2]["started_at"]) - steady_s
    startup_s = epochs[1]["started_at"] - called_at - steady_s + finish_s
    return max(0.0, startup_s), rate, max(0.0, _outside_steps(epochs, iters)[0])


def epoch_overhead(epochs: list[dict], iters: int) -> dict[str, float | None]:
    """Seconds per epoch outside the steps (validation, the hand-over to the writer), median
    and max over the epochs after the first, from the epochs' wall-clock starts."""
    outside = _outside_steps(epochs, iters)
    validation = [e["validation_s"] for e in epochs if "validation_s" in e]
    return {"median_s": statistics.median(outside) if outside else None,
            "max_s": max(outside) if outside else None,
            "validation_median_s": statistics.median(validation) if validation else None}


def _outside_steps(epochs: list[dict], iters: int) -> list[float]:
    """Per epoch from the second on that has a successor: the wall time to the successor's
    start less the epoch's steps (the first epoch carries the start-up's leftovers)."""
    return [b["started_at"] - a["started_at"] - iters / a["iters_per_s"]
            for a, b in zip(epochs[1:], epochs[2:])]
