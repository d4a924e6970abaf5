"""Triton backward of the selective scan, parallel over the sequence in chunks.

The adjoint of a scan is a scan the other way. Two cheap passes over the chunks
(triton_chunks.py) give, for every chunk, the true forward state entering it and the true
adjoint entering it from the other side; `_bwd_kernel` then rescans each chunk both ways
from those states and writes every gradient. Sums over positions and channels (dA, dD,
ddelta_bias, and dB/dC shared by the channels of a group) are written as per-program
partial sums in fp32 and reduced by triton_sums.py's kernel: deterministic, no atomics.
Maths in README.md, "Triton kernels".

The chunk-boundary states enter the two scans through their drives (see `_bwd_kernel`):
faster than applying them after the scans on 11 of the 12 bench rows (H200, 2026-11-30,
scripts/results/kernel_h200_2026-11-30/kernel.log; README.md, "Backward, also chunked").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bwd_state_grads import parameter_grad_sizes, state_grad_buffers, sum_partial_grads
from .launch import CachedLaunch
from .replay import replayed
from .triton_common import (
    _channel_range,
    _chunk_tile,
    _load_state_tile,
    _next_pow2,
    _previous_chunk,
    _scan_edge_columns,
    _softplus,
    plan_launch,
)
from .triton_tile_scans import _adjoint_scan_by_groups, _group_size, _scan_tile
from .triton_bwd_channel import (_cache_boundaries, _channel_A, _channel_boundaries,
                                 _channel_vectors, _load_z)
from .triton_chunks import chunk_boundary_states
from .triton_chunks_carried import carried_boundary_states
from .serial_planning import serial_plan
from .bwd_options import auto_boundary, resolve_options
from .triton_fwd_serial import serial_boundary_states
from .triton_bwd_serial import serial_bwd_main


@triton.jit
def _bwd_kernel(
    dout_ptr, u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, H_ptr, Q_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, part_ptr,
    dim, groups, length, n_chunks, n_cblk, n_bgd, per_group, channel_block, part_stride,
    dC_shift,
    s_ob, s_od, s_ol, s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    N, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_D: tl.constexpr, REVERSE: tl.constexpr, MULTI_CHUNK: tl.constexpr,
    PREFETCH: tl.constexpr, AHEAD: tl.constexpr = 0, SHIFTED_DECAY: tl.constexpr = False,
    EVEN_L: tl.constexpr = False, CACHE_AHEAD: tl.constexpr = False,
):
    """One chunk of one (batch, group), looping over a block of its channels.

    du, ddelta, dz: contiguous (batch, dim, L). dB, dC: partial sums (n_cblk, batch,
    groups, N, L), in their own dtype, dC's at dC_ptr + dC_shift (both in one buffer, or
    dC_shift 0). dA, dD, dbias: partial sums, one row of `part_stride` elements per
    (batch, chunk) at part_ptr holding dA (dim, N), then dD (dim,) if HAS_D, then dbias
    (dim,) if HAS_BIAS, so that one sum over rows reduces all three (offsets formed here:
    the host then needs no views of the row, a few microseconds each).
    The boundary states h0, q0 enter each scan through the drive at the chunk's edge (h =
    decay * h0 + drive at the first position in scan order, g = q0 + C dy at the last)
    rather than through a fix-up `cumulative decay * state + scan` after it, so neither
    scan needs its decay products as an output: ~12% fewer instructions per element on
    sm_90. EVEN_L: every chunk is whole (L a multiple of CHUNK), so no position masks.
    """
    c, b, g, cblk, offs_n, mask_n, offs_l, mask_l, mask_nl = _chunk_tile(
        n_bgd, n_cblk, groups, length, N, NP, CHUNK)
    if EVEN_L:
        mask_l = tl.full([CHUNK], 1, tl.int1)
        mask_nl = mask_n[:, None] & mask_l[None, :]
    chunk_start = c * CHUNK
    Bt = _load_state_tile(B_ptr, b, g, s_Bb, s_Bg, s_Bn, s_Bl, offs_n, offs_l, mask_nl)
    Ct = _load_state_tile(C_ptr, b, g, s_Cb, s_Cg, s_Cn, s_Cl, offs_n, offs_l, mask_nl)
    K: tl.constexpr = _group_size(B_ptr.dtype.element_ty, CHUNK)  # positions a thread
    # Neighbours in scan order: the forward state comes from c_prev, the adjoint from
    # c_next; inside the chunk the adjoint at t decays by a at t's successor t_next.
    has_prev, c_prev = _previous_chunk(c, n_chunks, REVERSE)
    has_next, c_next = _previous_chunk(c, n_chunks, not REVERSE)  # previous against scan order
    # The boundary states are 0 at the sequence's ends. Read a channel ahead (AHEAD 2),
    # that goes into their loads' masks: a select right after the load would wait for it
    # there, a channel early (session 29). (Masks by the state count: the interpreter
    # refuses a scalar bool & a mask.)
    if AHEAD >= 2:
        mask_h0 = offs_n < tl.where(has_prev, N, 0)
        mask_q0 = offs_n < tl.where(has_next, N, 0)
    else:
        mask_h0 = mask_n
        mask_q0 = mask_n
    # The adjoint needs the successor's decay at every position. Scanned by groups
    # (`_adjoint_scan_by_groups`) it takes the decays as they are; otherwise (SHIFTED)
    # from dt loaded shifted by one. `selective_scan_bwd_triton` says which is taken.
    SHIFTED: tl.constexpr = SHIFTED_DECAY or CHUNK < 4
    if REVERSE:
        offs_next = offs_l - 1
    else:
        offs_next = offs_l + 1
    mask_next = (offs_next >= chunk_start) & (offs_next < chunk_start + CHUNK)
    if not EVEN_L:
        mask_next &= offs_next < length
    # Where the boundary states enter: h0 at the chunk's first position in scan order, q0
    # at its last. Both are zero unless the chunk is full (a partial chunk is the last in
    # scan order, and has_prev is false for it under REVERSE), so these are fixed columns,
    # which keeps the selects off the (N, CHUNK) tile.
    h0_col, q0_col = _scan_edge_columns(CHUNK, REVERSE)
    # The sequence's first position in scan order has no state before it, so its term of
    # dA, g * a * h_prev, is exactly 0; g * (h - drive) leaves a rounding remnant there
    # (1.5e-9 on an H200: all of dA when L = 1), removed by zeroing its dt. Only for
    # sequences of one chunk: there it can be the whole sum, while in a long sequence it
    # is one rounding among many, and the select costs the reverse kernel 40-72
    # instructions and a spill (offline SASS for sm_90, scripts/kernel_sass_stats.py).
    if REVERSE:
        has_prev_state = offs_l != length - 1
    else:
        has_prev_state = offs_l != 0
    dB_acc = tl.zeros([NP, CHUNK], dtype=tl.float32)
    dC_acc = tl.zeros([NP, CHUNK], dtype=tl.float32)
    d0, d_end = _channel_range(g, cblk, per_group, channel_block)
    # PREFETCH: each channel's vectors load one channel ahead, while the previous one
    # computes; loaded at the channel's start they stalled the kernel on a DRAM round trip
    # (ncu source counters, session 20: the four instructions consuming them held 28% of
    # the stall samples). `selective_scan_bwd_triton` says where it is taken.
    # AHEAD (PREFETCH only): each channel's A (1) and its boundary states (2) too;
    # session 21's ncu put 5-9% of the stall samples on A's first use, 5% (fp32) on h0's
    if PREFETCH:
        n_dt, n_dtn, n_u, n_do, n_z = _channel_vectors(
            d0, b, offs_l, mask_l, offs_next, mask_next, delta_ptr, u_ptr,
            dout_ptr, z_ptr, s_db, s_dd, s_dl, s_ub, s_ud, s_ul, s_ob, s_od, s_ol,
            s_zb, s_zd, s_zl, HAS_Z, SHIFTED)
    if AHEAD >= 1:
        n_A = _channel_A(d0, offs_n, mask_n, A_ptr, N)
    if AHEAD >= 2:
        n_h0, n_q0 = _channel_boundaries(d0, b, dim, n_chunks, c_prev, c_next, offs_n,
                                         mask_h0, mask_q0, H_ptr, Q_ptr, N, MULTI_CHUNK)
    for d in range(d0, d_end):
        if PREFETCH:
            dt_raw, dt_next, u, dout, zz = n_dt, n_dtn, n_u, n_do, n_z
        else:  # z is read where it is used, below
            dt_raw, dt_next, u, dout, zz = _channel_vectors(
                d, b, offs_l, mask_l, offs_next, mask_next, delta_ptr, u_ptr, dout_ptr,
                z_ptr, s_db, s_dd, s_dl, s_ub, s_ud, s_ul, s_ob, s_od, s_ol, s_zb, s_zd,
                s_zl, False, SHIFTED)
        if AHEAD >= 1:
            A = n_A
        else:
            A = _channel_A(d, offs_n, mask_n, A_ptr, N)
        if AHEAD >= 2:
            h0 = n_h0
            q0 = n_q0
        else:
            h0, q0 = _channel_boundaries(d, b, dim, n_chunks, c_prev, c_next, offs_n, mask_h0,
                                         mask_q0, H_ptr, Q_ptr, N, MULTI_CHUNK)
        if MULTI_CHUNK and AHEAD < 2:
            h0 = tl.where(has_prev, h0, 0.0)
            q0 = tl.where(has_next, q0, 0.0)
        if HAS_D:  # read once, here: read where used, after stores, it was read twice
            D = tl.load(D_ptr + d)  # and the second read stalled its use (ncu, session 29)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d)
            dt_raw += bias
            if SHIFTED:
                dt_next += bias
        if SOFTPLUS:
            dt = _softplus(dt_raw)
            if SHIFTED:
                dt_next = _softplus(dt_next)
        else:
            dt = dt_raw
        dt = tl.where(mask_l, dt, 0.0)
        if SHIFTED:
            dt_next = tl.where(mask_next, dt_next, 0.0)
        A2 = A * 1.4426950408889634
        row = b * dim + d

        # forward states h_t
        x = dt * u
        drive = Bt * x[None, :]
        decay = tl.exp2(A2[:, None] * dt[None, :])
        # h at the first position = decay * h0 + drive: the scan then starts from h0
        if MULTI_CHUNK:
            h = _scan_tile(decay, drive + tl.where(h0_col[None, :], decay * h0[:, None], 0.0),
                           NP, CHUNK, REVERSE, K)
        else:
            h = _scan_tile(decay, drive, NP, CHUNK, REVERSE, K)
        # the next channel's reads, after this one's boundary states are first used: ahead
        # of that use, the wait for them held the next channel's loads too (session 37)
        if PREFETCH:  # (the last channel reads itself again: no address leaves the tensors)
            d_ahead = tl.minimum(d + 1, d_end - 1)
            n_dt, n_dtn, n_u, n_do, n_z = _channel_vectors(
                d_ahead, b, offs_l, mask_l, offs_next, mask_next, delta_ptr, u_ptr,
                dout_ptr, z_ptr, s_db, s_dd, s_dl, s_ub, s_ud, s_ul, s_ob, s_od, s_ol, s_zb,
                s_zd, s_zl, HAS_Z, SHIFTED)
            if AHEAD >= 1:
                n_A = _channel_A(d_ahead, offs_n, mask_n, A_ptr, N)
            if AHEAD >= 2:
                n_h0, n_q0 = _channel_boundaries(d_ahead, b, dim, n_chunks, c_prev, c_next,
                                                 offs_n, mask_h0, mask_q0, H_ptr, Q_ptr, N,
                                                 MULTI_CHUNK)
            if CACHE_AHEAD and MULTI_CHUNK:  # into L1, holding no register (kernels README)
                _cache_boundaries(d_ahead, b, dim, n_chunks, c_prev, c_next, offs_n, H_ptr,
                                  Q_ptr, N)
        if HAS_Z:
            if not PREFETCH:
                zz = _load_z(z_ptr, b, d, offs_l, mask_l, s_zb, s_zd, s_zl)
            sz = tl.sigmoid(zz)
            y = tl.sum(Ct * h, axis=0)
            if HAS_D:
                y += D * u
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + row * length + offs_l, dz.to(dz_ptr.dtype.element_ty),
                     mask=mask_l)
            dy = dout * zz * sz
        else:
            dy = dout
        dC_acc += h * dy[None, :]
        # a_t * h_prev = h_t - drive_t: no shifted forward state needed
        ha = h - drive
        # adjoint states g_t = dL/dh_t, flowing against scan order
        # nothing follows the far end inside the chunk, so g there = q0 + C dy
        cdy = Ct * dy[None, :]
        if MULTI_CHUNK:
            cdy += tl.where(q0_col[None, :], q0[:, None], 0.0)
        if SHIFTED:
            decay_next = tl.exp2(A2[:, None] * dt_next[None, :])  # 1 at the far end
            gadj = _scan_tile(decay_next, cdy, NP, CHUNK, not REVERSE, K)
        else:
            # the decays again, not kept from the forward scan: kept, they stayed live
            # across it, and the kernel spilled more and ran 5-11% slower (session 22).
            # dt + 0.0 is not dt (-0.0): the compiler cannot merge the two exponentials
            gadj = _adjoint_scan_by_groups(tl.exp2(A2[:, None] * (dt + 0.0)[None, :]), cdy,
                                           NP, CHUNK, REVERSE, K)

        dB_acc += gadj * x[None, :]
        gB = tl.sum(gadj * Bt, axis=0)
        gha = gadj * ha
        ddt = gB * u + tl.sum(gha * A[:, None], axis=0)
        du = gB * dt
        if HAS_D:
            du += D * dy
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(mask_l, ddt, 0.0)
        tl.store(du_ptr + row * length + offs_l, du.to(du_ptr.dtype.element_ty), mask=mask_l)
        tl.store(ddelta_ptr + row * length + offs_l, ddt.to(ddelta_ptr.dtype.element_ty),
                 mask=mask_l)
        part = part_ptr + (b * n_chunks + c) * part_stride
        if MULTI_CHUNK:
            dt_dA = dt
        else:
            dt_dA = tl.where(has_prev_state, dt, 0.0)
        tl.store(part + d * N + offs_n, tl.sum(gha * dt_dA[None, :], axis=1), mask=mask_n)
        if HAS_D:
            tl.store(part + dim * N + d, tl.sum(dy * u, axis=0))
        if HAS_BIAS:
            if HAS_D:
                tl.store(part + dim * (N + 1) + d, tl.sum(ddt, axis=0))
            else:
                tl.store(part + dim * N + d, tl.sum(ddt, axis=0))
    acc_off = (((cblk * (n_bgd // n_cblk) + b * groups + g) * N + offs_n[:, None]) * length
               + offs_l[None, :])
    tl.store(dB_ptr + acc_off, dB_acc.to(dB_ptr.dtype.element_ty), mask=mask_nl)
    tl.store(dC_ptr + dC_shift + acc_off, dC_acc.to(dC_ptr.dtype.element_ty), mask=mask_nl)


_bwd_kernel_launcher = CachedLaunch(_bwd_kernel)


# allocations and launches only (sums too), decided by the arguments' signature; with
# gradients_share_storage=True a replay returns the parameters' gradients (dA, dD,
# ddelta_bias) as views of one allocation where their dtypes agree. Not the activations':
# the engine sums a second gradient into a first in place only where that first one's
# storage has no other user (u and z reach a Mamba layer's scan and another op)
@replayed(shared=("gradients_share_storage", ((2, 5, 7),)))
def selective_scan_bwd_triton(
    dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
    B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
    delta_bias: torch.Tensor | None, delta_softplus: bool, reverse: bool, *,
    chunk: int | None = None, channel_block: int | None = None,
    carry_block: int | None = None, num_warps: int | None = None,
    maxnreg: int | None = None, boundary: str = "auto",
    states: torch.Tensor | None = None, prefetch: bool = True, ahead: int | None = None,
    cache_ahead: bool | None = None, adjoint: str = "auto", unmasked: bool | None = None,
    main: str = "auto", serial_options: dict | None = None,
    gradients_share_storage: bool = False,
) -> tuple[torch.Tensor | None, ...]:
    """Backward host function (contract: interface.py's docstring).

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's dtype and
    shape, None for an absent optional. Keyword-only sizes as in the forward. `maxnreg`
    caps the main kernel's registers a thread (more resident warps, maybe spills).
    `boundary`: how the states at the chunk boundaries are found, "serial"
    (triton_fwd_serial's aggregate kernel), "tile" (triton_chunks' (N, CHUNK) tile kernel),
    "carried" (triton_chunks_carried's walk over a row's chunks: one launch, for few
    chunks) or "auto" (`auto_boundary`). `states`: the forward's (keep_states=True), the
    states leaving each chunk; given, "serial" boundaries compute only the adjoint's
    ("auto" then takes "serial"; an explicit "tile" or "carried" ignores them). The main
    kernel's options, defaults as measured (kernels README): `prefetch` loads each
    channel's vectors a channel ahead; with it, `ahead` also A (1) and the boundary states
    (2) (None: 2 for fp32, 0 for 2-byte inputs) and `cache_ahead` asks for the boundary
    states in L1 a channel ahead, holding no register (None: where `ahead` < 2).
    `adjoint`: where the adjoint scan gets each position's successor decay, "groups"
    (`_adjoint_scan_by_groups`, from the decays), "shifted" (dt loaded at shifted
    positions) or "auto" ("groups"). `unmasked`: whole chunks (L a multiple of the chunk)
    built without position masks (None: 4-byte inputs).
    `main`: the kernel that writes the gradients from the boundary states, "tile"
    (`_bwd_kernel`), "serial" (triton_bwd_serial.py, 32 channels a program; the tile
    kernel's options above do not apply to it) or "auto" (`auto_main`); `serial_options`:
    keywords of its launch, triton_bwd_serial.serial_bwd_main (ti, programs, bc_ahead).
    `gradients_share_storage`: the caller takes parameters' gradients that share storage
    (the eager autograd Function: PyTorch's engine hands such views on and .grad keeps
    them), so a replayed call may make one allocation for dA, dD and ddelta_bias
    (replay.py); the function itself allocates each apart.
    """
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    ahead, cache_ahead, adjoint, unmasked, main = resolve_options(
        u.dtype, batch * dim, length, dim // groups, boundary, ahead, cache_ahead, adjoint,
        unmasked, main)
    launch_options = {} if maxnreg is None else {"maxnreg": maxnreg}
    plan = plan_launch(batch, dim, groups, length, chunk, channel_block, carry_block,
                       num_warps, n_state, backward=True)
    A = A.contiguous()
    dev, f32 = u.device, torch.float32
    multi = plan.n_chunks > 1
    if boundary == "auto":  # kept states are the "serial" forward's
        boundary = ("serial" if states is not None
                    else auto_boundary(batch * dim, length, dim // groups, u.dtype,
                                       plan.n_chunks))
    if multi and boundary == "serial":
        splan = serial_plan(batch, dim, groups, length, u.dtype, chunk=plan.chunk)
        want = (batch, dim, plan.n_chunks, n_state)
        if states is not None and (tuple(states.shape) != want or states.dtype != f32
                                   or not states.is_contiguous() or states.device != dev):
            raise ValueError(f"states: expected a contiguous float32 {want} tensor on {dev} "
                             f"for chunks of {plan.chunk}, got {tuple(states.shape)} "
                             f"{states.dtype} on {states.device}")
        H, Q = serial_boundary_states(u, delta, z, dout, A, B, C, delta_bias,
                                      delta_softplus, reverse, splan, H=states)
    elif multi:
        boundary_states = (carried_boundary_states if boundary == "carried"
                           else chunk_boundary_states)
        H, Q = boundary_states(
            u, delta, z, dout, A, B, C, delta_bias, delta_softplus, reverse, plan,
            forward=True, adjoint=True,
        )
    else:
        H = Q = torch.empty(1, device=dev, dtype=f32)
    nc, ncb = plan.n_chunks, plan.n_channel_blocks
    du = torch.empty(batch, dim, length, device=dev, dtype=u.dtype)
    ddelta = torch.empty(batch, dim, length, device=dev, dtype=delta.dtype)
    dz = torch.empty(batch, dim, length, device=dev, dtype=z.dtype) if z is not None else None
    # partial sums of dA, dD, dbias: one row a (batch, chunk), one sum reduces them all
    part = torch.empty(batch * nc, sum(parameter_grad_sizes(
        (dim, n_state), D is not None, delta_bias is not None)), device=dev, dtype=f32)
    if main == "serial":
        dB_part, dC_part, dC_shift = serial_bwd_main(
            dout, u, delta, z, A, B, C, D, delta_bias, H, Q, du, ddelta, dz, part,
            delta_softplus, reverse, plan.chunk, nc, maxnreg=maxnreg, **(serial_options or {}))
    else:
        dB_part, dC_part, dC_shift = state_grad_buffers(B, C, ncb, dev)
        dummy = part
        zz = z if z is not None else u
        tensors = (dout, u, delta, zz, A, B, C, D if D is not None else dummy,
                   delta_bias if delta_bias is not None else dummy, H, Q,
                   du, ddelta, dz if dz is not None else dummy, dB_part, dC_part, part)
        # what the scalars and options are made of (CachedLaunch.keyed)
        key = (plan, u.shape, groups, n_state, part.shape[1], dC_shift, dout.stride(),
               u.stride(), delta.stride(), zz.stride(), B.stride(), C.stride(),
               delta_softplus, reverse, z is None, D is None, delta_bias is None, prefetch,
               ahead, cache_ahead, adjoint, unmasked, maxnreg)

        def scalars_and_options() -> tuple[tuple, dict]:
            scalars = (dim, groups, length, nc, ncb, batch * groups * ncb, dim // groups,
                       plan.channel_block, part.shape[1], dC_shift,
                       *dout.stride(), *u.stride(), *delta.stride(), *zz.stride(),
                       *B.stride(), *C.stride())
            return scalars, dict(
                N=n_state, NP=_next_pow2(n_state), CHUNK=plan.chunk,
                HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_Z=z is not None,
                HAS_D=D is not None, REVERSE=reverse, MULTI_CHUNK=multi,
                PREFETCH=prefetch, AHEAD=ahead if prefetch else 0,
                CACHE_AHEAD=prefetch and cache_ahead,
                SHIFTED_DECAY=adjoint == "shifted",
                EVEN_L=unmasked and length % plan.chunk == 0,
                num_warps=plan.num_warps, **launch_options)

        _bwd_kernel_launcher.keyed(key, (plan.programs(batch, groups),), tensors,
                                   scalars_and_options)
    dA, dD, dbias, dB, dC = sum_partial_grads(part, A.shape, D is not None,
                                              delta_bias is not None, dB_part, dC_part,
                                              dC_shift, B, C)
    return du, ddelta, dA, dB, dC, dD, dz, dbias
