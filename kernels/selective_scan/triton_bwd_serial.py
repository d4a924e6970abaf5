"""The backward's main pass, "serial": a chunk's positions walked one after the other.

Where the tile kernel (triton_bwd.py) scans an (N, CHUNK) tile a channel at a time, a
program here holds BLOCK_D channels' states as an (NP, BLOCK_D) tile, as the forward's
serial kernel does, and (1) sweeps its chunk in scan order from the entering state,
storing h every TI positions in a scratch of its own; (2) takes the blocks last to first,
recomputes each block's states from its checkpoint (a tuple of a_t h_(t-1)) and walks
them back with the adjoint g_t = a_(t+1) g_(t+1) + C_t dy_t, entering as the carried q0.
At each position (dB, dC: sums over channels; du, ddelta, y: over states):

    dC_t = sum_d h_t dy_t              dB_t = sum_d g_t dt_t u_t
    du_t = dt_t <g_t, B_t> + D dy_t    ddelta_t = u_t <g_t, B_t> + <g_t, A a_t h_(t-1)>
    dA  += dt_t g_t a_t h_(t-1)        (a_t h_(t-1) kept: exactly 0 before the sequence)

The grid is persistent, so the scratch is sized by the programs (`resident_programs`).
Correct, but slower than the tile kernel on every bench row (session 31: 8 warps an SM
at 255 registers cannot cover each block's memory round trips; kernels README, "A serial
main kernel for the backward: measured slower"): only `main="serial"` takes it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bwd_state_grads import state_grad_buffers
from .launch import CachedLaunch
from .triton_common import _decompose_pid, _next_pow2, _previous_chunk
from .triton_serial_common import _channel_scalars, _drive, _pick, _put


@triton.jit
def _block_loads(t0, length, offs_i, mask_d, rows_a, rows_b, s_al, s_bl):
    """Two (BLOCK_D, TI) tiles of positions [t0, t0 + TI) in their dtype, 0 where masked
    (past L, or a channel past its group's last), and the mask."""
    offs_t = t0 + offs_i
    m = mask_d[:, None] & (offs_t < length)[None, :]
    a = tl.load(rows_a + offs_t[None, :] * s_al, mask=m, other=0.0)
    b = tl.load(rows_b + offs_t[None, :] * s_bl, mask=m, other=0.0)
    return a, b, m


@triton.jit
def _bc_block(base, at_state, t0, length, s_l, TI: tl.constexpr):
    """B (or C) at positions t0 and t0 + 1 (with TI = 1: t0 twice) as (NP, BLOCK_D) tiles,
    clamped to L - 1 (dt = 0 and dy = 0 there). at_state: 32-bit offsets (64-bit address
    tiles spilled) broadcasting each state's row over the channels, so a lane's channels
    share one load (unmasked only: masked loads are not merged). Two tiles, so TI <= 2:
    triton 3.6 carries no tuple across loop iterations, nor splits a joined tile there;
    `_bc_column`'s (G, BLOCK_D, NP // G, TI) tiles held four channels' copies a lane."""
    first = tl.load(base + tl.minimum(t0, length - 1) * s_l + at_state).to(tl.float32)
    if TI == 1:
        return first, first
    else:
        second = tl.load(base + tl.minimum(t0 + 1, length - 1) * s_l + at_state)
        return first, second.to(tl.float32)


@triton.jit
def _block_start(chunk_start, j, n_blocks, TI: tl.constexpr, REVERSE: tl.constexpr):
    """First position of block j of a chunk, blocks counted in scan order."""
    if REVERSE:
        return chunk_start + (n_blocks - 1 - j) * TI
    else:
        return chunk_start + j * TI


@triton.jit
def _sweep(h, scratch, at_checkpoint, chunk_start, n_blocks, length, A2, drive_n, bias,
           offs_i, mask_d, d_rows, u_rows, B_rows, at_B, s_dl, s_ul, s_Bl,
           TI: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr,
           HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr):
    """The chunk in scan order from h, storing h before each block: checkpoint j."""
    t0 = _block_start(chunk_start, 0, n_blocks, TI, REVERSE)
    n_dt, n_u, n_m = _block_loads(t0, length, offs_i, mask_d, d_rows, u_rows, s_dl, s_ul)
    n_B0, n_B1 = _bc_block(B_rows, at_B, t0, length, s_Bl, TI)
    for j in range(0, n_blocks):
        t0 = _block_start(chunk_start, j, n_blocks, TI, REVERSE)
        dt_raw, u, m, B_0, B_1 = n_dt, n_u, n_m, n_B0, n_B1
        # (the last block reads itself again: every address stays in the tensors)
        t_next = _block_start(chunk_start, tl.minimum(j + 1, n_blocks - 1), n_blocks, TI,
                              REVERSE)
        n_dt, n_u, n_m = _block_loads(t_next, length, offs_i, mask_d, d_rows, u_rows, s_dl,
                                      s_ul)
        n_B0, n_B1 = _bc_block(B_rows, at_B, t_next, length, s_Bl, TI)
        tl.store(scratch + j * (NP * BLOCK_D) + at_checkpoint, h)
        _, dt = _drive(dt_raw, m, bias, HAS_BIAS, SOFTPLUS)
        x = dt * u.to(tl.float32)
        for k in tl.static_range(TI):
            if REVERSE:
                i = TI - 1 - k
            else:
                i = k
            if i == 0:  # (constexpr: the block's first or second tile)
                B_i = B_0 * drive_n
            else:
                B_i = B_1 * drive_n
            sel = offs_i == i
            h = tl.exp2(A2 * _pick(dt, sel)[None, :]) * h + B_i * _pick(x, sel)[None, :]


@triton.jit
def _serial_bwd_kernel(
    dout_ptr, u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, H_ptr, Q_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, part_ptr, K_ptr,
    dim, groups, length, n_chunks, n_dblk, per_group, n_items, part_stride, dC_shift,
    s_ob, s_od, s_ol, s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    TI: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_D: tl.constexpr, REVERSE: tl.constexpr, MULTI_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr, BC_AHEAD: tl.constexpr = False, WIDE_BC: tl.constexpr = False,
):
    """Work items (chunk, batch, group, channel block) pid, pid + programs, ...

    Outputs as `_bwd_kernel`'s, with channel blocks of BLOCK_D in place of its channel
    blocks: du, ddelta, dz contiguous (batch, dim, L); dB, dC partial sums (n_dblk, batch,
    groups, N, L) (dC's at dC_ptr + dC_shift); dA, dD, dbias one row of `part_stride` a
    (batch, chunk) at part_ptr. K_ptr: CHUNK // TI checkpoints of (NP, BLOCK_D) fp32 a
    program, and the adjoint entering its chunk. EVEN_D: per_group is a multiple of
    BLOCK_D (no channel masks). BC_AHEAD: the backward walk loads B/C a block ahead (16
    registers; not measured faster, session 31). WIDE_BC: a B/C row's offset needs 64
    bits."""
    pid = tl.program_id(0)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    lanes = tl.arange(0, BLOCK_D)
    offs_i = tl.arange(0, TI)
    # 32-bit offsets from one scalar address (64-bit address tiles: 2 registers an element)
    scratch = K_ptr + pid * ((CHUNK // TI + 1) * NP * BLOCK_D)
    at_checkpoint = lanes[None, :] * NP + offs_n[:, None]
    # padded states (N not a power of two) read row N - 1 of B/C: a zero drive keeps them
    # 0; the rows' offsets are 64-bit only where they need to be (WIDE_BC)
    n_safe = tl.minimum(offs_n, N - 1)[:, None] + 0 * lanes[None, :]
    if WIDE_BC:
        n_safe = n_safe.to(tl.int64)
    at_B = n_safe * s_Bn
    at_C = n_safe * s_Cn
    drive_n = 1.0
    if NP != N:
        drive_n = tl.where(mask_n, 1.0, 0.0)[:, None]
    n_bg = n_items // (n_chunks * n_dblk)
    for item in range(pid, n_items, tl.num_programs(0)):
        # (+ 0 * pid: a tensor in the interpreter too, whose range yields Python ints)
        c, b, g, dblk = _decompose_pid(item + 0 * pid, n_bg * n_dblk, n_dblk, groups)
        local_d = dblk * BLOCK_D + lanes
        if EVEN_D:
            mask_d = tl.full([BLOCK_D], 1, tl.int1)
        else:
            mask_d = local_d < per_group
            local_d = tl.minimum(local_d, per_group - 1)
        offs_d = g * per_group + local_d
        mask_nd = mask_n[:, None] & mask_d[None, :]
        # A in base 2 only (a tile of A too cost 16 registers a thread)
        A2 = tl.load(A_ptr + offs_d[None, :] * N + offs_n[:, None], mask=mask_nd,
                     other=0.0) * 1.4426950408889634
        row = b * dim + offs_d
        h = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
        g_adj = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
        if MULTI_CHUNK:
            # (masks by the state count: the interpreter refuses a scalar bool & a mask)
            has_prev, c_prev = _previous_chunk(c, n_chunks, REVERSE)
            has_next, c_next = _previous_chunk(c, n_chunks, not REVERSE)
            m_prev = (offs_n < tl.where(has_prev, N, 0))[:, None] & mask_d[None, :]
            m_next = (offs_n < tl.where(has_next, N, 0))[:, None] & mask_d[None, :]
            h = tl.load(H_ptr + (row[None, :] * n_chunks + c_prev) * N + offs_n[:, None],
                        mask=m_prev, other=0.0)
            g_adj = tl.load(Q_ptr + (row[None, :] * n_chunks + c_next) * N + offs_n[:, None],
                            mask=m_next, other=0.0)
            # parked in the scratch at once: loaded where first used, after the sweep, it
            # held 24% of the stall samples (ncu, session 31)
            tl.store(scratch + (CHUNK // TI) * (NP * BLOCK_D) + at_checkpoint, g_adj)
        bias, Dv = _channel_scalars(bias_ptr, D_ptr, offs_d, mask_d, HAS_BIAS, HAS_D)
        u_rows = u_ptr + b * s_ub + offs_d[:, None] * s_ud
        d_rows = delta_ptr + b * s_db + offs_d[:, None] * s_dd
        o_rows = dout_ptr + b * s_ob + offs_d[:, None] * s_od
        if HAS_Z:
            z_rows = z_ptr + b * s_zb + offs_d[:, None] * s_zd
            z_step = s_zl
        else:  # dout's again: the same load, merged (a new name: an argument assigned in
            z_rows = o_rows  # the loop would be carried by it, and change type)
            z_step = s_ol
        out_rows = row[:, None] * length
        B_rows = B_ptr + b * s_Bb + g * s_Bg
        C_rows = C_ptr + b * s_Cb + g * s_Cg
        part_rows = ((dblk * n_bg + b * groups + g) * N + offs_n) * length
        chunk_start = c * CHUNK
        n_blocks = tl.cdiv(tl.minimum(CHUNK, length - chunk_start), TI)
        _sweep(h, scratch, at_checkpoint, chunk_start, n_blocks, length, A2, drive_n, bias,
               offs_i, mask_d, d_rows, u_rows, B_rows, at_B, s_dl, s_ul, s_Bl, TI, NP, BLOCK_D,
               HAS_BIAS, SOFTPLUS, REVERSE)
        if MULTI_CHUNK:
            g_adj = tl.load(scratch + (CHUNK // TI) * (NP * BLOCK_D) + at_checkpoint)
        dA = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
        dD = tl.zeros([BLOCK_D], dtype=tl.float32)
        dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
        t0 = _block_start(chunk_start, n_blocks - 1, n_blocks, TI, REVERSE)
        n_h = tl.load(scratch + (n_blocks - 1) * (NP * BLOCK_D) + at_checkpoint)
        n_dt, n_u, n_m = _block_loads(t0, length, offs_i, mask_d, d_rows, u_rows, s_dl, s_ul)
        n_do, n_z, _ = _block_loads(t0, length, offs_i, mask_d, o_rows, z_rows, s_ol, z_step)
        if BC_AHEAD:
            n_B0, n_B1 = _bc_block(B_rows, at_B, t0, length, s_Bl, TI)
            n_C0, n_C1 = _bc_block(C_rows, at_C, t0, length, s_Cl, TI)
        for jj in range(0, n_blocks):
            j = n_blocks - 1 - jj  # blocks last to first in scan order
            t0 = _block_start(chunk_start, j, n_blocks, TI, REVERSE)
            h, dt_raw, u, m, dout, zz = n_h, n_dt, n_u, n_m, n_do, n_z
            if BC_AHEAD:
                B_0, B_1, C_0, C_1 = n_B0, n_B1, n_C0, n_C1
            else:
                B_0, B_1 = _bc_block(B_rows, at_B, t0, length, s_Bl, TI)
                C_0, C_1 = _bc_block(C_rows, at_C, t0, length, s_Cl, TI)
            j_next = tl.maximum(j - 1, 0)  # its inputs load while this block computes
            t_next = _block_start(chunk_start, j_next, n_blocks, TI, REVERSE)
            n_h = tl.load(scratch + j_next * (NP * BLOCK_D) + at_checkpoint)
            n_dt, n_u, n_m = _block_loads(t_next, length, offs_i, mask_d, d_rows, u_rows,
                                          s_dl, s_ul)
            n_do, n_z, _ = _block_loads(t_next, length, offs_i, mask_d, o_rows, z_rows,
                                        s_ol, z_step)
            if BC_AHEAD:
                n_B0, n_B1 = _bc_block(B_rows, at_B, t_next, length, s_Bl, TI)
                n_C0, n_C1 = _bc_block(C_rows, at_C, t_next, length, s_Cl, TI)
            dt_raw, dt = _drive(dt_raw, m, bias, HAS_BIAS, SOFTPLUS)
            u = u.to(tl.float32)
            x = dt * u
            offs_t = t0 + offs_i
            dout = dout.to(tl.float32)
            if HAS_Z:
                zz = zz.to(tl.float32)
                sz = tl.sigmoid(zz)
                dy = dout * zz * sz
            else:
                dy = dout
            before = ()  # a_t h_(t-1)
            for k in tl.static_range(TI):
                if REVERSE:
                    i = TI - 1 - k
                else:
                    i = k
                sel = offs_i == i
                a = tl.exp2(A2 * _pick(dt, sel)[None, :])
                ah = a * h
                if i == 0:  # (constexpr: the block's first or second tile)
                    B_i = B_0 * drive_n
                else:
                    B_i = B_1 * drive_n
                h = ah + B_i * _pick(x, sel)[None, :]
                before = before + (ah,)
            du = tl.zeros([BLOCK_D, TI], dtype=tl.float32)
            ddt = tl.zeros([BLOCK_D, TI], dtype=tl.float32)
            y = tl.zeros([BLOCK_D, TI], dtype=tl.float32)
            dB = tl.zeros([NP, TI], dtype=tl.float32)
            dC = tl.zeros([NP, TI], dtype=tl.float32)
            for k in tl.static_range(TI - 1, -1, -1):
                if REVERSE:
                    i = TI - 1 - k
                else:
                    i = k
                sel = offs_i == i
                if i == 0:
                    B_i = B_0 * drive_n
                    C_i = C_0
                else:
                    B_i = B_1 * drive_n
                    C_i = C_1
                dt_i = _pick(dt, sel)
                x_i = _pick(x, sel)
                dy_i = _pick(dy, sel)
                h_i = before[k] + B_i * x_i[None, :]
                g_adj = g_adj + C_i * dy_i[None, :]
                dC = _put(dC, sel, tl.sum(h_i * dy_i[None, :], axis=1))
                dB = _put(dB, sel, tl.sum(g_adj * x_i[None, :], axis=1))
                gB = tl.sum(g_adj * B_i, axis=0)
                g_before = g_adj * before[k]
                ddt = _put(ddt, sel, gB * _pick(u, sel)
                           + 0.6931471805599453 * tl.sum(g_before * A2, axis=0))
                du = _put(du, sel, gB * dt_i)
                dA += g_before * dt_i[None, :]
                if HAS_Z:
                    y = _put(y, sel, tl.sum(C_i * h_i, axis=0))
                # the decay again rather than kept: kept, they cost 16 registers a position
                # and spilled; the exponential unit has room (3 a state and position, ~36
                # other instructions, offline SASS). dt + 0.0 is not dt (-0.0): the
                # compiler cannot merge this exponential with the one above
                g_adj = tl.exp2(A2 * (dt_i + 0.0)[None, :]) * g_adj
            if HAS_D:
                du += Dv[:, None] * dy
                dD += tl.sum(dy * u, axis=1)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(dt_raw)
            ddt = tl.where(m, ddt, 0.0)
            if HAS_BIAS:
                dbias += tl.sum(ddt, axis=1)
            if HAS_Z:
                if HAS_D:
                    y += Dv[:, None] * u
                dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz_ptr + out_rows + offs_t[None, :], dz.to(dz_ptr.dtype.element_ty),
                         mask=m)
            tl.store(du_ptr + out_rows + offs_t[None, :], du.to(du_ptr.dtype.element_ty),
                     mask=m)
            tl.store(ddelta_ptr + out_rows + offs_t[None, :],
                     ddt.to(ddelta_ptr.dtype.element_ty), mask=m)
            m_nt = mask_n[:, None] & (offs_t < length)[None, :]
            tl.store(dB_ptr + part_rows[:, None] + offs_t[None, :],
                     dB.to(dB_ptr.dtype.element_ty), mask=m_nt)
            tl.store(dC_ptr + dC_shift + part_rows[:, None] + offs_t[None, :],
                     dC.to(dC_ptr.dtype.element_ty), mask=m_nt)
        part = part_ptr + (b * n_chunks + c) * part_stride
        tl.store(part + offs_d[None, :] * N + offs_n[:, None], dA, mask=mask_nd)
        if HAS_D:
            tl.store(part + dim * N + offs_d, dD, mask=mask_d)
        if HAS_BIAS:
            if HAS_D:
                tl.store(part + dim * (N + 1) + offs_d, dbias, mask=mask_d)
            else:
                tl.store(part + dim * N + offs_d, dbias, mask=mask_d)


_serial_bwd_launcher = CachedLaunch(_serial_bwd_kernel)
# B/C rows' offsets from this many elements on are 64-bit (tests lower it)
_INT32_OFFSETS = 2**31


def resident_programs(device: torch.device, num_warps: int, registers: int = 255) -> int:
    """Programs of the persistent grid: as many as every SM keeps resident at `registers`
    a thread (8 warps at 255); 4 on the CPU (the interpreter: the loop over items is
    still taken)."""
    if device.type != "cuda":
        return 4
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    warps = 65536 // (32 * (-(-registers // 8) * 8))  # allocated 8 registers at a time
    return sms * max(1, min(64, warps) // num_warps)


def serial_bwd_main(
    dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, z: torch.Tensor | None,
    A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None,
    delta_bias: torch.Tensor | None, H: torch.Tensor, Q: torch.Tensor, du: torch.Tensor,
    ddelta: torch.Tensor, dz: torch.Tensor | None, part: torch.Tensor, softplus: bool,
    reverse: bool, chunk: int, n_chunks: int, *, ti: int = 2, block_d: int = 32,
    programs: int | None = None, maxnreg: int | None = None, bc_ahead: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Launch `_serial_bwd_kernel` over chunks of `chunk` (H, Q: the boundary states of
    those chunks, as triton_bwd computes them); fills du, ddelta, dz and part (rows as
    `_bwd_kernel`'s) and returns the dB/dC buffers (bwd_state_grads.state_grad_buffers)
    to sum. `programs`: of the persistent grid (default `resident_programs`); maxnreg
    caps the registers a thread (more programs resident, maybe spills); bc_ahead: B/C
    loaded a block ahead in the backward walk."""
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // groups
    if ti not in (1, 2):
        raise ValueError(f"ti: expected 1 or 2 positions a checkpoint, got {ti}")
    ti = min(ti, chunk)
    n_dblk = triton.cdiv(per_group, block_d)
    n_items = n_chunks * batch * groups * n_dblk
    num_warps = max(1, block_d // 32)
    if programs is None:
        programs = resident_programs(u.device, num_warps, maxnreg or 255)
    programs = max(1, min(programs, n_items))
    np_ = _next_pow2(n_state)
    scratch = torch.empty(programs * (chunk // ti + 1) * np_ * block_d, device=u.device,
                          dtype=torch.float32)
    dB_part, dC_part, dC_shift = state_grad_buffers(B, C, n_dblk, u.device)
    dummy = part
    zz = z if z is not None else u
    _serial_bwd_launcher[(programs,)](
        dout, u, delta, zz, A, B, C, D if D is not None else dummy,
        delta_bias if delta_bias is not None else dummy, H, Q,
        du, ddelta, dz if dz is not None else dummy, dB_part, dC_part, part, scratch,
        dim, groups, length, n_chunks, n_dblk, per_group, n_items, part.shape[1], dC_shift,
        *dout.stride(), *u.stride(), *delta.stride(), *zz.stride(), *B.stride(), *C.stride(),
        N=n_state, NP=np_, BLOCK_D=block_d, CHUNK=chunk, TI=ti,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, HAS_Z=z is not None,
        HAS_D=D is not None, REVERSE=reverse, MULTI_CHUNK=n_chunks > 1,
        EVEN_D=per_group % block_d == 0, BC_AHEAD=bc_ahead,
        WIDE_BC=(n_state - 1) * max(abs(B.stride(2)), abs(C.stride(2))) >= _INT32_OFFSETS,
        num_warps=num_warps,
        **({} if maxnreg is None else {"maxnreg": maxnreg}),
    )
    return dB_part, dC_part, dC_shift
