"""What the arithmetic alone costs: a measured lower bound on each pass of the chunked scan.

Issue 4 asks for 40% of the byte floor on rows 1, 5 and 6 and for 5x mamba_ssm's
training call on row 1. Our scan is chunked: the forward takes an aggregate pass (each
chunk's end state from zero) and an output pass (each chunk again from its true entering
state); a training call adds the adjoint's aggregate pass and the backward's main pass.
Each pass computes every state element's decay 2**(dt A log2 e) and a handful of
multiply-adds. This script times, on the GPU, Triton kernels that do exactly one pass's
arithmetic a state element and nothing else: operands in registers, no load in the loop,
no communication between lanes (a thread holds one channel's states and walks its
positions in order, as the "serial" passes do). Their time a state element is what a
kernel of this formulation pays at the least, on this GPU and compiler, before it reads a
byte:

    aggregate  x = dt A; a = 2**x; v = dtu B; h = a h + v              3 FP + 1 exp
    output     the aggregate's, then y += sum_n C h                    4 FP + 1 exp
    backward   a; v; h = a h + v; c = dy C; g = a g + c; dC += dy h;
               dB += g dtu; du += sum_n g B; w = g (h - v);
               ddt += sum_n A w; dA += dt w                            12 FP + 1 exp

(the adjoint's aggregate is the aggregate's arithmetic with dy C in place of dtu B). An
exponential runs on the special-function unit (MUFU, 16 a clock an SM on sm_90) or, at
EMULATED of every 4 positions, on the FMA pipe: 2**x = 2**j 2**f, j by the 1.5 * 2**23
shift, f in [-0.5, 0.5] by a polynomial of DEGREE 3 or 5 fitted here. The sums over
states run as Triton's trees or ("lazy") as one multiply-add an element into per-state
accumulators, the count of a chain of multiply-adds a position.

Each pass is compiled in several launch shapes and exponent splits and gives two numbers
a state element: its time, measured over whole waves, and its time at the hardware's
peak rates from its compiled loop (`peak_clocks`: a partition issues one instruction a
clock, MUFU takes 8 clocks a warp instruction, at the highest SM clock). The lowest of
each over the launches, summed over a forward's or a training call's passes, is printed
against the targets' times. The peak figure is the bound: it counts only the operations
each state element needs, issued at the hardware's peak rates.

    python scripts/bench_arith_bound.py            # on the GPU machine
    python scripts/bench_arith_bound.py --quick    # fewer launch shapes
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys

import numpy as np
import torch
import triton
import triton.language as tl

STATES = 16  # N of DESIGN.md 7
PASSES = ("aggregate", "output", "backward")
PARTITIONS = 4  # scheduler partitions an SM, each issuing one warp instruction a clock
MUFU_CLOCKS_PER_WARP = 8  # a partition's MUFU quarter: 4 lanes a clock (16 an SM, sm_90)
WAVES = 8  # whole waves a timed launch: no partial last wave, start-up amortised


@functools.lru_cache(maxsize=8)  # fitted once: a timed launch must not wait on the host
def exp2_coefficients(degree: int) -> tuple[float, ...]:
    """c0..c5 of a least-squares polynomial for 2**f on [-0.5, 0.5] (zeros past degree)."""
    nodes = 0.5 * np.cos(np.pi * (np.arange(64) + 0.5) / 64)  # Chebyshev nodes
    fit = np.polynomial.Polynomial.fit(nodes, np.exp2(nodes), degree, domain=[-0.5, 0.5])
    coefficients = [float(c) for c in fit.convert().coef]
    return tuple(coefficients + [0.0] * (6 - len(coefficients)))


@triton.jit
def _exp2_on_fma(x, c0, c1, c2, c3, c4, c5, DEGREE: tl.constexpr):
    # 2**x for x <= 0 without MUFU: round(x) lands in the shifted sum's low bits, the
    # fraction's power comes from the polynomial, and the integer goes into the exponent
    x = tl.maximum(x, -125.0)  # keeps 2**j p a normal number
    shifted = x + 12582912.0  # 1.5 * 2**23: round(x) lands in the low mantissa bits
    fraction = x - (shifted - 12582912.0)
    if DEGREE == 5:
        p = c5 * fraction + c4
        p = p * fraction + c3
        p = p * fraction + c2
    else:
        p = c3 * fraction + c2
    p = p * fraction + c1
    p = p * fraction + c0
    bits = p.to(tl.int32, bitcast=True) + (shifted.to(tl.int32, bitcast=True) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _decay(x, s, c0, c1, c2, c3, c4, c5, EMULATED: tl.constexpr, DEGREE: tl.constexpr):
    if s < EMULATED:
        a = _exp2_on_fma(x, c0, c1, c2, c3, c4, c5, DEGREE)
    else:
        a = tl.exp2(x)
    return a


@triton.jit
def _exp2_check_kernel(x_ptr, out_ptr, n, c0, c1, c2, c3, c4, c5, DEGREE: tl.constexpr,
                       BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets, mask=offsets < n, other=0.0)
    tl.store(out_ptr + offsets, _exp2_on_fma(x, c0, c1, c2, c3, c4, c5, DEGREE),
             mask=offsets < n)


@triton.jit
def _pass_operands(decay_ptr, drive_ptr, read_ptr, lane_ptr, STATES: tl.constexpr,
                   LANES: tl.constexpr):
    """A program's lanes, A log2(e), B and C as (STATES, 1) columns (one channel's states a
    thread once broadcast against the lanes), and each lane's dt and u."""
    lanes = tl.program_id(0) * LANES + tl.arange(0, LANES)
    states = tl.arange(0, STATES)
    A = tl.load(decay_ptr + states)[:, None]
    B = tl.load(drive_ptr + states)[:, None]
    C = tl.load(read_ptr + states)[:, None]
    dt = tl.load(lane_ptr + lanes)
    return lanes, A, B, C, dt, dt * 3.0 + 0.5


@triton.jit
def _forward_arith_kernel(decay_ptr, drive_ptr, read_ptr, lane_ptr, out_ptr, n_steps,
                          c0, c1, c2, c3, c4, c5, STATES: tl.constexpr, LANES: tl.constexpr,
                          OUTPUT: tl.constexpr, EMULATED: tl.constexpr, DEGREE: tl.constexpr,
                          LAZY_SUMS: tl.constexpr):
    lanes, A, B, C, dt, u = _pass_operands(decay_ptr, drive_ptr, read_ptr, lane_ptr, STATES,
                                           LANES)
    h = tl.zeros((STATES, LANES), tl.float32)
    y = tl.zeros((LANES,), tl.float32)
    y_by_state = tl.zeros((STATES, LANES), tl.float32)
    for _ in range(0, n_steps, 4):
        for s in tl.static_range(4):  # EMULATED of every 4 positions take the FMA pipe
            dt = dt + 1.0e-7  # a position's dt, shared by its states (loaded, in a scan)
            dtu = dt * u
            a = _decay(dt[None, :] * A, s, c0, c1, c2, c3, c4, c5, EMULATED, DEGREE)
            h = a * h + dtu[None, :] * B
            if OUTPUT:
                if LAZY_SUMS:
                    y_by_state += C * h
                else:
                    y += tl.sum(C * h, 0)
    tl.store(out_ptr + lanes, tl.sum(h, 0) + y + tl.sum(y_by_state, 0))


@triton.jit
def _backward_arith_kernel(decay_ptr, drive_ptr, read_ptr, lane_ptr, out_ptr, n_steps,
                           c0, c1, c2, c3, c4, c5, STATES: tl.constexpr, LANES: tl.constexpr,
                           EMULATED: tl.constexpr, DEGREE: tl.constexpr,
                           LAZY_SUMS: tl.constexpr):
    lanes, A, B, C, dt, u = _pass_operands(decay_ptr, drive_ptr, read_ptr, lane_ptr, STATES,
                                           LANES)
    h = tl.zeros((STATES, LANES), tl.float32)
    g = tl.zeros((STATES, LANES), tl.float32)
    dB = tl.zeros((STATES, LANES), tl.float32)
    dC = tl.zeros((STATES, LANES), tl.float32)
    dA = tl.zeros((STATES, LANES), tl.float32)
    du = tl.zeros((LANES,), tl.float32)
    ddt = tl.zeros((LANES,), tl.float32)
    du_by_state = tl.zeros((STATES, LANES), tl.float32)
    ddt_by_state = tl.zeros((STATES, LANES), tl.float32)
    for _ in range(0, n_steps, 4):
        for s in tl.static_range(4):
            dt = dt + 1.0e-7
            dtu = dt * u
            dy = dt * 0.25 - 1.0
            a = _decay(dt[None, :] * A, s, c0, c1, c2, c3, c4, c5, EMULATED, DEGREE)
            v = dtu[None, :] * B
            h = a * h + v
            g = a * g + dy[None, :] * C  # the adjoint's recurrence (walked the other way)
            dC += dy[None, :] * h
            dB += g * dtu[None, :]
            w = g * (h - v)
            if LAZY_SUMS:
                du_by_state += g * B
                ddt_by_state += A * w
            else:
                du += tl.sum(g * B, 0)
                ddt += tl.sum(A * w, 0)
            dA += dt[None, :] * w
    total = tl.sum(h + g + dB + dC + dA + du_by_state + ddt_by_state, 0) + du + ddt
    tl.store(out_ptr + lanes, total)


def pass_operands(device: str, lanes_total: int, seed: int = 0) -> dict:
    """Registers' starting values: decays of a few steps' memory, dt ~ 0.01-0.1."""
    gen = torch.Generator().manual_seed(seed)
    log2e = 1.4426950408889634
    operands = {
        "decay": -(torch.arange(1, STATES + 1, dtype=torch.float32) * 0.5) * log2e,
        "drive": torch.randn(STATES, generator=gen),
        "read": torch.randn(STATES, generator=gen),
        "lane": 0.01 + 0.09 * torch.rand(lanes_total, generator=gen),
    }
    return {name: t.to(device) for name, t in operands.items()}


def run_pass(name: str, operands: dict, n_steps: int, programs: int, num_warps: int,
             emulated: int = 0, degree: int = 5,
             lazy_sums: bool = False) -> tuple[torch.Tensor, object]:
    """One launch of a pass's kernel: its (programs * 32 * num_warps,) output and the
    compiled kernel."""
    if n_steps % 4:
        raise ValueError(f"n_steps must be a multiple of 4 (positions go 4 a loop), got {n_steps}")
    lanes = 32 * num_warps
    out = torch.full((programs * lanes,), float("nan"), device=operands["lane"].device)
    args = (operands["decay"], operands["drive"], operands["read"], operands["lane"], out,
            n_steps, *exp2_coefficients(degree))
    meta = dict(STATES=STATES, LANES=lanes, EMULATED=emulated, DEGREE=degree,
                LAZY_SUMS=lazy_sums, num_warps=num_warps)
    if name == "backward":
        compiled = _backward_arith_kernel[(programs,)](*args, **meta)
    else:
        compiled = _forward_arith_kernel[(programs,)](*args, OUTPUT=name == "output", **meta)
    return out, compiled


def exp2_error(degree: int, device: str, n: int = 1 << 16) -> float:
    """Largest relative error of the FMA-pipe 2**x against float64 over x in [-125, 0]."""
    x = -125.0 * torch.rand(n, generator=torch.Generator().manual_seed(1))
    out = torch.full_like(x, float("nan")).to(device)
    block = 1024
    _exp2_check_kernel[(triton.cdiv(n, block),)](x.to(device), out, n,
                                                 *exp2_coefficients(degree), DEGREE=degree,
                                                 BLOCK=block)
    truth = torch.exp2(x.double())
    return float(((out.cpu().double() - truth).abs() / truth).max())


def pass_bounds(ps_per_element: dict[str, float], state_elements: int) -> tuple[float, float]:
    """(forward ms, training-call ms) of the passes' arithmetic for a scan of that many
    state elements (batch * dim * L * N): aggregate + output, then + adjoint's aggregate
    + backward."""
    forward = ps_per_element["aggregate"] + ps_per_element["output"]
    training = forward + ps_per_element["aggregate"] + ps_per_element["backward"]
    return forward * state_elements * 1e-9, training * state_elements * 1e-9


def peak_clocks(loop_instructions: int, loop_mufu: int) -> float:
    """Clocks an SM needs a state element for a loop of 4 positions x STATES states a
    thread at the hardware's peak: a scheduler partition issues one warp instruction a
    clock and its MUFU quarter takes MUFU_CLOCKS_PER_WARP clocks a warp instruction
    (sm_90: 16 exponentials a clock an SM), whichever is longer; PARTITIONS partitions."""
    per_warp = max(loop_instructions, MUFU_CLOCKS_PER_WARP * loop_mufu)
    return per_warp / (4 * STATES * 32) / PARTITIONS


def loop_counts(compiled) -> dict[str, int]:
    """Registers, stack bytes and the position loop's instructions and MUFU instructions
    of a compiled pass (the kernel object a launch returns; needs Triton's nvdisasm)."""
    import kernel_sass_stats
    from study_serial_backward import loop_bodies

    counts, sass = kernel_sass_stats.stats(compiled)
    loop = max(loop_bodies(sass), key=len)
    return {"registers": counts["REG"], "stack": counts["STACK"], "instructions": len(loop),
            "mufu": kernel_sass_stats.opcode_counts("\n".join(loop))["MUFU"]}


def max_sm_clock_hz() -> float | None:
    """The GPU's highest SM clock (nvidia-smi), or None where nvidia-smi does not say."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm",
                              "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return float(out.split()[0]) * 1e6
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def pass_configs(name: str, quick: bool) -> list[tuple[int, int, int, bool]]:
    """(num_warps, positions of 4 on the FMA pipe, degree, lazy sums) to try for a pass.
    The passes of one exponential and 3-4 operations an element wait on MUFU, so shares
    of the exponentials move to the FMA pipe; the backward (12) waits on issue, where
    that only adds work (one split to show it)."""
    warps = [4] if quick else [1, 2, 4]
    splits = [(0, 5), (1, 3)] if name == "backward" else [(0, 5), (1, 5), (1, 3), (2, 3)]
    sums = [False] if name == "aggregate" else [False, True]
    return [(num_warps, emulated, degree, lazy) for num_warps in warps
            for emulated, degree in splits for lazy in sums]


def _whole_waves(name: str, config: tuple) -> tuple[int, int, object]:
    """(programs, positions) of a launch of WAVES whole waves (occupancy.py's rule on the
    compiled kernel) scanning about 2**31 state elements, and the compiled kernel."""
    import scan_bench_common  # noqa: F401  (medmamba_kernels importable from the tree)
    from medmamba_kernels.selective_scan.occupancy import device_slots

    lanes = 32 * config[0]
    compiled = run_pass(name, pass_operands("cuda", lanes), 4, 1, *config)[1]
    programs = WAVES * device_slots(compiled, torch.cuda.get_device_properties(0))
    n_steps = max(4, (1 << 31) // (programs * lanes * STATES) // 4 * 4)
    return programs, n_steps, compiled


def measure(quick: bool, clock_hz: float | None) -> dict[str, dict[str, tuple]]:
    """Per pass, the fastest measured ps a state element and the lowest peak-rate ps
    (None without a clock), each with the label of its launch."""
    from triton.testing import do_bench

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    best: dict[str, dict[str, tuple]] = {name: {} for name in PASSES}
    for name in PASSES:
        for config in pass_configs(name, quick):
            num_warps, emulated, degree, lazy = config
            programs, n_steps, compiled = _whole_waves(name, config)
            operands = pass_operands("cuda", programs * 32 * num_warps)
            ms = do_bench(lambda: run_pass(name, operands, n_steps, programs, *config),
                          return_mode="median")
            measured = ms * 1e9 / (programs * 32 * num_warps * STATES * n_steps)
            loop = loop_counts(compiled)
            if loop["mufu"] != (4 - emulated) * STATES:  # one channel's states a thread
                print(f"  {name}: {loop['mufu']} MUFU in the loop, not {(4 - emulated) * STATES}"
                      ": the layout is not the one assumed", file=sys.stderr)
            peak = (peak_clocks(loop["instructions"], loop["mufu"]) / (sms * clock_hz) * 1e12
                    if clock_hz else None)
            label = (f"{num_warps} warps x {programs // sms // WAVES} an SM, "
                     f"{loop['registers']} reg, {loop['stack']} B stack, loop "
                     f"{loop['instructions']} ({loop['mufu']} MUFU), {emulated}/4 on FMA "
                     f"(deg {degree}){', lazy sums' if lazy else ''}")
            print(f"  {name:<10}{label:<86}{measured:7.3f}{peak or float('nan'):7.3f}",
                  flush=True)
            for kind, value in (("measured", measured), ("peak", peak)):
                if value is not None and (kind not in best[name] or value < best[name][kind][0]):
                    best[name][kind] = (value, label)
    return best


def _print_bounds(best: dict, bw: float) -> None:
    from bench_selective_scan import floors
    from scan_bench_common import ANCHORS

    kinds = [kind for kind in ("peak", "measured") if all(kind in b for b in best.values())]
    print(f"\ncopy bandwidth {bw / 1e12:.2f} TB/s; ms of the passes' arithmetic alone "
          f"({' / '.join(kinds)}) against the targets:")
    print(f"{'batch, dim, L':<18}{'dtype':<10}{'fwd':>16}{'40% fwd':>9}{'f+b':>16}"
          f"{'40% f+b':>9}{'5x f+b':>8}")
    for row in (1, 5, 6):
        shape = list(ANCHORS)[row - 1]
        elements = shape[0] * shape[1] * shape[2] * STATES
        bounds = [pass_bounds({n: best[n][kind][0] for n in PASSES}, elements) for kind in kinds]
        fwd = " / ".join(f"{b[0]:.3f}" for b in bounds)
        fb = " / ".join(f"{b[1]:.3f}" for b in bounds)
        for dtype, anchor_fb in ((torch.float32, ANCHORS[shape][1]),
                                 (torch.bfloat16, ANCHORS[shape][3])):
            floor_fwd, floor_fb = floors(*shape, dtype, bw)
            five = f"{anchor_fb / 5:8.3f}" if row in (1, 6) else f"{'':>8}"
            print(f"{', '.join(map(str, shape)):<18}{str(dtype)[6:]:<10}{fwd:>16}"
                  f"{floor_fwd / 0.4:9.3f}{fb:>16}{floor_fb / 0.4:9.3f}{five}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer launch shapes")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_arith_bound.py: needs a CUDA GPU (the device machine)", file=sys.stderr)
        return 2
    from bench_selective_scan import copy_bandwidth

    for degree in (3, 5):
        print(f"2**x on the FMA pipe, degree {degree}: max relative error "
              f"{exp2_error(degree, 'cuda'):.2e}")
    clock_hz = max_sm_clock_hz()
    print(f"highest SM clock {clock_hz / 1e9:.3f} GHz" if clock_hz else
          "no SM clock from nvidia-smi: measured times only")
    print(f"ps a state element, by launch ({WAVES} whole waves): measured, at peak rates")
    best = measure(args.quick, clock_hz)
    print("\nfastest per pass:")
    for name in PASSES:
        for kind, (value, label) in best[name].items():
            print(f"  {name:<10}{kind:<10}{value:7.3f} ps  {label}")
    _print_bounds(best, copy_bandwidth())
    return 0


if __name__ == "__main__":
    sys.exit(main())
