"""Triton forward of the selective scan, parallel over the sequence in chunks.

Five variants, three launches each for a sequence of several chunks (maths in README.md,
"Triton kernels"):

- "chunked": chunk aggregates and the carry scan over chunks (triton_chunks.py) give the
  true state entering every chunk; then `_fwd_output_kernel` rescans each chunk from that
  state and writes the output.
- "reload": "chunked" with the output kernel reloading the B and C tiles per channel
  (bf16: 255 registers and 8 bytes of spill -> 181, offline SASS for sm_90,
  scripts/kernel_sass_stats.py; fp32 stays at 251). Slower on every bench row (e.g.
  (2, 64, 262144) bf16: 1.88 against 0.95 ms for "chunked").
- "rows" (triton_fwd_rows.py): the "chunked" passes, with aggregate and output kernels
  that work on one state index at a time: a few rows live instead of (N, CHUNK) tiles.
- "deferred" (triton_fwd_deferred.py): each chunk is scanned from zero first and the
  entering state is applied in a last, cheaper pass; no aggregate pass, but an fp32
  scratch copy of the output is written and read back.
- "serial" (triton_fwd_serial.py): a block of channels' states in registers (4 states of
  4 channels a lane), positions walked in order (no scan); the same three passes.

"auto" (the default, `auto_variant`) takes "serial" where
serial_planning.serial_applies: sequences of at least SERIAL_MIN_LENGTH positions and
SERIAL_MIN_ELEMENTS in all, at least 32 channels a group (measured in sessions 23 and
25: serial_planning.py); otherwise "deferred" for fp32 inputs (but "chunked" where its
entering states come from one walk over each row's chunks, `walk_pays`: two launches to
three, and 2-4% less GPU time on 5-6 chunks of 1024-1536 rows, (2, 512, 640) 25.7
against 26.8 us, (4, 384, 768) 39.0 against 39.8; session 42, `forward_call2.log` of
scripts/results/kernel_h200_2026-12-03_s42/), and for fp16/bf16 "rows" when the
sequence is one chunk of more than TILE_MAX_LENGTH positions (64 < L <= 512) and B/C's
state strides keep its 32-bit offsets below 2**31 (`rows_offsets_fit`), "chunked"
otherwise.
Measured on an H200 with scripts/bench_selective_scan.py --fwd-variants (session 16, raw
log scripts/results/kernel_h200_2026-11-30_s16/fwd_variants_call8_caps.log; (2, 256,
4096) fp32 "serial" has since come down to 0.055 ms of GPU time against 0.067 for
"deferred", session 23), ms:

    batch, dim, L     dtype  chunked  rows   deferred  serial
    2, 64, 262144     fp32     1.022  1.587   0.992    0.772
    8, 128, 16384     fp32     0.537  0.791   0.520    0.406
    1, 48, 2097152    fp32     2.996  4.826   2.884    3.210   (48 channels: idle threads)
    2, 256, 4096      fp32     0.074  0.143   0.078    0.173   (few programs, host-bound)
    2, 512, 512       fp32     0.020  0.038   0.036    0.220   (serial: 8 chunks of 64)
    2, 64, 262144     bf16     0.950  1.064   1.648    0.599
    1, 48, 2097152    bf16     2.822  2.825   4.928    2.251
    2, 512, 512       bf16     0.060  0.024   0.061    0.282   (one chunk: rows 2.5x)

Session 25 (8 positions a load in fp32's "serial" output pass, serial_planning's
`_default_ti`; `fwd_variants_fp32_call9.log` of scripts/results/kernel_h200_2026-12-01_s25/)
took fp32 "serial" to 0.620 ms on (2, 64, 262144), 0.318 on (8, 128, 16384), 0.058 on
(2, 256, 4096) and 2.358 on (1, 48, 2097152), where "deferred" took 2.828: 48 channels a
group now run "serial" too.

Deferred's fp32 scratch weighs more against 2-byte inputs. "rows" holds ~60 registers
instead of 255 but runs the tile's arithmetic row by row; it wins only where a single
chunk has too few programs to hide the tile kernel's latency. Rows of L = 4096 are
host-bound: the same chunked kernels took 0.092 and 0.227 ms in one bf16 run (session 15).

A sequence of one chunk runs one output kernel alone: `_fwd_rows_kernel` for "rows",
`_serial_kernel` for "serial", `_fwd_output_kernel` for the others.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch
from .replay import replayed
from .triton_common import (
    _channel_range,
    _chunk_tile,
    _load_channel,
    _load_state_tile,
    _next_pow2,
    _previous_chunk,
    _scan_edge_columns,
    _MAX_CHUNK,
    _MAX_SINGLE_CHUNK,
    _store_output,
    launch_output_kernel,
    plan_launch,
)
from .triton_tile_scans import _group_size, _scan_tile
from .triton_chunks import chunk_boundary_states
from .triton_chunks_carried import carried_boundary_states, walk_pays
from .triton_fwd_deferred import deferred_forward
from .triton_fwd_rows import launch_rows_output, rows_boundary_states, rows_offsets_fit
from .serial_planning import serial_applies
from .triton_fwd_serial import serial_forward

VARIANTS = ("auto", "chunked", "deferred", "reload", "rows", "serial")
BOUNDARIES = ("auto", "tile", "carried")
# One chunk of at most this many positions: the (N, L) tile kernel beats "rows" in 2-byte
# inputs (session 34, short_rows_call9.log, bf16, GPU time in CUDA-graph replay, us, rows
# -> tile: (2, 1024, 64) 10.3 -> 6.1, (8, 256, 64) 10.2 -> 6.1; do_bench 19.4 -> 10.3,
# 19.9 -> 10.2). Chunks of 128 were mixed ((2, 768, 128) 10.3 -> 8.8, (4, 512, 128) 10.5
# -> 13.7), and at 256 positions the tile kernel was 3.5x slower: those keep "rows".
TILE_MAX_LENGTH = 64
# The backward's chunk where it has several (triton_common.plan_launch, backward=True):
# the granularity of the states a "serial" forward keeps for it
BACKWARD_CHUNK = _MAX_CHUNK[True]


def _result(out: torch.Tensor, last_state: torch.Tensor | None, keep_states: bool,
            states: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    return (out, last_state, states) if keep_states else (out, last_state)


def backward_states(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor | None:
    """Where a training call runs the "serial" forward (`serial_applies`) and the
    backward's default plan has several chunks, an fp32 (batch, dim, chunks, N) tensor for
    the forward to fill with the states leaving them (the backward then takes "serial"
    boundaries); None elsewhere."""
    batch, dim, length = u.shape
    n_chunks = -(-length // BACKWARD_CHUNK)
    if length <= _MAX_SINGLE_CHUNK[True] or not serial_applies(
            batch * dim, length, dim // B.shape[1]):
        return None
    return torch.empty(batch, dim, n_chunks, A.shape[1], device=u.device,
                       dtype=torch.float32)


def auto_variant(dtype: torch.dtype, n_chunks: int, sequences: int, length: int,
                 per_group: int) -> str:
    """The forward variant "auto" runs (measurements in the module docstring).

    sequences: batch * dim; per_group: channels sharing B/C (`serial_applies` says when
    "serial" pays).
    """
    if serial_applies(sequences, length, per_group):
        return "serial"
    if dtype == torch.float32:
        # where the walk pays, "chunked" takes two launches to "deferred"'s three
        walks = n_chunks > 1 and walk_pays(sequences, n_chunks, False, 4)
        return "chunked" if walks else "deferred"
    return "rows" if n_chunks == 1 and length > TILE_MAX_LENGTH else "chunked"


@triton.jit(do_not_specialize=["tile_pin"])  # its 0 must stay a run-time value
def _fwd_output_kernel(
    u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, H_ptr, out_ptr,
    dim, groups, length, n_chunks, n_cblk, n_bgd, per_group, channel_block,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl, tile_pin,
    N, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_D: tl.constexpr, REVERSE: tl.constexpr, MULTI_CHUNK: tl.constexpr,
    BC_IN_LOOP: tl.constexpr = False,
):
    """One chunk of one (batch, group), looping over a block of its channels.

    out is contiguous (batch, dim, L). With several chunks, H[b, d, c] is the state
    leaving chunk c; with one chunk, H is the last state (batch, dim, N), written here.
    BC_IN_LOOP reloads the B and C tiles for every channel (from L1/L2) instead of holding
    them across the loop: fewer registers for more loads. ``tile_pin`` is 0 at run time;
    ``d * tile_pin`` in the address keeps the compiler from hoisting the loads back out.
    """
    c, b, g, cblk, offs_n, mask_n, offs_l, mask_l, mask_nl = _chunk_tile(
        n_bgd, n_cblk, groups, length, N, NP, CHUNK)
    if not BC_IN_LOOP:
        Bt = _load_state_tile(B_ptr, b, g, s_Bb, s_Bg, s_Bn, s_Bl, offs_n, offs_l, mask_nl)
        Ct = _load_state_tile(C_ptr, b, g, s_Cb, s_Cg, s_Cn, s_Cl, offs_n, offs_l, mask_nl)
    # the state entering this chunk leaves the previous chunk in scan order
    has_prev, c_prev = _previous_chunk(c, n_chunks, REVERSE)
    # h0 enters through the drive at the chunk's first position in scan order (as in the
    # backward): the scan's decay products are then not needed after it. Positions past L
    # are identities (dt = 0), so the tile's edge column is right for a partial chunk too.
    first_col, last_col = _scan_edge_columns(CHUNK, REVERSE)
    d0, d_end = _channel_range(g, cblk, per_group, channel_block)
    for d in range(d0, d_end):
        dt, u, A2 = _load_channel(u_ptr, delta_ptr, A_ptr, bias_ptr, b, d, offs_n, mask_n,
                                  offs_l, mask_l, s_ub, s_ud, s_ul, s_db, s_dd, s_dl, N,
                                  HAS_BIAS, SOFTPLUS)
        row = b * dim + d
        if BC_IN_LOOP:
            pin = d * tile_pin
            Bt = _load_state_tile(B_ptr + pin, b, g, s_Bb, s_Bg, s_Bn, s_Bl, offs_n, offs_l,
                                  mask_nl)
        decay = tl.exp2(A2[:, None] * dt[None, :])
        drive = Bt * (dt * u)[None, :]
        if MULTI_CHUNK:
            h0 = tl.load(H_ptr + (row * n_chunks + c_prev) * N + offs_n, mask=mask_n,
                         other=0.0)
            h0 = tl.where(has_prev, h0, 0.0)
            drive += tl.where(first_col[None, :], decay * h0[:, None], 0.0)
        h = _scan_tile(decay, drive, NP, CHUNK, REVERSE,
                       _group_size(B_ptr.dtype.element_ty, CHUNK))
        if not MULTI_CHUNK:
            # only the thread holding the far end stores: no cross-lane reduction
            tl.store(H_ptr + row * N + offs_n[:, None] + 0 * offs_l[None, :], h,
                     mask=mask_n[:, None] & last_col[None, :])
        if BC_IN_LOOP:
            Ct = _load_state_tile(C_ptr + pin, b, g, s_Cb, s_Cg, s_Cn, s_Cl, offs_n, offs_l,
                                  mask_nl)
        _store_output(tl.sum(Ct * h, axis=0), u, out_ptr, z_ptr, D_ptr, b, d, row, length,
                      offs_l, mask_l, s_zb, s_zd, s_zl, HAS_D, HAS_Z)


_fwd_output_kernel_launcher = CachedLaunch(_fwd_output_kernel)


@replayed  # allocations and launches only, decided by the arguments' signature
def selective_scan_fwd_triton(
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
    out: torch.Tensor | None = None,
    chunk: int | None = None,
    channel_block: int | None = None,
    carry_block: int | None = None,
    num_warps: int | None = None,
    variant: str = "auto",
    ti: int | None = None,
    maxnreg: int | None = None,
    keep_states: bool = False,
    boundary: str = "auto",
    return_last_state: bool = True,
) -> tuple[torch.Tensor, ...]:
    """Forward host function (contract: interface.py's docstring).

    `out`, if given, is a contiguous (batch, dim, L) tensor of u's dtype that receives the
    output (tests pass a NaN-filled one). `chunk`, `channel_block`, `carry_block` and
    `num_warps` override the launch plan (tests use small ones); defaults suit the GPU.
    A sequence of one chunk needs no carries: one launch does everything. `variant`:
    "chunked", "deferred", "reload", "rows", "serial" or "auto" (`auto_variant`: by dtype,
    length and channels a group). "serial" plans its own chunks (serial_planning's
    `serial_plan`): it reads `chunk`, `num_warps` and `channel_block` (its channels a
    program), not `carry_block`. `ti`: positions per load of "serial" (default: its plan's,
    serial_planning's `_default_ti`); `maxnreg`: its output kernel's register cap (None:
    the compiler's choice). `boundary`: how "chunked" and "reload" find the states
    entering their chunks: "tile" (triton_chunks: an aggregate launch, then the carry),
    "carried" (triton_chunks_carried: one launch walking each row's chunks) or "auto"
    (`walk_pays`).
    Returns (out, last_state fp32 (batch, dim, N)); with `keep_states`, also the states
    leaving every chunk of the backward's plan (`backward_states`) or None where the
    forward does not produce them: passed to the backward, they spare it a pass. With
    `return_last_state=False` last_state is None: the kernels still write it, but to a
    buffer the call does not return, which a replay carves from its scratch (one
    allocation fewer a call where there is scratch: replay.py).
    """
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary: expected one of {BOUNDARIES}, got {boundary!r}")
    plan = plan_launch(batch, dim, groups, length, chunk, channel_block, carry_block,
                       num_warps, n_state)
    asked = variant
    if variant == "auto":
        variant = auto_variant(u.dtype, plan.n_chunks, batch * dim, length, dim // groups)
    if variant == "rows" and not rows_offsets_fit(B, C):
        if asked == "auto":
            variant = "chunked"
        else:
            raise ValueError(
                "variant 'rows' forms B/C state offsets in 32 bits, and (N - 1) x the "
                f"state stride of B {tuple(B.stride())} or C {tuple(C.stride())} reaches "
                "2**31; use variant 'chunked' or 'auto'")
    if not A.is_contiguous():
        A = A.contiguous()
    if out is None:
        out = torch.empty(batch, dim, length, device=u.device, dtype=u.dtype)
    elif out.shape != u.shape or out.dtype != u.dtype or not out.is_contiguous():
        raise ValueError(
            f"out must be a contiguous {tuple(u.shape)} {u.dtype} tensor, got "
            f"{tuple(out.shape)} {out.dtype} contiguous={out.is_contiguous()}"
        )
    last_state = torch.empty(batch, dim, n_state, device=u.device, dtype=torch.float32)
    returned_state = last_state if return_last_state else None
    if variant == "serial":
        keep = keep_states and (ti is None or ti <= BACKWARD_CHUNK)
        states = backward_states(u, A, B) if keep else None
        serial_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out,
                       last_state, chunk=chunk, num_warps=num_warps, ti=ti,
                       block_d=channel_block, maxnreg=maxnreg, sub_states=states,
                       sub_chunk=BACKWARD_CHUNK)
        return _result(out, returned_state, keep_states, states)
    multi = plan.n_chunks > 1
    if multi and variant == "deferred":
        deferred_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, plan,
                         out, last_state)
        return _result(out, returned_state, keep_states)
    if multi and variant == "rows":
        H = rows_boundary_states(u, delta, A, B, delta_bias, delta_softplus, reverse, plan,
                                 last_state)
    elif multi:
        if boundary == "auto":
            boundary = "carried" if walk_pays(batch * dim, plan.n_chunks, False,
                                            u.element_size()) else "tile"
        boundary_states = (carried_boundary_states if boundary == "carried"
                           else chunk_boundary_states)
        H, _ = boundary_states(
            u, delta, None, None, A, B, C, delta_bias, delta_softplus, reverse, plan,
            forward=True, adjoint=False, last_state=last_state,
        )
    else:
        H = last_state
    if variant == "rows":
        launch_rows_output(u, delta, z, A, B, C, D, delta_bias, H, out, plan,
                           delta_softplus=delta_softplus, reverse=reverse,
                           num_warps=num_warps)
        return _result(out, returned_state, keep_states)
    # tile_pin: the trailing 0 (see the kernel's docstring)
    launch_output_kernel(
        _fwd_output_kernel_launcher, u, delta, z, A, B, C, D, delta_bias, H, out, plan,
        delta_softplus, reverse, key=variant, scalars=(0,),
        options=dict(NP=_next_pow2(n_state), BC_IN_LOOP=variant == "reload",
                     num_warps=plan.num_warps))
    return _result(out, returned_state, keep_states)
