"""Pieces shared by the Triton kernels: the launch plan and the @triton.jit helpers.

The sequence is cut into chunks of `chunk` positions (`plan_launch`). A program of every
tile kernel works on one chunk of one (batch, group) and loops over a block of channels
of that group, so the group's B/C tile is loaded once per program. The two passes over
chunks that the forward and the backward start from are in triton_chunks.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import triton
import triton.language as tl

from triton.language.extra import libdevice


# Compiled, not interpreted: libdevice and inline PTX exist (the interpreter has neither).
_COMPILED = tl.constexpr(not triton.knobs.runtime.interpret)
# Hardware log2 in _softplus where compiled.
_FAST_LOG2 = tl.constexpr(hasattr(libdevice, "fast_log2f") and _COMPILED.value)

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


def launch_output_kernel(launcher, u, delta, z, A, B, C, D, delta_bias, H, out,
                         plan: LaunchPlan, delta_softplus: bool, reverse: bool, *,
                         key: tuple, scalars: tuple, options: dict) -> None:
    """Launch an output kernel taking `_fwd_output_kernel`'s arguments (triton_fwd.py;
    `_fwd_rows_kernel` shares them) over the plan's programs through `launcher`
    (a CachedLaunch). `key`, `scalars` and `options`: what the kernel adds to the common
    launch key, after the common scalars (the strides) and to the common constexprs."""
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    zz = z if z is not None else u
    # H stands in for an absent D or bias: never read
    tensors = (u, delta, zz, A, B, C, D if D is not None else H,
               delta_bias if delta_bias is not None else H, H, out)
    # what the scalars and options are made of (CachedLaunch.keyed)
    full_key = (plan, u.shape, groups, n_state, u.stride(), delta.stride(), zz.stride(),
                B.stride(), C.stride(), delta_softplus, reverse, z is None, D is None,
                delta_bias is None, key)

    def scalars_and_options() -> tuple[tuple, dict]:
        common = (dim, groups, length, plan.n_chunks, plan.n_channel_blocks,
                  batch * groups * plan.n_channel_blocks, dim // groups, plan.channel_block,
                  *u.stride(), *delta.stride(), *zz.stride(), *B.stride(), *C.stride())
        return (*common, *scalars), dict(
            N=n_state, CHUNK=plan.chunk,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_Z=z is not None,
            HAS_D=D is not None, REVERSE=reverse, MULTI_CHUNK=plan.n_chunks > 1, **options)

    launcher.keyed(full_key, (plan.programs(batch, groups),), tensors, scalars_and_options)


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
def _last_axis_column(x, i: tl.constexpr, W: tl.constexpr):
    """x[:, :, :, i] of a (G, R, J, W) tile whose W (a power of two) a thread holds:
    reshapes and splits, register renames."""
    if W == 1:
        return tl.reshape(x, (x.shape[0], x.shape[1], x.shape[2]))
    else:
        lo, hi = tl.split(tl.reshape(x, (x.shape[0], x.shape[1], x.shape[2], W // 2, 2)))
        if i % 2 == 0:
            half = lo
        else:
            half = hi
        return _last_axis_column(half, i // 2, W // 2)


@triton.jit
def _bc_rows(ptr, b, g, s_b, s_g, s_n, offs_n, offs_d, N: tl.constexpr, NP: tl.constexpr,
             G: tl.constexpr, BC_TI: tl.constexpr):
    """Pointers to the B (or C) rows of batch b, group g that each lane of the "serial"
    kernel reads: an (NP, BLOCK_D) tile broadcast over the channels (h's layout) for one
    position a load, a (G, BLOCK_D, NP // G, BC_TI) tile for several (`_bc_column` turns a
    column of it into h's). Padded states (N not a power of two) point at row N - 1."""
    if BC_TI == 1:
        n_safe = tl.minimum(offs_n, N - 1).to(tl.int64)[:, None]
        zero_d = 0 * offs_d[None, :]
    else:
        n_safe = tl.minimum(tl.arange(0, G)[:, None, None, None] * (NP // G)
                            + tl.arange(0, NP // G)[None, None, :, None], N - 1).to(tl.int64)
        zero_d = 0 * offs_d[None, :, None, None]
    return ptr + b * s_b + g * s_g + n_safe * s_n + zero_d


@triton.jit
def _bc_column(blk, i: tl.constexpr, BC_TI: tl.constexpr, NP: tl.constexpr):
    """Position i of a (G, BLOCK_D, NP // G, BC_TI) B/C tile as an (NP, BLOCK_D) tile of
    the "serial" kernel's states (state g * NP // G + j). Axes in this order because
    triton 3.6 then lays the tile out the way it lays out the states: lanes over G and
    BLOCK_D, a lane's NP // G states and BC_TI positions in its registers; the column,
    permute and reshape only rename registers (offline SASS: no shuffle, no shared
    memory)."""
    col = _last_axis_column(blk, i, BC_TI).to(tl.float32)
    return tl.reshape(tl.permute(col, (0, 2, 1)), (NP, col.shape[1]))


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
def _chunk_tile(n_bgd, n_cblk, groups, length, N, NP: tl.constexpr, CHUNK: tl.constexpr):
    """What a tile kernel's program works on: (chunk, batch, group, channel block) from
    its id, and the offsets and masks of its (NP, CHUNK) tile of states x positions:
    (c, b, g, cblk, offs_n, mask_n, offs_l, mask_l, mask_nl)."""
    c, b, g, cblk = _decompose_pid(tl.program_id(0), n_bgd, n_cblk, groups)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    offs_l = c * CHUNK + tl.arange(0, CHUNK)
    mask_l = offs_l < length
    mask_nl = mask_n[:, None] & mask_l[None, :]
    return c, b, g, cblk, offs_n, mask_n, offs_l, mask_l, mask_nl


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
def _forward_aggregate(Bt, dt, u, A2, REVERSE: tl.constexpr):
    """The forward state one chunk leaves from a zero start, (NP,): each drive decays
    over the positions after it in scan order (exclusive)."""
    after = tl.cumsum(dt, axis=0, reverse=not REVERSE) - dt
    w = tl.exp2(A2[:, None] * after[None, :]) * Bt
    return tl.sum(w * (dt * u)[None, :], axis=1)


@triton.jit
def _adjoint_aggregate(Ct, dt, dout_row, z_row, offs_l, mask_l, s_ol, s_zl,
                       A2, HAS_Z: tl.constexpr, REVERSE: tl.constexpr):
    """The adjoint one chunk passes on against scan order from a zero start, times the
    decay of its first position in scan order, (NP,): dy = dout silu(z) C, each term
    decayed from its position to the chunk's far end against scan order (inclusive)."""
    dy = tl.load(dout_row + offs_l * s_ol, mask=mask_l, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_row + offs_l * s_zl, mask=mask_l, other=0.0).to(tl.float32)
        dy = dy * zz * tl.sigmoid(zz)
    upto = tl.cumsum(dt, axis=0, reverse=REVERSE)
    w = tl.exp2(A2[:, None] * upto[None, :]) * Ct
    return tl.sum(w * dy[None, :], axis=1)


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
