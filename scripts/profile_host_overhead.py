"""Where the host time of a selective-scan call goes (GPU machine; rows that are host-bound).

    python scripts/profile_host_overhead.py            # rows 3 and 4, fp32 and bf16
    python scripts/profile_host_overhead.py --top 30
    python scripts/profile_host_overhead.py --public    # through the public selective_scan
    python scripts/profile_host_overhead.py --inference # the public inference call, taken apart

Prints the host microseconds of one Triton launch (an empty kernel with 5 and with 45
arguments: the launcher's own cost), then per row and dtype the host time of one forward
and one forward+backward call, and a cProfile of those calls (functions by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys

import torch
import triton
import triton.language as tl

from scan_bench_common import (ANCHORS, fwd, host_ms, package_launchers, public_row_calls,
                               row_calls, set_replays, training_inputs)


@triton.jit
def _empty5(a, b, c, n, m):
    pass


@triton.jit
def _empty45(p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10,
             i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13, i14, i15, i16,
             i17, i18, i19, i20, i21, i22, i23, i24, i25, i26, i27,
             K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
             K4: tl.constexpr, K5: tl.constexpr, K6: tl.constexpr):
    pass


def host_us(fn, calls: int = 100, trials: int = 7) -> float:
    """Median over trials of the host microseconds a call (scan_bench_common.host_ms)."""
    return host_ms(fn, calls, trials) * 1e3


def launcher_cost() -> None:
    """The launcher's parts for an empty kernel: the JIT call (binding, specialisation,
    cache key, launch), the compiled kernel's own runner (launch alone), the raw launch
    function with the stream looked up once."""
    t = torch.empty(16, device="cuda")
    ints = [4096 * (i + 1) for i in range(28)]
    consts = dict(K0=16, K1=16, K2=64, K3=1, K4=1, K5=0, K6=0)
    args = [*([t] * 11), *ints]
    few = host_us(lambda: _empty5[(64,)](t, t, t, 4096, 512))
    many = host_us(lambda: _empty45[(64,)](*args, **consts))
    compiled = _empty45.warmup(*args, grid=(64,), **consts)
    full = [*args, *consts.values()]
    runner = compiled[(64, 1, 1)]
    run_only = host_us(lambda: runner(*full))
    stream = torch.cuda.current_stream().cuda_stream
    raw = host_us(lambda: compiled.run(64, 1, 1, stream, compiled.function,
                                       compiled.packed_metadata, None, None, None, *full))
    ptrs = [t.data_ptr()] * 11
    raw_ints = host_us(lambda: compiled.run(64, 1, 1, stream, compiled.function,
                                            compiled.packed_metadata, None, None, None,
                                            *ptrs, *ints, *consts.values()))
    from medmamba_kernels.selective_scan.launch import CachedLaunch

    cached_launch = CachedLaunch(_empty45)
    cached = host_us(lambda: cached_launch[(64,)](*args, **consts))
    alloc = host_us(lambda: torch.empty(2, 256, 4096, device="cuda"))
    print(f"launch, 5 args {few:.1f} us; 45 args {many:.1f} us; compiled runner {run_only:.1f}"
          f" us; raw run {raw:.1f} us; raw run, pointers as ints {raw_ints:.1f} us; "
          f"CachedLaunch {cached:.1f} us; torch.empty {alloc:.1f} us")


def stubbed_us(*fns) -> list[float]:
    """Host us a call of each fn with every cached launch replaced by a no-op (after a
    first real call: everything compiled and cached): what the host functions cost besides
    their launches (Python, allocations, torch ops). Both of CachedLaunch's caches are
    stubbed: a keyed launch calls its cached runner without `_launch`. Replays (replay.py)
    are off: they launch without CachedLaunch."""
    from medmamba_kernels.selective_scan.launch import CachedLaunch

    for fn in fns:
        fn()
    torch.cuda.synchronize()

    def no_launch(args, addresses, tail):
        return None

    set_replays(False)
    launchers = package_launchers()
    saved = [(launcher._runners, launcher._keyed) for launcher in launchers]
    real = CachedLaunch._launch
    CachedLaunch._launch = lambda self, grid, args, kwargs: None
    for launcher in launchers:
        launcher._runners = {key: (no_launch, tail)
                             for key, (_, tail) in launcher._runners.items()}
        launcher._keyed = {key: (no_launch, tail, scalars)
                           for key, (_, tail, scalars) in launcher._keyed.items()}
    try:
        return [host_us(fn) for fn in fns]
    finally:
        CachedLaunch._launch = real
        for launcher, (runners, keyed) in zip(launchers, saved):
            launcher._runners, launcher._keyed = runners, keyed
        set_replays(True)


def profile(fn, top: int, calls: int = 100) -> str:
    fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def kernel_times(run_fwd, run_fwd_bwd, calls: int = 20, names=("fwd", "f+b")) -> str:
    """GPU microseconds a call, kernel by kernel (torch.profiler), forward and f+b, with
    the span a call takes on the GPU and its idle part (meaningful where the GPU, not the
    host, is the bottleneck; a kernel launched with PDL would count its wait as busy)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    lines = []
    for name, fn in zip(names, (run_fwd, run_fwd_bwd)):
        fn()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        starts, ends = [], []
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                totals[event.name] = totals.get(event.name, 0.0) + event.device_time / calls
                starts.append(event.time_range.start)
                ends.append(event.time_range.end)
        # the calls queue back to back where the GPU is the bottleneck: the span a call
        # less its kernels' sum is the GPU's idle time between kernels (launch gaps)
        span = (max(ends) - min(starts)) / calls if starts else 0.0
        busy = sum(totals.values())
        lines.append(f"  {name}: " + ", ".join(f"{k[:40]} {v:.1f}" for k, v in
                                                sorted(totals.items(), key=lambda kv: -kv[1]))
                     + f"  (sum {busy:.1f} us; span {span:.1f}, idle {span - busy:.1f})")
    return "\n".join(lines)


def public_calls(shape, dtype):
    """(run_fwd, run_fwd_bwd) through the public `selective_scan` (scan_bench_common)."""
    return public_row_calls(shape, dtype)[:2]


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        return u.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


def _function_call(leaves: dict, flags: dict, dout: torch.Tensor, reset: bool):
    """A training call through the eager autograd Function and its backward; `reset`
    drops the leaves' .grad first (no accumulation)."""
    from medmamba_kernels.selective_scan import interface

    def run():
        if reset:
            for leaf in leaves.values():
                leaf.grad = None
        # last_state not asked for, as the public training call the bench times
        out, _ = interface._EagerTritonScan.apply(*leaves.values(), *flags.values(), False)
        torch.autograd.backward(out, dout)

    return run


def autograd_costs(shape, dtype) -> str:
    """Host us a call (launches queued, no synchronisation) of a training step's pieces,
    to tell the autograd engine's cost from ours: the host functions' forward+backward;
    the Function's forward alone; the same with its backward, the leaves' .grad reset (no
    accumulation) and kept (accumulated), and reset with the engine on the calling thread
    (no device thread); the public call; and a trivial Function (a clone) with its
    backward: the engine alone."""
    from medmamba_kernels.selective_scan import interface

    _, leaves, flags, dout = training_inputs(shape, dtype)
    u = leaves["u"]
    reset = _function_call(leaves, flags, dout, True)

    def one_thread():
        with torch.autograd.set_multithreading_enabled(False):
            reset()

    parts = (("host functions", row_calls(shape, dtype)[1]),
             ("Function fwd", lambda: interface._EagerTritonScan.apply(
                 *leaves.values(), *flags.values(), False)),
             ("Function, .grad reset", reset),
             ("Function, accumulated", _function_call(leaves, flags, dout, False)),
             ("Function, one thread", one_thread),
             ("public", public_calls(shape, dtype)[1]),
             ("clone Function", lambda: _Identity.apply(u).backward(dout)))
    return "  ".join(f"{name} {host_us(fn):.1f}" for name, fn in parts)


def autograd_trace(shape, dtype, calls: int = 20) -> str:
    """torch.profiler's table of training calls through the autograd Function (the
    leaves' .grad reset first): CPU ops and CUDA runtime calls by own time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    _, leaves, flags, dout = training_inputs(shape, dtype)
    run = _function_call(leaves, flags, dout, True)  # as do_bench times it: .grad reset
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)


def _described(host_function, key, replay) -> str:
    """A recorded signature's replay (allocations, scratch bytes, launches), or why the
    signature is not replayable."""
    if replay is None:
        return f"not replayed: {host_function.unreplayable.get(key, '?')}"
    return (f"replayed: {len(replay.allocations)} allocations, {replay.scratch_bytes} "
            f"scratch bytes, {len(replay.launches)} launches")


def replay_state(host_function) -> str:
    """The replay of the one signature `host_function` has seen (`_described`)."""
    if len(host_function.records) != 1:
        return f"{len(host_function.records)} signatures recorded (expected 1)"
    return _described(host_function, *next(iter(host_function.records.items())))


def replay_states() -> str:
    """Every signature the forward and backward host functions have seen recorded."""
    from medmamba_kernels.selective_scan import triton_bwd

    return "\n".join(f"  {name}: " + _described(host, key, replay)
                     for name, host in (("fwd", fwd),
                                        ("bwd", triton_bwd.selective_scan_bwd_triton))
                     for key, replay in host.records.items())


class _NoShortcuts:
    """inference_shortcut.InferenceShortcuts that never shortcuts: every call the long
    way (and a stubbed host function is not asked for its replay)."""

    def run(self, tensors, flags):
        return None

    def learn(self, *args):
        return None


def inference_breakdown(shape, dtype, top: int) -> str:
    """The public inference call's host time taken apart: the call (its shortcut taken,
    inference_shortcut.py); the long way (shortcut off); the forward host function alone
    (replayed); the long way's public layers alone (host function stubbed: it returns
    ready outputs); the replay's state; the kernels' GPU time; a profile of the call."""
    from medmamba_kernels.selective_scan import interface

    run_public = public_row_calls(shape, dtype)[0]
    x, _, flags, _ = training_inputs(shape, dtype)
    fwd.forget()
    for _ in range(4):
        run_public()
    state = replay_state(fwd)
    outputs = fwd(**x, **flags)

    def run_host():
        fwd(**x, **flags)

    public, host = host_us(run_public), host_us(run_host)
    real_host_functions, shortcuts = interface._triton_host_functions, interface._SHORTCUTS
    interface._SHORTCUTS = _NoShortcuts()
    try:
        long_way = host_us(run_public)
        interface._triton_host_functions = lambda: (lambda *args, **options: outputs, None)
        layers = host_us(run_public)
    finally:
        interface._triton_host_functions, interface._SHORTCUTS = real_host_functions, shortcuts
    lines = [f"public {public:.1f} us (long way {long_way:.1f} = host function {host:.1f} "
             f"+ public layers {layers:.1f}); {state}",
             kernel_times(run_public, run_host, names=("public", "host"))]
    if top:
        lines.append(profile(run_public, top))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="3,4", help="bench rows (1-6), comma-separated")
    p.add_argument("--top", type=int, default=18, help="functions a profile (0: none)")
    p.add_argument("--launcher-only", action="store_true")
    p.add_argument("--public", action="store_true",
                   help="profile the public selective_scan (eager autograd) instead")
    p.add_argument("--inference", action="store_true",
                   help="the public inference call taken apart (inference_breakdown) only")
    p.add_argument("--autograd", action="store_true",
                   help="host us of a training call's pieces (autograd_costs) only")
    args = p.parse_args()
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"triton {triton.__version__}")
    launcher_cost()
    if args.launcher_only:
        return 0
    shapes = list(ANCHORS)
    for row in (int(r) for r in args.rows.split(",")):
        for dtype in (torch.float32, torch.bfloat16):
            if args.inference:
                print(f"\n== row {row} {str(dtype)[6:]} inference: "
                      + inference_breakdown(shapes[row - 1], dtype, args.top))
                continue
            if args.autograd:
                from medmamba_kernels.selective_scan import triton_bwd

                fwd.forget()  # replay_states then lists this row's signatures
                triton_bwd.selective_scan_bwd_triton.forget()
                print(f"row {row} {str(dtype)[6:]}, host us a call: "
                      + autograd_costs(shapes[row - 1], dtype))
                print(replay_states())
                if args.top:
                    print(autograd_trace(shapes[row - 1], dtype))
                continue
            run_fwd, run_fwd_bwd = (public_calls if args.public else row_calls)(
                shapes[row - 1], dtype)
            replayed = [host_us(run_fwd), host_us(run_fwd_bwd)]
            set_replays(False)
            own = [host_us(run_fwd), host_us(run_fwd_bwd)]
            set_replays(True)
            print(f"\n== row {row} {str(dtype)[6:]}: host fwd {replayed[0]:.1f} us, "
                  f"f+b {replayed[1]:.1f} us; replays off {own[0]:.1f} {own[1]:.1f} us; "
                  "launches stubbed (replays off): "
                  f"{' '.join(f'{t:.1f}' for t in stubbed_us(run_fwd, run_fwd_bwd))} us")
            print(kernel_times(run_fwd, run_fwd_bwd))
            if args.top:
                print(profile(run_fwd_bwd, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
