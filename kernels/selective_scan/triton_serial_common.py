"""Triton helpers of the "serial" kernels (triton_fwd_serial.py, triton_bwd_serial.py): a
block of TI positions of BLOCK_D channels is a (BLOCK_D, TI) tile, and a position is one
of its columns, taken and put back in-thread; the forward's kept states."""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import _softplus


@triton.jit
def _pick(x, sel):
    """Column of x (R, TI) where sel (TI,) holds, in-thread: -0.0 is exact identity of +."""
    return tl.sum(tl.where(sel[None, :], x, -0.0), axis=1)


@triton.jit
def _put(tile, sel, value):
    """tile (R, TI) with value (R,) in the column where sel (TI,) holds."""
    return tl.where(sel[None, :], value[:, None], tile)


@triton.jit
def _channel_scalars(bias_ptr, D_ptr, offs_d, mask_d, HAS_BIAS: tl.constexpr,
                     HAS_D: tl.constexpr):
    """(delta_bias, D) of a block of channels in fp32, 0.0 where absent."""
    bias = 0.0
    Dv = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return bias, Dv


@triton.jit
def _drive(dt_raw, m, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(raw dt + bias, dt) in fp32; dt 0 where masked."""
    dt_raw = dt_raw.to(tl.float32)
    if HAS_BIAS:
        dt_raw += bias[:, None]
    if SOFTPLUS:
        dt = _softplus(dt_raw)
    else:
        dt = dt_raw
    return dt_raw, tl.where(m, dt, 0.0)


@triton.jit
def _store_sub_state(h, t0, length, hs_rows, hs_offs, mask_nd, N: tl.constexpr,
                     TI: tl.constexpr, SUB: tl.constexpr, REVERSE: tl.constexpr,
                     MASKED: tl.constexpr):
    """After the block at t0: if it ends a sub-chunk of SUB positions in scan order (or the
    sequence), h is the state leaving that sub-chunk: Hs[b, d, sub] (the backward's
    boundary states at its chunk of SUB). hs_rows points at the program's first channel's
    row of Hs, hs_offs holds the (NP, BLOCK_D) offsets from there of sub-chunk 0: a tile
    of 32-bit offsets where they fit, not the 64-bit addresses (or the mask) that LLVM
    hoists out of the loop (168 -> 254 registers, fp32 at 8 positions a load)."""
    if REVERSE:
        ends = t0 % SUB == 0
        sub = t0 // SUB
    else:
        last = tl.minimum(t0 + TI, length) - 1
        ends = ((last + 1) % SUB == 0) | (last == length - 1)
        sub = last // SUB
    if ends:
        if MASKED:
            tl.store(hs_rows + sub * N + hs_offs, h, mask=mask_nd)
        else:
            tl.store(hs_rows + sub * N + hs_offs, h)
