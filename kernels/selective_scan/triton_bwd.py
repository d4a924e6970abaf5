"""Triton backward of the selective scan, parallel over the sequence in chunks.

The adjoint of a scan is a scan the other way. Two cheap passes over the chunks
(triton_common.py) give, for every chunk, the true forward state entering it and the true
adjoint entering it from the other side; `_bwd_kernel` then rescans each chunk both ways
from those states and writes every gradient. Sums over positions and channels (dA, dD,
ddelta_bias, and dB/dC shared by the channels of a group) are written as per-program
partial sums in fp32 and reduced with torch: deterministic, no atomics.
Maths in README.md, "Triton kernels". Kernel variants (`variant=`, see `_bwd_kernel`):
"v1" (default: the kernel the README's GPU table measured), "v2" folds the chunk-boundary
states into the scans, "v3" also avoids Triton's reverse scan. All three are tested against
the reference; the next GPU run times them side by side
(scripts/bench_selective_scan.py --bwd-variants) and keeps the fastest as the only one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import (
    _affine_combine,
    _decompose_pid,
    _next_pow2,
    _softplus,
    chunk_boundary_states,
    plan_launch,
)

# Kernel variants selectable by the host function (scripts/bench_selective_scan.py times both).
BWD_VARIANTS = ("v1", "v2", "v3")


@triton.jit
def _bwd_kernel(
    dout_ptr, u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, H_ptr, Q_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    dim, groups, length, n_chunks, n_cblk, n_bgd, per_group, channel_block,
    s_ob, s_od, s_ol, s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    N, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_D: tl.constexpr, REVERSE: tl.constexpr, MULTI_CHUNK: tl.constexpr,
    FOLD: tl.constexpr, FLIP: tl.constexpr,
):
    """One chunk of one (batch, group), looping over a block of its channels.

    du, ddelta, dz: contiguous (batch, dim, L). dB, dC: partial sums (n_cblk, batch,
    groups, N, L). dA: (batch, dim, n_chunks, N); dD, dbias: (batch, dim, n_chunks).
    FOLD (variant "v2"): the boundary states h0, q0 enter each scan through the drive at
    the chunk's edge (h = decay * h0 + drive at the first position in scan order, g =
    q0 + C dy at the last) instead of a fix-up `cumulative decay * state + scan` after
    it, so neither scan needs its decay products as an output: ~12% fewer instructions
    per element on sm_90. v1 (FOLD off) is the previous kernel.
    FLIP (variant "v3", with FOLD): the one scan that runs against memory order (the
    adjoint, or the forward states under REVERSE) runs forwards over inputs taken in
    reversed order (a reversed copy of the C or B tile, 1-D flips of dt and dy / x), and
    only its output is flipped back. Triton 3.6 lowers a reverse scan with a flip of every
    operand and result (~4 shuffles per register each); this keeps one flip.
    """
    c, b, g, cblk = _decompose_pid(tl.program_id(0), n_bgd, n_cblk, groups)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    chunk_start = c * CHUNK
    offs_l = chunk_start + tl.arange(0, CHUNK)
    mask_l = offs_l < length
    mask_nl = mask_n[:, None] & mask_l[None, :]
    if FLIP:
        # the tile the against-order scan reads, reversed: column q is t = start + CHUNK-1-q
        offs_r = chunk_start + CHUNK - 1 - tl.arange(0, CHUNK)
        mask_nr = mask_n[:, None] & (offs_r < length)[None, :]
        if REVERSE:
            Br = tl.load(B_ptr + b * s_Bb + g * s_Bg + offs_n[:, None] * s_Bn
                         + offs_r[None, :] * s_Bl, mask=mask_nr, other=0.0).to(tl.float32)
        else:
            Cr = tl.load(C_ptr + b * s_Cb + g * s_Cg + offs_n[:, None] * s_Cn
                         + offs_r[None, :] * s_Cl, mask=mask_nr, other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + b * s_Bb + g * s_Bg + offs_n[:, None] * s_Bn
                 + offs_l[None, :] * s_Bl, mask=mask_nl, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + b * s_Cb + g * s_Cg + offs_n[:, None] * s_Cn
                 + offs_l[None, :] * s_Cl, mask=mask_nl, other=0.0).to(tl.float32)
    # Neighbours in scan order: the forward state comes from c_prev, the adjoint from
    # c_next; inside the chunk the adjoint at t decays by a at t's successor t_next.
    if REVERSE:
        has_prev = c + 1 < n_chunks
        c_prev = tl.minimum(c + 1, n_chunks - 1)
        has_next = c > 0
        c_next = tl.maximum(c - 1, 0)
        offs_next = offs_l - 1
    else:
        has_prev = c > 0
        c_prev = tl.maximum(c - 1, 0)
        has_next = c + 1 < n_chunks
        c_next = tl.minimum(c + 1, n_chunks - 1)
        offs_next = offs_l + 1
    mask_next = (offs_next >= chunk_start) & (offs_next < chunk_start + CHUNK) & (
        offs_next < length)
    # Where the boundary states enter (FOLD): h0 at the chunk's first position in scan
    # order, q0 at its last. Both are zero unless the chunk is full (a partial chunk is
    # the last in scan order, and has_prev is false for it under REVERSE), so these are
    # fixed columns, which keeps the selects off the (N, CHUNK) tile.
    # With FLIP the reversed scan starts at column 0 of its reversed tile.
    col = tl.arange(0, CHUNK)
    if REVERSE:
        h0_col = col == (0 if FLIP else CHUNK - 1)
        q0_col = col == 0
    else:
        h0_col = col == 0
        q0_col = col == (0 if FLIP else CHUNK - 1)
    dB_acc = tl.zeros([NP, CHUNK], dtype=tl.float32)
    dC_acc = tl.zeros([NP, CHUNK], dtype=tl.float32)
    d0 = g * per_group + cblk * channel_block
    d_end = tl.minimum(d0 + channel_block, (g + 1) * per_group)
    for d in range(d0, d_end):
        delta_row = delta_ptr + b * s_db + d * s_dd
        dt_raw = tl.load(delta_row + offs_l * s_dl, mask=mask_l, other=0.0).to(tl.float32)
        dt_next = tl.load(delta_row + offs_next * s_dl, mask=mask_next,
                          other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d)
            dt_raw += bias
            dt_next += bias
        if SOFTPLUS:
            dt = _softplus(dt_raw)
            dt_next = _softplus(dt_next)
        else:
            dt = dt_raw
        dt = tl.where(mask_l, dt, 0.0)
        dt_next = tl.where(mask_next, dt_next, 0.0)
        u = tl.load(u_ptr + b * s_ub + d * s_ud + offs_l * s_ul, mask=mask_l,
                    other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + b * s_ob + d * s_od + offs_l * s_ol, mask=mask_l,
                       other=0.0).to(tl.float32)
        A = tl.load(A_ptr + d * N + offs_n, mask=mask_n, other=0.0)
        A2 = A * 1.4426950408889634
        row = b * dim + d
        if MULTI_CHUNK:
            h0 = tl.load(H_ptr + (row * n_chunks + c_prev) * N + offs_n, mask=mask_n,
                         other=0.0)
            h0 = tl.where(has_prev, h0, 0.0)
            q0 = tl.load(Q_ptr + (row * n_chunks + c_next) * N + offs_n, mask=mask_n,
                         other=0.0)
            q0 = tl.where(has_next, q0, 0.0)
        else:
            h0 = tl.zeros([NP], dtype=tl.float32)
            q0 = tl.zeros([NP], dtype=tl.float32)

        # forward states h_t
        x = dt * u
        drive = Bt * x[None, :]
        if FLIP and REVERSE:
            decay_r = tl.exp2(A2[:, None] * tl.flip(dt, 0)[None, :])
            drive_r = Br * tl.flip(x, 0)[None, :]
            if MULTI_CHUNK:
                drive_r += tl.where(h0_col[None, :], decay_r * h0[:, None], 0.0)
            _, h_r = tl.associative_scan((decay_r, drive_r), axis=1,
                                         combine_fn=_affine_combine)
            h = tl.flip(h_r, 1)
        elif FOLD:
            decay = tl.exp2(A2[:, None] * dt[None, :])
            # h at the first position = decay * h0 + drive: the scan then starts from h0
            if MULTI_CHUNK:
                _, h = tl.associative_scan(
                    (decay, drive + tl.where(h0_col[None, :], decay * h0[:, None], 0.0)),
                    axis=1, combine_fn=_affine_combine, reverse=REVERSE)
            else:
                _, h = tl.associative_scan((decay, drive), axis=1,
                                           combine_fn=_affine_combine, reverse=REVERSE)
        else:
            decay = tl.exp2(A2[:, None] * dt[None, :])
            acum, hs = tl.associative_scan((decay, drive), axis=1,
                                           combine_fn=_affine_combine, reverse=REVERSE)
            h = acum * h0[:, None] + hs
        if HAS_Z:
            zz = tl.load(z_ptr + b * s_zb + d * s_zd + offs_l * s_zl, mask=mask_l,
                         other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            y = tl.sum(Ct * h, axis=0)
            if HAS_D:
                y += tl.load(D_ptr + d) * u
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + row * length + offs_l, dz.to(dz_ptr.dtype.element_ty),
                     mask=mask_l)
            dy = dout * zz * sz
        else:
            dy = dout
        # adjoint states g_t = dL/dh_t, flowing against scan order
        if FLIP and not REVERSE:
            decay_next_r = tl.exp2(A2[:, None] * tl.flip(dt_next, 0)[None, :])
            cdy_r = Cr * tl.flip(dy, 0)[None, :]
            if MULTI_CHUNK:
                cdy_r += tl.where(q0_col[None, :], q0[:, None], 0.0)
            _, g_r = tl.associative_scan((decay_next_r, cdy_r), axis=1,
                                         combine_fn=_affine_combine)
            gadj = tl.flip(g_r, 1)
        elif FOLD:
            decay_next = tl.exp2(A2[:, None] * dt_next[None, :])
            # the successor's decay is 1 at the far end (mask_next), so g there = q0 + C dy
            cdy = Ct * dy[None, :]
            if MULTI_CHUNK:
                cdy += tl.where(q0_col[None, :], q0[:, None], 0.0)
            _, gadj = tl.associative_scan((decay_next, cdy), axis=1,
                                          combine_fn=_affine_combine, reverse=not REVERSE)
        else:
            decay_next = tl.exp2(A2[:, None] * dt_next[None, :])
            gcum, gs = tl.associative_scan((decay_next, Ct * dy[None, :]), axis=1,
                                           combine_fn=_affine_combine, reverse=not REVERSE)
            gadj = gcum * q0[:, None] + gs

        dC_acc += h * dy[None, :]
        dB_acc += gadj * x[None, :]
        gB = tl.sum(gadj * Bt, axis=0)
        # g_t * a_t * h_prev = g_t * (h_t - drive_t): no shifted forward state needed
        gha = gadj * (h - drive)
        ddt = gB * u + tl.sum(gha * A[:, None], axis=0)
        du = gB * dt
        if HAS_D:
            du += tl.load(D_ptr + d) * dy
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(mask_l, ddt, 0.0)
        tl.store(du_ptr + row * length + offs_l, du.to(du_ptr.dtype.element_ty), mask=mask_l)
        tl.store(ddelta_ptr + row * length + offs_l, ddt.to(ddelta_ptr.dtype.element_ty),
                 mask=mask_l)
        part = row * n_chunks + c
        tl.store(dA_ptr + part * N + offs_n, tl.sum(gha * dt[None, :], axis=1), mask=mask_n)
        if HAS_D:
            tl.store(dD_ptr + part, tl.sum(dy * u, axis=0))
        if HAS_BIAS:
            tl.store(dbias_ptr + part, tl.sum(ddt, axis=0))
    acc_off = (((cblk * (n_bgd // n_cblk) + b * groups + g) * N + offs_n[:, None]) * length
               + offs_l[None, :])
    tl.store(dB_ptr + acc_off, dB_acc, mask=mask_nl)
    tl.store(dC_ptr + acc_off, dC_acc, mask=mask_nl)


def selective_scan_bwd_triton(
    dout: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    reverse: bool,
    *,
    chunk: int | None = None,
    channel_block: int | None = None,
    carry_block: int | None = None,
    num_warps: int | None = None,
    variant: str = "v1",
    maxnreg: int | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Backward host function (contract: interface.py's docstring).

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's dtype and
    shape, None for an absent optional. Keyword-only sizes as in the forward.
    `variant`: "v1" (default), "v2" (boundary states folded into the scans) or "v3" (v2
    with the against-order scan run forwards on reversed inputs); see `_bwd_kernel`.
    `maxnreg` caps the registers per thread of the main kernel (more resident warps, maybe
    spills); None leaves it to the compiler.
    """
    if variant not in BWD_VARIANTS:
        raise ValueError(f"variant: expected one of {BWD_VARIANTS}, got {variant!r}")
    launch_options = {} if maxnreg is None else {"maxnreg": maxnreg}
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    plan = plan_launch(batch, dim, groups, length, chunk, channel_block, carry_block,
                       num_warps, n_state, backward=True)
    A = A.contiguous()
    dev, f32 = u.device, torch.float32
    multi = plan.n_chunks > 1
    if multi:
        H, Q = chunk_boundary_states(
            u, delta, z, dout, A, B, C, delta_bias, delta_softplus, reverse, plan,
            forward=True, adjoint=True,
        )
    else:
        H = Q = torch.empty(1, device=dev, dtype=f32)
    nc, ncb = plan.n_chunks, plan.n_channel_blocks
    du = torch.empty(batch, dim, length, device=dev, dtype=u.dtype)
    ddelta = torch.empty(batch, dim, length, device=dev, dtype=delta.dtype)
    dz = torch.empty(batch, dim, length, device=dev, dtype=z.dtype) if z is not None else None
    dB_part = torch.empty(ncb, batch, groups, n_state, length, device=dev, dtype=f32)
    dC_part = torch.empty(ncb, batch, groups, n_state, length, device=dev, dtype=f32)
    dA_part = torch.empty(batch, dim, nc, n_state, device=dev, dtype=f32)
    dD_part = torch.empty(batch, dim, nc, device=dev, dtype=f32) if D is not None else None
    dbias_part = (torch.empty(batch, dim, nc, device=dev, dtype=f32)
                  if delta_bias is not None else None)
    dummy = dA_part
    zz = z if z is not None else u
    _bwd_kernel[(plan.programs(batch, groups),)](
        dout, u, delta, zz, A, B, C, D if D is not None else dummy,
        delta_bias if delta_bias is not None else dummy, H, Q,
        du, ddelta, dz if dz is not None else dummy, dB_part, dC_part, dA_part,
        dD_part if dD_part is not None else dummy,
        dbias_part if dbias_part is not None else dummy,
        dim, groups, length, nc, ncb, batch * groups * ncb, dim // groups,
        plan.channel_block,
        *dout.stride(), *u.stride(), *delta.stride(), *zz.stride(),
        *B.stride(), *C.stride(),
        N=n_state, NP=_next_pow2(n_state), CHUNK=plan.chunk,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_Z=z is not None,
        HAS_D=D is not None, REVERSE=reverse, MULTI_CHUNK=multi, FOLD=variant != "v1",
        FLIP=variant == "v3",
        num_warps=plan.num_warps, **launch_options,
    )
    dB = (dB_part[0] if ncb == 1 else dB_part.sum(0)).to(B.dtype)
    dC = (dC_part[0] if ncb == 1 else dC_part.sum(0)).to(C.dtype)
    dA = dA_part.sum((0, 2))
    dD = dD_part.sum((0, 2)) if dD_part is not None else None
    dbias = dbias_part.sum((0, 2)) if dbias_part is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, dbias
