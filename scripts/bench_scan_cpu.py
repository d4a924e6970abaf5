"""Time the CPU selective scan: chunked torch path vs the sequential reference.

    python scripts/bench_scan_cpu.py [--length 32768] [--ref-length 4096]

Shape (2, 64, L, N=16), fp32, z-gated, softplus, delta_bias, D; fwd and fwd+bwd, median
of --repeats runs. The reference is timed on --ref-length and scaled linearly to L (its
cost is one Python step per time step, so linear in L); the output says so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from medmamba_kernels import selective_scan


def _inputs(batch: int, dim: int, length: int, nstate: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, dim, length, generator=gen),  # u
        torch.randn(batch, dim, length, generator=gen) * 0.5 - 1,  # delta
        -torch.exp(torch.randn(dim, nstate, generator=gen) * 0.5),  # A
        torch.randn(batch, nstate, length, generator=gen),  # B
        torch.randn(batch, nstate, length, generator=gen),  # C
        torch.randn(dim, generator=gen),  # D
        torch.randn(batch, dim, length, generator=gen),  # z
        torch.randn(dim, generator=gen) * 0.3,  # delta_bias
    ]


def _time(backend: str, tensors: list[torch.Tensor], backward: bool, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        leaves = [t.clone().requires_grad_(backward) for t in tensors]
        start = time.perf_counter()
        out = selective_scan(*leaves, delta_softplus=True, backend=backend)
        if backward:
            out.backward(torch.ones_like(out))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--nstate", type=int, default=16)
    parser.add_argument("--ref-length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    full = _inputs(args.batch, args.dim, args.length, args.nstate)
    short = _inputs(args.batch, args.dim, args.ref_length, args.nstate)
    scale = args.length / args.ref_length
    print(f"shape (batch, dim, L, N) = ({args.batch}, {args.dim}, {args.length}, {args.nstate}) "
          f"fp32, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"reference timed at L={args.ref_length} and scaled x{scale:g} to L={args.length}")
    print(f"{'pass':<8} {'chunked s':>10} {'reference s':>12} {'speed-up':>9}")
    for name, backward in (("fwd", False), ("fwd+bwd", True)):
        chunked = _time("torch", full, backward, args.repeats)
        reference = _time("reference", short, backward, args.repeats) * scale
        print(f"{name:<8} {chunked:>10.3f} {reference:>12.3f} {reference / chunked:>8.1f}x")


if __name__ == "__main__":
    main()
