"""Forward of the "serial" variant: a chunk's positions walked one after the other.

The tile kernels (triton_fwd.py) lay a chunk out as an (N, CHUNK) tile over a warp and
scan it with `tl.associative_scan`: warp shuffles on every element, five such tiles per
channel, 255 registers. Here a program owns BLOCK_D channels of one (batch, group) and one
chunk, holds their states h as an (NP, BLOCK_D) tile and walks the chunk's positions in
turn, as the recurrence is written:

    h = exp(A dt_t) * h + B_t dt_t u_t,      y_t = <C_t, h> + D u_t

A step costs per state one exponential and a few multiply-adds. triton 3.6 lays h out 4
states of 4 channels a lane (4 state groups x 8 channels): each lane reads 4 B_t and 4 C_t
values a position (broadcast loads), sums over states in-thread and by 2 shuffle rounds,
and each position's dt and u reach that layout by shuffles or shared memory (layouts
tried: kernels README). dt, u, z and out move as (BLOCK_D, TI) tiles, B/C BC_TI positions
a load (serial_planning: `_default_ti`, `_default_vec`, `_default_bc`, `unmasked_blocks`).

Parallel over L as the other variants: chunk aggregates by this kernel (AGGREGATE: the
state each chunk produces from zero and its sum of dt), the carry scan over chunks
(triton_chunks.carry_chunks), then this kernel again from each chunk's entering state.
A sequence of one chunk is one launch.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch
from .occupancy import may_exceed_one_wave
from .triton_common import _bc_column, _bc_rows, _decompose_pid, _next_pow2, _previous_chunk
from .serial_planning import SerialPlan, check_sub_states, serial_plan, unmasked_blocks
from .triton_chunks import carry_chunks
from .triton_serial_common import _channel_scalars, _drive, _pick, _store_sub_state


@triton.jit
def _silu_gate(z_rows, offs_t, s_zl, mask):
    """silu(z) over a (BLOCK_D, TI) block, fp32."""
    zz = tl.load(z_rows + offs_t[None, :] * s_zl, mask=mask, other=0.0).to(tl.float32)
    return zz * tl.sigmoid(zz)


@triton.jit
def _serial_block(
    h, y_acc, t0, length, A2, drive_n, bias, Dv, offs_i, mask_d, u_rows, d_rows,
    z_rows, B_rows, C_rows, out_rows, s_ul, s_dl, s_zl, s_Bl, s_Cl,
    TI: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_D: tl.constexpr, REVERSE: tl.constexpr,
    AGGREGATE: tl.constexpr, ADJOINT: tl.constexpr, TAIL: tl.constexpr,
    BC_TI: tl.constexpr, NP: tl.constexpr, UNMASKED: tl.constexpr,
):
    """Positions [t0, t0 + TI) of the program's channels, in scan order.

    Returns (h after them, y_acc + their sum of dt (AGGREGATE) or y_acc). TAIL: the block
    may reach past L; its B/C reads are clamped to L - 1 (dt = 0 there makes the step an
    identity). Full blocks read B/C at t0 + i (constant offsets from one address) and, if
    UNMASKED, load and store without position masks.
    """
    offs_t = t0 + offs_i
    if TAIL or not UNMASKED:
        m_dt = mask_d[:, None] & (offs_t < length)[None, :]
    else:
        m_dt = mask_d[:, None] & tl.full([TI], 1, tl.int1)[None, :]
    # (triton_common._load_dt reads the bias at every call: here it is loaded once a chunk)
    _, dt = _drive(tl.load(d_rows + offs_t[None, :] * s_dl, mask=m_dt, other=0.0), m_dt,
                   bias, HAS_BIAS, SOFTPLUS)
    u = tl.load(u_rows + offs_t[None, :] * s_ul, mask=m_dt, other=0.0).to(tl.float32)
    if ADJOINT:  # u_rows holds dout: the adjoint's drive is C dy, dy = dout silu(z)
        if HAS_Z:
            u = u * _silu_gate(z_rows, offs_t, s_zl, m_dt)
        x = u
    else:
        x = dt * u
    y = tl.zeros(dt.shape, dtype=tl.float32)
    for k in tl.static_range(TI):
        if REVERSE:
            i = TI - 1 - k
        else:
            i = k
        if TAIL:
            t_i = tl.minimum(t0 + i, length - 1)
        else:
            t_i = t0 + i
        if BC_TI == 1:
            # one scalar load per state and step, the same address on the 8 lanes of a
            # state group (L1 broadcast)
            B_i = tl.load(B_rows + t_i * s_Bl).to(tl.float32)
        else:
            if k % BC_TI == 0:  # B/C of this position and the next BC_TI - 1 in scan order
                t_bc = t0 + (i - i % BC_TI) + tl.arange(0, BC_TI)[None, None, None, :]
                if TAIL:
                    t_bc = tl.minimum(t_bc, length - 1)
                B_blk = tl.load(B_rows + t_bc * s_Bl)
                if not AGGREGATE:
                    C_blk = tl.load(C_rows + t_bc * s_Cl)
            B_i = _bc_column(B_blk, i % BC_TI, BC_TI, NP)
        B_i = B_i * drive_n
        sel = offs_i == i
        a_i = tl.exp2(A2 * _pick(dt, sel)[None, :])
        if ADJOINT:  # q = a_t (q + c_t): what leaves position t against scan order
            h = a_i * (h + B_i * _pick(x, sel)[None, :])
        else:
            h = a_i * h + B_i * _pick(x, sel)[None, :]
        if not AGGREGATE:
            if BC_TI == 1:
                C_i = tl.load(C_rows + t_i * s_Cl).to(tl.float32)
            else:
                C_i = _bc_column(C_blk, i % BC_TI, BC_TI, NP)
            y = tl.where(sel[None, :], tl.sum(C_i * h, axis=0)[:, None], y)
    if AGGREGATE:
        return h, y_acc + tl.sum(dt, axis=1)
    if HAS_D:
        y += Dv[:, None] * u
    if HAS_Z:
        y = y * _silu_gate(z_rows, offs_t, s_zl, m_dt)
    tl.store(out_rows + offs_t[None, :], y.to(out_rows.dtype.element_ty), mask=m_dt)
    return h, y_acc


# s_An of 1 would make A's tile n-contiguous; the chunk counts: one kernel at every chunk
@triton.jit(do_not_specialize=["s_An", "n_chunks", "h_chunks", "h_step"])
def _serial_kernel(
    u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, H_ptr, S_ptr, out_ptr,
    Hs_ptr, dim, groups, length, n_chunks, chunk_len, n_dblk, per_group, n_sub, h_chunks,
    h_step,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl, s_An,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, TI: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_D: tl.constexpr, REVERSE: tl.constexpr, MULTI_CHUNK: tl.constexpr,
    AGGREGATE: tl.constexpr, ADJOINT: tl.constexpr = False, STORE_SUMS: tl.constexpr = True,
    SUB_STATES: tl.constexpr = False, SUB: tl.constexpr = 64, EVEN_D: tl.constexpr = False,
    WIDE_SUB: tl.constexpr = False, VEC: tl.constexpr = 64, BC_TI: tl.constexpr = 1,
    G: tl.constexpr = 4, UNMASKED_BLOCKS: tl.constexpr = False,
):
    """One chunk of BLOCK_D channels of one (batch, group).

    AGGREGATE: writes S[b, d, c] = sum of dt and H[b, d, c] = the state the chunk produces
    from zero. Otherwise writes out (contiguous (batch, dim, L)) from the state entering
    the chunk (H[b, d, h_step x previous chunk's index + h_step - 1, or its first under
    REVERSE] after the carry scan, H of h_chunks a row); with one chunk, H is the last
    state (batch, dim, N), written here. ADJOINT (with AGGREGATE, REVERSE flipped by
    the caller): u_ptr holds dout and B_ptr holds C; H receives the chunk's adjoint from
    zero, q = a_t (q + C_t dy_t) against the forward's order; S is written only with
    STORE_SUMS (a forward aggregate may have written the same sums). SUB_STATES (output
    pass): also the states leaving every sub-chunk of SUB positions, Hs (batch, dim, n_sub,
    N), the boundary states a backward at chunks of SUB needs (`_store_sub_state`;
    WIDE_SUB: a program's offsets into Hs need 64 bits). EVEN_D: per_group is a multiple
    of BLOCK_D; otherwise the lanes past a group's last channel repeat that channel.
    BC_TI: positions a B/C load (more than 1: in tiles of G state groups, `_bc_column`).
    """
    c, b, g, dblk = _decompose_pid(tl.program_id(0), tl.num_programs(0) // n_chunks, n_dblk,
                                   groups)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    local_d = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    if EVEN_D:
        # every lane's channel exists: a constant mask folds away (`local_d < per_group`
        # cost bench row 1's fp32 adjoint aggregate 0.251 -> 0.290 ms, session 30)
        mask_d = tl.full([BLOCK_D], 1, tl.int1)
    else:
        # lanes past the group's last channel repeat it: the same inputs give them the
        # same values, so what they store (outputs, states) duplicates its stores and
        # needs no mask; a mask tile on the kept states cost 29 registers (197)
        local_d = tl.minimum(local_d, per_group - 1)
        mask_d = tl.full([BLOCK_D], 1, tl.int1)
    offs_d = g * per_group + local_d
    mask_nd = mask_n[:, None] & mask_d[None, :]
    A2 = tl.load(A_ptr + offs_d[None, :] * N + offs_n[:, None] * s_An, mask=mask_nd,
                 other=0.0) * 1.4426950408889634
    row = b * dim + offs_d
    if MULTI_CHUNK and not AGGREGATE:
        # H holds h_chunks states a row, h_step of them a chunk of this pass (aggregates
        # at shorter chunks): chunk c enters from the last of its predecessor's in order
        has_prev, c_prev = _previous_chunk(c, n_chunks, REVERSE)
        if REVERSE:
            c_prev = c_prev * h_step
        else:
            c_prev = c_prev * h_step + h_step - 1
        h = tl.load(H_ptr + (row[None, :] * h_chunks + c_prev) * N + offs_n[:, None],
                    mask=mask_nd, other=0.0)
        h = tl.where(has_prev, h, 0.0)
    else:
        h = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    bias, Dv = _channel_scalars(bias_ptr, D_ptr, offs_d, mask_d, HAS_BIAS, HAS_D)
    offs_i = tl.arange(0, TI)
    if VEC < TI:  # the same positions, vectors of VEC as far as the compiler knows
        offs_i = offs_i % VEC + (offs_i // VEC) * VEC
    u_rows = u_ptr + b * s_ub + offs_d[:, None] * s_ud
    d_rows = delta_ptr + b * s_db + offs_d[:, None] * s_dd
    z_rows = z_ptr + b * s_zb + offs_d[:, None] * s_zd
    out_rows = out_ptr + row[:, None] * length
    hs_rows = Hs_ptr + (b * dim + g * per_group + dblk * BLOCK_D) * n_sub * N
    lanes_d = tl.arange(0, BLOCK_D) if EVEN_D else local_d - dblk * BLOCK_D
    if WIDE_SUB:
        lanes_d = lanes_d.to(tl.int64)
    hs_offs = (lanes_d * n_sub)[None, :] * N + offs_n[:, None]
    masked: tl.constexpr = NP != N
    # every lane reads the B/C values of its states, the same for all of its channels
    B_rows = _bc_rows(B_ptr, b, g, s_Bb, s_Bg, s_Bn, offs_n, offs_d, N, NP, G, BC_TI)
    C_rows = _bc_rows(C_ptr, b, g, s_Cb, s_Cg, s_Cn, offs_n, offs_d, N, NP, G, BC_TI)
    # padded states (N not a power of two) read row N - 1 of B: a zero drive keeps them 0
    drive_n = 1.0
    if NP != N:
        drive_n = tl.where(mask_n, 1.0, 0.0)[:, None]
    chunk_start = c * chunk_len
    n_full = tl.maximum(tl.minimum(chunk_len, length - chunk_start), 0) // TI
    has_tail = chunk_start + n_full * TI < tl.minimum(chunk_start + chunk_len, length)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    if REVERSE and has_tail:
        h, acc = _serial_block(
            h, acc, chunk_start + n_full * TI, length, A2, drive_n, bias, Dv, offs_i, mask_d,
            u_rows, d_rows, z_rows, B_rows, C_rows, out_rows, s_ul, s_dl, s_zl, s_Bl, s_Cl,
            TI, HAS_BIAS, SOFTPLUS, HAS_Z, HAS_D, REVERSE, AGGREGATE, ADJOINT, TAIL=True,
            BC_TI=BC_TI, NP=NP, UNMASKED=UNMASKED_BLOCKS)
        if SUB_STATES:
            _store_sub_state(h, chunk_start + n_full * TI, length, hs_rows, hs_offs, mask_nd,
                             N, TI, SUB, REVERSE, masked)
    for j in range(0, n_full):
        if REVERSE:
            t0 = chunk_start + (n_full - 1 - j) * TI
        else:
            t0 = chunk_start + j * TI
        h, acc = _serial_block(
            h, acc, t0, length, A2, drive_n, bias, Dv, offs_i, mask_d,
            u_rows, d_rows, z_rows, B_rows, C_rows, out_rows, s_ul, s_dl, s_zl, s_Bl, s_Cl,
            TI, HAS_BIAS, SOFTPLUS, HAS_Z, HAS_D, REVERSE, AGGREGATE, ADJOINT, TAIL=False,
            BC_TI=BC_TI, NP=NP, UNMASKED=UNMASKED_BLOCKS)
        if SUB_STATES:
            _store_sub_state(h, t0, length, hs_rows, hs_offs, mask_nd, N, TI, SUB, REVERSE,
                             masked)
    if not REVERSE and has_tail:
        h, acc = _serial_block(
            h, acc, chunk_start + n_full * TI, length, A2, drive_n, bias, Dv, offs_i, mask_d,
            u_rows, d_rows, z_rows, B_rows, C_rows, out_rows, s_ul, s_dl, s_zl, s_Bl, s_Cl,
            TI, HAS_BIAS, SOFTPLUS, HAS_Z, HAS_D, REVERSE, AGGREGATE, ADJOINT, TAIL=True,
            BC_TI=BC_TI, NP=NP, UNMASKED=UNMASKED_BLOCKS)
        if SUB_STATES:
            _store_sub_state(h, chunk_start + n_full * TI, length, hs_rows, hs_offs, mask_nd,
                             N, TI, SUB, REVERSE, masked)
    if AGGREGATE:
        if STORE_SUMS:
            tl.store(S_ptr + row * n_chunks + c, acc, mask=mask_d)
        tl.store(H_ptr + (row[None, :] * n_chunks + c) * N + offs_n[:, None], h, mask=mask_nd)
    elif not MULTI_CHUNK:
        tl.store(H_ptr + row[None, :] * N + offs_n[:, None], h, mask=mask_nd)


_serial_kernel_launcher = CachedLaunch(_serial_kernel)
# a program's offsets into the kept states from this many on are 64-bit (tests lower it)
_INT32_OFFSETS = 2**31


def _launch(*args, **kwargs) -> None:
    """One `_serial_kernel` launch (arguments as `_launch_spec`'s)."""
    _serial_kernel_launcher.keyed(*_launch_spec(*args, **kwargs))


def _launch_spec(plan: SerialPlan, drive_in: torch.Tensor, delta: torch.Tensor,
                 z: torch.Tensor | None, A: torch.Tensor, drive_proj: torch.Tensor,
                 C: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None,
                 H: torch.Tensor, S: torch.Tensor, out: torch.Tensor, softplus: bool,
                 reverse: bool, aggregate: bool, adjoint: bool = False,
                 maxnreg: int | None = None, sub_states: torch.Tensor | None = None,
                 sub_chunk: int = 64, store_sums: bool | None = None) -> tuple:
    """(key, grid, tensors, build) of one `_serial_kernel` launch for CachedLaunch.keyed.
    drive_in: u (dout for the adjoint); drive_proj: B (C for the adjoint). maxnreg caps the
    registers a thread (more resident warps, maybe spills). sub_states (output pass):
    receives the states leaving every sub-chunk of `sub_chunk` positions. store_sums:
    write S (default: not for the adjoint)."""
    batch, dim, length = delta.shape
    groups, n_state = drive_proj.shape[1], A.shape[1]
    chunk_len, n_chunks = plan.pass_chunks(aggregate)
    grid = n_chunks * batch * groups * plan.n_dblk
    if grid >= 2**31:
        raise ValueError(f"selective scan too large for one launch: {grid} programs")
    zz = z if z is not None else drive_in
    dummy = H
    tensors = (drive_in, delta, zz, A, drive_proj, C, D if D is not None else dummy,
               delta_bias if delta_bias is not None else dummy, H, S, out,
               sub_states if sub_states is not None else dummy)
    n_sub = sub_states.shape[2] if sub_states is not None else 1
    # what `scalars_and_options` reads, besides the tensors' dtypes (CachedLaunch.keyed)
    key = (plan, delta.shape, groups, n_state, n_sub, drive_in.stride(), delta.stride(),
           zz.stride(), drive_proj.stride(), C.stride(), A.stride(1), softplus, reverse,
           aggregate, adjoint, maxnreg, sub_chunk, store_sums, z is None, D is None,
           delta_bias is None, sub_states is None, _INT32_OFFSETS)

    def scalars_and_options() -> tuple[tuple, dict]:
        ti, vec, _ = plan.loads(aggregate, adjoint)
        bc, bc_groups = plan.bc_launch(aggregate, adjoint, n_state)
        even_d = (dim // groups) % plan.block_d == 0
        h_chunks, h_step = (n_chunks, 1) if aggregate else (plan.n_agg_chunks, plan.agg_split)
        scalars = (dim, groups, length, n_chunks, chunk_len, plan.n_dblk, dim // groups,
                   n_sub, h_chunks, h_step, *drive_in.stride(), *delta.stride(), *zz.stride(),
                   *drive_proj.stride(), *C.stride(), A.stride(1))
        options = dict(
            N=n_state, NP=_next_pow2(n_state), BLOCK_D=plan.block_d, TI=ti, VEC=vec,
            BC_TI=bc, G=bc_groups,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, HAS_Z=z is not None,
            HAS_D=D is not None, REVERSE=reverse, MULTI_CHUNK=plan.n_chunks > 1,
            AGGREGATE=aggregate, ADJOINT=adjoint,
            STORE_SUMS=not adjoint if store_sums is None else store_sums,
            SUB_STATES=sub_states is not None, SUB=sub_chunk,
            EVEN_D=even_d,
            UNMASKED_BLOCKS=unmasked_blocks(drive_in.dtype, even_d, aggregate and not adjoint),
            WIDE_SUB=sub_states is not None and plan.block_d * n_sub * n_state >= _INT32_OFFSETS,
            num_warps=plan.num_warps,
            **({} if maxnreg is None else {"maxnreg": maxnreg}),
        )
        return scalars, options

    return key, (grid,), tensors, scalars_and_options


def serial_forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
                   delta_bias: torch.Tensor | None, delta_softplus: bool,
                   reverse: bool, out: torch.Tensor, last_state: torch.Tensor, *,
                   chunk: int | None = None, num_warps: int | None = None,
                   ti: int | None = None, block_d: int | None = None,
                   maxnreg: int | None = None, sub_states: torch.Tensor | None = None,
                   sub_chunk: int = 64, bc: int | None = None) -> None:
    """Fill out and last_state (contract as selective_scan_fwd_triton's); maxnreg caps the
    output kernel's registers; bc: positions a B/C load (plan default by dtype).
    sub_states (batch, dim, cdiv(L, sub_chunk), N) fp32, if given, receives the state
    leaving every sub-chunk of `sub_chunk` positions (a power of two, a multiple of the
    plan's positions a load): what `serial_boundary_states` of a backward at chunks of
    `sub_chunk` would compute again."""
    batch, dim, length = u.shape
    plan_of = functools.partial(serial_plan, batch, dim, B.shape[1], length, u.dtype, chunk,
                                num_warps, ti, block_d, keeps_states=sub_states is not None,
                                bc=bc)
    plan = plan_of()
    if sub_states is not None:
        check_sub_states(tuple(sub_states.shape), sub_chunk, (batch, dim, length, A.shape[1]),
                         plan.ti)
    drives = (u, delta, z, A, B, C, D, delta_bias)
    output = {"aggregate": False, "maxnreg": maxnreg, "sub_states": sub_states,
              "sub_chunk": sub_chunk}
    if chunk is None and plan.n_chunks > 1 and u.is_cuda and may_exceed_one_wave(
            plan.n_chunks * batch * B.shape[1] * plan.n_dblk, plan.num_warps, u.device):
        # whole waves of the output pass (its compiled kernel's occupancy, at every chunk)
        plan = plan_of(slots=_serial_kernel_launcher.resident_programs(*_launch_spec(
            plan, *drives, last_state, last_state, out, delta_softplus, reverse, **output)))
    if plan.n_chunks == 1:
        _launch(plan, *drives, last_state, last_state, out, delta_softplus, reverse, **output)
        return
    H, _ = serial_boundary_states(u, delta, z, None, A, B, C, delta_bias, delta_softplus,
                                  reverse, plan, last_state=last_state)
    _launch(plan, *drives, H, H, out, delta_softplus, reverse, **output)


def serial_boundary_states(
    u: torch.Tensor, delta: torch.Tensor, z: torch.Tensor | None, dout: torch.Tensor | None,
    A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, delta_bias: torch.Tensor | None,
    delta_softplus: bool, reverse: bool, plan: SerialPlan,
    last_state: torch.Tensor | None = None, H: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(H, Q) as triton_chunks.chunk_boundary_states returns them, from this kernel's
    aggregates: H always; Q (the adjoint) when dout is given. A given H (the forward's
    `sub_states` at this plan's chunk) is returned as it is, and only Q is computed."""
    batch, dim, _ = delta.shape
    n_state, nc = A.shape[1], plan.n_agg_chunks
    f32 = torch.float32
    S = torch.empty(batch, dim, nc, device=delta.device, dtype=f32)
    kept = H is not None
    if not kept:
        H = torch.empty(batch, dim, nc, n_state, device=delta.device, dtype=f32)
        # z gates the output only: the forward aggregate compiles without it
        _launch(plan, u, delta, None, A, B, C, None, delta_bias, H, S, H, delta_softplus,
                reverse, aggregate=True)
    Q = None
    if dout is not None:
        # the adjoint flows against scan order, driven by C dy: dout in u's place, C in B's;
        # it writes the sums of dt where no forward aggregate did
        Q = torch.empty_like(H)
        _launch(plan, dout, delta, z, A, C, C, None, delta_bias, Q, S, Q, delta_softplus,
                not reverse, aggregate=True, adjoint=True, store_sums=kept)
    if not kept:
        # a forward's output pass reads every agg_split-th boundary only
        carry_chunks(S, H, A, last_state, plan.carry_block, reverse, Q,
                     fold=plan.agg_split if Q is None else 1)
    elif Q is not None:
        carry_chunks(S, Q, A, None, plan.carry_block, not reverse)
    return H, Q
