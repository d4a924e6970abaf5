"""Forward output kernel of the "rows" variant: one state index at a time.

The "chunked" output kernel scans an (N, CHUNK) tile per channel, so a one-warp program
holds N * CHUNK / 32 values per tile and five such tiles (B, C, decay, drive, state): 255
registers and 12.5% occupancy on sm_90, latency-bound (ncu, README.md). Here the program
loops over the N state indices instead and scans one (CHUNK,) row at a time, adding
C[n] * h[n] into the output as it goes. The arithmetic and the shuffles per element are
the same; the live set is a few rows, so many more warps fit on an SM to hide latency. B
and C rows are re-read per channel from L1/L2, as the "reload" variant does for tiles.

The chunk aggregates are computed the same way (`_aggregate_rows_kernel`, one state
index at a time, as `_chunk_aggregate_kernel` does for the whole tile), then carried
across chunks by triton_chunks' `carry_chunks`; a sequence of one chunk runs the
output kernel alone.
"""

from __future__ import annotations

import triton
import triton.language as tl

import torch

from .launch import CachedLaunch
from .triton_common import (
    LaunchPlan,
    _affine_combine,
    _channel_range,
    _decompose_pid,
    _load_dt_u,
    _previous_chunk,
    _scan_edge_columns,
    _store_output,
    launch_output_kernel,
)
from .triton_chunks import carry_chunks


@triton.jit
def _aggregate_rows_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, S_ptr, E_ptr,
    dim, groups, length, n_chunks, n_cblk, n_bgd, per_group, channel_block,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_Bb, s_Bg, s_Bn, s_Bl,
    N, CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr,
):
    """Per chunk and channel: S = sum dt and E = the state the chunk produces from a zero
    start (layouts as `_chunk_aggregate_kernel`'s forward outputs), state by state."""
    c, b, g, cblk = _decompose_pid(tl.program_id(0), n_bgd, n_cblk, groups)
    offs_l = c * CHUNK + tl.arange(0, CHUNK)
    mask_l = offs_l < length
    B_rows = B_ptr + b * s_Bb + g * s_Bg + offs_l * s_Bl
    d0, d_end = _channel_range(g, cblk, per_group, channel_block)
    for d in range(d0, d_end):
        dt, u = _load_dt_u(u_ptr, delta_ptr, bias_ptr, b, d, offs_l, mask_l, s_ub, s_ud, s_ul,
                           s_db, s_dd, s_dl, HAS_BIAS, SOFTPLUS)
        x = dt * u
        row = (b * dim + d) * n_chunks + c
        tl.store(S_ptr + row, tl.sum(dt, axis=0))
        # decay of the positions after t in scan order
        after = tl.cumsum(dt, axis=0, reverse=not REVERSE) - dt
        for n in range(N):
            a2 = tl.load(A_ptr + d * N + n) * 1.4426950408889634
            w = tl.exp2(a2 * after) * tl.load(B_rows + n * s_Bn, mask=mask_l,
                                               other=0.0).to(tl.float32)
            tl.store(E_ptr + row * N + n, tl.sum(w * x, axis=0))


_aggregate_rows_kernel_launcher = CachedLaunch(_aggregate_rows_kernel)


def rows_boundary_states(u, delta, A, B, delta_bias, delta_softplus: bool, reverse: bool,
                         plan, last_state: torch.Tensor) -> torch.Tensor:
    """H (batch, dim, n_chunks, N) fp32: the state leaving every chunk; fills last_state."""
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    nc = plan.n_chunks
    S = torch.empty(batch, dim, nc, device=u.device, dtype=torch.float32)
    H = torch.empty(batch, dim, nc, n_state, device=u.device, dtype=torch.float32)
    tensors = (u, delta, A, B, delta_bias if delta_bias is not None else S, S, H)
    # what the scalars and options are made of (CachedLaunch.keyed)
    key = (plan, u.shape, groups, n_state, u.stride(), delta.stride(), B.stride(),
           delta_bias is None, delta_softplus, reverse)

    def scalars_and_options() -> tuple[tuple, dict]:
        scalars = (dim, groups, length, nc, plan.n_channel_blocks,
                   batch * groups * plan.n_channel_blocks, dim // groups, plan.channel_block,
                   *u.stride(), *delta.stride(), *B.stride())
        return scalars, dict(N=n_state, CHUNK=plan.chunk, HAS_BIAS=delta_bias is not None,
                             SOFTPLUS=delta_softplus, REVERSE=reverse,
                             num_warps=plan.num_warps)

    _aggregate_rows_kernel_launcher.keyed(key, (plan.programs(batch, groups),), tensors,
                                          scalars_and_options)
    carry_chunks(S, H, A, last_state, plan.carry_block, reverse)
    return H


@triton.jit
def _fwd_rows_kernel(
    u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, H_ptr, out_ptr,
    dim, groups, length, n_chunks, n_cblk, n_bgd, per_group, channel_block,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    N, CHUNK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_D: tl.constexpr, REVERSE: tl.constexpr, MULTI_CHUNK: tl.constexpr,
):
    """One chunk of one (batch, group), looping over a block of its channels and, per
    channel, over the N state indices. Arguments as `_fwd_output_kernel`'s (triton_fwd.py):
    H[b, d, c] is the state leaving chunk c (several chunks) or the last state (one)."""
    c, b, g, cblk = _decompose_pid(tl.program_id(0), n_bgd, n_cblk, groups)
    offs_l = c * CHUNK + tl.arange(0, CHUNK)
    mask_l = offs_l < length
    has_prev, c_prev = _previous_chunk(c, n_chunks, REVERSE)
    # h0 enters through the drive at the chunk's first position in scan order; positions
    # past L are identities (dt = 0), so the far end holds the last state of a partial chunk.
    first_col, last_col = _scan_edge_columns(CHUNK, REVERSE)
    B_rows = B_ptr + b * s_Bb + g * s_Bg + offs_l * s_Bl
    C_rows = C_ptr + b * s_Cb + g * s_Cg + offs_l * s_Cl
    d0, d_end = _channel_range(g, cblk, per_group, channel_block)
    for d in range(d0, d_end):
        dt, u = _load_dt_u(u_ptr, delta_ptr, bias_ptr, b, d, offs_l, mask_l, s_ub, s_ud, s_ul,
                           s_db, s_dd, s_dl, HAS_BIAS, SOFTPLUS)
        x = dt * u
        row = b * dim + d
        y = tl.zeros([CHUNK], dtype=tl.float32)
        for n in range(N):
            a2 = tl.load(A_ptr + d * N + n) * 1.4426950408889634
            decay = tl.exp2(a2 * dt)
            drive = tl.load(B_rows + n * s_Bn, mask=mask_l, other=0.0).to(tl.float32) * x
            if MULTI_CHUNK:
                h0 = tl.load(H_ptr + (row * n_chunks + c_prev) * N + n)
                h0 = tl.where(has_prev, h0, 0.0)
                drive += tl.where(first_col, decay * h0, 0.0)
            _, h = tl.associative_scan((decay, drive), axis=0, combine_fn=_affine_combine,
                                       reverse=REVERSE)
            if not MULTI_CHUNK:
                # the thread holding the far end stores the last state
                tl.store(H_ptr + row * N + n + 0 * offs_l, h, mask=last_col)
            y += tl.load(C_rows + n * s_Cn, mask=mask_l, other=0.0).to(tl.float32) * h
        _store_output(y, u, out_ptr, z_ptr, D_ptr, b, d, row, length, offs_l, mask_l,
                      s_zb, s_zd, s_zl, HAS_D, HAS_Z)


_fwd_rows_kernel_launcher = CachedLaunch(_fwd_rows_kernel)


def rows_offsets_fit(B: torch.Tensor, C: torch.Tensor) -> bool:
    """Whether these kernels' 32-bit state offsets n * s_n stay below 2**31 for B and C.
    Forming them in 64 bits cost the bf16 aggregate its 16-byte loads in offline SASS for
    sm_90 (LDG 5 -> 19, instructions 328 -> 656-672, session 18, untimed), and "auto" takes
    "rows" only for L <= 512, where contiguous B and C are far from the limit."""
    last_n = B.shape[2] - 1
    return last_n * max(abs(B.stride(2)), abs(C.stride(2))) < 2**31


# A sequence of one chunk and at least this many sequences: programs of one warp (each
# state's scan within the warp, no barriers), enough of them to fill the SMs. Session 34
# (scripts/results/kernel_h200_2026-12-02_s34/short_rows_call9.log), bf16, GPU time in
# CUDA-graph replay, us, the plan's 2-4 warps -> 1: (4, 384, 343) 40.8 -> 28.3, (2, 768,
# 384) 25.5 -> 15.8, (8, 512, 256) 27.0 -> 20.4, (4, 512, 256) 15.8 -> 12.1, (16, 256,
# 200) 49.1 -> 37.5; with 1024 sequences ((2, 512, 512)) 16.4 -> 14.6 but do_bench 22.8 ->
# 23.9, with 512 ((2, 256, 512)) 12.5 -> 13.5 (short_rows_call8_warps.log: "rows w4" is the
# plan's warps), so those keep the plan's.
ONE_WARP_MIN_SEQUENCES = 1536


def rows_num_warps(sequences: int, plan: LaunchPlan) -> int:
    """Warps a program of `_fwd_rows_kernel` by default."""
    if plan.n_chunks == 1 and sequences >= ONE_WARP_MIN_SEQUENCES:
        return 1
    return plan.num_warps


def launch_rows_output(u, delta, z, A, B, C, D, delta_bias, H, out, plan, *,
                       delta_softplus: bool, reverse: bool,
                       num_warps: int | None = None) -> None:
    """Launch `_fwd_rows_kernel` over the plan's programs: H as the host function made it
    (chunk boundary states, or the last state to fill for one chunk), out filled here.
    num_warps: a program's (None: `rows_num_warps`)."""
    if num_warps is None:
        num_warps = rows_num_warps(u.shape[0] * u.shape[1], plan)
    launch_output_kernel(_fwd_rows_kernel_launcher, u, delta, z, A, B, C, D, delta_bias, H,
                         out, plan, delta_softplus, reverse, key=num_warps, scalars=(),
                         options=dict(num_warps=num_warps))
