"""The backward's "serial" main kernel (triton_bwd_serial.py) against the reference: the
grid of test_triton.py's cases, channel blocks cut by a group's end, chunks shorter than
its blocks, channel blocks of 16 and 64, B/C read a block ahead or through 64-bit
offsets, persistent grids of one program and of more programs than work, the forward's
kept states as boundary states; "auto" keeping the tile kernel; bad options refused."""

from __future__ import annotations

import pytest
import torch

from scan_cases import GRAD_NAMES, ScanCase, assert_close_all, run_with_grads

pytest.importorskip("triton")

from medmamba_kernels.selective_scan import bwd_options, triton_bwd_serial  # noqa: E402
from medmamba_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402
from medmamba_kernels.selective_scan.triton_bwd import selective_scan_bwd_triton  # noqa: E402
from medmamba_kernels.selective_scan.triton_fwd import selective_scan_fwd_triton  # noqa: E402
from test_triton import (  # noqa: E402, F401  (_fast_interpreter: fixture)
    CASES,
    DEVICE,
    _all,
    _fast_interpreter,
    _four_d,
    _host_run,
)
from test_triton_kept_states import _kept_states  # noqa: E402

# 40 channels a group: two blocks of 32, the second cut at 8 (masked lanes); N = 5 padded
# to 8; chunks of 2, shorter than a block of 4 positions; one chunk of the whole sequence
EXTRA_CASES = [
    (_all(ScanCase(1, 40, 70, 5)), {"chunk": 16}),
    (_all(ScanCase(1, 80, 50, 4, groups=2, reverse=True)), {"chunk": 32}),
    (_all(ScanCase(1, 40, 61, 4, dtype=torch.bfloat16)), {"chunk": 16}),
    (_all(ScanCase(1, 2, 9, 4, reverse=True)), {"chunk": 2}),
    (_all(ScanCase(2, 3, 45, 16)), {}),
]
ALL_CASES = CASES + EXTRA_CASES


@pytest.mark.parametrize(("case", "plan"), ALL_CASES, ids=[c.id for c, _ in ALL_CASES])
def test_serial_main_matches_reference(case: ScanCase, plan: dict) -> None:
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=3)
    got = _host_run(case, inputs, plan, dout_seed=3, main="serial")
    assert_close_all(case, got, want)


@pytest.mark.parametrize("programs", [1, 1000])
def test_serial_main_any_number_of_programs(monkeypatch: pytest.MonkeyPatch,
                                            programs: int) -> None:
    # one program takes every work item in turn; more programs than items leave none idle
    # (the grid is cut to the items)
    monkeypatch.setattr(triton_bwd_serial, "resident_programs", lambda *args, **kwargs: programs)
    case, plan = _all(ScanCase(2, 40, 50, 4, groups=2)), {"chunk": 16}
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=6)
    assert_close_all(case, _host_run(case, inputs, plan, dout_seed=6, main="serial"), want)


@pytest.mark.parametrize(("case", "plan"), EXTRA_CASES[:3],
                         ids=[c.id for c, _ in EXTRA_CASES[:3]])
def test_serial_main_with_bc_ahead(case: ScanCase, plan: dict) -> None:
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=4)
    got = _host_run(case, inputs, plan, dout_seed=4, main="serial",
                    serial_options={"bc_ahead": True})
    assert_close_all(case, got, want)


def test_serial_main_with_64_bit_state_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # past 2**31 elements between B's first and last state rows their offsets are 64-bit
    monkeypatch.setattr(triton_bwd_serial, "_INT32_OFFSETS", 1)
    case, plan = EXTRA_CASES[1]
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=5)
    assert_close_all(case, _host_run(case, inputs, plan, dout_seed=5, main="serial"), want)


@pytest.mark.parametrize("block_d", [16, 64])
def test_serial_main_other_channel_blocks(block_d: int) -> None:
    # 16 channels a warp (fewer registers), 64 over two warps (sums across warps)
    case, plan = EXTRA_CASES[1]
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=7)
    got = _host_run(case, inputs, plan, dout_seed=7, main="serial",
                    serial_options={"block_d": block_d})
    assert_close_all(case, got, want)


def test_serial_main_from_kept_states() -> None:
    case = _all(ScanCase(1, 4, 200, 16, groups=2, reverse=True))
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=8)
    x = _four_d(inputs)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    out, last = selective_scan_fwd_triton(**x, **flags, variant="serial", chunk=32)
    states = _kept_states(case, x, 32)
    gen = torch.Generator().manual_seed(8)
    dout = torch.randn(out.shape, generator=gen).to(out.dtype).to(DEVICE)
    grads = selective_scan_bwd_triton(dout, **x, **flags, states=states, main="serial")
    named = {name: grad.reshape(inputs[name].shape)
             for name, grad in zip(GRAD_NAMES, grads) if inputs[name] is not None}
    assert_close_all(case, (out, last, named), want)


def test_backward_refuses_unknown_main_and_checkpoint_spacing() -> None:
    x = _four_d(ScanCase(1, 2, 8, 2).inputs(DEVICE))
    dout = torch.ones_like(x["u"])
    with pytest.raises(ValueError, match="^main: expected one of"):
        selective_scan_bwd_triton(dout, **x, delta_softplus=False, reverse=False, main="fast")
    with pytest.raises(ValueError, match="^ti: expected 1 or 2"):
        selective_scan_bwd_triton(dout, **x, delta_softplus=False, reverse=False,
                                  main="serial", serial_options={"ti": 4})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_main_keeps_the_tile_kernel(dtype: torch.dtype) -> None:
    # "serial" measured slower on every bench row (session 31)
    for sequences, length, per_group in [(128, 262144, 64), (48, 2_097_152, 48),
                                         (1024, 4096, 256), (1024, 512, 512)]:
        assert bwd_options.auto_main(sequences, length, per_group, dtype) == "tile"


def test_persistent_grid_on_the_cpu_still_loops() -> None:
    assert triton_bwd_serial.resident_programs(torch.device("cpu"), 1) == 4
    assert bwd_options.MAINS == ("auto", "serial", "tile")
