"""The "deferred" variant of the Triton forward: the state entering a chunk is applied last.

Inside chunk k, with h0 the state entering it (README.md, "Triton kernels"),

    h_t = acum_t h0 + hs_t,      y_t = <C_t, hs_t> + <C_t, acum_t h0>,

where (acum_t, hs_t) is the chunk's scan from a zero start and acum_t = exp(A R_t), R_t the
sum of dt from the chunk's first position (in scan order) to t. So:

1. `_fwd_local_kernel` scans every chunk from zero, writes y_local = <C, hs> (fp32
   scratch), the chunk's end state E and the sum of its dt S;
2. the carry scan over chunks (triton_chunks._carry_kernel) turns E into true end states;
3. `_fwd_correct_kernel` adds <C_t, exp(A R_t) h0> and the skip/gate terms.

Against the "chunked" variant this replaces the aggregate pass (an exp and a cross-lane
sum per (t, n), about 950 SASS instructions per channel and chunk of 128 on sm_90) by the
correction pass (an exp and an in-thread sum over n, no cross-lane work), and the
first pass needs no h0 terms; it costs an fp32 write and read of y_local. The default
for fp32 inputs (triton_fwd.py says why).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch
from .triton_common import (
    LaunchPlan,
    _channel_range,
    _chunk_tile,
    _load_channel,
    _load_dt,
    _load_state_tile,
    _next_pow2,
    _previous_chunk,
    _store_output,
)
from .triton_tile_scans import _group_size, _scan_tile
from .triton_chunks import carry_chunks


@triton.jit
def _fwd_local_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, bias_ptr, S_ptr, E_ptr, Y_ptr,
    dim, groups, length, n_chunks, n_cblk, n_bgd, per_group, channel_block,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    N, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
):
    """Per chunk and channel, from a zero start: Y = <C, h> (fp32, contiguous (batch,
    dim, L)), E = the state at the chunk's far end in scan order, S = sum of dt."""
    c, b, g, cblk, offs_n, mask_n, offs_l, mask_l, mask_nl = _chunk_tile(
        n_bgd, n_cblk, groups, length, N, NP, CHUNK)
    offs_k = tl.arange(0, CHUNK)
    Bt = _load_state_tile(B_ptr, b, g, s_Bb, s_Bg, s_Bn, s_Bl, offs_n, offs_l, mask_nl)
    Ct = _load_state_tile(C_ptr, b, g, s_Cb, s_Cg, s_Cn, s_Cl, offs_n, offs_l, mask_nl)
    # positions past L have dt = 0 (decay 1, drive 0): the far end holds the end state
    if REVERSE:
        at_end = offs_k == 0
    else:
        at_end = offs_k == CHUNK - 1
    d0, d_end = _channel_range(g, cblk, per_group, channel_block)
    for d in range(d0, d_end):
        dt, u, A2 = _load_channel(u_ptr, delta_ptr, A_ptr, bias_ptr, b, d, offs_n, mask_n,
                                  offs_l, mask_l, s_ub, s_ud, s_ul, s_db, s_dd, s_dl, N,
                                  HAS_BIAS, SOFTPLUS)
        row = b * dim + d
        part = row * n_chunks + c
        tl.store(S_ptr + part, tl.sum(dt, axis=0))
        h = _scan_tile(tl.exp2(A2[:, None] * dt[None, :]), Bt * (dt * u)[None, :], NP, CHUNK,
                       REVERSE, _group_size(B_ptr.dtype.element_ty, CHUNK))
        # only the thread holding the far end stores: no cross-lane reduction
        tl.store(E_ptr + part * N + offs_n[:, None] + 0 * offs_k[None, :], h,
                 mask=mask_n[:, None] & at_end[None, :])
        tl.store(Y_ptr + row * length + offs_l, tl.sum(Ct * h, axis=0), mask=mask_l)


_fwd_local_kernel_launcher = CachedLaunch(_fwd_local_kernel)


@triton.jit
def _fwd_correct_kernel(
    u_ptr, delta_ptr, z_ptr, A_ptr, C_ptr, D_ptr, bias_ptr, H_ptr, Y_ptr, out_ptr,
    dim, groups, length, n_chunks, n_cblk, n_bgd, per_group, channel_block,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_Cb, s_Cg, s_Cn, s_Cl,
    N, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_D: tl.constexpr, REVERSE: tl.constexpr,
):
    """out = (Y + <C_t, exp(A R_t) h0> + D u) * silu(z); H[b, d, c] is the true state
    leaving chunk c (after the carry scan)."""
    c, b, g, cblk, offs_n, mask_n, offs_l, mask_l, _ = _chunk_tile(
        n_bgd, n_cblk, groups, length, N, NP, CHUNK)
    has_prev, c_prev = _previous_chunk(c, n_chunks, REVERSE)
    # the first chunk in scan order starts from zero: no C tile, no exps
    c_end = tl.where(has_prev, length, 0)
    Ct = _load_state_tile(C_ptr, b, g, s_Cb, s_Cg, s_Cn, s_Cl, offs_n, offs_l,
                          mask_n[:, None] & (offs_l < c_end)[None, :])
    d0, d_end = _channel_range(g, cblk, per_group, channel_block)
    for d in range(d0, d_end):
        row = b * dim + d
        y = tl.load(Y_ptr + row * length + offs_l, mask=mask_l, other=0.0)
        if has_prev:
            dt = _load_dt(delta_ptr + b * s_db + d * s_dd, bias_ptr, d, offs_l, mask_l, s_dl,
                          HAS_BIAS, SOFTPLUS)
            A2 = tl.load(A_ptr + d * N + offs_n, mask=mask_n, other=0.0) * 1.4426950408889634
            h0 = tl.load(H_ptr + (row * n_chunks + c_prev) * N + offs_n, mask=mask_n,
                         other=0.0)
            # decay from the chunk's first position in scan order to t, inclusive
            cum = tl.cumsum(dt, axis=0, reverse=REVERSE)
            acum = tl.exp2(A2[:, None] * cum[None, :])
            y += tl.sum(Ct * acum * h0[:, None], axis=0)
        if HAS_D:
            u = tl.load(u_ptr + b * s_ub + d * s_ud + offs_l * s_ul, mask=mask_l,
                        other=0.0).to(tl.float32)
        else:
            u = y  # not read without HAS_D
        _store_output(y, u, out_ptr, z_ptr, D_ptr, b, d, row, length, offs_l, mask_l,
                      s_zb, s_zd, s_zl, HAS_D, HAS_Z)


_fwd_correct_kernel_launcher = CachedLaunch(_fwd_correct_kernel)


def deferred_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool,
                     reverse: bool, plan: LaunchPlan, out: torch.Tensor,
                     last_state: torch.Tensor) -> None:
    """Fill out and last_state with the three launches above (plan.n_chunks > 1)."""
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    nc, dev = plan.n_chunks, u.device
    S = torch.empty(batch, dim, nc, device=dev, dtype=torch.float32)
    H = torch.empty(batch, dim, nc, n_state, device=dev, dtype=torch.float32)
    Y = torch.empty(batch, dim, length, device=dev, dtype=torch.float32)
    bias = delta_bias if delta_bias is not None else S
    n_bgd = batch * groups * plan.n_channel_blocks
    grid = (plan.programs(batch, groups),)
    NP = _next_pow2(n_state)
    common = (dim, groups, length, nc, plan.n_channel_blocks, n_bgd, dim // groups,
              plan.channel_block)
    # what the scalars and options of both launches are made of (CachedLaunch.keyed)
    key = (plan, u.shape, groups, n_state, u.stride(), delta.stride(), B.stride(),
           C.stride(), delta_bias is None, delta_softplus, reverse)

    def local_scalars_and_options() -> tuple[tuple, dict]:
        return (*common, *u.stride(), *delta.stride(), *B.stride(), *C.stride()), dict(
            N=n_state, NP=NP, CHUNK=plan.chunk, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=delta_softplus, REVERSE=reverse, num_warps=plan.num_warps)

    _fwd_local_kernel_launcher.keyed(key, grid, (u, delta, A, B, C, bias, S, H, Y),
                                     local_scalars_and_options)
    carry_chunks(S, H, A, last_state, plan.carry_block, reverse)
    zz = z if z is not None else u

    def correct_scalars_and_options() -> tuple[tuple, dict]:
        scalars = (*common, *u.stride(), *delta.stride(), *zz.stride(), *C.stride())
        return scalars, dict(
            N=n_state, NP=NP, CHUNK=plan.chunk, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=delta_softplus, HAS_Z=z is not None, HAS_D=D is not None,
            REVERSE=reverse, num_warps=plan.num_warps)

    _fwd_correct_kernel_launcher.keyed(
        (key, zz.stride(), z is None, D is None), grid,
        (u, delta, zz, A, C, D if D is not None else S, bias, H, Y, out),
        correct_scalars_and_options)
