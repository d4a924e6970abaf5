"""Sums over the rows of partial-sum buffers into up to five outputs, in one launch.

The backward's main kernel writes per-program partial sums (fp32): one row a (batch,
chunk) of dA, dD and ddelta_bias, and per channel block the dB and dC of a group. Summed
here by a Triton kernel rather than torch, so that the whole backward host function is
allocations and CachedLaunch launches, which replay.py can repeat per signature: the
torch sums and the casts, splits and views around them cost the host more than the
launch that replaces them, and an eager training step runs the backward on the autograd
engine's device thread, where host time weighs more (kernels README, "The public call").
Both buffers are summed by one launch: each launch there costs a short training call
~10-16 us of host time on the H200 machine (session 41, `profile_backward_thread.py`).

A source is a buffer x with `rows` rows `row_stride` elements apart and its outputs;
output k takes `cols_k` columns from element `x_offset_k` of the first row: out_k[j] =
sum_r x[x_offset_k + r * row_stride + j], summed in fp32 in a fixed order (tiles of rows
summed as a tree, the tiles added in turn; a tall buffer's spans of rows summed apart,
then together: deterministic, no atomics) and stored in out_k's dtype. Each buffer's
programs take column tiles fitted to its own widest output: tiles fitted to the wider
buffer left the narrower one too few programs (bench row 3's dA rows summed beside dB/dC
took the launch from 8-10 to 14-17 us of GPU time, session 41).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch

_MIN_PROGRAMS = 264  # two an SM of an H100 / H200
_MIN_SPLIT_ROWS = 256  # rows a span at least, where a tall buffer's rows are split
_TILE_ELEMENTS = 2048  # a program's (rows, columns) tile of loads: 16 values a thread
_MAX_OUTPUTS = 5  # dA, dD, ddelta_bias from one buffer; dB, dC from the other

Output = tuple[torch.Tensor, int, int]  # (out, x_offset, cols)
Source = tuple[torch.Tensor, int, int, list[Output]]  # (x, rows, row_stride, outputs)


@triton.jit
def _pick(k, v0, v1, v2, v3, v4):
    return tl.where(k == 0, v0, tl.where(k == 1, v1, tl.where(k == 2, v2,
                                                             tl.where(k == 3, v3, v4))))


@triton.jit
def _sum_output(x_ptr, out0_ptr, out1_ptr, out2_ptr, out3_ptr, out4_ptr, k, block, split,
                rows, row_stride, rows_per_split, x_offset, cols, out_split_stride,
                ROWS_TILE: tl.constexpr, COLS_TILE: tl.constexpr):
    """Output k's columns block*COLS_TILE on, over the rows of span `split`."""
    offs_c = block * COLS_TILE + tl.arange(0, COLS_TILE)
    mask_c = offs_c < cols
    first = split * rows_per_split
    end = tl.minimum(first + rows_per_split, rows)
    if (block * COLS_TILE < cols) & (first < rows):  # a source may have fewer spans
        offs_r = tl.arange(0, ROWS_TILE)
        acc = tl.zeros([COLS_TILE], dtype=tl.float32)
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
        elif k == 2:
            tl.store(out2_ptr + at, acc, mask=mask_c)
        elif k == 3:
            tl.store(out3_ptr + at, acc, mask=mask_c)
        else:
            tl.store(out4_ptr + at, acc, mask=mask_c)


@triton.jit
def _row_sums_kernel(
    x0_ptr, x1_ptr, out0_ptr, out1_ptr, out2_ptr, out3_ptr, out4_ptr,
    rows0, row_stride0, rows_per_split0, rows1, row_stride1, rows_per_split1,
    x_offset0, x_offset1, x_offset2, x_offset3, x_offset4,
    cols0, cols1, cols2, cols3, cols4, blocks0, blocks1, blocks2, blocks3, blocks4,
    start1, start2, start3, start4, out_split_stride,
    FIRST_OF_X1: tl.constexpr, ROWS_TILE0: tl.constexpr, COLS_TILE0: tl.constexpr,
    ROWS_TILE1: tl.constexpr, COLS_TILE1: tl.constexpr,
):
    """Program (output k, span of rows, column block), programs of output k from start_k
    on (one grid axis: only the programs that have work); outputs from FIRST_OF_X1 on read
    x1 in tiles of their own (a narrow buffer beside a wide one keeps enough programs),
    the others x0."""
    pid = tl.program_id(0)
    k = ((pid >= start1).to(tl.int32) + (pid >= start2).to(tl.int32)
         + (pid >= start3).to(tl.int32) + (pid >= start4).to(tl.int32))
    local = pid - _pick(k, 0, start1, start2, start3, start4)
    blocks = _pick(k, blocks0, blocks1, blocks2, blocks3, blocks4)
    block = local % blocks
    split = (local // blocks).to(tl.int64)  # which span of rows (each into its own row)
    x_offset = _pick(k, x_offset0, x_offset1, x_offset2, x_offset3, x_offset4).to(tl.int64)
    cols = _pick(k, cols0, cols1, cols2, cols3, cols4)
    if k >= FIRST_OF_X1:
        _sum_output(x1_ptr, out0_ptr, out1_ptr, out2_ptr, out3_ptr, out4_ptr, k, block,
                    split, rows1, row_stride1.to(tl.int64), rows_per_split1, x_offset, cols,
                    out_split_stride, ROWS_TILE1, COLS_TILE1)
    else:
        _sum_output(x0_ptr, out0_ptr, out1_ptr, out2_ptr, out3_ptr, out4_ptr, k, block,
                    split, rows0, row_stride0.to(tl.int64), rows_per_split0, x_offset, cols,
                    out_split_stride, ROWS_TILE0, COLS_TILE0)


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


def _tiles(outputs: list[Output]) -> tuple[int, int]:
    """(columns, rows) of a program's tile for a source's outputs."""
    cols_tile = _cols_tile(max(cols for _, _, cols in outputs))
    return cols_tile, max(16, min(128, _TILE_ELEMENTS // cols_tile))


def _launch(sources: list[Source], splits: list[int], out_split_stride: int) -> None:
    """One launch over `sources`, source s in splits[s] spans of rows (a span's sums into
    its own row of the outputs, `out_split_stride` elements apart)."""
    outputs, counts, tiles = [], [], []
    for (_, rows, _, outs), n_split in zip(sources, splits):
        cols_tile, rows_tile = _tiles(outs)
        tiles += [cols_tile, rows_tile]
        for out, at, cols in outs:
            outputs.append((out, at, cols, triton.cdiv(cols, cols_tile)))
            counts.append(outputs[-1][3] * n_split)
    starts = [sum(counts[:k]) for k in range(1, _MAX_OUTPUTS)]
    padded = outputs + [outputs[-1]] * (_MAX_OUTPUTS - len(outputs))
    first_of_x1 = len(sources[0][3]) if len(sources) == 2 else _MAX_OUTPUTS
    x0, rows0, stride0, _ = sources[0]
    x1, rows1, stride1, _ = sources[-1]
    grid = (sum(counts),)
    scalars = (rows0, stride0, triton.cdiv(rows0, splits[0]),
               rows1, stride1, triton.cdiv(rows1, splits[-1]),
               *[at for _, at, _, _ in padded], *[cols for _, _, cols, _ in padded],
               *[blocks for *_, blocks in padded], *starts, out_split_stride)
    cols_tile0, rows_tile0 = tiles[:2]
    cols_tile1, rows_tile1 = tiles[-2:]
    constexprs = dict(FIRST_OF_X1=first_of_x1, ROWS_TILE0=rows_tile0, COLS_TILE0=cols_tile0,
                      ROWS_TILE1=rows_tile1, COLS_TILE1=cols_tile1)
    _row_sums_launcher.keyed(
        (scalars, *constexprs.values()), grid, (x0, x1, *[o[0] for o in padded]),
        lambda: (scalars, dict(constexprs, num_warps=4)))


def sum_sources(sources: list[Source]) -> None:
    """For each source (x, rows, row_stride, outputs) and each (out, x_offset, cols) of
    its outputs: out.view(-1)[:cols] = sum over r < rows of
    x.view(-1)[x_offset + r * row_stride:][:cols]. One or two sources, one to five
    outputs in all, in one launch. x: contiguous float32 buffers on one device; outs:
    contiguous, any float dtype. Where a source is tall, two launches: spans of rows into
    an fp32 scratch (a row a span, each output's columns side by side), then those."""
    outputs = [o for *_, outs in sources for o in outs]
    if (not 1 <= len(sources) <= 2 or not all(outs for *_, outs in sources)
            or len(outputs) > _MAX_OUTPUTS):
        raise ValueError("sum_sources: one or two sources, each with outputs, "
                         f"{_MAX_OUTPUTS} outputs at most")
    splits = [_splits(rows, triton.cdiv(max(c for *_, c in outs), _tiles(outs)[0]))
              for _, rows, _, outs in sources]
    if max(splits) == 1:
        _launch(sources, splits, 0)
        return
    # a tall source's outputs: each's span sums at a 16-byte aligned column of the
    # scratch's rows, then summed; the others' sums go to their outputs at once
    tall = [outs for (*_, outs), n in zip(sources, splits) if n > 1]
    starts = [0]
    for _, _, cols in (o for outs in tall for o in outs):
        starts.append(starts[-1] + -(-cols // 4) * 4)
    width = starts[-1]
    spans = torch.empty(max(splits), width, device=outputs[0][0].device,
                        dtype=torch.float32)
    into_spans, from_spans, k = [], [], 0
    for (x, rows, row_stride, outs), n_split in zip(sources, splits):
        if n_split == 1:
            into_spans.append((x, rows, row_stride, outs))
            continue
        into_spans.append((x, rows, row_stride,
                           [(spans[:, starts[k + i]:], at, cols)
                            for i, (_, at, cols) in enumerate(outs)]))
        from_spans.append((spans, n_split, width,
                           [(out, starts[k + i], cols) for i, (out, _, cols) in enumerate(outs)]))
        k += len(outs)
    _launch(into_spans, splits, width)
    _launch(from_spans, [1] * len(from_spans), 0)
