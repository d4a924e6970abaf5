"""The host time of Triton selective-scan calls, measured on the CPU (no GPU needed).

    python scripts/profile_host_cpu.py                 # rows 3 and 4, fp32 and bf16
    python scripts/profile_host_cpu.py --top 25        # and a cProfile of each

Every `CachedLaunch` of the kernels gets a stand-in for its Triton kernel whose compiled
form's launch function launches nothing, and CPU tensors are launched as a GPU's would be
(launch.current_device answers device 0), so a call runs all of its host code (checks,
plans, allocations, launch keys, the autograd Function, the per-signature replays of
replay.py) on CPU tensors (torch.empty: allocated, never written) and no kernel. Columns:
the public call (forward; forward+backward), then the forward and backward host functions
replayed and with replays off (their own Python every call). What this leaves out: the
driver's launch itself (~6-8 us a launch on the H200 machine, `profile_host_overhead.py`),
the CUDA allocator's costs over the CPU's, and the autograd engine's device thread (a CPU
backward runs on the calling thread). So it ranks the Python parts;
`scripts/profile_host_overhead.py` measures the whole on the GPU machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time

import torch

import triton


ROWS = {3: (2, 256, 4096), 4: (2, 512, 512)}
GRAD_ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


class _LaunchesNothing:
    """What `jit_fn[grid](...)` returns in place of a compiled kernel: `CachedLaunch` keeps
    it as it would a compiled one (it has a `function`) and later calls its launch
    function, as replays do."""

    function = 0
    packed_metadata = ()

    def run(self, *args) -> None:
        return None

    def __getitem__(self, grid):
        return lambda *args: None


class _StandInKernel:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: _LaunchesNothing()


def stub_launches() -> int:
    """Give every CachedLaunch in the package a kernel that launches nothing, launched as
    on GPU 0 (stream 0); how many."""
    from scan_bench_common import package_launchers  # after main() set the interpreter knob

    from medmamba_kernels.selective_scan import launch

    launch.current_device = lambda tensor: 0
    torch._C._cuda_getCurrentRawStream = lambda device: 0
    launchers = package_launchers()
    for launcher in launchers:
        launcher._fn = _StandInKernel()
    return len(launchers)


def inputs(batch: int, dim: int, length: int, dtype: torch.dtype, grad: bool) -> dict:
    n_state = 16

    def rand(*shape, dt=dtype):
        return torch.empty(*shape, dtype=dt).requires_grad_(grad)

    return dict(u=rand(batch, dim, length), delta=rand(batch, dim, length),
                A=rand(dim, n_state, dt=torch.float32),
                B=rand(batch, 1, n_state, length), C=rand(batch, 1, n_state, length),
                D=rand(dim, dt=torch.float32), z=rand(batch, dim, length),
                delta_bias=rand(dim, dt=torch.float32))


def host_us(fn, calls: int = 200, trials: int = 5) -> float:
    fn()
    best = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best.append((time.perf_counter() - start) / calls)
    return sorted(best)[len(best) // 2] * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="3,4")
    p.add_argument("--top", type=int, default=0, help="cProfile: functions by own time")
    args = p.parse_args()
    triton.knobs.runtime.interpret = True  # lets the public call take non-CUDA tensors
    from medmamba_kernels.selective_scan import triton_bwd, triton_fwd
    from medmamba_kernels.selective_scan.interface import selective_scan
    from scan_bench_common import set_replays

    print(f"{stub_launches()} launchers stubbed; torch {torch.__version__}, "
          f"triton {triton.__version__}")
    print(f"{'':<26}{'public':>18}{'forward host fn':>20}{'backward host fn':>20}")
    print(f"{'row':<16}{'dtype':<10}{'fwd us':>9}{'f+b us':>9}{'replayed':>10}{'own':>10}"
          f"{'replayed':>10}{'own':>10}")
    for row in (int(r) for r in args.rows.split(",")):
        for dtype in (torch.float32, torch.bfloat16):
            x = inputs(*ROWS[row], dtype, grad=True)
            plain = {k: v.detach() for k, v in x.items()}
            flags = dict(delta_softplus=True, reverse=False)
            dout = torch.randn_like(plain["u"])

            def public_fwd():
                with torch.no_grad():
                    selective_scan(**x, **flags, backend="triton")

            leaves = [v for v in x.values() if v is not None]

            def public_fwd_bwd():  # autograd.grad: no accumulation into .grad (CPU work)
                torch.autograd.grad(selective_scan(**x, **flags, backend="triton"), leaves,
                                    dout)

            fwd, bwd = triton_fwd.selective_scan_fwd_triton, triton_bwd.selective_scan_bwd_triton

            def host_fwd():
                fwd(**plain, **flags)

            _, _, states = fwd(**plain, **flags, keep_states=True)
            bwd_args = (dout, *[plain[k] for k in GRAD_ORDER], *flags.values())

            def host_bwd():
                bwd(*bwd_args, states=states)

            times = [host_us(f) for f in (public_fwd, public_fwd_bwd)]
            for host in (host_fwd, host_bwd):
                times.append(host_us(host))
                set_replays(False)
                times.append(host_us(host))
                set_replays(True)
            print(f"{str(ROWS[row])[1:-1]:<16}{str(dtype)[6:]:<10}"
                  + "".join(f"{t:>9.1f}" for t in times[:2])
                  + "".join(f"{t:>10.1f}" for t in times[2:]), flush=True)
            if args.top:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(100):
                    public_fwd_bwd()
                prof.disable()
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
                print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
