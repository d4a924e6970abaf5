"""States the "serial" forward keeps for the backward (triton_fwd_serial's `sub_states`):
the state leaving every 64-position chunk of the backward's plan, written by the forward's
output pass, against the states the backward computes itself; the backward fed with them;
and the public function passing them from forward to backward."""

from __future__ import annotations

import os

import pytest
import torch

from scan_cases import (GRAD_NAMES, TOLERANCE, ScanCase, assert_close_all, relative_error,
                        run_with_grads)

pytest.importorskip("triton")

from medmamba_kernels import selective_scan  # noqa: E402
from medmamba_kernels.selective_scan import (bwd_options, triton_bwd,  # noqa: E402
                                             triton_fwd, triton_fwd_serial)
from medmamba_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402
from medmamba_kernels.selective_scan.triton_bwd import selective_scan_bwd_triton  # noqa: E402
from test_triton import _all, _fast_interpreter, _four_d  # noqa: E402, F401  (fixture)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
SUB = triton_fwd.BACKWARD_CHUNK

# (case, forward chunk): forward chunks longer than, equal to and shorter than the
# backward's 64 (sub-chunks spanning several forward chunks); L not a multiple of 64 nor of
# the positions a load; reverse; groups; bf16; N not a power of two; one forward chunk
CASES = [
    (_all(ScanCase(2, 3, 300, 4)), 128),
    (_all(ScanCase(1, 4, 343, 16, groups=2, reverse=True)), 64),
    (_all(ScanCase(1, 2, 343, 4)), 32),
    (_all(ScanCase(1, 2, 330, 4, reverse=True)), 32),
    (_all(ScanCase(2, 4, 343, 16, dtype=torch.bfloat16, groups=2)), 256),
    (_all(ScanCase(1, 2, 200, 8, dtype=torch.bfloat16, reverse=True)), 64),
    (_all(ScanCase(1, 3, 190, 5, reverse=True)), 128),
    (_all(ScanCase(1, 2, 129, 4)), 256),
    # a partial channel block (3 of 4, 8 of 32): its last lanes repeat the last channel
    (_all(ScanCase(1, 3, 200, 8, dtype=torch.bfloat16)), 64),
    (_all(ScanCase(1, 40, 150, 16)), 64),
]


def _kept_states(case: ScanCase, x: dict, chunk: int) -> torch.Tensor:
    """The serial forward's kept states, written into NaNs."""
    n_sub = -(-case.length // SUB)
    states = torch.full((case.batch, case.dim, n_sub, case.nstate), float("nan"),
                        device=DEVICE)
    out = torch.empty_like(x["u"])
    last = torch.empty(case.batch, case.dim, case.nstate, device=DEVICE)
    triton_fwd_serial.serial_forward(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
        case.softplus, case.reverse, out, last, chunk=chunk, sub_states=states,
        sub_chunk=SUB)
    return states


@pytest.mark.parametrize(("case", "chunk"), CASES, ids=[f"{c.id}-c{k}" for c, k in CASES])
def test_forward_keeps_the_states_the_backward_computes(case: ScanCase, chunk: int) -> None:
    x = _four_d(case.inputs(DEVICE))
    kept = _kept_states(case, x, chunk)
    plan = triton_fwd_serial.serial_plan(case.batch, case.dim, x["B"].shape[1], case.length,
                                         case.dtype, chunk=SUB)
    want, _ = triton_fwd_serial.serial_boundary_states(
        x["u"], x["delta"], x["z"], None, x["A"], x["B"], x["C"], x["delta_bias"],
        case.softplus, case.reverse, plan)
    assert torch.isfinite(kept).all()
    assert relative_error(kept, want) <= TOLERANCE[torch.float32]


def test_kept_states_with_64_bit_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    # past 2**31 elements of a program's kept states the offsets are 64-bit: the same states
    monkeypatch.setattr(triton_fwd_serial, "_INT32_OFFSETS", 1)
    case, chunk = CASES[0]
    x = _four_d(case.inputs(DEVICE))
    plan = triton_fwd_serial.serial_plan(case.batch, case.dim, x["B"].shape[1], case.length,
                                         case.dtype, chunk=SUB)
    want, _ = triton_fwd_serial.serial_boundary_states(
        x["u"], x["delta"], x["z"], None, x["A"], x["B"], x["C"], x["delta_bias"],
        case.softplus, case.reverse, plan)
    assert relative_error(_kept_states(case, x, chunk), want) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize(("case", "chunk"), CASES[:6],
                         ids=[f"{c.id}-c{k}" for c, k in CASES[:6]])
def test_backward_from_kept_states_matches_reference(case: ScanCase, chunk: int) -> None:
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=4)
    x = _four_d(inputs)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    out, last = triton_fwd.selective_scan_fwd_triton(**x, **flags, variant="serial",
                                                     chunk=chunk)
    gen = torch.Generator().manual_seed(4)
    dout = torch.randn(out.shape, generator=gen).to(out.dtype).to(DEVICE)
    grads = selective_scan_bwd_triton(dout, **x, **flags, boundary="serial",
                                      states=_kept_states(case, x, chunk))
    named = {name: grad.reshape(inputs[name].shape)
             for name, grad in zip(GRAD_NAMES, grads) if inputs[name] is not None}
    assert_close_all(case, (out, last, named), want)


def test_public_function_passes_the_kept_states(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where "serial" applies (forced here: the rule wants L >= 2048 and 2**21 elements),
    the autograd path keeps the forward's states and the backward computes only the
    adjoint's."""
    for module in (triton_fwd, bwd_options):
        monkeypatch.setattr(module, "serial_applies", lambda *args, **kwargs: True)
    given = []
    real = triton_fwd_serial.serial_boundary_states

    def recording(*args, **kwargs):
        given.append(kwargs.get("H") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_bwd, "serial_boundary_states", recording)
    case = _all(ScanCase(1, 3, 200, 4, reverse=True))
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=2)
    got = run_with_grads(selective_scan, inputs, {**case.flags(), "backend": "triton"},
                         dout_seed=2)
    assert_close_all(case, got, want)
    assert given == [True]  # the backward's boundary pass, given H


def test_backward_refuses_states_of_another_plan() -> None:
    case = ScanCase(1, 2, 200, 4)
    x = _four_d(case.inputs(DEVICE))
    wrong = torch.zeros(1, 2, 3, 4, device=DEVICE)  # 200 positions are 4 chunks of 64
    with pytest.raises(ValueError,
                       match=r"^states: expected a contiguous float32 \(1, 2, 4, 4\)"):
        selective_scan_bwd_triton(torch.ones_like(x["u"]), **x, delta_softplus=False,
                                  reverse=False, boundary="serial", states=wrong)


def test_forward_refuses_sub_states_of_the_wrong_shape() -> None:
    case = ScanCase(1, 2, 200, 4)
    x = _four_d(case.inputs(DEVICE))
    out, last = torch.empty_like(x["u"]), torch.empty(1, 2, 4, device=DEVICE)
    with pytest.raises(ValueError, match="^sub_states: expected"):
        triton_fwd_serial.serial_forward(
            x["u"], x["delta"], x["A"], x["B"], x["C"], None, None, None, False, False, out,
            last, sub_states=torch.empty(1, 2, 3, 4, device=DEVICE), sub_chunk=SUB)


def test_kept_states_only_where_the_backward_reads_them() -> None:
    u = torch.empty(2, 64, 16384, device="meta")
    A, B = torch.empty(64, 16, device="meta"), torch.empty(2, 1, 16, 16384, device="meta")
    assert triton_fwd.backward_states(u, A, B).shape == (2, 64, 16384 // SUB, 16)
    # less work than the serial rule wants, shorter, one backward chunk, too few channels a
    # group
    assert triton_fwd.backward_states(u[..., :8192], A, B[..., :8192]) is None
    wide = torch.empty(2, 1024, 1024, device="meta")
    assert triton_fwd.backward_states(wide, torch.empty(1024, 16, device="meta"),
                                      torch.empty(2, 1, 16, 1024, device="meta")) is None
    assert triton_fwd.backward_states(u[..., :SUB], A, B[..., :SUB]) is None
    assert triton_fwd.backward_states(u[:, :16], A[:16], B) is None


@pytest.mark.parametrize(("per_group", "dtype", "expected"), [
    (48, torch.float32, "serial"), (64, torch.float32, "serial"),
    (48, torch.bfloat16, "serial"), (16, torch.float32, "deferred"),
], ids=str)
def test_serial_for_groups_of_warps_or_not(per_group: int, dtype: torch.dtype,
                                           expected: str) -> None:
    # bench row 6 (48 channels, fp32): "serial" the faster forward since session 25, and
    # its kept states serve the backward; under 32 channels a group a warp would idle
    length = 2_097_152
    assert triton_fwd.auto_variant(dtype, 8, per_group, length, per_group) == expected
    u = torch.empty(1, per_group, length, device="meta")
    A, B = torch.empty(per_group, 16, device="meta"), torch.empty(1, 1, 16, length, device="meta")
    assert (triton_fwd.backward_states(u, A, B) is not None) == (per_group >= 32)


def test_op_path_keeps_states_for_training_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch.library op (what torch.compile records) keeps the states in training
    calls only, its fake agrees on their shape, and its backward uses them."""
    from medmamba_kernels.selective_scan import interface

    for module in (triton_fwd, bwd_options):
        monkeypatch.setattr(module, "serial_applies", lambda *args, **kwargs: True)
    case = _all(ScanCase(1, 3, 200, 4))
    inputs = case.inputs(DEVICE)
    x = _four_d(inputs)
    args = [x[k] for k in GRAD_NAMES]
    _, _, none = interface._scan_fwd_op(*args, True, False, "triton", False)
    assert none.numel() == 0
    out, _, states = interface._scan_fwd_op(*args, True, False, "triton", True)
    assert states.shape == (1, 3, 4, 4) and torch.isfinite(states).all()
    meta = [None if a is None else a.to("meta") for a in args]
    with torch._subclasses.fake_tensor.FakeTensorMode(allow_non_fake_inputs=True):
        fake = interface._scan_fwd_op(*meta, True, False, "triton", True)
    assert fake[2].shape == states.shape
    want = run_with_grads(selective_scan_reference, inputs,
                          {"delta_softplus": True, "reverse": False}, dout_seed=6)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    grads = interface._scan_bwd_op(dout, *args, True, False, "triton", states)
    named = {name: g.reshape(inputs[name].shape) for name, g in zip(GRAD_NAMES, grads)}
    for name, w in want[2].items():
        assert relative_error(named[name], w) <= TOLERANCE[case.dtype], name
