"""Where a short training call's host time goes, and short scans by chunk and boundary states
(GPU machine).

    python scripts/profile_backward_thread.py                # phases
    python scripts/profile_backward_thread.py --part phases  # or: chunks, boundary, forward

phases: a training call of the public `selective_scan` (`.backward(dout)`, the leaves'
.grad reset, as do_bench's grad_to_none) on bench rows 3 and 4, timed by clock stamps:
the forward, the hand-off to the autograd engine's device thread (`.backward` called ->
our backward entered), our backward's body (of it, the host function), the way back
(left -> `.backward` returns: the leaves' AccumulateGrad and the engine's return).
Medians over calls, host us, no synchronisation (the GPU keeps up on these rows). Then
the same with the engine on the calling thread (`set_multithreading_enabled(False)`).

chunks: the backward host function alone on short sequences by its chunk (the default
64, or the whole sequence in one chunk: no boundary-state launches), GPU time (CUDA
graph replay) and do_bench, and its results against the default's.

boundary: the same by how the chunk-boundary states are found, "tile" (an aggregate
launch and a carry launch) against "carried" (one launch walking each row's chunks).

forward: the same for the forward host function on multi-chunk rows that do not run
"serial" (chunks of 128): "chunked" by boundary states, and in fp32 "deferred" (the
default there), GPU time, do_bench and the output's difference from the first setting's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from triton.testing import do_bench, do_bench_cudagraph

from scan_bench_common import ANCHORS, bwd, fwd, make_inputs, public_row_calls, rel

SHORT_SHAPES = [(2, 512, 512), (2, 768, 384), (4, 384, 343), (8, 512, 256),
                (2, 1024, 128), (16, 256, 200)]


class _Stamps:
    """Clock stamps of one call, written by the main thread and the backward."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []

    def new(self) -> list[int]:
        self.rows.append([0] * 7)
        return self.rows[-1]


def _instrument(stamps: _Stamps):
    """Wrap the eager Function's backward and the backward host function with stamps;
    returns an undo."""
    from medmamba_kernels.selective_scan import interface

    cls = interface._EagerTritonScan
    original_backward = cls.backward
    original_hosts = interface._triton_host_functions

    def backward(ctx, dout, dlast):
        row = stamps.rows[-1]
        row[2] = time.perf_counter_ns()
        result = original_backward(ctx, dout, dlast)
        row[5] = time.perf_counter_ns()
        return result

    fwd_fn, bwd_fn = original_hosts()

    def timed_bwd(*args, **kwargs):
        row = stamps.rows[-1]
        row[3] = time.perf_counter_ns()
        result = bwd_fn(*args, **kwargs)
        row[4] = time.perf_counter_ns()
        return result

    cls.backward = staticmethod(backward)
    interface._triton_host_functions = lambda: (fwd_fn, timed_bwd)

    def undo():
        cls.backward = staticmethod(original_backward)
        interface._triton_host_functions = original_hosts

    return undo


def phases(shape, dtype, calls: int = 300) -> str:
    from medmamba_kernels.selective_scan.interface import selective_scan
    from scan_bench_common import training_inputs

    _, leaves, flags, dout = training_inputs(shape, dtype)
    stamps = _Stamps()
    undo = _instrument(stamps)
    lines = []
    try:
        for label, threaded in (("engine thread", True), ("calling thread", False)):
            with torch.autograd.set_multithreading_enabled(threaded):
                for _ in range(calls + 20):
                    for leaf in leaves.values():
                        leaf.grad = None
                    row = stamps.new()
                    row[0] = time.perf_counter_ns()
                    out = selective_scan(**leaves, **flags)
                    row[1] = time.perf_counter_ns()
                    out.backward(dout)
                    row[6] = time.perf_counter_ns()
                    if len(stamps.rows) % 50 == 0:
                        torch.cuda.synchronize()  # the queue stays short
            rows = stamps.rows[-calls:]
            stamps.rows.clear()

            def med(a, b):
                return statistics.median((r[b] - r[a]) / 1e3 for r in rows)

            lines.append(f"  {label:<15} total {med(0, 6):6.1f}  forward {med(0, 1):6.1f}  "
                         f"hand-off {med(1, 2):6.1f}  backward {med(2, 5):6.1f} (host fn "
                         f"{med(3, 4):6.1f}, around it {med(2, 3) + med(4, 5):5.1f})  "
                         f"back {med(5, 6):6.1f}")
    finally:
        undo()
    return "\n".join(lines)


class _Floor(torch.autograd.Function):
    """The engine's part alone: the scan's inputs and outputs, its allocations (out and
    the last state forward, the eight gradients backward), no launch, no Python."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        last_state = u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)
        ctx.mark_non_differentiable(last_state)
        ctx.set_materialize_grads(False)
        return torch.empty_like(u), last_state

    @staticmethod
    def backward(ctx, dout, _dlast):
        return (*[torch.empty_like(t) for t in ctx.saved_tensors], None, None)


def floor(shape, dtype, calls: int = 300) -> str:
    """Host us of the same training call through `_Floor` (engine thread)."""
    from scan_bench_common import training_inputs

    _, leaves, flags, dout = training_inputs(shape, dtype)
    times = []
    for i in range(calls + 20):
        for leaf in leaves.values():
            leaf.grad = None
        start = time.perf_counter_ns()
        out, _ = _Floor.apply(*leaves.values(), *flags.values())
        middle = time.perf_counter_ns()
        out.backward(dout)
        times.append(((middle - start) / 1e3, (time.perf_counter_ns() - middle) / 1e3))
    times = times[-calls:]
    return (f"  floor (engine)  total {statistics.median(a + b for a, b in times):6.1f}  "
            f"forward {statistics.median(a for a, _ in times):6.1f}  backward call "
            f"{statistics.median(b for _, b in times):6.1f}")


def replay_parts(shape, dtype, calls: int = 200) -> str:
    """Host us of the replayed backward host function on the calling thread: whole, with
    its launches dropped (signature and allocations), and one of its launches alone."""
    from medmamba_kernels.selective_scan import triton_bwd

    x = make_inputs(*shape, dtype)
    _, _, states = fwd(**x, keep_states=True)
    dout = torch.randn_like(x["u"])

    def run():
        bwd(dout, **x, states=states)

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    whole = host_us(run, calls)
    replays = [r for r in triton_bwd.selective_scan_bwd_triton.records.values() if r]
    saved = [r.launches for r in replays]
    for r in replays:
        r.launches = []
    try:
        no_launch = host_us(run, calls)
    finally:
        for r, launches in zip(replays, saved):
            r.launches = launches
    count = max(len(launches) for launches in saved)
    return (f"  bwd host fn replayed {whole:6.1f} us: {count} launches; without them "
            f"{no_launch:6.1f} (launches {(whole - no_launch) / count:5.1f} us each)")


def host_us(fn, calls: int) -> float:
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter_ns() - start) / calls / 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def _cells(settings: list, call, difference) -> str:
    """Each (label, options) of `settings`: `call(**options)`'s GPU time (CUDA graph
    replay), do_bench, and `difference` of its result from the first setting's."""
    base = call(**settings[0][1])
    cells = []
    for label, options in settings:
        def run(options=options):
            return call(**options)
        err = difference(run(), base)
        graph = do_bench_cudagraph(run, rep=30, return_mode="median") * 1e3
        bench = do_bench(run, warmup=10, rep=40, return_mode="median") * 1e3
        cells.append(f"{label}: graph {graph:6.1f} bench {bench:6.1f} (err {err:.0e})")
    return "  " + "  ".join(cells)


def backward_by(shape, dtype, name: str, values: list) -> str:
    """The backward host function with its keyword `name` at each of `values`, and the
    largest relative difference of its gradients from the first value's (`_cells`)."""
    x = make_inputs(*shape, dtype)
    dout = torch.randn_like(x["u"])
    return _cells([(f"{name} {value}", {name: value}) for value in values],
                  lambda **options: bwd(dout, **x, **options),
                  lambda got, base: max(rel(g, r) for g, r in zip(got, base) if g is not None))


def chunks(shape, dtype) -> str:
    """By chunk: the default 64, up to one chunk of the whole sequence."""
    whole = max(16, 1 << (shape[2] - 1).bit_length())
    return backward_by(shape, dtype, "chunk", [c for c in (64, 128, 256, 512) if c < whole]
                       + [whole])


BOUNDARY_SHAPES = [(2, 512, 512), (2, 768, 384), (8, 512, 256), (2, 1024, 128),
                   (2, 512, 1024), (4, 256, 1024), (2, 256, 2048), (1, 48, 1024)]


def boundaries(shape, dtype) -> str:
    return backward_by(shape, dtype, "boundary", ["tile", "carried"])


FORWARD_SHAPES = [(2, 512, 640), (2, 512, 1024), (8, 512, 1024), (4, 384, 768),
                  (2, 384, 1536), (2, 256, 2048), (2, 128, 1024), (1, 64, 1024)]


def forward_by(shape, dtype) -> str:
    """The forward host function at each setting, and the relative difference of its
    output from the first setting's (`_cells`)."""
    x = make_inputs(*shape, dtype)
    settings = [("tile", dict(variant="chunked", boundary="tile")),
                ("carried", dict(variant="chunked", boundary="carried"))]
    if dtype == torch.float32:
        settings.append(("deferred", dict(variant="deferred")))
    return _cells(settings, lambda **options: fwd(**x, **options),
                  lambda got, base: rel(got[0], base[0]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["phases", "chunks", "boundary", "forward"], default="phases")
    p.add_argument("--rounds", type=int, default=1, help="phases: rounds over the rows")
    p.add_argument("--rows", default="3,4")
    args = p.parse_args()
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}")
    shapes = list(ANCHORS)
    dtypes = (torch.float32, torch.bfloat16)
    if args.part == "phases":
        print("host us of a public training call, medians (phases)")
        for round_ in range(args.rounds):
            for row in (int(r) for r in args.rows.split(",")):
                for dtype in dtypes:
                    shape = shapes[row - 1]
                    for _ in range(3):  # compile, record the replays
                        public_row_calls(shape, dtype)[1]()
                    print(f"row {row} {str(dtype)[6:]} (round {round_ + 1})")
                    print(phases(shape, dtype))
                    print(floor(shape, dtype))
                    print(replay_parts(shape, dtype))
    by_shape = {  # part: (what is timed, shapes, the line's cells)
        "boundary": ("backward host function by boundary states", BOUNDARY_SHAPES,
                     boundaries),
        "forward": ("forward host function by boundary states (chunked) and variant",
                    FORWARD_SHAPES, forward_by),
        "chunks": ("backward host function by chunk", SHORT_SHAPES, chunks),
    }
    if args.part in by_shape:
        title, part_shapes, cells = by_shape[args.part]
        print(f"{title}, us (graph: GPU time; bench: do_bench)")
        for shape in part_shapes:
            for dtype in dtypes:
                print(f"{str(shape):<18} {str(dtype)[6:]:<9}" + cells(shape, dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
