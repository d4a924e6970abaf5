"""The backward's sums over partial-sum rows (triton_sums.sum_sources and its caller in
bwd_state_grads) against torch's sums: one or two buffers summed in one launch, up to five
outputs at offsets into the rows, rows and columns not multiples of the kernel's tiles,
tall buffers beside short ones, outputs in bf16, fresh allocations. The whole backward,
which runs them, is tested in test_triton.py."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")

from medmamba_kernels.selective_scan import bwd_state_grads  # noqa: E402
from medmamba_kernels.selective_scan.triton_sums import (  # noqa: E402
    _cols_tile, _splits, sum_sources)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    tol = 1e-5 if got.dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, want.to(got.dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("rows", [1, 7, 33, 100, 1500])  # 1500: spans of rows
@pytest.mark.parametrize("widths", [(5,), (300, 17), (40, 3, 3)])
def test_row_sums_into_nan_poisoned_outputs_match_torch(rows, widths) -> None:
    gen = torch.Generator().manual_seed(rows * 31 + len(widths))
    row_stride = sum(widths) + 2  # a row longer than the columns read
    x = torch.randn(rows, row_stride, generator=gen).to(DEVICE)
    offsets = [sum(widths[:k]) for k in range(len(widths))]
    outs = [torch.full((w,), float("nan"), device=DEVICE) for w in widths]
    outputs = [(o, at, w) for o, at, w in zip(outs, offsets, widths)]
    sum_sources([(x, rows, row_stride, outputs)])
    for out, at, width in zip(outs, offsets, widths):
        _close(out, x[:, at:at + width].sum(0))


@pytest.mark.parametrize("rows", [3, 600])  # 600: spans of rows
def test_two_outputs_far_apart_as_db_and_dc_match_torch(rows) -> None:
    # the dB/dC buffer: (2, rows, M), dC's rows from element rows * M on
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(2, rows, 13, generator=gen).to(DEVICE)
    first, second = (torch.full((13,), float("nan"), device=DEVICE) for _ in range(2))
    sum_sources([(x, rows, 13, [(first, 0, 13), (second, rows * 13, 13)])])
    _close(first, x[0].sum(0))
    _close(second, x[1].sum(0))


def test_outputs_of_other_dtypes_get_the_fp32_sum_rounded() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 700, generator=gen).to(DEVICE)  # (outputs, rows, columns)
    first = torch.full((700,), float("nan"), device=DEVICE, dtype=torch.bfloat16)
    second = torch.full((700,), float("nan"), device=DEVICE, dtype=torch.float16)
    sum_sources([(x, 5, 700, [(first, 0, 700), (second, 5 * 700, 700)])])
    _close(first, x[0].sum(0))
    _close(second, x[1].sum(0))


@pytest.mark.parametrize("rows", [(7, 19), (1500, 7), (3, 600), (600, 600)])  # spans
def test_two_buffers_of_other_shapes_summed_in_one_call_match_torch(rows) -> None:
    gen = torch.Generator().manual_seed(rows[0] + 7 * rows[1])
    first = torch.randn(rows[0], 50, generator=gen).to(DEVICE)
    second = torch.randn(2, rows[1], 33, generator=gen).to(DEVICE)  # (outputs, rows, cols)
    widths = (20, 9, 12)  # from the first buffer, the first output not at its rows' start
    outs = [torch.full((w,), float("nan"), device=DEVICE) for w in widths]
    dB = torch.full((33,), float("nan"), device=DEVICE, dtype=torch.bfloat16)
    dC = torch.full((33,), float("nan"), device=DEVICE)
    sum_sources([(first, rows[0], 50, [(outs[0], 3, 20), (outs[1], 23, 9), (outs[2], 38, 12)]),
                 (second, rows[1], 33, [(dB, 0, 33), (dC, rows[1] * 33, 33)])])
    for out, at, width in zip(outs, (3, 23, 38), widths):
        _close(out, first[:, at:at + width].sum(0))
    _close(dB, second[0].sum(0))
    _close(dC, second[1].sum(0))


@pytest.mark.parametrize("has_d, has_bias", [(True, True), (True, False), (False, True),
                                             (False, False)])
@pytest.mark.parametrize("blocks", [1, 3])
def test_partial_grads_are_the_rows_sums_each_its_own_allocation(has_d, has_bias,
                                                                 blocks) -> None:
    dim, n_state, rows = 6, 4, 45
    shape = (2, 2, n_state, 37)  # (batch, groups, N, L)
    gen = torch.Generator().manual_seed(5 + blocks)
    sizes = bwd_state_grads.parameter_grad_sizes((dim, n_state), has_d, has_bias)
    part = torch.randn(rows, sum(sizes), generator=gen).to(DEVICE)
    B = torch.empty(shape, device=DEVICE, dtype=torch.bfloat16)
    C = torch.empty(shape, device=DEVICE, dtype=torch.float32)
    dB_part, dC_part, shift = bwd_state_grads.state_grad_buffers(B, C, blocks, B.device)
    if blocks > 1:
        dB_part.copy_(torch.randn(dB_part.shape, generator=gen))
    dA, dD, dbias, dB, dC = bwd_state_grads.sum_partial_grads(
        part, (dim, n_state), has_d, has_bias, dB_part, dC_part, shift, B, C)
    want = part.sum(0).split(sizes)
    _close(dA, want[0].view(dim, n_state))
    assert (dD is not None) == has_d and (dbias is not None) == has_bias
    if has_d:
        _close(dD, want[1])
    if has_bias:
        _close(dbias, want[-1])
    assert (dB.shape, dB.dtype, dC.shape, dC.dtype) == (shape, B.dtype, shape, C.dtype)
    if blocks == 1:  # the kernel wrote the gradients themselves: nothing to sum
        assert shift == 0 and dB is dB_part and dC is dC_part
    else:
        _close(dB, dB_part[0].sum(0))
        _close(dC, dB_part[1].sum(0))
    grads = [g for g in (dA, dD, dbias, dB, dC) if g is not None]
    assert len({g.untyped_storage().data_ptr() for g in grads}) == len(grads)


def test_launches_hold_only_programs_with_work(monkeypatch) -> None:
    # a tall, narrow buffer (spans) beside a short, wide one: every program launched sums
    # some output's columns; a grid boxed over the widest output, the most spans and every
    # output ran tens of thousands of empty programs on bench row 2 (session 41)
    from medmamba_kernels.selective_scan import triton_sums

    grids = []
    real = triton_sums._row_sums_launcher.keyed
    monkeypatch.setattr(triton_sums._row_sums_launcher, "keyed",
                        lambda key, grid, *rest: (grids.append(grid), real(key, grid, *rest)))
    narrow = torch.randn(600, 50).to(DEVICE)
    wide = torch.randn(2, 3, 5000).to(DEVICE)
    outs = [torch.empty(w, device=DEVICE) for w in (40, 10, 5000, 5000)]
    sum_sources([(narrow, 600, 50, [(outs[0], 0, 40), (outs[1], 40, 10)]),
                 (wide, 3, 5000, [(outs[2], 0, 5000), (outs[3], 15000, 5000)])])
    narrow_tile, wide_tile = _cols_tile(40), _cols_tile(5000)
    spans = _splits(600, triton.cdiv(40, narrow_tile))
    assert spans > 1 and _splits(3, triton.cdiv(5000, wide_tile)) == 1
    work = (spans * (triton.cdiv(40, narrow_tile) + triton.cdiv(10, narrow_tile))
            + 2 * triton.cdiv(5000, wide_tile))
    assert grids[0] == (work,)  # the spans, and the short buffer's sums at once
    assert grids[1] == (triton.cdiv(40, narrow_tile) + triton.cdiv(10, narrow_tile),)
    _close(outs[0], narrow[:, :40].sum(0))
    _close(outs[3], wide[1].sum(0))


def test_column_tiles_leave_enough_programs_for_tall_buffers() -> None:
    assert _cols_tile(64 * 16) == 16  # bench row 1's dA: 64 programs of 8192 rows
    assert _cols_tile(264 * 32) == 32  # the widest tile that still gives 264 programs
    assert _cols_tile(2 * 16 * 4096 * 8) == 256


def test_tall_buffers_split_their_rows_into_spans_of_at_least_256() -> None:
    assert _splits(255, 1) == 1 and _splits(511, 1) == 1  # short: summed whole
    assert _splits(1500, 1) == 5  # as many spans as 256 rows allow
    assert _splits(8192, 72) == 8  # bench row 1's dA: 576 programs
    assert _splits(32768, 54) == 10


def test_more_than_five_outputs_or_two_buffers_is_an_error() -> None:
    x = torch.zeros(2, 8, device=DEVICE)
    out = torch.empty(2, device=DEVICE)
    with pytest.raises(ValueError, match="5 outputs at most"):
        sum_sources([(x, 2, 8, [(out, 0, 2)] * 6)])
    with pytest.raises(ValueError, match="one or two sources"):
        sum_sources([(x, 2, 8, [(out, 0, 2)])] * 3)
    with pytest.raises(ValueError, match="each with outputs"):
        sum_sources([(x, 2, 8, [(out, 0, 2)]), (x, 2, 8, [])])
