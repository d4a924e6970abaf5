"""Time the "serial" forward at chunk lengths around whole waves of its output pass
(GPU machine). For each bench row it reads the compiled kernels' registers, derives how
many programs an SM keeps resident (occupancy.programs_per_sm), and prints, per chunk,
the programs of a launch, the output pass's waves, and the forward's time (do_bench
median and CUDA-graph replay), inference and training (kept states) forwards, with the
output checked against the default chunk's.

    python3 scripts/bench_wave_chunks.py [--rows 1,2,5,6] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse

import torch

from scan_bench_common import rel
from bench_serial_variants import _row_problem

ROWS = {1: (2, 64, 262144), 2: (2, 128, 32768), 3: (2, 256, 4096), 5: (8, 128, 16384),
        6: (1, 48, 2097152)}
# extra chunks a row besides those of 1-4 whole waves (multiples of 16: vector loads)
EXTRA = {1: (192, 224, 256, 320, 384, 512), 2: (64, 128, 256), 3: (64, 128),
         5: (64, 128, 256), 6: (256, 512, 1024)}


def compiled_registers(jit_fn) -> list[tuple[int, int, int]]:
    """(registers, spills, warps) of every kernel `jit_fn` compiled in this process."""
    found = []
    for cache in getattr(jit_fn, "device_caches", {}).values():
        for kernel in cache[0].values():
            found.append((kernel.n_regs, kernel.n_spills, kernel.metadata.num_warps))
    return sorted(set(found))


def wave_chunks(length: int, rows: int, slots: int, multiple: int = 16) -> list[int]:
    """The shortest chunks (multiples of `multiple`) whose programs fit 1-4 whole waves."""
    chunks = []
    for waves in (1, 2, 3, 4):
        chunks_a_row = max(1, slots * waves // rows)
        chunk = -(-length // chunks_a_row)
        chunks.append(-(-chunk // multiple) * multiple)
    return chunks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,2,5,6")
    p.add_argument("--dtype", choices=("fp32", "bf16", "both"), default="both")
    args = p.parse_args()
    from triton.testing import do_bench, do_bench_cudagraph

    from medmamba_kernels.selective_scan import occupancy
    from medmamba_kernels.selective_scan import triton_fwd_serial as serial

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    dtypes = {"fp32": [torch.float32], "bf16": [torch.bfloat16],
              "both": [torch.float32, torch.bfloat16]}[args.dtype]
    print(f"device {torch.cuda.get_device_name()}, {sms} SMs")
    print(f"{'batch, dim, L':<18}{'dtype':<7}{'chunk':>6}{'progs':>7}{'waves':>7}"
          f"{'fwd':>9}{'graph':>9}{'train':>9}{'graph':>9}{'err':>9}")
    for dt in dtypes:
        for row in (int(r) for r in args.rows.split(",")):
            shape = ROWS[row]
            x, (u, delta, A, B, C, D, z, bias), out, last, _ = _row_problem(shape, dt)
            batch, dim, length = shape
            sub = torch.zeros(batch, dim, -(-length // 64), A.shape[1], device=u.device)

            def run(chunk=None, states=None):
                serial.serial_forward(u, delta, A, B, C, D, z, bias, True, False, out, last,
                                      chunk=chunk, sub_states=states)

            run()
            run(states=sub)
            torch.cuda.synchronize()
            regs = compiled_registers(serial._serial_kernel)
            top = max(r for r, _, _ in regs)
            slots = sms * occupancy.programs_per_sm(top, 1)
            plan = serial.serial_plan(batch, dim, 1, length, dt)
            rows = batch * plan.n_dblk
            print(f"# row {row} {str(dt)[6:]}: kernels (regs, spills, warps) {regs}; "
                  f"{slots} slots at {top} registers; default chunk {plan.chunk}")
            ref = out.clone()
            chunks = sorted(set(EXTRA[row]) | set(wave_chunks(length, rows, slots))
                            | {plan.chunk})
            for chunk in chunks:
                if chunk > length:
                    continue
                run(chunk)
                err = rel(out, ref)
                progs = -(-length // chunk) * rows
                times = [do_bench(lambda: run(chunk), warmup=5, rep=40, return_mode="median"),
                         do_bench_cudagraph(lambda: run(chunk), rep=40, return_mode="median"),
                         do_bench(lambda: run(chunk, sub), warmup=5, rep=40,
                                  return_mode="median"),
                         do_bench_cudagraph(lambda: run(chunk, sub), rep=40,
                                            return_mode="median")]
                mark = "*" if chunk == plan.chunk else " "
                print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<7}{chunk:>5}{mark}{progs:>7}"
                      f"{progs / slots:>7.2f}" + "".join(f"{t:>9.3f}" for t in times)
                      + f"{err:>9.1e}", flush=True)
            del x, u, delta, A, B, C, D, z, bias, out, last, sub, ref
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
