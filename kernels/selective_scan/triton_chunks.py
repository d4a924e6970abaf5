"""Chunk aggregates and carries: the two passes over chunks the Triton forward and backward
start from (README.md, "Triton kernels"):

1. `_chunk_aggregate_kernel`: for every chunk and channel, the state the chunk produces
   from a zero start (forward state and/or adjoint state) and the sum of dt over the chunk
   (the chunk's decay is exp(A * that sum)).
2. `_carry_kernel`: a scan over chunks that turns those local aggregates into the true
   state at each chunk's boundary, in place (`carry_chunks`; the "rows", "deferred" and
   "serial" variants feed it their own aggregates). Long rows run it block-parallel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch
from .triton_common import (
    LaunchPlan,
    _adjoint_aggregate,
    _affine_combine,
    _cdiv,
    _channel_range,
    _check_power_of_two,
    _chunk_tile,
    _forward_aggregate,
    _load_dt,
    _load_state_tile,
    _next_pow2,
)


@triton.jit
def _chunk_aggregate_kernel(
    u_ptr, delta_ptr, z_ptr, dout_ptr, A_ptr, B_ptr, C_ptr, bias_ptr,
    S_ptr, E_ptr, Q_ptr,
    dim, groups, length, n_chunks, n_cblk, n_bgd, per_group, channel_block,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_ob, s_od, s_ol,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    N, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
    DO_FWD: tl.constexpr, DO_BWD: tl.constexpr, REVERSE: tl.constexpr,
):
    """Per chunk and channel: S = sum dt; E = forward state from a zero start;
    Q = adjoint state leaving the chunk from a zero start (backward only).

    Forward states flow in scan order; E weights each drive term by the decay of the
    positions after it in that order (exclusive). The adjoint flows the other way and Q
    weights dy*C by the decay of the positions from it to the chunk's far end (inclusive).
    Layout of S: (batch, dim, n_chunks); of E, Q: (batch, dim, n_chunks, N).
    """
    c, b, g, cblk, offs_n, mask_n, offs_l, mask_l, mask_nl = _chunk_tile(
        n_bgd, n_cblk, groups, length, N, NP, CHUNK)
    if DO_FWD:
        Bt = _load_state_tile(B_ptr, b, g, s_Bb, s_Bg, s_Bn, s_Bl, offs_n, offs_l, mask_nl)
    if DO_BWD:
        Ct = _load_state_tile(C_ptr, b, g, s_Cb, s_Cg, s_Cn, s_Cl, offs_n, offs_l, mask_nl)
    d0, d_end = _channel_range(g, cblk, per_group, channel_block)
    for d in range(d0, d_end):
        dt = _load_dt(delta_ptr + b * s_db + d * s_dd, bias_ptr, d, offs_l, mask_l, s_dl,
                      HAS_BIAS, SOFTPLUS)
        A2 = tl.load(A_ptr + d * N + offs_n, mask=mask_n, other=0.0) * 1.4426950408889634
        row = (b * dim + d) * n_chunks + c
        tl.store(S_ptr + row, tl.sum(dt, axis=0))
        if DO_FWD:
            u = tl.load(u_ptr + b * s_ub + d * s_ud + offs_l * s_ul, mask=mask_l,
                        other=0.0).to(tl.float32)
            tl.store(E_ptr + row * N + offs_n, _forward_aggregate(Bt, dt, u, A2, REVERSE),
                     mask=mask_n)
        if DO_BWD:
            # the adjoint runs against scan order
            local = _adjoint_aggregate(Ct, dt, dout_ptr + b * s_ob + d * s_od,
                                       z_ptr + b * s_zb + d * s_zd, offs_l, mask_l, s_ol,
                                       s_zl, A2, HAS_Z, REVERSE)
            tl.store(Q_ptr + row * N + offs_n, local, mask=mask_n)


_chunk_aggregate_kernel_launcher = CachedLaunch(_chunk_aggregate_kernel)


@triton.jit
def _load_block(S_ptr, E_ptr, A2, row, n_chunks, k, offs_n, mask_n, N, BLOCK: tl.constexpr,
                REVERSE: tl.constexpr, FOLD: tl.constexpr = 1):
    """Block k of one row's chunks in the direction of flow (REVERSE: the last chunk
    first): (their sums of dt, 0 past the row's end; the pointers and mask of their
    (BLOCK, NP) states; those states). Scans over the block then run forwards: triton
    3.6 lowers a reversed scan as a flip of the tile around a forward one (offline SASS
    of the carry kernel, sm_90: 847 shuffles against 207). FOLD > 1: an entry is FOLD
    chunks composed in flow order, its pointers its last chunk's (`carry_chunks`' fold)."""
    if REVERSE:
        cc = k * BLOCK + (BLOCK - 1 - tl.arange(0, BLOCK))
    else:
        cc = k * BLOCK + tl.arange(0, BLOCK)
    if FOLD == 1:
        mask_c = cc < n_chunks
        s = tl.load(S_ptr + row * n_chunks + cc, mask=mask_c, other=0.0)
        ptrs = E_ptr + (row * n_chunks + cc)[:, None] * N + offs_n[None, :]
        mask = mask_c[:, None] & mask_n[None, :]
        return s, ptrs, mask, tl.load(ptrs, mask=mask, other=0.0)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    e = tl.zeros([BLOCK, A2.shape[0]], dtype=tl.float32)
    for j in tl.static_range(FOLD):
        sub = cc * FOLD + ((FOLD - 1 - j) if REVERSE else j)
        mask_j = sub < n_chunks  # past the end: identities
        s_j = tl.load(S_ptr + row * n_chunks + sub, mask=mask_j, other=0.0)
        e_j = tl.load(E_ptr + (row * n_chunks + sub)[:, None] * N + offs_n[None, :],
                      mask=mask_j[:, None] & mask_n[None, :], other=0.0)
        e = e * tl.exp2(s_j[:, None] * A2[None, :]) + e_j
        s += s_j
    last = cc * FOLD + (0 if REVERSE else FOLD - 1)
    ptrs = E_ptr + (row * n_chunks + last)[:, None] * N + offs_n[None, :]
    return s, ptrs, (last < n_chunks)[:, None] & mask_n[None, :], e


@triton.jit
def _scan_block(S_ptr, E_ptr, A2, carry, row, n_chunks, k, offs_n, mask_n,
                N, BLOCK: tl.constexpr, REVERSE: tl.constexpr, FOLD: tl.constexpr = 1):
    """Block k of one row's chunk aggregates E, scanned in place from the state `carry`
    entering it (None: zero). Returns (the state leaving the block in the direction of
    flow, the block's sum of S)."""
    s, ptrs, mask, e = _load_block(S_ptr, E_ptr, A2, row, n_chunks, k, offs_n, mask_n, N,
                                   BLOCK, REVERSE, FOLD)
    decay = tl.exp2(s[:, None] * A2[None, :])
    acum, hs = tl.associative_scan((decay, e), axis=0, combine_fn=_affine_combine)
    if carry is None:
        h = hs
    else:
        h = acum * carry[None, :] + hs
    tl.store(ptrs, h, mask=mask)
    # masked chunks are identities, so the block's far row (in flow order) holds what
    # leaves it
    edge = tl.arange(0, BLOCK) == BLOCK - 1
    return tl.sum(tl.where(edge[:, None], h, 0.0), axis=0), tl.sum(s, axis=0)


@triton.jit
def _scan_row(S_ptr, E_ptr, A2, row, n_chunks, n_blocks, offs_n, mask_n,
              N, BLOCK: tl.constexpr, REVERSE: tl.constexpr, FOLD: tl.constexpr = 1):
    """All blocks of one row in turn, in the direction of flow; returns the last state."""
    carry = tl.zeros(A2.shape, dtype=tl.float32)
    for i in range(0, n_blocks):
        if REVERSE:
            k = n_blocks - 1 - i
        else:
            k = i
        carry, _ = _scan_block(S_ptr, E_ptr, A2, carry, row, n_chunks, k, offs_n, mask_n, N,
                               BLOCK, REVERSE, FOLD)
    return carry


@triton.jit
def _fix_block(S_ptr, E_ptr, XB_ptr, A2, row, n_chunks, n_blocks, k, offs_n, mask_n,
               N, BLOCK: tl.constexpr, REVERSE: tl.constexpr):
    """Block k of E (scanned from zero by `_scan_block`) + the true state entering it,
    XB[row, previous block in flow order], decayed to each chunk's end."""
    if REVERSE:
        has_prev = k + 1 < n_blocks
        k_prev = k + 1
    else:
        has_prev = k > 0
        k_prev = k - 1
    if has_prev:
        h_in = tl.load(XB_ptr + (row * n_blocks + k_prev) * N + offs_n, mask=mask_n, other=0.0)
        s, ptrs, mask, e = _load_block(S_ptr, E_ptr, A2, row, n_chunks, k, offs_n, mask_n, N,
                                       BLOCK, REVERSE)
        upto = tl.cumsum(s, axis=0)  # inclusive, in flow order
        e += tl.exp2(upto[:, None] * A2[None, :]) * h_in[None, :]
        tl.store(ptrs, e, mask=mask)


@triton.jit
def _carry_stage(S_ptr, X_ptr, XB_ptr, SB_ptr, last_ptr, A2, row, k, n_chunks, n_blocks,
                 offs_n, mask_n, first, N, BLOCK: tl.constexpr, REVERSE: tl.constexpr,
                 STAGE: tl.constexpr, STORE_SB: tl.constexpr, STORE_LAST: tl.constexpr,
                 FOLD: tl.constexpr):
    """One stage of `_carry_kernel` on the aggregates X (E or Q) of one row (its states
    offs_n); STORE_SB: the blocks' sums of S are written, by the row's `first` program;
    FOLD: chunks an entry of stage 0's scan."""
    if STAGE == 0:
        x_out = _scan_row(S_ptr, X_ptr, A2, row, n_chunks, n_blocks, offs_n, mask_n, N, BLOCK,
                          REVERSE, FOLD)
        if STORE_LAST:
            tl.store(last_ptr + row * N + offs_n, x_out, mask=mask_n)
    elif STAGE == 1:
        x_out, s_sum = _scan_block(S_ptr, X_ptr, A2, None, row, n_chunks, k, offs_n, mask_n,
                                   N, BLOCK, REVERSE)
        tl.store(XB_ptr + (row * n_blocks + k) * N + offs_n, x_out, mask=mask_n)
        if STORE_SB:
            tl.store(SB_ptr + row * n_blocks + k, s_sum, mask=first)
    else:
        _fix_block(S_ptr, X_ptr, XB_ptr, A2, row, n_chunks, n_blocks, k, offs_n, mask_n, N,
                   BLOCK, REVERSE)


@triton.jit
def _carry_kernel(
    S_ptr, E_ptr, Q_ptr, A_ptr, last_ptr, SB_ptr, EB_ptr, QB_ptr, dim, n_chunks, n_blocks,
    N, NP: tl.constexpr, BLOCK: tl.constexpr, REVERSE: tl.constexpr,
    STORE_LAST: tl.constexpr, WITH_Q: tl.constexpr, STAGE: tl.constexpr,
    SPLIT: tl.constexpr = 1, FOLD: tl.constexpr = 1,
):
    """The chunk aggregates of row program_id(0) // SPLIT (batch * dim + channel), NP //
    SPLIT of its states (the states are independent: SPLIT programs share a row), BLOCK
    chunks a tl.associative_scan; program_id(2) == 1 (WITH_Q) works on Q, which flows the other
    way (the backward's adjoint), in the same launch. After it E[c] holds the true state
    at the end of chunk c in the direction of flow (REVERSE: from the last chunk to the
    first); STORE_LAST writes the state leaving the row; FOLD: `carry_chunks`' fold.

    STAGE 0: a program walks all blocks of its row in turn, carrying the state.
    STAGE 1: program_id(1) = k scans block k from a zero state and writes the block's sum
    of S and end state (SB, EB / QB), which `carry_chunks` carries; STAGE 2 then adds each
    block's true entering state. More launches and twice the bytes, but rows of many
    blocks no longer wait on them one after the other.
    """
    pid = tl.program_id(0).to(tl.int64)
    row = pid // SPLIT
    part = pid % SPLIT
    k = tl.program_id(1).to(tl.int64)
    d = row % dim
    offs_n = part * (NP // SPLIT) + tl.arange(0, NP // SPLIT)
    mask_n = offs_n < N
    A2 = tl.load(A_ptr + d * N + offs_n, mask=mask_n, other=0.0) * 1.4426950408889634
    if WITH_Q and tl.program_id(2) == 1:
        _carry_stage(S_ptr, Q_ptr, QB_ptr, SB_ptr, last_ptr, A2, row, k, n_chunks, n_blocks,
                     offs_n, mask_n, part == 0, N, BLOCK, not REVERSE, STAGE, False, False,
                     FOLD)
    else:
        _carry_stage(S_ptr, E_ptr, EB_ptr, SB_ptr, last_ptr, A2, row, k, n_chunks, n_blocks,
                     offs_n, mask_n, part == 0, N, BLOCK, REVERSE, STAGE, True, STORE_LAST,
                     FOLD)


_carry_kernel_launcher = CachedLaunch(_carry_kernel)


def chunk_boundary_states(
    u: torch.Tensor | None,
    delta: torch.Tensor,
    z: torch.Tensor | None,
    dout: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    reverse: bool,
    plan: LaunchPlan,
    forward: bool,
    adjoint: bool,
    last_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Run the aggregate and carry passes.

    Returns (H, Q), each (batch, dim, n_chunks, N) fp32 or None if not asked: H[b, d, c]
    the forward state leaving chunk c at its last position in scan order, Q[b, d, c] the
    adjoint leaving chunk c at its first position in scan order (it flows backwards).
    """
    batch, dim, length = delta.shape
    groups, n_state = B.shape[1], A.shape[1]
    nc = plan.n_chunks
    dev = delta.device
    S = torch.empty(batch, dim, nc, device=dev, dtype=torch.float32)
    H = torch.empty(batch, dim, nc, n_state, device=dev, dtype=torch.float32) if forward else None
    Q = torch.empty(batch, dim, nc, n_state, device=dev, dtype=torch.float32) if adjoint else None
    dummy = S
    n_bgd = batch * groups * plan.n_channel_blocks
    uu = u if u is not None else delta
    zz = z if z is not None else delta
    oo = dout if dout is not None else delta
    tensors = (uu, delta, zz, oo, A, B, C, delta_bias if delta_bias is not None else dummy,
               S, H if H is not None else dummy, Q if Q is not None else dummy)
    # what the scalars and options are made of (CachedLaunch.keyed)
    key = (plan, delta.shape, groups, n_state, uu.stride(), delta.stride(), zz.stride(),
           oo.stride(), B.stride(), C.stride(), delta_bias is None, delta_softplus,
           z is None, forward, adjoint, reverse)

    def scalars_and_options() -> tuple[tuple, dict]:
        scalars = (dim, groups, length, nc, plan.n_channel_blocks, n_bgd, dim // groups,
                   plan.channel_block, *uu.stride(), *delta.stride(), *zz.stride(),
                   *oo.stride(), *B.stride(), *C.stride())
        return scalars, dict(
            N=n_state, NP=_next_pow2(n_state), CHUNK=plan.chunk,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_Z=z is not None,
            DO_FWD=forward, DO_BWD=adjoint, REVERSE=reverse, num_warps=plan.num_warps)

    _chunk_aggregate_kernel_launcher.keyed(key, (plan.programs(batch, groups),), tensors,
                                           scalars_and_options)
    if forward:
        carry_chunks(S, H, A, last_state, plan.carry_block, reverse, Q)
    elif adjoint:
        carry_chunks(S, Q, A, None, plan.carry_block, not reverse)
    return H, Q


# Rows of at least this many carry blocks (of the caller's size: 512 chunks for the
# launch plans, so from 8192 chunks on) scan them in parallel, in blocks of at most
# PARALLEL_BLOCK chunks (`carry_chunks`). Measured on an H200 (bench_selective_scan.py
# --carry, session 18, scripts/results/kernel_h200_2026-12-01_s18/carry_call5.log), us:
# the backward's H and Q of (1, 48, 2097152), 32768 chunks a row: 594 in turn (blocks of
# 512), 439 in parallel in blocks of 512, 360 in blocks of 256; its forward's 8192 chunks
# 88 / 57 / 45; (2, 64, 262144), 4096 chunks: 127 / 155 / 126 (8 blocks: in turn).
PARALLEL_MIN_BLOCKS = 16
PARALLEL_BLOCK = 256
_MAX_GRID_Y = 65535  # CUDA's limit on grid axis 1, the block index


def _carry_split(rows: int, n_pow2: int, parallel: bool) -> int:
    """Programs a row by default: 4 where few rows walk their blocks in turn (one program
    a row would leave most SMs idle), else 1. Measured on an H200 with 4 warps a program
    (bench_selective_scan.py --carry, session 23, scripts/results/
    kernel_h200_2026-12-01_s23/carry_call7.log), us, split 1 against 4: (2, 64, 262144)'s
    128 rows, the backward's adjoint alone (4096 chunks) 56.6 against 43.2, its forward
    19.3 against 15.5; (2, 128, 32768)'s 256 rows level (13.6 / 13.1); 512 rows and more,
    or rows carried block-parallel ((1, 48, 2097152)), 1 faster (e.g. 148.9 against
    201.6). 4 warps against session 18's 8 (split 1): faster on 13 of the 18 cases, e.g.
    (1, 48, 2097152) 165.0 -> 148.9 and 72.2 -> 58.1, (8, 128, 16384) 22.5 -> 19.3."""
    return min(4, n_pow2) if rows <= 256 and not parallel else 1


def carry_chunks(S: torch.Tensor, E: torch.Tensor, A: torch.Tensor,
                 last_state: torch.Tensor | None, carry_block: int, reverse: bool,
                 Q: torch.Tensor | None = None, *, parallel_from: int = PARALLEL_MIN_BLOCKS,
                 parallel_block: int = PARALLEL_BLOCK, split: int | None = None,
                 num_warps: int = 4, fold: int = 1) -> None:
    """E (batch, dim, n_chunks, N), the chunks' states from zero, becomes the true state
    at each chunk's boundary, in place; with `last_state`, the state leaving the last chunk
    in the direction of flow is written there too. Q, of E's shape, is scanned the other
    way in the same launches (the backward's forward and adjoint aggregates share S).

    A row's chunks are scanned `carry_block` at a time. Rows of fewer than `parallel_from`
    blocks walk them in turn (one launch); longer rows scan all blocks (of at most
    `parallel_block` chunks) at once from zero, carry the blocks' aggregates (this
    function, recursively), then add each block's entering state (two launches more).
    `split` programs (a power of two, at most N rounded up to one) share a row, each with
    its part of the states (default `_carry_split`); `num_warps` a program.

    `fold` > 1: only the last boundary of each group of `fold` chunks in the direction of
    flow is wanted (the "serial" output pass's, its aggregates split `fold` a chunk): the
    scan runs over the groups, composed as they load, and writes those boundaries only.
    Rows that would scan in parallel carry every boundary instead.
    """
    batch, dim, n_chunks, n_state = E.shape
    if fold < 1:
        raise ValueError(f"fold: expected at least 1, got {fold}")
    n_blocks = _cdiv(_cdiv(n_chunks, fold), carry_block)
    parallel = n_blocks >= parallel_from
    if parallel and fold > 1:  # stage 2 would fold the scanned blocks again
        return carry_chunks(S, E, A, last_state, carry_block, reverse, Q,
                            parallel_from=parallel_from, parallel_block=parallel_block,
                            split=split, num_warps=num_warps)
    if parallel:
        # blocks of at least 2 chunks (the recursion must shrink), few enough for grid axis 1
        carry_block = max(2, min(carry_block, parallel_block),
                          _next_pow2(_cdiv(n_chunks, _MAX_GRID_Y)))
        n_blocks = _cdiv(n_chunks, carry_block)
    dummy = S
    SB = EB = QB = dummy
    if parallel:
        f32 = torch.float32
        SB = torch.empty(batch, dim, n_blocks, device=E.device, dtype=f32)
        EB = torch.empty(batch, dim, n_blocks, n_state, device=E.device, dtype=f32)
        QB = torch.empty_like(EB) if Q is not None else dummy
    n_pow2 = _next_pow2(n_state)
    if split is None:
        split = _carry_split(batch * dim, n_pow2, parallel)
    _check_power_of_two("split", split)
    if split > n_pow2:
        raise ValueError(f"split: expected at most {n_pow2} (the states rounded up to a "
                         f"power of two), got {split}")
    grid = (batch * dim * split, n_blocks if parallel else 1, 1 if Q is None else 2)
    tensors = (S, E, Q if Q is not None else dummy, A,
               last_state if last_state is not None else dummy, SB, EB, QB)

    def launch(stage: int) -> None:
        def scalars_and_options() -> tuple[tuple, dict]:
            return (dim, n_chunks, n_blocks), dict(
                N=n_state, NP=n_pow2, BLOCK=carry_block, REVERSE=reverse,
                STORE_LAST=last_state is not None, WITH_Q=Q is not None, SPLIT=split,
                STAGE=stage, FOLD=fold, num_warps=num_warps)

        # what the scalars and options are made of (CachedLaunch.keyed)
        key = (E.shape, n_blocks, carry_block, reverse, last_state is None, Q is None,
               split, num_warps, stage, fold)
        _carry_kernel_launcher.keyed(key, grid, tensors, scalars_and_options)

    if not parallel:
        launch(0)
        return
    launch(1)
    outer_block = max(2, min(carry_block, max(16, _next_pow2(n_blocks))))
    carry_chunks(SB, EB, A, last_state, outer_block, reverse, QB if Q is not None else None,
                 parallel_from=parallel_from, parallel_block=parallel_block, split=split,
                 num_warps=num_warps)
    launch(2)
