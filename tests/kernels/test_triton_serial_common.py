"""Decays on the FMA pipe (triton_serial_common._exp2_fma) and the "serial" passes that
take some of their decays from it (serial_planning's `emu`, `out_emu`)."""

from __future__ import annotations

import os

import pytest
import torch

from scan_cases import TOLERANCE, ScanCase, relative_error

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from medmamba_kernels.selective_scan import serial_planning, triton_fwd_serial  # noqa: E402
from medmamba_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402
from medmamba_kernels.selective_scan.triton_serial_common import _exp2_fma  # noqa: E402
from test_triton import _all, _fast_interpreter, _four_d  # noqa: E402, F401  (fixture)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


@triton.jit
def _exp2_fma_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, _exp2_fma(tl.load(x_ptr + offs, mask=mask)), mask=mask)


def _exp2_fma_of(x: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(x, float("nan"))
    _exp2_fma_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), BLOCK=1024)
    return out


def test_exp2_on_the_fma_pipe_is_within_three_ulp() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.cat([torch.rand(6000, generator=gen) * 253.0 - 125.0,  # [-125, 128)
                   torch.rand(2000, generator=gen) * 2.0 - 1.0,
                   -torch.rand(2000, generator=gen) * 1e-3])
    got = _exp2_fma_of(x.to(DEVICE)).cpu().double()
    want = torch.exp2(x.double())
    ulp = (got - want).abs() / (torch.nextafter(want.float(), torch.tensor(float("inf")))
                                - want.float()).double()
    assert ulp.max().item() <= 3.0, f"worst {ulp.max().item():.2f} ulp at x={x[ulp.argmax()]}"


def test_exp2_on_the_fma_pipe_at_its_edges() -> None:
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, 127.0, 128.0, 200.0, -125.0, -126.0, -1e30,
                      float("-inf")])
    got = _exp2_fma_of(x.to(DEVICE)).cpu()
    assert got[:5].tolist() == [1.0, 1.0, 2.0, 0.5, 2.0**127]  # exact
    assert got[5].item() == float("inf") and got[6].item() == float("inf")
    assert torch.all(got[7:] == 2.0**-125)  # the clamp: a decay this small stands for 0


EMU_CASES = [
    _all(ScanCase(2, 3, 100, 4)),
    _all(ScanCase(1, 40, 77, 16, dtype=torch.bfloat16, last_state=True)),
    _all(ScanCase(2, 4, 343, 16, groups=2, reverse=True, last_state=True)),
    _all(ScanCase(1, 3, 90, 5, dtype=torch.bfloat16, reverse=True)),  # padded states
]


@pytest.mark.parametrize(("emu", "out_emu"), [(1, 0), (3, 2), (8, 8)])
@pytest.mark.parametrize("case", EMU_CASES, ids=[c.id for c in EMU_CASES])
def test_serial_forward_with_decays_on_the_fma_pipe(emu: int, out_emu: int,
                                                    case: ScanCase) -> None:
    inputs = case.inputs(DEVICE)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    want, want_last = selective_scan_reference(**inputs, **flags, return_last_state=True)
    x = _four_d(inputs)
    out = torch.full(x["u"].shape, float("nan"), dtype=x["u"].dtype, device=DEVICE)
    last = torch.full(want_last.shape, float("nan"), device=DEVICE)
    triton_fwd_serial.serial_forward(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"],
                                     x["z"], x["delta_bias"], **flags, out=out,
                                     last_state=last, chunk=32, emu=emu, out_emu=out_emu)
    tol = TOLERANCE[case.dtype]
    errors = {"out": relative_error(out, want), "last_state": relative_error(last, want_last)}
    assert all(e <= tol for e in errors.values()), f"emu {emu}/{out_emu} {case.id}: {errors}"


@pytest.mark.parametrize("case", EMU_CASES[:3], ids=[c.id for c in EMU_CASES[:3]])
def test_adjoint_aggregate_with_decays_on_the_fma_pipe(case: ScanCase) -> None:
    # the backward's boundary states (forward and adjoint) with every decay from the FMA
    # pipe against the same from MUFU: both within the dtype's tolerance of each other
    x = _four_d(case.inputs(DEVICE))
    dout = torch.randn_like(x["u"])
    batch, dim, length = x["u"].shape
    states = []
    for emu in (0, 8):
        plan = serial_planning.serial_plan(batch, dim, x["B"].shape[1], length,
                                           x["u"].dtype, chunk=16, emu=emu)
        states.append(triton_fwd_serial.serial_boundary_states(
            x["u"], x["delta"], x["z"], dout, x["A"], x["B"], x["C"], x["delta_bias"],
            case.softplus, case.reverse, plan))
    (h_mufu, q_mufu), (h_fma, q_fma) = states
    tol = TOLERANCE[case.dtype]
    assert relative_error(h_fma, h_mufu) <= tol and relative_error(q_fma, q_mufu) <= tol


def test_serial_plan_refuses_bad_fma_positions() -> None:
    with pytest.raises(ValueError, match="^emu: expected 0 to 64 positions a block, got -1"):
        serial_planning.serial_plan(1, 4, 1, 100, torch.float32, emu=-1)
    with pytest.raises(ValueError, match="^out_emu: expected 0 to 64"):
        serial_planning.serial_plan(1, 4, 1, 100, torch.float32, out_emu=65)
