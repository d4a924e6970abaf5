"""The host functions' per-signature replays (replay.py) on and off, side by side on a GPU.

    python scripts/bench_replay_ab.py                 # rows 3 and 4, fp32 and bf16
    python scripts/bench_replay_ab.py --rows 2,3,4 --rounds 5

Per bench row and dtype, rounds that alternate replays on and off in one process, each
timing a forward and a training call (forward keeping states, then backward) as the
table does (`do_bench` median, L2 flushed between calls) and by the host time to issue
one call (`host_ms`, no synchronisation); printed: the median over rounds of each, ms and
us, and the ratio off / on (above 1: replays faster). Runs from the repository root.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from scan_bench_common import ANCHORS, host_ms, row_calls, set_replays


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="3,4", help="bench rows (1-6), comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench

    shapes = list(ANCHORS)
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}; medians of "
          f"{args.rounds} alternating rounds")
    print(f"{'batch, dim, L':<16}{'dtype':<10}{'':>4}{'fwd ms':>9}{'f+b ms':>9}"
          f"{'host fwd us':>13}{'host f+b us':>13}")
    for row in (int(r) for r in args.rows.split(",")):
        for dtype in (torch.float32, torch.bfloat16):
            run_fwd, run_fwd_bwd = row_calls(shapes[row - 1], dtype)
            times = {True: [], False: []}
            for _ in range(args.rounds):
                for replays in (True, False):
                    set_replays(replays)
                    times[replays].append([
                        do_bench(run_fwd, warmup=10, rep=50, return_mode="median"),
                        do_bench(run_fwd_bwd, warmup=10, rep=50, return_mode="median"),
                        host_ms(run_fwd, calls=100) * 1e3,
                        host_ms(run_fwd_bwd, calls=100) * 1e3])
            set_replays(True)
            medians = {k: [statistics.median(col) for col in zip(*v)] for k, v in times.items()}
            label = f"{str(shapes[row - 1])[1:-1]:<16}{str(dtype)[6:]:<10}"
            for name, key in (("on", True), ("off", False)):
                m = medians[key]
                print(f"{label if key else '':<26}{name:>4}{m[0]:>9.3f}{m[1]:>9.3f}"
                      f"{m[2]:>13.1f}{m[3]:>13.1f}")
            ratio = [off / on for off, on in zip(medians[False], medians[True])]
            print(f"{'':<26}{'x':>4}" + "".join(f"{r:>9.2f}" for r in ratio[:2])
                  + "".join(f"{r:>13.2f}" for r in ratio[2:]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
