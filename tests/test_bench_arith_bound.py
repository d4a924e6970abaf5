"""scripts/bench_arith_bound.py: its kernels do the arithmetic they are timed for.

The script's bounds are only as good as its kernels' claim to do one pass's arithmetic a
state element; here each kernel runs (Triton's interpreter on CPU) against a float64
re-statement of that arithmetic, with its exponentials on MUFU and on the FMA pipe (on a
GPU machine, compiled).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


@pytest.fixture(scope="module")
def bound():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_arith_bound
    finally:
        sys.path.remove(str(SCRIPTS))
    return bench_arith_bound


def _oracle(name: str, operands: dict, n_steps: int) -> torch.Tensor:
    """The pass's recurrences in float64, position by position."""
    A, B, C = (operands[k].double()[:, None] for k in ("decay", "drive", "read"))
    dt0 = operands["lane"].double()
    u = dt0 * 3.0 + 0.5
    h, g, dB, dC, dA = (torch.zeros(A.shape[0], dt0.numel(), dtype=torch.float64)
                        for _ in range(5))
    y, du, ddt = (torch.zeros_like(dt0) for _ in range(3))
    for t in range(n_steps):
        dt = dt0 + (t + 1) * 1e-7
        dtu, dy = dt * u, dt * 0.25 - 1.0
        a = torch.exp2(dt * A)
        v = dtu * B
        h = a * h + v
        y += (C * h).sum(0)
        g = a * g + dy * C
        dC += dy * h
        dB += g * dtu
        du += (g * B).sum(0)
        w = g * (h - v)
        ddt += (A * w).sum(0)
        dA += dt * w
    if name == "aggregate":
        return h.sum(0)
    if name == "output":
        return h.sum(0) + y
    return (h + g + dB + dC + dA).sum(0) + du + ddt


@pytest.mark.parametrize("name", ["aggregate", "output", "backward"])
@pytest.mark.parametrize("emulated, degree, lazy_sums, tolerance",
                         [(0, 5, False, 1e-5), (2, 5, True, 1e-5), (4, 3, False, 3e-3)])
def test_each_pass_kernel_does_its_arithmetic(bound, name, emulated, degree, lazy_sums,
                                              tolerance) -> None:
    programs, num_warps, n_steps = 2, 1, 12
    operands = bound.pass_operands(DEVICE, programs * 32 * num_warps, seed=5)
    out, _ = bound.run_pass(name, operands, n_steps, programs, num_warps, emulated, degree,
                            lazy_sums)
    truth = _oracle(name, {k: t.cpu() for k, t in operands.items()}, n_steps)
    out = out.cpu()
    assert torch.isfinite(out).all()  # poisoned with NaN before the launch
    error = (out.double() - truth).abs().max() / truth.abs().max()
    assert error < tolerance, (name, emulated, degree, float(error))


@pytest.mark.parametrize("degree, tolerance", [(3, 2e-4), (5, 5e-7)])
def test_exp2_on_the_fma_pipe_is_a_real_exponential(bound, degree, tolerance) -> None:
    assert bound.exp2_error(degree, DEVICE, n=4096) < tolerance


def test_steps_must_come_in_fours(bound) -> None:
    operands = bound.pass_operands(DEVICE, 32)
    with pytest.raises(ValueError, match="multiple of 4"):
        bound.run_pass("aggregate", operands, 6, 1, 1)


@pytest.mark.parametrize("name", ["aggregate", "output", "backward"])
def test_configs_try_launch_shapes_and_exponent_splits(bound, name) -> None:
    configs = bound.pass_configs(name, quick=False)
    assert len(set(configs)) == len(configs) and (4, 0, 5, False) in configs
    assert any(emulated for _, emulated, _, _ in configs)  # some exponentials on FMA
    assert any(lazy for *_, lazy in configs) == (name != "aggregate")  # no sums to defer


def test_peak_clocks_take_the_slower_of_issue_and_mufu(bound) -> None:
    elements = 4 * bound.STATES * 32  # a warp's loop: 4 positions x 16 states x 32 lanes
    # MUFU-bound: 64 exponentials x 8 clocks = 512 clocks a warp, over 4 partitions
    assert bound.peak_clocks(268, 64) == pytest.approx(512 / elements / 4)
    # issue-bound: 849 instructions, one a clock
    assert bound.peak_clocks(849, 64) == pytest.approx(849 / elements / 4)


def test_bounds_add_the_passes_of_a_forward_and_a_training_call(bound) -> None:
    ps = {"aggregate": 1.0, "output": 2.0, "backward": 4.0}
    # 1e9 state elements at 3 ps (forward) and 3 + 1 + 4 ps (training call) a state element
    assert bound.pass_bounds(ps, 10**9) == pytest.approx((3.0, 8.0))
