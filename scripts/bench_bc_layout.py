"""B and C state-major against position-major: what their memory layout costs the scan
(GPU machine).

    python scripts/bench_bc_layout.py                   # bench rows 1, 2, 3, 5, 6
    python scripts/bench_bc_layout.py --rows 1 5

B and C are (batch, [G,] N, L) either way. "pos": contiguous, positions adjacent (what
mamba_ssm's table was timed with). "state": views of (batch, [G,] L, N) tensors, the N
states of a position adjacent (the layout the Mamba layer's x_proj gives them before its
transposing copy): the "serial" kernels' broadcast reads of one position's states then
fall in one 64-byte segment instead of N cache lines. "copy": "pos" inputs turned to
"state" by a copy inside the timed call. Forward alone and a training forward+backward
(kept states) with the backward given B/C as named; "f+b mixed": the forward on "state"
copies, the backward on the original "pos" tensors. ms, do_bench median and GPU time
(CUDA-graph replay); max err: the outputs and gradients against "pos".
"""

from __future__ import annotations

import argparse
import sys

import torch

from scan_bench_common import ANCHORS, bench_and_graph_ms, bwd, fwd, make_inputs, rel


def state_major(x: torch.Tensor) -> torch.Tensor:
    """The same values, (..., N, L) viewed from a (..., L, N) tensor."""
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def _calls(shape, dtype):
    x = make_inputs(*shape, dtype)
    out, _ = fwd(**x)
    dout = torch.randn_like(out)
    def copied():  # "copy": the transposing copies inside the timed call
        return {**x, "B": state_major(x["B"]), "C": state_major(x["C"])}

    xs = copied()

    def f(fwd_args):
        return lambda: fwd(**fwd_args())

    def fb(fwd_args, bwd_args):
        def run():
            _, _, states = fwd(**fwd_args(), keep_states=True)
            return bwd(dout, **bwd_args, states=states)
        return run

    calls = {
        "fwd pos": f(lambda: x), "fwd state": f(lambda: xs), "fwd copy": f(copied),
        "f+b pos": fb(lambda: x, x), "f+b state": fb(lambda: xs, xs),
        "f+b mixed": fb(copied, x),
    }
    return x, xs, dout, calls


def _errors(x, xs, dout) -> float:
    """Largest relative error of "state" against "pos" over out and every gradient."""
    results = []
    for args in (x, xs):
        out, _, states = fwd(**args, keep_states=True)
        grads = [g for g in bwd(dout, **args, states=states) if g is not None]
        results.append([out, *grads])
    return max(rel(a, b) for a, b in zip(results[1], results[0]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="*", type=int, default=[1, 2, 3, 5, 6])
    p.add_argument("--kernels", action="store_true",
                   help="also GPU time kernel by kernel (torch.profiler), pos and state")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    shapes = list(ANCHORS)
    print(f"{torch.cuda.get_device_name()}; ms: do_bench median / CUDA-graph GPU time")
    print(f"{'batch, dim, L':<18}{'dtype':<6}{'call':<11}{'do_bench':>9}{'graph':>9}")
    for dtype in (torch.float32, torch.bfloat16):
        for row in args.rows:
            shape = shapes[row - 1]
            x, xs, dout, calls = _calls(shape, dtype)
            for label, fn in calls.items():
                t_bench, t_graph = bench_and_graph_ms(fn)
                print(f"{str(shape)[1:-1]:<18}{str(dtype)[6:]:<6}{label:<11}"
                      f"{t_bench:>9.3f}{t_graph:>9.3f}", flush=True)
            print(f"{'':<24}max err state vs pos {_errors(x, xs, dout):.1e}", flush=True)
            if args.kernels:
                from profile_host_overhead import kernel_times

                for layout in ("pos", "state"):
                    print(f"  {layout}:\n" + kernel_times(calls[f"fwd {layout}"],
                                                         calls[f"f+b {layout}"]), flush=True)
            del x, xs, dout, calls
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
