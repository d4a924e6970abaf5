"""Sums over the rows of a partial-sum buffer into up to three outputs, in one launch.

The backward's main kernel writes per-program partial sums (fp32): one row a (batch,
chunk) of dA, dD and ddelta_bias, and per channel block the dB and dC of a group. Summed
here by a Triton kernel rather than torch, so that the whole backward host function is
allocations and CachedLaunch launches, which replay.py can repeat per signature: the
torch sums and the casts, splits and views around them cost the host more than the
launch that replaces them, and an eager training step runs the backward on the autograd
engine's device thread, where host time weighs more (kernels README, "The public call").

Each output k takes `cols_k` columns of the buffer, from element `x_offsets[k]` of its
first row, rows `row_stride` elements apart: out_k[j] = sum_r x[x_offset_k + r *
row_stride + j], summed in fp32 in a fixed order (tiles of rows summed as a tree, the
tiles added in turn; a tall buffer's spans of rows summed apart, then together:
deterministic, no atomics) and stored in out_k's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch

_MIN_PROGRAMS = 264  # two an SM of an H100 / H200
_MIN_SPLIT_ROWS = 256  # rows a span at least, where a tall buffer's rows are split
_TILE_ELEMENTS = 2048  # a program's (rows, columns) tile of loads: 16 values a thread


@triton.jit
def _row_sums_kernel(
    x_ptr, out0_ptr, out1_ptr, out2_ptr,
    rows, row_stride, x_offset1, x_offset2, cols0, cols1, cols2, rows_per_split,
    out_split_stride,
    ROWS_TILE: tl.constexpr, COLS_TILE: tl.constexpr,
):
    block = tl.program_id(0)
    k = tl.program_id(1)  # which output
    split = tl.program_id(2).to(tl.int64)  # which span of rows (each into its own row)
    x_offset = tl.where(k == 0, 0, tl.where(k == 1, x_offset1, x_offset2)).to(tl.int64)
    cols = tl.where(k == 0, cols0, tl.where(k == 1, cols1, cols2))
    offs_c = block * COLS_TILE + tl.arange(0, COLS_TILE)
    mask_c = offs_c < cols
    offs_r = tl.arange(0, ROWS_TILE)
    first = split * rows_per_split
    end = tl.minimum(first + rows_per_split, rows)
    acc = tl.zeros([COLS_TILE], dtype=tl.float32)
    if block * COLS_TILE < cols:
        for start in range(first, end, ROWS_TILE):
            r = start + offs_r
            mask = (r < end)[:, None] & mask_c[None, :]
            tile = tl.load(x_ptr + x_offset + r[:, None] * row_stride + offs_c[None, :],
                           mask=mask, other=0.0)
            acc += tl.sum(tile.to(tl.float32), axis=0)
        at = split * out_split_stride + offs_c
        # each output's own store: their dtypes may differ (dB and dC)
        if k == 0:
            tl.store(out0_ptr + at, acc, mask=mask_c)
        elif k == 1:
            tl.store(out1_ptr + at, acc, mask=mask_c)
        else:
            tl.store(out2_ptr + at, acc, mask=mask_c)


_row_sums_launcher = CachedLaunch(_row_sums_kernel)


def _cols_tile(widest: int) -> int:
    """Columns a program: the widest that still gives `_MIN_PROGRAMS` blocks, 16 to 256
    (a short, wide buffer: many columns a program; a tall, narrow one: few, and its rows
    split besides)."""
    tile = 256
    while tile > 16 and triton.cdiv(widest, tile) < _MIN_PROGRAMS:
        tile //= 2
    return tile


def _splits(rows: int, column_blocks: int) -> int:
    """Spans of rows summed apart (then their sums summed): enough programs for a tall
    buffer (bench row 1's dA partials: 8192 rows of 1152 columns, 72 column blocks, took
    190 us summed whole against torch's 25, session 40), spans of at least
    `_MIN_SPLIT_ROWS` rows."""
    most = rows // _MIN_SPLIT_ROWS
    return max(1, min(most, triton.cdiv(2 * _MIN_PROGRAMS, column_blocks)))


def _launch(x, rows, row_stride, outputs, rows_per_split, splits, out_split_stride) -> None:
    padded = outputs + [outputs[-1]] * (3 - len(outputs))
    (out0, _, cols0), (out1, off1, cols1), (out2, off2, cols2) = padded
    widest = max(cols for _, _, cols in outputs)
    tile = _cols_tile(widest)
    rows_tile = max(16, min(128, _TILE_ELEMENTS // tile))
    grid = (triton.cdiv(widest, tile), len(outputs), splits)
    key = (rows, row_stride, off1, off2, cols0, cols1, cols2, rows_per_split,
           out_split_stride, tile, grid)
    _row_sums_launcher.keyed(
        key, grid, (x, out0, out1, out2),
        lambda: ((rows, row_stride, off1, off2, cols0, cols1, cols2, rows_per_split,
                  out_split_stride),
                 dict(ROWS_TILE=rows_tile, COLS_TILE=tile, num_warps=4)))


def sum_rows_into(x: torch.Tensor, rows: int, row_stride: int,
                  outputs: list[tuple[torch.Tensor, int, int]]) -> None:
    """For each (out, x_offset, cols) of `outputs` (one to three, the first at offset 0):
    out.view(-1)[:cols] = sum over r < rows of x.view(-1)[x_offset + r * row_stride:][:cols].
    x: a contiguous float32 buffer; outs: contiguous, any float dtype, on x's device. A
    tall buffer is summed in two launches: spans of rows into an fp32 scratch (a row a
    span, each output's columns side by side), then those."""
    if not 1 <= len(outputs) <= 3 or outputs[0][1] != 0:
        raise ValueError("sum_rows_into: one to three outputs, the first at offset 0")
    widest = max(cols for _, _, cols in outputs)
    splits = _splits(rows, triton.cdiv(widest, _cols_tile(widest)))
    if splits == 1:
        _launch(x, rows, row_stride, outputs, rows, 1, 0)
        return
    # each output's span sums at a 16-byte aligned column of the scratch's rows
    starts = [0]
    for _, _, cols in outputs:
        starts.append(starts[-1] + -(-cols // 4) * 4)
    spans = torch.empty(splits, starts[-1], device=x.device, dtype=torch.float32)
    _launch(x, rows, row_stride,
            [(spans[:, at:], x_offset, cols)
             for at, (_, x_offset, cols) in zip(starts, outputs)],
            triton.cdiv(rows, splits), splits, starts[-1])
    _launch(spans, splits, starts[-1],
            [(out, at, cols) for at, (out, _, cols) in zip(starts, outputs)], splits, 1, 0)
