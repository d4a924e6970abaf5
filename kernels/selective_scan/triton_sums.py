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
tiles added in turn: deterministic, no atomics) and stored in out_k's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch

_ROWS_TILE = 32
_MIN_PROGRAMS = 264  # two an SM of an H100 / H200: enough columns blocks to spread the rows


@triton.jit
def _row_sums_kernel(
    x_ptr, out0_ptr, out1_ptr, out2_ptr,
    rows, row_stride, x_offset1, x_offset2, cols0, cols1, cols2,
    ROWS_TILE: tl.constexpr, COLS_TILE: tl.constexpr,
):
    block = tl.program_id(0)
    k = tl.program_id(1)  # which output
    x_offset = tl.where(k == 0, 0, tl.where(k == 1, x_offset1, x_offset2)).to(tl.int64)
    cols = tl.where(k == 0, cols0, tl.where(k == 1, cols1, cols2))
    offs_c = block * COLS_TILE + tl.arange(0, COLS_TILE)
    mask_c = offs_c < cols
    offs_r = tl.arange(0, ROWS_TILE)
    acc = tl.zeros([COLS_TILE], dtype=tl.float32)
    if block * COLS_TILE < cols:
        for start in range(0, rows, ROWS_TILE):
            r = (start + offs_r).to(tl.int64)
            mask = (r < rows)[:, None] & mask_c[None, :]
            tile = tl.load(x_ptr + x_offset + r[:, None] * row_stride + offs_c[None, :],
                           mask=mask, other=0.0)
            acc += tl.sum(tile.to(tl.float32), axis=0)
        # each output's own store: their dtypes may differ (dB and dC)
        if k == 0:
            tl.store(out0_ptr + offs_c, acc, mask=mask_c)
        elif k == 1:
            tl.store(out1_ptr + offs_c, acc, mask=mask_c)
        else:
            tl.store(out2_ptr + offs_c, acc, mask=mask_c)


_row_sums_launcher = CachedLaunch(_row_sums_kernel)


def _cols_tile(widest: int) -> int:
    """Columns a program: the widest that still gives `_MIN_PROGRAMS` blocks, 16 to 256
    (a short, wide buffer: many columns a program; a tall, narrow one: few, so that
    enough programs share its rows' reads)."""
    tile = 256
    while tile > 16 and triton.cdiv(widest, tile) < _MIN_PROGRAMS:
        tile //= 2
    return tile


def sum_rows_into(x: torch.Tensor, rows: int, row_stride: int,
                  outputs: list[tuple[torch.Tensor, int, int]]) -> None:
    """For each (out, x_offset, cols) of `outputs` (one to three, the first at offset 0):
    out.view(-1)[:cols] = sum over r < rows of x.view(-1)[x_offset + r * row_stride:][:cols].
    x: a contiguous float32 buffer; outs: contiguous, any float dtype, on x's device."""
    if not 1 <= len(outputs) <= 3 or outputs[0][1] != 0:
        raise ValueError("sum_rows_into: one to three outputs, the first at offset 0")
    padded = outputs + [outputs[-1]] * (3 - len(outputs))
    (out0, _, cols0), (out1, off1, cols1), (out2, off2, cols2) = padded
    tile = _cols_tile(max(cols for _, _, cols in outputs))
    grid = (triton.cdiv(max(cols for _, _, cols in outputs), tile), len(outputs))
    key = (rows, row_stride, off1, off2, cols0, cols1, cols2, tile, grid)
    _row_sums_launcher.keyed(
        key, grid, (x, out0, out1, out2),
        lambda: ((rows, row_stride, off1, off2, cols0, cols1, cols2),
                 dict(ROWS_TILE=_ROWS_TILE, COLS_TILE=tile, num_warps=4)))
