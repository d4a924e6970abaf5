"""How the "serial" variant (triton_fwd_serial.py) splits a scan, and where "auto" takes it.

Host-side only: the rule (`serial_applies`) and the launch plan (`serial_plan`), apart
from the kernel so that both read without its Triton code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .triton_common import _check_power_of_two, _next_pow2

# "auto" takes this variant from this many positions a sequence and this much work in
# all (batch * dim * L) on. Session 23 (bench_serial_threshold.py on an H200, GPU time of
# CUDA-graph replays, forward and forward+backward, fp32 and bf16; scripts/results/
# kernel_h200_2026-12-01_s23/threshold_*.log): faster on every shape of 2**21 elements or
# more from L = 2048 on (e.g. (2, 256, 4096) bf16 forward 0.056 -> 0.048 ms, fwd+bwd
# 0.241 -> 0.193; (2, 512, 2048) fp32 0.068 -> 0.055 and 0.249 -> 0.214; (2, 64, 16384)
# bf16 0.055 -> 0.048 and 0.255 -> 0.207); slower or level under it (its three passes each
# walk a chunk of >= 64 positions in turn: (1, 128, 4096) fp32 forward 0.021 -> 0.034,
# (2, 128, 2048) 0.021 -> 0.034; (1, 64, 16384) level, 0.036 -> 0.039). Session 16 had
# found L = 4096 slower on (2, 256, 4096) fp32 with the kernels of then.
SERIAL_MIN_LENGTH = 2048
SERIAL_MIN_ELEMENTS = 2**21
# Programs wanted per launch (one warp each; ~16 resident per SM at ~128 registers).
_TARGET_PROGRAMS = 4096
# Longer chunks leave fewer programs: chunks of 256 against the 1024 the target asks for on
# bench row 6 (1, 48, 2097152): 2.94 against 3.18 ms fp32, 2.15 against 2.25 bf16 (s16)
_MIN_CHUNK, _MAX_CHUNK = 64, 256
# A default plan whose output pass takes at most this many waves of the device's resident
# programs runs instead in one wave (`whole_wave_chunk`). Session 35 (`waves_call1.log` of
# scripts/results/kernel_h200_2026-12-02_s35/, GPU time of the forward, CUDA-graph replay,
# 12 programs an SM x 132 SMs): default chunks leave rows 1, 2 and 5 at 2.59 waves; in one
# wave (chunks 672, 176, 336) row 1 0.604 -> 0.594 ms fp32, 0.520 -> 0.510 bf16, row 2
# 0.174 -> 0.166 and 0.145 -> 0.142, row 5 0.309 -> 0.302 and 0.264 -> 0.259; training
# forwards (kept states) row 1 0.643 -> 0.613 and 0.558 -> 0.545. Off whole waves longer
# chunks lose (row 1 at 320, 2.07 waves: 0.675 fp32), and row 6, at 10.3 waves by default,
# is slower in one (chunk 2656: 2.357 -> 2.609 fp32, 1.847 -> 1.970 bf16).
_ONE_WAVE_MAX_WAVES = 4
_WAVE_CHUNK_MULTIPLE = 16  # whole 16-byte vectors of bf16 and fp32 at every chunk's start
# The aggregate kernel keeps more programs an SM than the output pass (fewer registers) and
# runs slower at the output pass's one-wave chunks (`passes_call3.log`, row 1, 256 -> 672:
# fp32 0.225 -> 0.240 ms, bf16 0.188 -> 0.196); at chunks of about the default's length
# (`aggregate_split`) its time falls with the work, but the carry then scans more chunks,
# ~10 us more at 3 a chunk (`ab_*1.log` of call 4, GPU time by kernel: row 1 aggregate +
# output 588.7 -> 571.0 us fp32, 507.2 -> 492.2 bf16, carry 6.3 -> 16.0; row 5 (2**24
# elements) 299.1 -> 290.0 and 254.2 -> 248.3, carry 4.9 -> 15.0): from 2**25 on.
_SPLIT_MIN_ELEMENTS = 2**25


def serial_applies(sequences: int, length: int, per_group: int) -> bool:
    """Whether "auto" takes this variant for the forward (and, through
    bwd_options.auto_boundary, the backward's boundary states).

    sequences: batch * dim; per_group: channels sharing B/C, one a thread of a 32-wide
    warp. Fewer than 32 leave threads idle (untimed: multi-head scans with small heads stay
    on the tile kernels). Until session 25 an fp32 group that was not a multiple of 32
    channels took "deferred" unless the call kept the backward's states; with 8 positions a
    load (`_default_ti`) "serial" is the faster forward there too (bench row 6, (1, 48,
    2097152) fp32: 2.358 against 2.835 ms, `fwd_variants_fp32_call9.log` of
    scripts/results/kernel_h200_2026-12-01_s25/).
    """
    return (length >= SERIAL_MIN_LENGTH and sequences * length >= SERIAL_MIN_ELEMENTS
            and per_group >= 32)


@dataclass(frozen=True)
class SerialPlan:
    """How `_serial_kernel` splits a (batch, dim, L) scan (see `serial_plan`)."""

    chunk: int
    n_chunks: int
    block_d: int  # channels a program, one per thread (a power of two)
    n_dblk: int  # channel blocks per group
    num_warps: int
    ti: int  # positions a load: the output pass and the adjoint aggregate
    agg_ti: int  # positions a load of the forward aggregate
    vec: int  # output pass: at most this many positions a lane loads at once
    bc: int  # output pass: positions a B/C load
    agg_bc: int  # aggregates: positions a B/C load
    agg_split: int  # aggregate chunks an output chunk (`aggregate_split`)
    n_agg_chunks: int  # aggregate chunks a sequence

    def loads(self, aggregate: bool, adjoint: bool) -> tuple[int, int, int]:
        """(TI, VEC, BC_TI) of one pass: positions a block, at most how many of them a lane
        loads at once, and positions a B/C load (at most a block's). The forward aggregate
        takes `agg_ti`, the output pass `vec` and `bc`, both aggregates `agg_bc`."""
        if aggregate:
            ti = self.ti if adjoint else self.agg_ti
            return ti, 64, min(self.agg_bc, ti)
        return self.ti, self.vec, min(self.bc, self.ti)

    def bc_launch(self, aggregate: bool, adjoint: bool, n_state: int) -> tuple[int, int]:
        """(BC_TI, G) of one pass's launch: its positions a B/C load (`loads`) where the
        tile fills the warps (`bc_tiles`), and the tile's state groups."""
        return bc_tiles(self.loads(aggregate, adjoint)[2], n_state, self.block_d,
                        self.num_warps)

    def pass_chunks(self, aggregate: bool) -> tuple[int, int]:
        """(positions a chunk, chunks a sequence) of a pass: the aggregates (and the
        carry) at chunks of chunk / agg_split, the output pass at chunks of `chunk`."""
        if aggregate:
            return self.chunk // self.agg_split, self.n_agg_chunks
        return self.chunk, self.n_chunks

    @property
    def carry_block(self) -> int:
        """Entries a step of `carry_chunks`: the output pass's chunks (the carry folds
        agg_split aggregate chunks into one)."""
        return min(512, max(16, _next_pow2(self.n_chunks)))


@functools.lru_cache(maxsize=1024)  # host time counts on short rows; few shapes a run
def serial_plan(batch: int, dim: int, groups: int, length: int, dtype: torch.dtype,
                chunk: int | None = None, num_warps: int | None = None,
                ti: int | None = None, block_d: int | None = None,
                keeps_states: bool = False, vec: int | None = None,
                bc: int | None = None, slots: int | None = None) -> SerialPlan:
    """Chunks long enough to leave about _TARGET_PROGRAMS programs; block_d channels a
    program (default: one a thread). Positions a load (`ti` sets both; fewer if a given
    chunk is shorter): 8 for the output pass and the adjoint aggregate, 16 bytes of the
    input dtype for the forward aggregate, as measured (`_default_ti`). keeps_states: the
    output pass also writes the backward's boundary states. vec: the output pass loads a
    channel's TI positions in pieces of at most this many (`_default_vec`). bc: positions
    a B/C load in every pass (`_default_bc`). slots: programs of the output pass the
    device runs at once, if known: a default chunk then fills whole waves where it can
    (`whole_wave_chunk`)."""
    per_group = dim // groups
    if num_warps is None:
        num_warps = 1
    if block_d is None:
        block_d = 32 * num_warps
    block_d = max(1, min(_next_pow2(block_d), _next_pow2(per_group)))
    if vec is None:
        vec = _default_vec(dtype)
    if ti is None:
        ti = _default_ti(dtype)
        agg_ti = 16 // dtype.itemsize
        if chunk is not None:  # the largest power of two dividing the chunk
            ti, agg_ti = min(ti, chunk & -chunk), min(agg_ti, chunk & -chunk)
    else:
        agg_ti = ti
    _check_power_of_two("ti", ti)
    _check_power_of_two("vec", vec)
    rows = batch * groups * -(-per_group // block_d)
    agg_split = 1
    if chunk is None:
        want = _next_pow2(max(1, -(-length * rows // _TARGET_PROGRAMS)))
        chunk = max(_MIN_CHUNK, min(_MAX_CHUNK, want))
        chunk = min(chunk, max(ti, agg_ti, _next_pow2(length)))
        if slots is not None:
            default, chunk = chunk, whole_wave_chunk(length, rows, chunk, slots)
            agg_split = aggregate_split(chunk, default, batch * dim * length)
    if chunk % ti:
        raise ValueError(f"chunk: expected a multiple of {ti}, got {chunk}")
    n_dblk = -(-per_group // block_d)
    if bc is None:
        agg_bc = _default_bc(dtype, keeps_states=False)
        bc = _default_bc(dtype, keeps_states)
    else:
        _check_power_of_two("bc", bc)
        agg_bc = bc
    agg_chunk = chunk // agg_split
    return SerialPlan(chunk, -(-length // chunk), block_d, n_dblk, num_warps, ti, agg_ti, vec,
                      bc, agg_bc, agg_split, -(-length // agg_chunk))


def whole_wave_chunk(length: int, rows: int, chunk: int, slots: int) -> int:
    """The chunk for sequences of `length` positions in `rows` program rows (batch x
    groups x channel blocks) at which the output pass's programs fill one wave of `slots`
    (the device's resident programs), where `chunk` leaves more than one and at most
    _ONE_WAVE_MAX_WAVES: the shortest multiple of 16 positions whose programs fit, at
    least _MIN_CHUNK. Otherwise `chunk`. A program walks its chunk in turn, so a last
    wave of a few programs takes about as long as a full one."""
    programs = -(-length // chunk) * rows
    chunks_a_row = slots // rows
    if chunks_a_row < 1 or not slots < programs <= _ONE_WAVE_MAX_WAVES * slots:
        return chunk
    wave = -(-length // chunks_a_row)  # at most chunks_a_row chunks a row
    wave = -(-wave // _WAVE_CHUNK_MULTIPLE) * _WAVE_CHUNK_MULTIPLE
    return wave if _MIN_CHUNK <= wave < length else chunk


def aggregate_split(chunk: int, default: int, elements: int) -> int:
    """Aggregate chunks an output chunk: where `whole_wave_chunk` lengthened the chunk
    from `default` on a scan of at least _SPLIT_MIN_ELEMENTS (batch x dim x L), the
    aggregates keep about the default's length, the largest chunk of at most `default`
    positions that divides `chunk` into whole 16-position vectors (1 if none of at least
    _MIN_CHUNK does)."""
    if chunk <= default or elements < _SPLIT_MIN_ELEMENTS:
        return 1
    for split in range(-(-chunk // default), chunk // _MIN_CHUNK + 1):
        if chunk % (split * _WAVE_CHUNK_MULTIPLE) == 0:
            return split
    return 1


def _default_ti(dtype: torch.dtype) -> int:
    """Positions a load of the output pass and the adjoint aggregate: 8 (32 bytes a
    channel in fp32, whose blocks then reach h's layout by shuffles instead of shared
    memory and barriers). Session 25 (`passes_call7.log` of scripts/results/
    kernel_h200_2026-12-01_s25/, GPU time, fp32, 4 -> 8 positions): output pass (2, 64,
    262144) 0.527 -> 0.373 ms, kept states 0.544 -> 0.408; (8, 128, 16384) 0.269 ->
    0.186; adjoint aggregate (1, 48, 2097152) 1.310 -> 1.059 (0.284 -> 0.290 on (2, 64,
    262144)). bf16 keeps 8 (16 bytes): 4 was slower in every pass. The forward aggregate
    keeps 16 bytes (fp32 at 8: 0.230 -> 0.248 ms). (Until session 28, fp32 kept states
    stored under a channel mask took 4: the mask tile pushed the kernel to 197 registers;
    the kernel now repeats a group's last channel instead of masking.)"""
    return 8


def _default_vec(dtype: torch.dtype) -> int:
    """Positions a lane of the output pass loads at once: 4, i.e. a block's 8 positions over
    two lanes a channel. In bf16 this turns the block's layout conversions from shared
    memory and 48 barriers into shuffles (offline SASS for sm_90), as fp32's 8 positions
    get by themselves. Session 25 (`passes_bf16_vec_call10.log`, GPU time, bf16, 8 -> 4):
    output pass (2, 64, 262144) 0.378 -> 0.355 ms, kept states 0.399 -> 0.363; (8, 128,
    16384) 0.188 -> 0.179. The aggregates keep 16-byte loads (0.197 -> 0.219 ms with 4)."""
    return 4


def _default_bc(dtype: torch.dtype, keeps_states: bool) -> int:
    """Positions a B/C load: 2 for 2-byte inputs (a lane's 4 states read 2 positions at a
    time, half the load instructions, each 4 addresses a warp), 1 for fp32 and for an
    output pass that keeps states. Session 26 (`passes_call5_bc.log` of scripts/results/
    kernel_h200_2026-12-01_s26/, GPU time, bf16, 1 -> 2): aggregate (2, 64, 262144) 0.197
    -> 0.188 ms, (1, 48, 2097152) 0.712 -> 0.687; output pass 0.354 -> 0.334 and 1.267 ->
    1.191; adjoint aggregate 0.221 -> 0.207 and 0.830 -> 0.792; output with kept states
    (2, 64, 262144) 0.364 -> 0.367 and (8, 128, 16384) 0.183 -> 0.190. fp32 was no faster
    with 2 or 4 in any pass (4: the output pass 0.403 -> 0.469). Session 27 (gated by
    `bc_tiles`, `passes_call1_bc.log` of kernel_h200_2026-12-02_s27/) measured the same."""
    if dtype.itemsize != 2 or keeps_states:
        return 1
    return 2


def bc_tiles(bc: int, n_state: int, block_d: int, num_warps: int) -> tuple[int, int]:
    """(BC_TI, G) of one launch: positions a B/C load and the state groups of its (G,
    BLOCK_D, NP // G, BC_TI) tiles (4 states a lane, as triton 3.6 lays h out). Several
    positions a load only where G x BLOCK_D fills the program's lanes: on smaller tiles
    (channel groups of 2: BLOCK_D = 2, G = 4) triton 3.6 lays the tile out with a linear
    layout whose state axis sits on lane bits 0, 1, 3 and 4 and sums C_i * h over the
    wrong lanes (session 26, emulated PTX of b8c6a40's GPU test failures)."""
    groups = max(1, _next_pow2(n_state) // 4)
    if groups * block_d < 32 * num_warps:
        return 1, groups
    return bc, groups


def unmasked_blocks(dtype: torch.dtype, even_d: bool, forward_aggregate: bool) -> bool:
    """Whether a launch drops the position masks of the blocks inside the sequence: where
    the channel blocks are whole, in every pass for 2-byte inputs and in the forward
    aggregate for fp32. Measured per pass (session 30, `passes_variants.log` of
    scripts/results/kernel_h200_2026-12-02_s30/, GPU time, ms, masked -> unmasked, both
    with the constant channel mask): bf16 output pass (2, 64, 262144) 0.329 -> 0.321, with
    kept states 0.363 -> 0.357, (8, 128, 16384) 0.163 -> 0.159, aggregates level; fp32
    forward aggregate 0.231 -> 0.225 and 0.120 -> 0.117, but its output pass 0.365 ->
    0.388 and adjoint aggregate 0.251 -> 0.259; partial channel blocks slower in either
    dtype ((1, 48, 2097152) bf16 output pass 1.136 -> 1.153)."""
    return even_d and (dtype.itemsize == 2 or forward_aggregate)


def check_sub_states(shape: tuple[int, ...], sub_chunk: int,
                     problem: tuple[int, int, int, int], ti: int) -> None:
    """Raise unless `shape` is that of the kept states of a (batch, dim, L, N) problem at
    sub-chunks of `sub_chunk` positions: (batch, dim, cdiv(L, sub_chunk), N), sub_chunk a
    power of two and a multiple of the plan's positions a load `ti`."""
    _check_power_of_two("sub_chunk", sub_chunk)
    batch, dim, length, n_state = problem
    want = (batch, dim, -(-length // sub_chunk), n_state)
    if shape != want or sub_chunk % ti:
        raise ValueError(f"sub_states: expected {want} for sub-chunks of {sub_chunk} "
                         f"(a multiple of {ti}), got {shape}")
