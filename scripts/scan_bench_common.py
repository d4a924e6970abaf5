"""What the selective-scan GPU scripts share: the mamba_ssm anchor table, the kernels
imported from the tree, the bench rows' inputs and timing helpers, the replays' switch.

Imported by scripts/bench_selective_scan.py, scripts/bench_scan_variants.py,
scripts/profile_host_overhead.py and scripts/bench_replay_ab.py (run from the repository
root on a CUDA machine), and by scripts/profile_host_cpu.py (its launchers and switch).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# (batch, dim, L): mamba_ssm 2.3.2 ms for fp32 fwd, fp32 fwd+bwd, bf16 fwd, bf16 fwd+bwd
ANCHORS = {
    (2, 64, 262144): (3.03, 9.36, 2.55, 8.31),
    (2, 128, 32768): (0.422, 1.30, 0.338, 1.18),
    (2, 256, 4096): (0.128, 0.413, 0.054, 0.480),
    (2, 512, 512): (0.030, 0.350, 0.025, 0.348),
    (8, 128, 16384): (0.715, 2.31, 0.372, 1.79),
    (1, 48, 2097152): (22.9, 68.4, 20.2, 64.2),
}
N_STATE = 16
DEVICE = "cuda"


def _import_kernels():
    """Import medmamba_kernels whether or not it is installed (kernels/ is its source)."""
    if importlib.util.find_spec("medmamba_kernels") is None:
        spec = importlib.util.spec_from_file_location(
            "medmamba_kernels", REPO / "kernels" / "__init__.py",
            submodule_search_locations=[str(REPO / "kernels")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["medmamba_kernels"] = module
        spec.loader.exec_module(module)
    from medmamba_kernels.selective_scan.reference import selective_scan_reference
    from medmamba_kernels.selective_scan.triton_bwd import selective_scan_bwd_triton
    from medmamba_kernels.selective_scan.triton_fwd import selective_scan_fwd_triton

    return selective_scan_reference, selective_scan_fwd_triton, selective_scan_bwd_triton


reference, fwd, bwd = _import_kernels()


def set_replays(enabled: bool) -> None:
    """Turn the host functions' per-signature replays (replay.py) on or off; off, every
    call runs the host functions' own Python (for A/B timings)."""
    from medmamba_kernels.selective_scan import triton_bwd

    fwd.enabled = triton_bwd.selective_scan_bwd_triton.enabled = enabled


def package_launchers() -> list:
    """Every CachedLaunch of the kernels package (one per kernel, module attributes)."""
    import pkgutil

    from medmamba_kernels.selective_scan.launch import CachedLaunch

    package = importlib.import_module("medmamba_kernels.selective_scan")
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found += [value for value in vars(module).values() if isinstance(value, CachedLaunch)]
    return found


def make_inputs(batch, dim, length, dtype, groups=1, seed=0, n_state=N_STATE):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    dev = DEVICE

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, device=dev, generator=g) * scale).to(dt)

    return dict(
        u=rnd(batch, dim, length),
        delta=rnd(batch, dim, length, scale=0.5),
        A=-torch.exp(torch.rand(dim, n_state, device=dev, generator=g) * 2.0),
        B=rnd(batch, groups, n_state, length),
        C=rnd(batch, groups, n_state, length),
        D=rnd(dim, dt=torch.float32),
        z=rnd(batch, dim, length),
        delta_bias=rnd(dim, scale=0.5, dt=torch.float32) - 1.0,
        delta_softplus=True,
        reverse=False,
    )


def network_layout(x: dict, dout: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """z and dout strided as the Mamba layer hands them to the scan: z a channel slice of
    the token-major (batch, L, 2 * dim) in_proj output, dout the transposed gradient of the
    token-major out_proj input (both with a stride of dim or 2 * dim along L)."""
    batch, dim, length = x["z"].shape
    xz = torch.empty(batch, length, 2 * dim, device=x["z"].device, dtype=x["z"].dtype)
    z = xz[..., dim:].transpose(1, 2)
    z.copy_(x["z"])
    dout_tokens = torch.empty(batch, length, dim, device=dout.device, dtype=dout.dtype)
    strided_dout = dout_tokens.transpose(1, 2)
    strided_dout.copy_(dout)
    return {**x, "z": z}, strided_dout


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def host_ms(fn, calls: int = 50, trials: int = 1) -> float:
    """Host milliseconds to issue one call of fn (launches queued, no synchronisation),
    the median over `trials` runs of `calls` calls."""
    fn()
    times = []
    for _ in range(trials):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e3)
    torch.cuda.synchronize()
    return sorted(times)[trials // 2]


def bench_and_graph_ms(fn) -> list[float]:
    """[do_bench's median (the table's method), the median of the same call replayed from
    a CUDA graph (GPU time without host gaps)], ms."""
    from triton.testing import do_bench, do_bench_cudagraph

    return [do_bench(fn, warmup=10, rep=50, return_mode="median"),
            do_bench_cudagraph(fn, rep=50, return_mode="median")]


def row_calls(shape, dtype, layout: str = "contiguous", reverse: bool = False):
    """(run_fwd, run_fwd_bwd): the host functions on one bench row's inputs (z and dout
    strided as the Mamba layer passed them until session 38 with layout="network", and
    copied to contiguous inside each call with "network-copied"; scanning from the end
    with reverse)."""
    x = make_inputs(*shape, dtype)
    x["reverse"] = reverse
    out, _ = fwd(**x)
    dout = torch.randn_like(out)
    if layout.startswith("network"):
        x, dout = network_layout(x, dout)
    copied = layout == "network-copied"

    def inputs():
        return {**x, "z": x["z"].contiguous()} if copied else x

    def run_fwd():
        fwd(**inputs())

    def run_fwd_bwd():
        # as the autograd path runs them: the forward keeps the backward's boundary states
        x_call = inputs()
        _, _, states = fwd(**x_call, keep_states=True)
        bwd(dout.contiguous() if copied else dout, **x_call, states=states)

    return run_fwd, run_fwd_bwd


def training_inputs(shape, dtype, reverse: bool = False):
    """(inputs, leaves, flags, dout): a bench row's inputs by name (no grad), the same as
    leaves that require grad, the scan's flags, a gradient of the output."""
    x = make_inputs(*shape, dtype)
    x["reverse"] = reverse
    flags = {k: x.pop(k) for k in ("delta_softplus", "reverse")}
    leaves = {k: v.detach().requires_grad_() for k, v in x.items()}
    return x, leaves, flags, torch.randn(shape, device=DEVICE, dtype=dtype)


def public_row_calls(shape, dtype, reverse: bool = False, scan=None):
    """(run_fwd, run_fwd_bwd, leaves) through the public `selective_scan` (or `scan`,
    called the same way) as a user calls it, and as DESIGN.md 7's anchor timed mamba_ssm's
    `selective_scan_fn`: an inference call, and a training call (inputs that require grad)
    with `.backward(dout)` through the autograd engine. The training call accumulates into
    the leaves' .grad; pass `leaves` to do_bench's grad_to_none to time it without the
    accumulation's adds."""
    from medmamba_kernels.selective_scan.interface import selective_scan

    selective_scan = scan or selective_scan
    x, leaves, flags, dout = training_inputs(shape, dtype, reverse)

    def run_fwd():
        with torch.no_grad():
            selective_scan(**x, **flags)

    def run_fwd_bwd():
        selective_scan(**leaves, **flags).backward(dout)

    return run_fwd, run_fwd_bwd, list(leaves.values())
