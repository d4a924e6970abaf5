"""Time the bench rows' forward and forward+backward by how the "serial" forward carries
states over chunks (GPU machine), one plan setting patched at a time:

  cap N    `SerialPlan.carry_block`, the chunks a step of `carry_chunks` scans, capped at N
           instead of 512 (a row of more chunks walks its blocks in turn, or from 16
           blocks scans them in parallel and carries again);
  split S  `aggregate_split` returns S wherever S divides the chunk into whole 16-position
           vectors (1 elsewhere): the aggregates and the carry run at chunk / S positions
           (the default splits only scans of 2**25 elements whose chunk grew to one wave).

Per setting, do_bench's median (the table's method) and CUDA-graph replay (GPU time), ms;
the output checked against the first setting's.

    python3 scripts/bench_serial_carry.py [--rows 1,2,5,6] [--settings "cap 512,cap 2048"]
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from scan_bench_common import bench_and_graph_ms, fwd, make_inputs, rel, row_calls

ROWS = {1: (2, 64, 262144), 2: (2, 128, 32768), 3: (2, 256, 4096), 4: (2, 64, 4096),
        5: (8, 128, 16384), 6: (1, 48, 2097152)}
DEFAULT_SETTINGS = "cap 512,cap 1024,cap 2048,cap 4096"


@contextlib.contextmanager
def patched(setting: str):
    """The plan setting "cap N" or "split S" (module docstring) in this process until the
    block ends; serial_plan's cache is cleared on the way in and out."""
    from medmamba_kernels.selective_scan import serial_planning as sp

    kind, value = setting.split()
    value = int(value)
    if kind == "cap":
        owner, name = sp.SerialPlan, "carry_block"
        new = property(lambda plan: min(value, max(16, sp._next_pow2(plan.n_chunks))))
    elif kind == "split":
        owner, name = sp, "aggregate_split"

        def new(chunk, default, elements):
            return value if chunk % (value * sp._WAVE_CHUNK_MULTIPLE) == 0 else 1
    else:
        raise ValueError(f"setting: expected 'cap N' or 'split S', got {setting!r}")
    saved = getattr(owner, name)
    setattr(owner, name, new)
    sp.serial_plan.cache_clear()
    try:
        yield
    finally:
        setattr(owner, name, saved)
        sp.serial_plan.cache_clear()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,2,5,6")
    p.add_argument("--settings", default=DEFAULT_SETTINGS)
    p.add_argument("--dtype", choices=("fp32", "bf16", "both"), default="both")
    args = p.parse_args()
    settings = args.settings.split(",")
    dtypes = {"fp32": [torch.float32], "bf16": [torch.bfloat16],
              "both": [torch.float32, torch.bfloat16]}[args.dtype]
    print(f"device {torch.cuda.get_device_name()}; fwd and fwd+bwd, do_bench / graph (ms); "
          f"err of the output against {settings[0]!r}")
    print(f"{'batch, dim, L':<18}{'dtype':<6}{'setting':>11}{'fwd':>9}{'graph':>9}"
          f"{'f+b':>9}{'graph':>9}{'err':>9}")
    for dt in dtypes:
        for row in (int(r) for r in args.rows.split(",")):
            shape = ROWS[row]
            ref = None
            for setting in settings:
                with patched(setting):
                    run_fwd, run_fwd_bwd = row_calls(shape, dt)
                    out, _ = fwd(**make_inputs(*shape, dt))
                    ref = out if ref is None else ref
                    err = rel(out, ref)
                    times = bench_and_graph_ms(run_fwd) + bench_and_graph_ms(run_fwd_bwd)
                print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}{setting:>11}"
                      + "".join(f"{t:>9.3f}" for t in times) + f"{err:>9.1e}", flush=True)
                del run_fwd, run_fwd_bwd, out
            del ref
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
