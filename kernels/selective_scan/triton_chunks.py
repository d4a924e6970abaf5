"""Chunk aggregates and carries: the two passes over chunks the Triton forward and backward
start from (README.md, "Triton kernels"):

1. `_chunk_aggregate_kernel`: for every chunk and channel, the state the chunk produces
   from a zero start (forward state and/or adjoint state) and the sum of dt over the chunk
   (the chunk's decay is exp(A * that sum)).
2. `_carry_kernel`: a scan over chunks that turns those local aggregates into the true
   state at each chunk's boundary, in place (`carry_chunks`; the "rows", "deferred" and
   "serial" variants feed it their own aggregates).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch
from .triton_common import (
    LaunchPlan,
    _affine_combine,
    _cdiv,
    _channel_range,
    _decompose_pid,
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
    c, b, g, cblk = _decompose_pid(tl.program_id(0), n_bgd, n_cblk, groups)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    offs_l = c * CHUNK + tl.arange(0, CHUNK)
    mask_l = offs_l < length
    mask_nl = mask_n[:, None] & mask_l[None, :]
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
            # decay of the positions after t in scan order
            after = tl.cumsum(dt, axis=0, reverse=not REVERSE) - dt
            w = tl.exp2(A2[:, None] * after[None, :]) * Bt
            tl.store(E_ptr + row * N + offs_n, tl.sum(w * (dt * u)[None, :], axis=1), mask=mask_n)
        if DO_BWD:
            dy = tl.load(dout_ptr + b * s_ob + d * s_od + offs_l * s_ol, mask=mask_l,
                         other=0.0).to(tl.float32)
            if HAS_Z:
                zz = tl.load(z_ptr + b * s_zb + d * s_zd + offs_l * s_zl, mask=mask_l,
                             other=0.0).to(tl.float32)
                dy = dy * zz * tl.sigmoid(zz)
            # the adjoint runs against scan order: decay from t to the chunk's far end
            upto = tl.cumsum(dt, axis=0, reverse=REVERSE)
            w = tl.exp2(A2[:, None] * upto[None, :]) * Ct
            tl.store(Q_ptr + row * N + offs_n, tl.sum(w * dy[None, :], axis=1), mask=mask_n)


_chunk_aggregate_kernel_launcher = CachedLaunch(_chunk_aggregate_kernel)


@triton.jit
def _scan_block(S_ptr, E_ptr, A2, row, n_chunks, k, offs_n, mask_n,
                N, BLOCK: tl.constexpr, REVERSE: tl.constexpr):
    """Block k of one row's chunk aggregates E, scanned in place from a zero state.
    Returns (the state leaving the block in the direction of flow, the block's sum of S)."""
    offs_c = tl.arange(0, BLOCK)
    cc = k * BLOCK + offs_c
    mask_c = cc < n_chunks
    s = tl.load(S_ptr + row * n_chunks + cc, mask=mask_c, other=0.0)
    ptrs = E_ptr + (row * n_chunks + cc)[:, None] * N + offs_n[None, :]
    mask = mask_c[:, None] & mask_n[None, :]
    e = tl.load(ptrs, mask=mask, other=0.0)
    decay = tl.exp2(s[:, None] * A2[None, :])
    _, h = tl.associative_scan((decay, e), axis=0, combine_fn=_affine_combine,
                               reverse=REVERSE)
    tl.store(ptrs, h, mask=mask)
    # masked chunks are identities, so the block's far row holds what leaves it
    if REVERSE:
        edge = offs_c == 0
    else:
        edge = offs_c == BLOCK - 1
    return tl.sum(tl.where(edge[:, None], h, 0.0), axis=0), tl.sum(s, axis=0)


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
        cc = k * BLOCK + tl.arange(0, BLOCK)
        mask_c = cc < n_chunks
        s = tl.load(S_ptr + row * n_chunks + cc, mask=mask_c, other=0.0)
        upto = tl.cumsum(s, axis=0, reverse=REVERSE)  # inclusive, in flow order
        ptrs = E_ptr + (row * n_chunks + cc)[:, None] * N + offs_n[None, :]
        mask = mask_c[:, None] & mask_n[None, :]
        e = tl.load(ptrs, mask=mask, other=0.0)
        e += tl.exp2(upto[:, None] * A2[None, :]) * h_in[None, :]
        tl.store(ptrs, e, mask=mask)


@triton.jit
def _carry_kernel(
    S_ptr, E_ptr, Q_ptr, A_ptr, last_ptr, SB_ptr, EB_ptr, QB_ptr, dim, n_chunks, n_blocks,
    N, NP: tl.constexpr, BLOCK: tl.constexpr, REVERSE: tl.constexpr,
    STORE_LAST: tl.constexpr, WITH_Q: tl.constexpr, FIX: tl.constexpr,
):
    """Block program_id(1) of the chunk aggregates of row program_id(0) (batch * dim +
    channel); program_id(2) == 1 (WITH_Q) works on Q, which flows the other way (the
    backward's adjoint), in the same launch.

    Not FIX: the block is scanned in place from a zero state (a tl.associative_scan);
    with one block that is the result: E[c] holds the true state at the end of chunk c in
    the direction of flow (REVERSE: from the last chunk to the first), and STORE_LAST
    writes the state leaving the row. With several blocks (n_blocks > 1) each block also
    writes its sum of S and its end state (SB, EB / QB): `carry_chunks` scans those, then
    runs this kernel again with FIX to add each block's true entering state.
    """
    row = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1).to(tl.int64)
    d = row % dim
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    A2 = tl.load(A_ptr + d * N + offs_n, mask=mask_n, other=0.0) * 1.4426950408889634
    if WITH_Q and tl.program_id(2) == 1:
        if FIX:
            _fix_block(S_ptr, Q_ptr, QB_ptr, A2, row, n_chunks, n_blocks, k, offs_n, mask_n,
                       N, BLOCK, not REVERSE)
        else:
            q_out, _ = _scan_block(S_ptr, Q_ptr, A2, row, n_chunks, k, offs_n, mask_n, N,
                                   BLOCK, not REVERSE)
            if n_blocks > 1:
                tl.store(QB_ptr + (row * n_blocks + k) * N + offs_n, q_out, mask=mask_n)
    else:
        if FIX:
            _fix_block(S_ptr, E_ptr, EB_ptr, A2, row, n_chunks, n_blocks, k, offs_n, mask_n,
                       N, BLOCK, REVERSE)
        else:
            h_out, s_sum = _scan_block(S_ptr, E_ptr, A2, row, n_chunks, k, offs_n, mask_n, N,
                                       BLOCK, REVERSE)
            if n_blocks > 1:
                tl.store(EB_ptr + (row * n_blocks + k) * N + offs_n, h_out, mask=mask_n)
                tl.store(SB_ptr + row * n_blocks + k, s_sum)
            elif STORE_LAST:
                tl.store(last_ptr + row * N + offs_n, h_out, mask=mask_n)


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
    _chunk_aggregate_kernel_launcher[(plan.programs(batch, groups),)](
        uu, delta, zz, oo, A, B, C, delta_bias if delta_bias is not None else dummy,
        S, H if H is not None else dummy, Q if Q is not None else dummy,
        dim, groups, length, nc, plan.n_channel_blocks, n_bgd, dim // groups,
        plan.channel_block,
        *uu.stride(), *delta.stride(), *zz.stride(), *oo.stride(),
        *B.stride(), *C.stride(),
        N=n_state, NP=_next_pow2(n_state), CHUNK=plan.chunk, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, HAS_Z=z is not None, DO_FWD=forward, DO_BWD=adjoint,
        REVERSE=reverse, num_warps=plan.num_warps,
    )
    if forward:
        carry_chunks(S, H, A, last_state, plan.carry_block, reverse, Q)
    elif adjoint:
        carry_chunks(S, Q, A, None, plan.carry_block, not reverse)
    return H, Q


def carry_chunks(S: torch.Tensor, E: torch.Tensor, A: torch.Tensor,
                 last_state: torch.Tensor | None, carry_block: int, reverse: bool,
                 Q: torch.Tensor | None = None) -> None:
    """E (batch, dim, n_chunks, N), the chunks' states from zero, becomes the true state
    at each chunk's boundary, in place; with `last_state`, the state leaving the last chunk
    in the direction of flow is written there too. Q, of E's shape, is scanned the other
    way in the same launches (the backward's forward and adjoint aggregates share S).

    Rows of more than `carry_block` chunks are cut into blocks scanned in parallel, the
    blocks' aggregates are carried by this function (recursively), then every block gets
    its entering state: a row no longer walks its blocks one after the other (1 x 48 x 2M
    positions: 64 blocks of 512 chunks a row, 48 rows).
    """
    batch, dim, n_chunks, n_state = E.shape
    n_blocks = _cdiv(n_chunks, carry_block)
    if n_blocks >= 2**16:
        raise ValueError(f"selective scan too long: {n_chunks} chunks make {n_blocks} carry "
                         f"blocks of {carry_block} (at most 65535); use a larger chunk")
    grid = (batch * dim, n_blocks, 1 if Q is None else 2)
    SB = EB = QB = None
    if n_blocks > 1:
        SB = torch.empty(batch, dim, n_blocks, device=E.device, dtype=torch.float32)
        EB = torch.empty(batch, dim, n_blocks, n_state, device=E.device, dtype=torch.float32)
        QB = torch.empty_like(EB) if Q is not None else None
    dummy = S
    args = (S, E, Q if Q is not None else E, A,
            last_state if last_state is not None else dummy,
            SB if SB is not None else dummy, EB if EB is not None else dummy,
            QB if QB is not None else dummy, dim, n_chunks, n_blocks)
    options = dict(N=n_state, NP=_next_pow2(n_state), BLOCK=carry_block, REVERSE=reverse,
                   STORE_LAST=last_state is not None, WITH_Q=Q is not None, num_warps=8)
    launch = _carry_kernel_launcher[grid]
    launch(*args, FIX=False, **options)
    if n_blocks == 1:
        return
    outer_block = min(carry_block, max(16, _next_pow2(n_blocks)))
    carry_chunks(SB, EB, A, last_state, outer_block, reverse, QB)
    launch(*args, FIX=True, **options)
