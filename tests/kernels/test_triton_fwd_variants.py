"""Triton forward variants ("chunked", "deferred", "reload", "rows", "serial") vs the
sequential reference, and the choice "auto" makes between them.

test_triton.py runs the default ("auto") with gradients; the variants differ in the
forward only (the backward is shared; its boundary states by "serial" are tested there),
so out and last_state are compared here, also for "chunked" by how it finds its chunks'
entering states. Cases span several chunks (one-chunk sequences
take the output kernel in every variant; "reload", "rows" and "serial" change that kernel,
so one-chunk cases are here too); "serial" meets partial blocks of positions at L = 70,
343 and 45.
"""

from __future__ import annotations

import os

import pytest
import torch

from scan_cases import TOLERANCE, ScanCase, relative_error

pytest.importorskip("triton")

from medmamba_kernels.selective_scan import (  # noqa: E402
    serial_planning, triton_fwd, triton_fwd_rows, triton_fwd_serial)
from medmamba_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402
from medmamba_kernels.selective_scan.triton_fwd import selective_scan_fwd_triton  # noqa: E402
from test_triton import _all, _fast_interpreter, _four_d  # noqa: E402, F401  (fixture)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

CASES = [
    (_all(ScanCase(2, 3, 100, 4)), {"chunk": 16}),
    (_all(ScanCase(2, 4, 64, 16, groups=2, reverse=True)), {"chunk": 16}),
    (ScanCase(1, 2, 70, 4, has_z=True, softplus=True, last_state=True),
     {"chunk": 16, "carry_block": 2}),
    (_all(ScanCase(1, 6, 300, 16, groups=3)), {"chunk": 32, "channel_block": 2}),
    (_all(ScanCase(1, 2, 1100, 16, reverse=True)), {}),  # default plan: chunks of 128
    (ScanCase(1, 4, 343, 8, groups=2, has_D=True, reverse=True, last_state=True),
     {"chunk": 64}),
    (_all(ScanCase(2, 4, 343, 16, dtype=torch.bfloat16, groups=2)), {"chunk": 64}),
    (_all(ScanCase(1, 2, 200, 4, dtype=torch.bfloat16, reverse=True)), {"chunk": 32}),
    (ScanCase(2, 3, 150, 8, dtype=torch.float16, has_z=True, softplus=True), {"chunk": 32}),
    (_all(ScanCase(2, 3, 45, 16, groups=3, last_state=True)), {"chunk": 64, "channel_block": 1}),
    # N not a power of two: padded states must stay 0
    (_all(ScanCase(1, 3, 90, 5, reverse=True)), {"chunk": 32}),
]


@pytest.mark.parametrize("variant", ["chunked", "deferred", "reload", "rows", "serial"])
@pytest.mark.parametrize(("case", "plan"), CASES, ids=[c.id for c, _ in CASES])
def test_forward_variant_matches_reference(variant: str, case: ScanCase, plan: dict) -> None:
    inputs = case.inputs(DEVICE)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    want, want_last = selective_scan_reference(**inputs, **flags, return_last_state=True)
    x = _four_d(inputs)
    out = torch.full(x["u"].shape, float("nan"), dtype=x["u"].dtype, device=DEVICE)
    got, last = selective_scan_fwd_triton(**x, **flags, out=out, variant=variant, **plan)
    assert got.data_ptr() == out.data_ptr() and last.dtype == torch.float32
    tol = TOLERANCE[case.dtype]
    errors = {"out": relative_error(got, want), "last_state": relative_error(last, want_last)}
    assert all(e <= tol for e in errors.values()), f"{variant} {case.id}: {errors}"


@pytest.mark.parametrize(("reverse", "chunk", "warps"), [
    (False, 256, 2), (True, 256, 2), (True, 4096, 16)], ids=str)
def test_rows_variant_at_long_chunks_over_several_warps(reverse: bool, chunk: int, warps: int) -> None:
    """The bench also times "rows" at long chunks on several warps (scans across warps;
    4096: the whole sequence in one chunk, one launch)."""
    case = _all(ScanCase(1, 3, 600, 16, groups=1, reverse=reverse))
    inputs = case.inputs(DEVICE)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    want, want_last = selective_scan_reference(**inputs, **flags, return_last_state=True)
    out = torch.full(inputs["u"].shape, float("nan"), dtype=inputs["u"].dtype, device=DEVICE)
    got, last = selective_scan_fwd_triton(**_four_d(inputs), **flags, out=out, variant="rows",
                                          chunk=chunk, num_warps=warps)
    tol = TOLERANCE[case.dtype]
    assert relative_error(got, want) <= tol and relative_error(last, want_last) <= tol


def _record_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list:
    """Calls of triton_fwd's ``name`` (still run), recorded into the returned list."""
    real = getattr(triton_fwd, name)
    calls = []

    def recording(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_fwd, name, recording)
    return calls


@pytest.mark.parametrize(("dtype", "expected"), [
    (torch.float32, "deferred"), (torch.bfloat16, "chunked"), (torch.float16, "chunked"),
], ids=str)
def test_auto_picks_the_variant_measured_faster_for_the_dtype(
        dtype: torch.dtype, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    deferred_calls = _record_calls(monkeypatch, "deferred_forward")
    x = _four_d(ScanCase(1, 2, 64, 4, dtype=dtype).inputs(DEVICE))
    selective_scan_fwd_triton(**x, delta_softplus=False, reverse=False, chunk=16)
    assert ("deferred" if deferred_calls else "chunked") == expected


@pytest.mark.parametrize(("dtype", "length", "expected"), [
    (torch.float32, 200, "deferred"), (torch.bfloat16, 200, "rows"),
    (torch.float16, 65, "rows"), (torch.bfloat16, 64, "chunked"),
    (torch.float16, 7, "chunked"),
], ids=str)
def test_auto_on_one_chunk_takes_rows_for_two_byte_inputs_past_64(
        dtype: torch.dtype, length: int, expected: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # up to TILE_MAX_LENGTH positions the tile kernel was faster (session 34)
    rows_calls = _record_calls(monkeypatch, "launch_rows_output")
    case = ScanCase(1, 2, length, 4, dtype=dtype)
    inputs = case.inputs(DEVICE)
    want = selective_scan_reference(**inputs, delta_softplus=False, reverse=False)
    got, _ = selective_scan_fwd_triton(**_four_d(inputs), delta_softplus=False, reverse=False)
    # fp32: one chunk runs the tile output kernel whether "deferred" or "chunked" is named
    assert bool(rows_calls) == (expected == "rows")
    assert triton_fwd.auto_variant(dtype, n_chunks=1, sequences=2, length=length,
                                   per_group=2) == expected
    assert relative_error(got, want) <= TOLERANCE[dtype]


@pytest.mark.parametrize(("sequences", "n_chunks", "expected"), [
    (1536, 1, 1), (4096, 1, 1), (1024, 1, 4), (4096, 2, 4),
])
def test_rows_of_one_chunk_take_one_warp_where_many(sequences: int, n_chunks: int,
                                                    expected: int) -> None:
    plan = triton_fwd.plan_launch(1, sequences, 1, 512 * n_chunks, 512, None, None, 4, 16)
    assert triton_fwd_rows.rows_num_warps(sequences, plan) == expected


@pytest.mark.parametrize(("dtype", "sequences", "length", "per_group", "expected"), [
    (torch.float32, 128, 16384, 64, "serial"), (torch.bfloat16, 128, 262144, 64, "serial"),
    (torch.float32, 48, 2_097_152, 48, "serial"), (torch.bfloat16, 48, 2_097_152, 48, "serial"),
    (torch.float32, 512, 4096, 256, "serial"), (torch.bfloat16, 512, 4096, 256, "serial"),
    (torch.bfloat16, 1024, 2048, 512, "serial"), (torch.float32, 1024, 1024, 512, "deferred"),
    (torch.float32, 256, 4096, 128, "deferred"), (torch.bfloat16, 64, 16384, 64, "chunked"),
    (torch.bfloat16, 128, 262144, 16, "chunked"), (torch.float32, 128, 262144, 16, "deferred"),
], ids=str)
def test_auto_takes_serial_for_long_sequences(dtype: torch.dtype, sequences: int, length: int,
                                              per_group: int, expected: str) -> None:
    # measured (bench_serial_threshold.py, session 23): "serial" faster on every shape of
    # 2**21 elements or more from L = 2048 on (fp32 with 48 channels a group too since
    # session 25); slower or level under that; under 32 channels a group (multi-head
    # scans' small heads) a warp would idle
    assert triton_fwd.auto_variant(dtype, 8, sequences, length, per_group) == expected


def test_auto_dispatches_a_long_sequence_to_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    # dispatch only (the serial kernel's results are checked above): a stand-in records
    # the call instead of interpreting 65,536 steps
    calls = []
    monkeypatch.setattr(triton_fwd, "serial_forward",
                        lambda *args, **kwargs: calls.append(kwargs))
    x = _four_d(ScanCase(1, 32, 65536, 1).inputs(DEVICE))
    selective_scan_fwd_triton(**x, delta_softplus=False, reverse=False)
    assert len(calls) == 1 and calls[0]["chunk"] is None


@pytest.mark.parametrize(
    ("length", "dim", "dtype", "chunk", "keeps", "want_chunk", "want_ti", "want_agg_ti"), [
        (2_097_152, 48, torch.bfloat16, None, False, 256, 8, 8),  # capped (bench row 6)
        (512, 512, torch.float32, None, False, 64, 8, 4),  # aggregate: 16 bytes
        (512, 512, torch.float32, None, True, 64, 8, 4),
        (2_097_152, 48, torch.float32, None, True, 256, 8, 4),  # a partial channel block
        (2_097_152, 48, torch.float32, None, False, 256, 8, 4),
        (100, 4, torch.bfloat16, 4, False, 4, 4, 4),  # a given chunk shorter than a load
        (100, 4, torch.float32, 12, False, 12, 4, 4),  # the largest power of two dividing it
        (100, 4, torch.bfloat16, 12, False, 12, 4, 4),
    ], ids=str)
def test_serial_plan_sizes(length: int, dim: int, dtype: torch.dtype, chunk: int | None,
                           keeps: bool, want_chunk: int, want_ti: int,
                           want_agg_ti: int) -> None:
    plan = triton_fwd_serial.serial_plan(1, dim, 1, length, dtype, chunk=chunk,
                                         keeps_states=keeps)
    assert (plan.chunk, plan.ti, plan.agg_ti) == (want_chunk, want_ti, want_agg_ti)
    assert plan.n_chunks == -(-length // want_chunk)


@pytest.mark.parametrize(("dim", "dtype", "keeps", "want_vec"), [
    (64, torch.bfloat16, False, 4), (64, torch.bfloat16, True, 4), (64, torch.float32, True, 4),
    (48, torch.bfloat16, True, 4), (48, torch.bfloat16, False, 4),  # a partial block
], ids=str)
def test_serial_plan_vector_positions(dim: int, dtype: torch.dtype, keeps: bool,
                                      want_vec: int) -> None:
    plan = triton_fwd_serial.serial_plan(1, dim, 1, 2_097_152, dtype, keeps_states=keeps)
    assert plan.vec == want_vec


@pytest.mark.parametrize(("dtype", "dim", "keeps", "want_bc", "want_agg_bc"), [
    (torch.bfloat16, 64, False, 2, 2), (torch.float16, 64, False, 2, 2),
    (torch.bfloat16, 64, True, 1, 2),  # kept states: 1 in the output pass
    (torch.bfloat16, 48, True, 1, 2),  # ... also for a partial channel block
    (torch.float32, 64, False, 1, 1), (torch.float32, 48, True, 1, 1),
], ids=str)
def test_serial_plan_bc_positions(dtype: torch.dtype, dim: int, keeps: bool, want_bc: int,
                                  want_agg_bc: int) -> None:
    plan = triton_fwd_serial.serial_plan(1, dim, 1, 2_097_152, dtype, keeps_states=keeps)
    assert (plan.bc, plan.agg_bc) == (want_bc, want_agg_bc)
    assert plan.loads(aggregate=False, adjoint=False)[2] == want_bc
    assert plan.loads(aggregate=True, adjoint=True)[2] == want_agg_bc
    given = triton_fwd_serial.serial_plan(1, dim, 1, 4096, dtype, bc=4, chunk=64, ti=2)
    assert given.loads(aggregate=False, adjoint=False)[2] == 2  # at most a block's


@pytest.mark.parametrize(("n_state", "block_d", "num_warps", "want"), [
    (16, 32, 1, (4, 4)), (16, 8, 1, (4, 4)),  # 4 state groups x 8 channels: a full warp
    (16, 2, 1, (1, 4)), (16, 8, 2, (1, 4)),  # fewer lanes than the warps: 1 a load
    (5, 32, 1, (4, 2)), (5, 8, 1, (1, 2)), (4, 32, 1, (4, 1)), (1, 16, 1, (1, 1)),
], ids=str)
def test_bc_tiles_take_several_positions_only_on_full_warps(
        n_state: int, block_d: int, num_warps: int, want: tuple[int, int]) -> None:
    assert serial_planning.bc_tiles(4, n_state, block_d, num_warps) == want


# bc > 1 reaches the kernel where G x BLOCK_D fills the warp (`bc_tiles`): the first four
BC_CASES = [
    _all(ScanCase(1, 40, 77, 16, dtype=torch.bfloat16, last_state=True)),  # masked channels
    _all(ScanCase(1, 40, 77, 5, reverse=True, last_state=True)),  # padded states
    _all(ScanCase(2, 16, 343, 16, groups=2, dtype=torch.bfloat16)),  # 8 channels a group
    ScanCase(1, 64, 99, 4, has_D=True, reverse=True, last_state=True),  # one state group
    _all(ScanCase(2, 4, 70, 16, groups=2, reverse=True, last_state=True)),
    ScanCase(1, 3, 45, 2, dtype=torch.float16, has_z=True, last_state=True),
]


@pytest.mark.parametrize("bc", [2, 4, 8])
@pytest.mark.parametrize("case", BC_CASES, ids=[c.id for c in BC_CASES])
def test_serial_reads_b_and_c_several_positions_a_load(bc: int, case: ScanCase) -> None:
    # every pass of "serial" with B/C read bc positions at a time (tail blocks clamp them)
    inputs = case.inputs(DEVICE)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    want, want_last = selective_scan_reference(**inputs, **flags, return_last_state=True)
    x = _four_d(inputs)
    out = torch.full(x["u"].shape, float("nan"), dtype=x["u"].dtype, device=DEVICE)
    last = torch.full(want_last.shape, float("nan"), device=DEVICE)
    triton_fwd_serial.serial_forward(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"],
                                     x["z"], x["delta_bias"], **flags, out=out,
                                     last_state=last, chunk=32, bc=bc)
    tol = TOLERANCE[case.dtype]
    errors = {"out": relative_error(out, want), "last_state": relative_error(last, want_last)}
    assert all(e <= tol for e in errors.values()), f"bc {bc} {case.id}: {errors}"


@pytest.mark.parametrize(("dtype", "even_d", "forward_aggregate", "want"), [
    (torch.bfloat16, True, False, True), (torch.float16, True, True, True),
    (torch.bfloat16, False, True, False), (torch.float32, True, False, False),
    (torch.float32, True, True, True), (torch.float32, False, True, False)])
def test_serial_blocks_go_unmasked_where_measured_faster(
        dtype: torch.dtype, even_d: bool, forward_aggregate: bool, want: bool) -> None:
    # measured per dtype and pass (session 30); both kinds of launch meet the reference
    assert serial_planning.unmasked_blocks(dtype, even_d, forward_aggregate) is want


def test_serial_plan_refuses_bad_positions_a_load() -> None:
    with pytest.raises(ValueError, match="^ti: expected a power of two, got 3"):
        triton_fwd_serial.serial_plan(1, 4, 1, 100, torch.float32, ti=3)
    with pytest.raises(ValueError, match="^chunk: expected a multiple of 8, got 12"):
        triton_fwd_serial.serial_plan(1, 4, 1, 100, torch.float32, chunk=12, ti=8)
    with pytest.raises(ValueError, match="^bc: expected a power of two, got 3"):
        triton_fwd_serial.serial_plan(1, 4, 1, 100, torch.float32, bc=3)


def test_serial_with_a_chunk_shorter_than_a_load() -> None:
    case = ScanCase(1, 2, 30, 4, dtype=torch.bfloat16, has_z=True, softplus=True)
    inputs = case.inputs(DEVICE)
    flags = {"delta_softplus": True, "reverse": False}
    want = selective_scan_reference(**inputs, **flags)
    got, _ = selective_scan_fwd_triton(**_four_d(inputs), **flags, variant="serial", chunk=4)
    assert relative_error(got, want) <= TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("boundary", ["tile", "carried"])
@pytest.mark.parametrize(("case", "plan"), CASES, ids=[c.id for c, _ in CASES])
def test_chunked_forward_by_boundary_states_matches_reference(
        boundary: str, case: ScanCase, plan: dict) -> None:
    # the entering states by the two-launch passes or by the walk over each row's chunks
    inputs = case.inputs(DEVICE)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    want, want_last = selective_scan_reference(**inputs, **flags, return_last_state=True)
    x = _four_d(inputs)
    out = torch.full(x["u"].shape, float("nan"), dtype=x["u"].dtype, device=DEVICE)
    got, last = selective_scan_fwd_triton(**x, **flags, out=out, variant="chunked",
                                          boundary=boundary, **plan)
    tol = TOLERANCE[case.dtype]
    errors = {"out": relative_error(got, want), "last_state": relative_error(last, want_last)}
    assert all(e <= tol for e in errors.values()), f"{boundary} {case.id}: {errors}"


@pytest.mark.parametrize(("sequences", "walks"), [(1, False), (4, True)])
def test_auto_walks_the_chunks_where_the_rule_says(
        monkeypatch: pytest.MonkeyPatch, sequences: int, walks: bool) -> None:
    # the rule itself is walk_pays (test_triton_chunks_carried.py); here its dispatch
    monkeypatch.setattr(triton_fwd, "walk_pays", lambda n, chunks, bwd, size: n >= 4 and not bwd)
    walk_calls = _record_calls(monkeypatch, "carried_boundary_states")
    tile_calls = _record_calls(monkeypatch, "chunk_boundary_states")
    x = _four_d(ScanCase(1, sequences, 64, 4, dtype=torch.bfloat16).inputs(DEVICE))
    selective_scan_fwd_triton(**x, delta_softplus=False, reverse=False, chunk=16)
    assert (len(walk_calls), len(tile_calls)) == ((1, 0) if walks else (0, 1))


def test_auto_takes_chunked_for_fp32_where_the_walk_pays() -> None:
    # two launches against "deferred"'s three, and level or faster (session 42)
    assert triton_fwd.auto_variant(torch.float32, 5, 1024, 640, 512) == "chunked"
    assert triton_fwd.auto_variant(torch.float32, 8, 1024, 1024, 512) == "deferred"
    assert triton_fwd.auto_variant(torch.float32, 5, 256, 640, 128) == "deferred"


def test_unknown_boundary_is_refused() -> None:
    x = _four_d(ScanCase(1, 2, 8, 2).inputs(DEVICE))
    with pytest.raises(ValueError, match="^boundary: expected one of"):
        selective_scan_fwd_triton(**x, delta_softplus=False, reverse=False, boundary="walk")


def test_unknown_variant_is_refused() -> None:
    x = _four_d(ScanCase(1, 2, 8, 2).inputs(DEVICE))
    with pytest.raises(ValueError, match="^variant: expected one of"):
        selective_scan_fwd_triton(**x, delta_softplus=False, reverse=False, variant="fast")


@pytest.mark.skipif(DEVICE == "cpu", reason="1536 sequences: minutes in the interpreter")
def test_rows_of_one_warp_match_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 x 768 sequences of 200 positions in bf16: "rows" on programs of one warp
    rows_calls = _record_calls(monkeypatch, "launch_rows_output")
    case = ScanCase(2, 768, 200, 16, dtype=torch.bfloat16, softplus=True)
    inputs = case.inputs(DEVICE)
    want = selective_scan_reference(**inputs, delta_softplus=True, reverse=False)
    got, _ = selective_scan_fwd_triton(**_four_d(inputs), delta_softplus=True, reverse=False)
    assert rows_calls
    assert relative_error(got, want) <= TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("variant", ["serial", "deferred", "rows", "chunked"])
def test_a_forward_not_asked_for_last_state_returns_the_same_output(variant: str) -> None:
    # the kernels still write last_state, to a buffer the call does not return
    case = ScanCase(2, 4, 150, 8, has_z=True, softplus=True)
    x = _four_d(case.inputs(DEVICE))
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse, "variant": variant,
             "chunk": 32}
    out, last = selective_scan_fwd_triton(**x, **flags)
    got = selective_scan_fwd_triton(**x, **flags, return_last_state=False)
    assert got[1] is None and torch.equal(got[0], out)
    kept = selective_scan_fwd_triton(**x, **flags, keep_states=True, return_last_state=False)
    assert len(kept) == 3 and kept[1] is None and torch.equal(kept[0], out)
