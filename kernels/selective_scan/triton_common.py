"""Pieces shared by the Triton forward and backward: launch plan, chunk aggregates, carries.

The sequence is cut into chunks of `chunk` positions. The forward and the backward both
start from two passes over the chunks (README.md, "Triton kernels"):

1. `_chunk_aggregate_kernel`: for every chunk and channel, the state the chunk produces
   from a zero start (forward state and/or adjoint state) and the sum of dt over the chunk
   (the chunk's decay is exp(A * that sum)).
2. `_carry_kernel`: a scan over chunks that turns those local aggregates into the true
   state at each chunk's boundary, in place.

A program of every kernel works on one chunk of one (batch, group) and loops over a block
of channels of that group, so the group's B/C tile is loaded once per program.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from triton.language.extra import libdevice

from .launch import CachedLaunch

# Hardware log2 in _softplus where compiled (the interpreter has no libdevice).
_FAST_LOG2 = tl.constexpr(hasattr(libdevice, "fast_log2f")
                          and not triton.knobs.runtime.interpret)

# Programs wanted per launch: enough to fill 132 SMs several times over.
_TARGET_PROGRAMS = 2048
# Measured on an H100 (README.md, "Triton kernels"): one warp per program and a 128-position
# chunk for the forward, 64 for the backward (its larger live set spills beyond that).
_MAX_CHUNK = {False: 128, True: 64}
_MAX_SINGLE_CHUNK = {False: 512, True: 64}
_ELEMENTS_PER_WARP = {False: 2048, True: 1024}


@dataclass(frozen=True)
class LaunchPlan:
    """How the (batch, dim, L) problem is split among programs."""

    chunk: int  # positions per chunk (a power of two: one register tile)
    n_chunks: int
    channel_block: int  # channels one program loops over (all in one group)
    n_channel_blocks: int  # per group
    carry_block: int  # chunks per tile in the carry scan
    num_warps: int  # warps per program of the chunk kernels

    def programs(self, batch: int, groups: int) -> int:
        return self.n_chunks * batch * groups * self.n_channel_blocks


def _next_pow2(n: int) -> int:
    # triton.next_power_of_2 / triton.cdiv are constexpr functions in Triton >= 3.5, a few
    # microseconds a call on the host; these run once per launch plan.
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=1024)
def plan_launch(
    batch: int,
    dim: int,
    groups: int,
    length: int,
    chunk: int | None = None,
    channel_block: int | None = None,
    carry_block: int | None = None,
    num_warps: int | None = None,
    n_state: int = 16,
    backward: bool = False,
) -> LaunchPlan:
    """Pick chunk and channel-block sizes so one launch has enough programs.

    Large channel blocks share one B/C tile among more channels (fewer bytes, and in the
    backward fewer partial dB/dC sums); they are split only when chunks alone do not
    give enough programs. Every count stays on grid axis 0 (limit 2**31 - 1). Cached: the
    host cost of a call matters for short rows, and a training run sees few shapes.
    """
    if chunk is None:
        whole = max(16, _next_pow2(length))
        # a sequence that fits one tile runs as one chunk: one launch, no carries
        chunk = whole if whole <= _MAX_SINGLE_CHUNK[backward] else _MAX_CHUNK[backward]
    _check_power_of_two("chunk", chunk)
    n_chunks = _cdiv(length, chunk)
    per_group = dim // groups
    if channel_block is None:
        outer = batch * groups * n_chunks
        splits = max(1, min(per_group, _cdiv(_TARGET_PROGRAMS, outer)))
        channel_block = _cdiv(per_group, splits)
    channel_block = max(1, min(channel_block, per_group))
    n_channel_blocks = _cdiv(per_group, channel_block)
    if carry_block is None:
        carry_block = min(512, max(16, _next_pow2(n_chunks)))
    _check_power_of_two("carry_block", carry_block)  # a tl.arange length
    if num_warps is None:
        tile = chunk * _next_pow2(n_state)
        num_warps = max(1, min(8, tile // _ELEMENTS_PER_WARP[backward]))
    plan = LaunchPlan(chunk, n_chunks, channel_block, n_channel_blocks, carry_block, num_warps)
    if plan.programs(batch, groups) >= 2**31:
        raise ValueError(
            f"selective scan too large for one launch: {plan.programs(batch, groups)} programs; "
            "use a larger chunk"
        )
    return plan


def _check_power_of_two(name: str, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name}: expected a power of two, got {value}")


@triton.jit
def _softplus(x):
    # log1p(exp(x)) without overflow; x above 20 passes through as in torch. tl.log is
    # libdevice's accurate logf (~25 instructions an element, in every pass); compiled,
    # the hardware log2 (one MUFU op, error ~2**-22 on (1, 2], where its argument lies)
    # does. The interpreter has no libdevice, and takes tl.log2.
    e = 1.0 + tl.exp2(tl.abs(x) * -1.4426950408889634)
    if _FAST_LOG2:
        lg = libdevice.fast_log2f(e)
    else:
        lg = tl.log2(e)
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + 0.6931471805599453 * lg)


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    # Element 1 comes first in scan order: h -> a2 * (a1 * h + b1) + b2.
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _scan_edge_columns(CHUNK: tl.constexpr, REVERSE: tl.constexpr):
    """(first, last) position of a chunk tile in scan order, as (CHUNK,) column masks."""
    col = tl.arange(0, CHUNK)
    if REVERSE:
        first = col == CHUNK - 1
        last = col == 0
    else:
        first = col == 0
        last = col == CHUNK - 1
    return first, last


@triton.jit
def _decompose_pid(pid, n_bgd, n_cblk, groups):
    """Program id -> (chunk, batch, group, channel block); consecutive ids share a chunk."""
    pid = pid.to(tl.int64)
    chunk = pid // n_bgd
    rest = pid % n_bgd
    cblk = rest % n_cblk
    bg = rest // n_cblk
    return chunk, bg // groups, bg % groups, cblk


@triton.jit
def _channel_range(g, cblk, per_group, channel_block):
    """[d0, d_end): the channels of group g's channel block cblk."""
    d0 = g * per_group + cblk * channel_block
    return d0, tl.minimum(d0 + channel_block, (g + 1) * per_group)


@triton.jit
def _load_state_tile(ptr, b, g, s_b, s_g, s_n, s_l, offs_n, offs_l, mask):
    """The (NP, CHUNK) tile of B or C of batch b, group g at offs_l, fp32, 0 where masked.
    The state offset is 64-bit: n * s_n passes 2**31 for L-contiguous B past 143M positions."""
    n_off = offs_n.to(tl.int64)[:, None] * s_n
    return tl.load(ptr + b * s_b + g * s_g + n_off + offs_l[None, :] * s_l,
                   mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _previous_chunk(c, n_chunks, REVERSE: tl.constexpr):
    """(is there a chunk before c in scan order, its index clamped into [0, n_chunks))."""
    if REVERSE:
        has_prev = c + 1 < n_chunks
        c_prev = tl.minimum(c + 1, n_chunks - 1)
    else:
        has_prev = c > 0
        c_prev = tl.maximum(c - 1, 0)
    return has_prev, c_prev


@triton.jit
def _load_dt(delta_row, bias_ptr, d, offs_l, mask_l, stride_dl,
             HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """dt over one chunk for channel d, fp32, exactly 0 outside [0, L)."""
    dt = tl.load(delta_row + offs_l * stride_dl, mask=mask_l, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt = dt + tl.load(bias_ptr + d).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    return tl.where(mask_l, dt, 0.0)


@triton.jit
def _load_dt_u(u_ptr, delta_ptr, bias_ptr, b, d, offs_l, mask_l, s_ub, s_ud, s_ul, s_db, s_dd,
               s_dl, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Channel d's dt and u over one chunk, fp32, 0 outside [0, L)."""
    dt = _load_dt(delta_ptr + b * s_db + d * s_dd, bias_ptr, d, offs_l, mask_l, s_dl,
                  HAS_BIAS, SOFTPLUS)
    u = tl.load(u_ptr + b * s_ub + d * s_ud + offs_l * s_ul, mask=mask_l, other=0.0).to(tl.float32)
    return dt, u


@triton.jit
def _load_channel(u_ptr, delta_ptr, A_ptr, bias_ptr, b, d, offs_n, mask_n, offs_l, mask_l,
                  s_ub, s_ud, s_ul, s_db, s_dd, s_dl, N,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Channel d's dt and u over one chunk (fp32, 0 outside [0, L)) and A * log2(e)."""
    dt, u = _load_dt_u(u_ptr, delta_ptr, bias_ptr, b, d, offs_l, mask_l, s_ub, s_ud, s_ul,
                       s_db, s_dd, s_dl, HAS_BIAS, SOFTPLUS)
    A2 = tl.load(A_ptr + d * N + offs_n, mask=mask_n, other=0.0) * 1.4426950408889634
    return dt, u, A2


@triton.jit
def _store_output(y, u, out_ptr, z_ptr, D_ptr, b, d, row, length, offs_l, mask_l,
                  s_zb, s_zd, s_zl, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """out = (y + D u) * silu(z) over one chunk of channel d (row = b * dim + d), in
    out's dtype; u is read only with HAS_D."""
    if HAS_D:
        y += tl.load(D_ptr + d) * u
    if HAS_Z:
        zz = tl.load(z_ptr + b * s_zb + d * s_zd + offs_l * s_zl, mask=mask_l,
                     other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + row * length + offs_l, y.to(out_ptr.dtype.element_ty), mask=mask_l)


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
def _carry_kernel(
    S_ptr, E_ptr, A_ptr, last_ptr, dim, n_chunks,
    N, NP: tl.constexpr, BLOCK: tl.constexpr, REVERSE: tl.constexpr,
    STORE_LAST: tl.constexpr,
):
    """Scan the chunk aggregates of one (batch, channel) in place.

    After it, E[c] holds the true state at the end of chunk c in the direction of flow
    (REVERSE: from the last chunk to the first). Chunks are taken BLOCK at a time, a
    tl.associative_scan inside a block and a carried state between blocks.
    """
    row = tl.program_id(0).to(tl.int64)  # batch * dim + channel
    d = row % dim
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    offs_c = tl.arange(0, BLOCK)
    A2 = tl.load(A_ptr + d * N + offs_n, mask=mask_n, other=0.0) * 1.4426950408889634
    carry = tl.zeros([NP], dtype=tl.float32)
    n_blocks = tl.cdiv(n_chunks, BLOCK)
    for i in range(0, n_blocks):
        if REVERSE:
            k = n_blocks - 1 - i
        else:
            k = i
        cc = k * BLOCK + offs_c
        mask_c = cc < n_chunks
        s = tl.load(S_ptr + row * n_chunks + cc, mask=mask_c, other=0.0)
        ptrs = E_ptr + (row * n_chunks + cc)[:, None] * N + offs_n[None, :]
        mask = mask_c[:, None] & mask_n[None, :]
        e = tl.load(ptrs, mask=mask, other=0.0)
        decay = tl.exp2(s[:, None] * A2[None, :])
        acum, hs = tl.associative_scan((decay, e), axis=0, combine_fn=_affine_combine,
                                       reverse=REVERSE)
        h = acum * carry[None, :] + hs
        tl.store(ptrs, h, mask=mask)
        # masked chunks are identities, so the block's far row holds the carry
        if REVERSE:
            edge = offs_c == 0
        else:
            edge = offs_c == BLOCK - 1
        carry = tl.sum(tl.where(edge[:, None], h, 0.0), axis=0)
    if STORE_LAST:
        tl.store(last_ptr + row * N + offs_n, carry, mask=mask_n)


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
        carry_chunks(S, H, A, last_state, plan.carry_block, reverse)
    if adjoint:
        carry_chunks(S, Q, A, None, plan.carry_block, not reverse)
    return H, Q


def carry_chunks(S: torch.Tensor, E: torch.Tensor, A: torch.Tensor,
                 last_state: torch.Tensor | None, carry_block: int, reverse: bool) -> None:
    """Launch `_carry_kernel`: E (batch, dim, n_chunks, N), the chunks' states from zero,
    becomes the true state at each chunk's boundary, in place; with `last_state`, the
    state leaving the last chunk in the direction of flow is written there too."""
    batch, dim, n_chunks, n_state = E.shape
    _carry_kernel_launcher[(batch * dim,)](
        S, E, A, last_state if last_state is not None else S, dim, n_chunks,
        N=n_state, NP=_next_pow2(n_state), BLOCK=carry_block, REVERSE=reverse,
        STORE_LAST=last_state is not None, num_warps=8,
    )
