"""Chunk-boundary states of short rows in one launch: the aggregates carried in turn.

`triton_chunks.chunk_boundary_states` finds the states at the chunk boundaries in two
launches: every chunk's aggregate from a zero start, in parallel, then the carry over
chunks. A short row has few chunks (a backward of 512 positions has 8), and there the
second launch costs more host time than the carry's GPU work: a short training call is
host-bound, and its backward runs on the autograd engine's device thread, where our
Python runs about half as fast (session 40) and a launch costs 9-16 us of host time on
the calling thread of the H200 machine (session 41, `scripts/profile_backward_thread.py`).
Here a program takes one channel and walks its chunks in the direction of flow, carrying
the state: the same aggregates, then h = decay(chunk) * h + aggregate, stored at each
chunk's end. The forward states and the adjoint's run in programs of their own (grid
axis 1), so that both walks run side by side. The forward's "chunked" variants take the
walk too (triton_fwd's `boundary`), for its forward states alone; `walk_pays` holds where
"auto" takes it in each direction.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch
from .triton_common import (LaunchPlan, _adjoint_aggregate, _forward_aggregate, _load_dt,
                            _load_state_tile, _next_pow2)

# Where "auto" walks the chunks: (most chunks a row, fewest rows) pairs, any one met, by
# direction and bytes an element of the inputs; elsewhere the two-launch passes, whose
# chunks run in parallel. GPU time in CUDA-graph replay on an H200, tile -> carried, us.
# Backward (chunks of 64; scripts/profile_backward_thread.py --part boundary, sessions
# 41-42): 8 chunks or fewer, 1024-4096 rows: fp32 level to 9% less ((2, 512, 512) 55.4 ->
# 54.4), bf16 12-20% less ((8, 512, 256) 91.3 -> 73.6); 16 chunks, 1024 rows: fp32 2-5%
# more ((2, 512, 1024) 93.6 -> 95.8), bf16 11-12% less (86.9 -> 76.7); 32 chunks: fp32
# 23-28% more, bf16 5% more; 48 rows of 16 chunks: 1.8x, the walk's latency unhidden.
# Forward (chunks of 128; --part forward, session 42): 5-6 chunks, 1024-1536 rows: 2-3%
# less fp32, 6-7% less bf16 ((4, 384, 768) 37.6 -> 34.9); 8 chunks: fp32 5-7% more, bf16
# 3% more to 5% less; 12-16 chunks 13-35% more; 256 rows of 8 chunks 38-54% more. The
# 512 rows lie between 48 (slower) and 1024 (faster) and were not measured; fp16 is
# taken to follow bf16 (the same kernels on 2-byte loads).
_WALK_PAYS = {
    (True, 4): ((8, 512),),
    (True, 2): ((8, 512), (16, 1024)),
    (False, 4): ((6, 1024),),
    (False, 2): ((6, 1024),),
}


def walk_pays(sequences: int, n_chunks: int, backward: bool, element_size: int) -> bool:
    """Whether "auto" walks the chunks (one launch) rather than taking the two-launch
    passes (sequences: batch * dim; element_size: bytes an element of u)."""
    return any(n_chunks <= most and sequences >= fewest
               for most, fewest in _WALK_PAYS[backward, 4 if element_size >= 4 else 2])


@triton.jit
def _chunk_loads(c, state_ptr, delta_ptr, bias_ptr, b, d, g, length, offs_n, mask_n,
                 s_db, s_dd, s_dl, s_b, s_g, s_n, s_l, CHUNK: tl.constexpr,
                 HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Chunk c's positions and mask, its (NP, CHUNK) tile of B or C, channel d's dt."""
    offs_l = c * CHUNK + tl.arange(0, CHUNK)
    mask_l = offs_l < length
    tile = _load_state_tile(state_ptr, b, g, s_b, s_g, s_n, s_l, offs_n, offs_l,
                            mask_n[:, None] & mask_l[None, :])
    dt = _load_dt(delta_ptr + b * s_db + d * s_dd, bias_ptr, d, offs_l, mask_l, s_dl,
                  HAS_BIAS, SOFTPLUS)
    return offs_l, mask_l, tile, dt


@triton.jit
def _walk_forward(u_ptr, delta_ptr, B_ptr, bias_ptr, H_ptr, last_ptr, A2, b, d, g, row,
                  length, n_chunks, offs_n, mask_n, s_ub, s_ud, s_ul, s_db, s_dd, s_dl,
                  s_Bb, s_Bg, s_Bn, s_Bl, N, CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr,
                  SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, STORE_LAST: tl.constexpr):
    """H[row, c]: the forward state at the end of chunk c in scan order."""
    h = tl.zeros(A2.shape, dtype=tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i if REVERSE else i
        offs_l, mask_l, Bt, dt = _chunk_loads(c, B_ptr, delta_ptr, bias_ptr, b, d, g, length,
                                              offs_n, mask_n, s_db, s_dd, s_dl, s_Bb, s_Bg,
                                              s_Bn, s_Bl, CHUNK, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + b * s_ub + d * s_ud + offs_l * s_ul, mask=mask_l,
                    other=0.0).to(tl.float32)
        h = tl.exp2(A2 * tl.sum(dt, axis=0)) * h + _forward_aggregate(Bt, dt, u, A2, REVERSE)
        tl.store(H_ptr + (row * n_chunks + c) * N + offs_n, h, mask=mask_n)
    if STORE_LAST:
        tl.store(last_ptr + row * N + offs_n, h, mask=mask_n)


@triton.jit
def _walk_adjoint(delta_ptr, z_ptr, dout_ptr, C_ptr, bias_ptr, Q_ptr, A2, b, d, g, row,
                  length, n_chunks, offs_n, mask_n, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
                  s_ob, s_od, s_ol, s_Cb, s_Cg, s_Cn, s_Cl, N, CHUNK: tl.constexpr,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
                  REVERSE: tl.constexpr):
    """Q[row, c]: the adjoint leaving chunk c at its first position in scan order, times
    that position's decay (what enters the chunk before it in scan order)."""
    q = tl.zeros(A2.shape, dtype=tl.float32)
    for i in range(n_chunks):
        c = i if REVERSE else n_chunks - 1 - i  # against scan order
        offs_l, mask_l, Ct, dt = _chunk_loads(c, C_ptr, delta_ptr, bias_ptr, b, d, g, length,
                                              offs_n, mask_n, s_db, s_dd, s_dl, s_Cb, s_Cg,
                                              s_Cn, s_Cl, CHUNK, HAS_BIAS, SOFTPLUS)
        local = _adjoint_aggregate(Ct, dt, dout_ptr + b * s_ob + d * s_od,
                                   z_ptr + b * s_zb + d * s_zd, offs_l, mask_l, s_ol, s_zl,
                                   A2, HAS_Z, REVERSE)
        q = tl.exp2(A2 * tl.sum(dt, axis=0)) * q + local
        tl.store(Q_ptr + (row * n_chunks + c) * N + offs_n, q, mask=mask_n)


@triton.jit
def _carried_boundary_kernel(
    u_ptr, delta_ptr, z_ptr, dout_ptr, A_ptr, B_ptr, C_ptr, bias_ptr, H_ptr, Q_ptr, last_ptr,
    dim, per_group, length, n_chunks,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_ob, s_od, s_ol,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    N, NP: tl.constexpr, CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, DO_FWD: tl.constexpr,
    DO_BWD: tl.constexpr, REVERSE: tl.constexpr, STORE_LAST: tl.constexpr,
):
    """Row program_id(0) = batch * dim + channel; program_id(1): the forward states (0,
    where DO_FWD) or the adjoint's (1, or 0 without DO_FWD)."""
    row = tl.program_id(0).to(tl.int64)
    b = row // dim
    d = row % dim
    g = d // per_group
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    A2 = tl.load(A_ptr + d * N + offs_n, mask=mask_n, other=0.0) * 1.4426950408889634
    if DO_FWD and tl.program_id(1) == 0:
        _walk_forward(u_ptr, delta_ptr, B_ptr, bias_ptr, H_ptr, last_ptr, A2, b, d, g, row,
                      length, n_chunks, offs_n, mask_n, s_ub, s_ud, s_ul, s_db, s_dd, s_dl,
                      s_Bb, s_Bg, s_Bn, s_Bl, N, CHUNK, HAS_BIAS, SOFTPLUS, REVERSE,
                      STORE_LAST)
    elif DO_BWD:
        _walk_adjoint(delta_ptr, z_ptr, dout_ptr, C_ptr, bias_ptr, Q_ptr, A2, b, d, g, row,
                      length, n_chunks, offs_n, mask_n, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
                      s_ob, s_od, s_ol, s_Cb, s_Cg, s_Cn, s_Cl, N, CHUNK, HAS_BIAS, SOFTPLUS,
                      HAS_Z, REVERSE)


_carried_boundary_launcher = CachedLaunch(_carried_boundary_kernel)


def carried_boundary_states(
    u: torch.Tensor | None, delta: torch.Tensor, z: torch.Tensor | None,
    dout: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    delta_bias: torch.Tensor | None, delta_softplus: bool, reverse: bool, plan: LaunchPlan,
    forward: bool, adjoint: bool, last_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(H, Q) as `triton_chunks.chunk_boundary_states` returns them (each (batch, dim,
    n_chunks, N) fp32 or None where not asked; last_state, given, gets the state leaving
    the row), in one launch; for rows of few chunks (`walk_pays`: "auto"'s rule),
    any number of chunks correct."""
    batch, dim, length = delta.shape
    groups, n_state = B.shape[1], A.shape[1]
    nc = plan.n_chunks
    dev = delta.device
    H = torch.empty(batch, dim, nc, n_state, device=dev, dtype=torch.float32) if forward else None
    Q = torch.empty(batch, dim, nc, n_state, device=dev, dtype=torch.float32) if adjoint else None
    dummy = H if H is not None else Q
    uu = u if u is not None else delta
    zz = z if z is not None else delta
    oo = dout if dout is not None else delta
    store_last = forward and last_state is not None
    tensors = (uu, delta, zz, oo, A, B, C, delta_bias if delta_bias is not None else dummy,
               H if H is not None else dummy, Q if Q is not None else dummy,
               last_state if store_last else dummy)
    # what the scalars and options are made of (CachedLaunch.keyed)
    key = (plan.chunk, nc, delta.shape, groups, n_state, uu.stride(), delta.stride(),
           zz.stride(), oo.stride(), B.stride(), C.stride(), delta_bias is None,
           delta_softplus, z is None, forward, adjoint, reverse, store_last)

    def scalars_and_options() -> tuple[tuple, dict]:
        scalars = (dim, dim // groups, length, nc, *uu.stride(), *delta.stride(),
                   *zz.stride(), *oo.stride(), *B.stride(), *C.stride())
        return scalars, dict(
            N=n_state, NP=_next_pow2(n_state), CHUNK=plan.chunk,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_Z=z is not None,
            DO_FWD=forward, DO_BWD=adjoint, REVERSE=reverse, STORE_LAST=store_last,
            num_warps=plan.num_warps)

    _carried_boundary_launcher.keyed(key, (batch * dim, int(forward) + int(adjoint)),
                                     tensors, scalars_and_options)
    return H, Q
