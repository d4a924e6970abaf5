"""Where "auto" should start taking the "serial" forward: mid-length rows timed with
serial_planning.SERIAL_MIN_LENGTH at its default and lowered (GPU machine).

    python scripts/bench_serial_threshold.py                  # the default shapes
    python scripts/bench_serial_threshold.py --min 2048 --shapes 2,256,4096 8,128,4096
    python scripts/bench_serial_threshold.py --base 4096 --min 1000000000   # tiles alone

Per shape and dtype, for the forward alone (an inference call) and forward+backward (the
host functions as a training call runs them: the forward keeps the backward's states
where "serial" runs), ms: do_bench's median, the same calls replayed from a CUDA graph
(GPU time without host gaps) and the host's time to issue one call. Each with the
default threshold (or --base), then with it at --min (the backward's boundary rule
follows it too).
"""

from __future__ import annotations

import argparse
import sys

import torch

from scan_bench_common import bench_and_graph_ms, host_ms, rel, row_calls

DEFAULT_SHAPES = ((2, 256, 4096), (8, 128, 4096), (2, 512, 4096), (2, 128, 2048),
                  (2, 512, 2048), (2, 256, 8192), (4, 128, 8192))


def _times(fn) -> list[float]:
    return bench_and_graph_ms(fn) + [host_ms(fn, trials=5)]


def _outputs(shape, dtype):
    """The forward output and the gradients of one training call, for the error column."""
    from scan_bench_common import bwd, fwd, make_inputs

    x = make_inputs(*shape, dtype)
    out, _, states = fwd(**x, keep_states=True)
    dout = torch.randn(out.shape, device=out.device,
                       generator=torch.Generator(device=out.device).manual_seed(1)).to(dtype)
    return [out, *[g for g in bwd(dout, **x, states=states) if g is not None]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min", type=int, default=2048, help="the threshold to compare")
    p.add_argument("--base", type=int, default=None,
                   help="the threshold compared against (default: SERIAL_MIN_LENGTH)")
    p.add_argument("--shapes", nargs="*", default=None, help="batch,dim,L ...")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from medmamba_kernels.selective_scan import serial_planning

    shapes = ([tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes
              else DEFAULT_SHAPES)
    default = serial_planning.SERIAL_MIN_LENGTH
    base = default if args.base is None else args.base
    print(f"{torch.cuda.get_device_name()}; threshold {base} against {args.min}; ms")
    print(f"{'batch, dim, L':<18}{'dtype':<6}{'min L':>7}{'fwd':>8}{'graph':>8}{'host':>8}"
          f"{'f+b':>8}{'graph':>8}{'host':>8}{'max err':>9}")
    for dtype in (torch.float32, torch.bfloat16):
        for shape in shapes:
            reference = None
            for threshold in (base, args.min):
                serial_planning.SERIAL_MIN_LENGTH = threshold
                run_fwd, run_fwd_bwd = row_calls(shape, dtype)
                cols = _times(run_fwd) + _times(run_fwd_bwd)
                outputs = _outputs(shape, dtype)
                if reference is None:
                    reference, err = outputs, 0.0
                else:
                    err = max(rel(a, b) for a, b in zip(outputs, reference))
                print(f"{str(shape)[1:-1]:<18}{str(dtype)[6:]:<6}{threshold:>7}"
                      + "".join(f"{c:>8.3f}" for c in cols) + f"{err:>9.1e}", flush=True)
                del run_fwd, run_fwd_bwd, outputs
            serial_planning.SERIAL_MIN_LENGTH = default
    return 0


if __name__ == "__main__":
    sys.exit(main())
