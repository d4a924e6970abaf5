"""The backward host function's options against the reference: how the chunk-boundary
states are found ("serial", "tile", "carried", the "auto" rule), a register cap, the main kernel's
read-ahead (`prefetch`, `ahead`, `cache_ahead`) and its adjoint's decays (`adjoint`);
bad values refused. The default path is tested in test_triton.py."""

from __future__ import annotations

import pytest
import torch

from scan_cases import GRAD_NAMES, ScanCase, assert_close_all, run_with_grads

pytest.importorskip("triton")

from medmamba_kernels.selective_scan import bwd_options  # noqa: E402
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


# The cases of several chunks, whose backward needs boundary states: "auto" takes "tile"
# below SERIAL_MIN_LENGTH positions or SERIAL_MIN_ELEMENTS, so both ways are run here
# explicitly.
MULTI_CHUNK_CASES = [(c, p) for c, p in CASES if p.get("chunk", 1 << 30) < c.length]


@pytest.mark.parametrize("boundary", ["serial", "tile", "carried"])
@pytest.mark.parametrize(("case", "plan"), MULTI_CHUNK_CASES,
                         ids=[c.id for c, _ in MULTI_CHUNK_CASES])
def test_backward_boundary_states_either_way(case: ScanCase, plan: dict, boundary: str) -> None:
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=5)
    got = _host_run(case, inputs, plan, dout_seed=5, boundary=boundary)
    assert_close_all(case, got, want)


def test_backward_refuses_unknown_boundary() -> None:
    x = _four_d(ScanCase(1, 2, 8, 2).inputs(DEVICE))
    with pytest.raises(ValueError, match="^boundary: expected one of"):
        selective_scan_bwd_triton(torch.ones_like(x["u"]), **x, delta_softplus=False,
                                  reverse=False, boundary="fast")


@pytest.mark.parametrize(("sequences", "length", "per_group", "dtype", "expected"), [
    (128, 16384, 64, torch.float32, "serial"), (32, 2_097_152, 32, torch.float32, "serial"),
    (128, 2047, 64, torch.float32, "tile"), (48, 2_097_152, 48, torch.float32, "tile"),
    (48, 2_097_152, 48, torch.bfloat16, "serial"), (512, 4096, 256, torch.bfloat16, "serial"),
    (128, 4096, 128, torch.bfloat16, "tile"), (128, 262144, 16, torch.bfloat16, "tile"),
], ids=str)
def test_auto_boundary_rule(sequences: int, length: int, per_group: int, dtype: torch.dtype,
                            expected: str) -> None:
    # measured (--bwd-variants, session 16): row 6's 48 channels lose with "serial" in
    # fp32 only, as the forward does; the lengths and sizes as the forward's (session 23)
    n_chunks = -(-length // 64)  # the backward's chunk
    assert bwd_options.auto_boundary(sequences, length, per_group, dtype, n_chunks) == expected


@pytest.mark.parametrize("case", [
    _all(ScanCase(1, 4, 200, 16, groups=2)),
    _all(ScanCase(1, 4, 200, 16, groups=2, reverse=True)),
], ids=lambda c: c.id)
def test_backward_register_cap_keeps_gradients(case: ScanCase) -> None:
    # maxnreg=128 (swept by the GPU bench) is half what the kernel takes uncapped at chunk
    # 64, so on a GPU it spills; the interpreter ignores the cap: there this only checks
    # that the host function passes it on
    _check_backward_options(case, {"chunk": 64}, maxnreg=128)


def _check_backward_options(case: ScanCase, plan: dict, **options) -> None:
    """Forward and backward with `plan` (both host functions) and backward-only
    `options`, against the reference."""
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=9)
    x = _four_d(inputs)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    out, last = selective_scan_fwd_triton(**x, **flags, **plan)
    gen = torch.Generator().manual_seed(9)
    dout = torch.randn(out.shape, generator=gen).to(out.dtype).to(DEVICE)
    grads = selective_scan_bwd_triton(dout, **x, **flags, **plan, **options)
    named = {name: grad.reshape(inputs[name].shape)
             for name, grad in zip(GRAD_NAMES, grads) if inputs[name] is not None}
    assert_close_all(case, (out, last, named), want)


# Programs of two channels, of one (the prefetch re-reads its own channel) and one chunk
PREFETCH_CASES = [
    (_all(ScanCase(2, 4, 64, 16, groups=2, reverse=True)), {"chunk": 16}),
    (_all(ScanCase(2, 2, 343, 4)), {"chunk": 64, "channel_block": 1}),
    (_all(ScanCase(2, 4, 343, 16, dtype=torch.bfloat16, groups=2)), {"chunk": 64}),
    (_all(ScanCase(1, 3, 45, 16, reverse=True)), {}),
]


@pytest.mark.parametrize(("prefetch", "ahead"), [(False, None), (True, 0), (True, 1),
                                                 (True, 2)])
@pytest.mark.parametrize(("case", "plan"), PREFETCH_CASES,
                         ids=[c.id for c, _ in PREFETCH_CASES])
def test_backward_with_and_without_prefetch(case: ScanCase, plan: dict, prefetch: bool,
                                            ahead: int | None) -> None:
    # the default reads ahead the channel vectors, and for fp32 A and the boundary states
    # too (ahead=2): here every setting for each dtype
    _check_backward_options(case, plan, prefetch=prefetch, ahead=ahead)


@pytest.mark.parametrize("cache_ahead", [False, True])
@pytest.mark.parametrize(("case", "plan"), PREFETCH_CASES,
                         ids=[c.id for c, _ in PREFETCH_CASES])
def test_backward_with_and_without_boundary_states_cached_ahead(case: ScanCase, plan: dict,
                                                                cache_ahead: bool) -> None:
    # the default for 2-byte inputs (ahead 0) asks for the next channel's boundary states
    # in L1: a hint that must not change a gradient (compiled out in the interpreter, which
    # cannot run its inline PTX)
    _check_backward_options(case, plan, ahead=0, cache_ahead=cache_ahead)


@pytest.mark.parametrize(("dtype", "ahead", "expected"), [
    (torch.float32, None, False), (torch.bfloat16, None, True), (torch.float16, 1, True),
    (torch.bfloat16, 2, False)])
def test_boundary_states_cached_ahead_where_not_held_ahead(dtype: torch.dtype,
                                                           ahead: int | None,
                                                           expected: bool) -> None:
    resolved = bwd_options.resolve_options(dtype, 128, 262144, 64, "auto", ahead, None,
                                           "auto", None, "auto")
    assert resolved[1] is expected


def test_backward_refuses_a_cache_ahead_that_is_not_a_bool() -> None:
    with pytest.raises(ValueError, match="^cache_ahead: expected True, False or None, got 1"):
        bwd_options.resolve_options(torch.float32, 2, 64, 2, "auto", None, 1, "auto", None,
                                    "auto")


# chunks of 2 positions: too short to group by four, "groups" takes the shifted load; bf16
# chunks of 4 (groups of 4 where the layout would hold 8) and of 8 (one group a row)
ADJOINT_CASES = PREFETCH_CASES + [
    (_all(ScanCase(1, 2, 9, 4, reverse=True)), {"chunk": 2}),
    (_all(ScanCase(1, 2, 37, 4, dtype=torch.bfloat16)), {"chunk": 4}),
    (_all(ScanCase(1, 2, 37, 16, dtype=torch.bfloat16, reverse=True)), {"chunk": 8}),
]


@pytest.mark.parametrize("adjoint", ["groups", "shifted"])
@pytest.mark.parametrize(("case", "plan"), ADJOINT_CASES,
                         ids=[c.id for c, _ in ADJOINT_CASES])
def test_backward_adjoint_from_either_decays(case: ScanCase, plan: dict,
                                             adjoint: str) -> None:
    # "auto" takes "groups": here both for each dtype and direction
    _check_backward_options(case, plan, adjoint=adjoint)


# whole chunks (fp32, and bf16 under reverse) and a partial last chunk, which keeps its
# masks whatever `unmasked` says
UNMASKED_CASES = [
    (_all(ScanCase(2, 4, 128, 16)), {"chunk": 32}),
    (_all(ScanCase(1, 4, 128, 16, dtype=torch.bfloat16, reverse=True)), {"chunk": 64}),
    (_all(ScanCase(1, 2, 100, 4)), {"chunk": 32}),
]


@pytest.mark.parametrize("unmasked", [False, True])
@pytest.mark.parametrize(("case", "plan"), UNMASKED_CASES,
                         ids=[c.id for c, _ in UNMASKED_CASES])
def test_backward_with_and_without_position_masks(case: ScanCase, plan: dict,
                                                  unmasked: bool) -> None:
    # "auto" drops them for 4-byte inputs where the chunks are whole: here both ways for
    # each dtype
    _check_backward_options(case, plan, unmasked=unmasked)


def test_backward_refuses_unknown_adjoint() -> None:
    case = ScanCase(1, 2, 16, 4)
    x = _four_d(case.inputs(DEVICE))
    dout = torch.zeros_like(x["u"])
    with pytest.raises(ValueError, match="^adjoint: expected one of"):
        selective_scan_bwd_triton(dout, **x, delta_softplus=False, reverse=False,
                                  adjoint="tile")


def test_backward_refuses_unknown_read_ahead() -> None:
    case = ScanCase(1, 2, 16, 4)
    x = _four_d(case.inputs(DEVICE))
    dout = torch.zeros_like(x["u"])
    with pytest.raises(ValueError, match="^ahead: expected 0, 1, 2 or None, got 3"):
        selective_scan_bwd_triton(dout, **x, delta_softplus=False, reverse=False, ahead=3)
