"""Triton helpers both "serial" kernels share (triton_fwd_serial.py, triton_bwd_serial.py):
a block of TI positions of BLOCK_D channels is a (BLOCK_D, TI) tile, and a position is one
of its columns, taken and put back in-thread."""

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
def _exp2_fma(x):
    """2**x in fp32 on the FMA pipe rather than the special-function unit (MUFU), for
    passes that MUFU limits (serial_planning's `emu`): 2**x = 2**j 2**f with j the integer
    nearest x (the 1.5 * 2**23 shift rounds it into the low bits of s) and f in [-0.5, 0.5]
    by a degree-5 polynomial fitted to relative error (c0 = 1: 2**0 is 1 exactly), then j
    added to the exponent bits. Within 2.3 ulp of 2**x in fp32 arithmetic (ex2.approx:
    about 1.4). x is clamped to [-125, 128]: below, 2**-125 (~2.4e-38) stands for 0 as a
    decay; at 128 the exponent field overflows to exactly +inf, as ex2 does."""
    x = tl.minimum(tl.maximum(x, -125.0), 128.0)
    s = x + 12582912.0
    f = x - (s - 12582912.0)
    p = 0.0013264708686619997 * f + 0.009671511128544807
    p = p * f + 0.05550733953714371
    p = p * f + 0.24022242426872253
    p = p * f + 0.6931470036506653
    p = p * f + 1.0
    scale = (s.to(tl.int32, bitcast=True) - 0x4B400000) << 23
    return (p.to(tl.int32, bitcast=True) + scale).to(tl.float32, bitcast=True)


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
