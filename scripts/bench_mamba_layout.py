"""A Mamba layer's training step and inference with the projections token-major (an earlier
`medmamba/networks/blocks/mamba.py`) against the tree's channel-major ones, on a GPU.

    git show REV:medmamba/networks/blocks/mamba.py > .devdata/old_mamba.py   (here)
    python scripts/bench_mamba_layout.py --old .devdata/old_mamba.py        (GPU machine)

Per shape (batch 2; C channels of a grid, L its tokens): the scan's inputs' strides along
L in each version, the largest difference between the two versions' outputs and input
gradients (fp32, same weights), and `triton.testing.do_bench` medians (ms) of a training
step (bf16 autocast forward + backward) and an inference forward (bf16), with their ratio.
Runs from the repository root without installing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout_imports import bootstrap  # noqa: E402

# (label, channels, grid, bidirectional)
SHAPES = (
    ("hippocampus stage 0", 32, (40, 56, 40), False),
    ("128^3 stage 1", 64, (64, 64, 64), False),
    ("128^3 stage 1, both ways", 64, (64, 64, 64), True),
    ("128^3 stage 3", 256, (16, 16, 16), False),
    ("bottleneck", 320, (4, 4, 4), False),
)


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scan_strides(module, layer: torch.nn.Module, x: torch.Tensor) -> str:
    """Strides along L of u, delta, B, C, z and the output's gradient as the first scan of
    the layer gets them."""
    calls = []
    real = module.selective_scan

    def spy(*args, **kwargs):
        strides = [t.stride(-1) for t in (*args[:2], *args[3:5], kwargs["z"])]
        calls.append(strides)
        out = real(*args, **kwargs)
        if out.requires_grad:
            out.register_hook(lambda grad: strides.append(grad.stride(-1)))
        return out

    module.selective_scan = spy
    try:
        layer(x).sum().backward()
    finally:
        module.selective_scan = real
    return "/".join(map(str, calls[0]))


def compare(old_layer, new_layer, x: torch.Tensor) -> float:
    """Largest relative difference of output and input gradient, fp32, same weights."""
    errors = []
    grads = []
    for layer in (old_layer, new_layer):
        leaf = x.detach().clone().requires_grad_()
        out = layer(leaf)
        out.backward(torch.ones_like(out))
        grads.append((out.detach(), leaf.grad))
    for a, b in zip(*grads):
        errors.append(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item())
    return max(errors)


def timed(layer, x: torch.Tensor) -> tuple[float, float]:
    from triton.testing import do_bench

    leaf = x.detach().clone().requires_grad_()

    def train_step():
        layer.zero_grad(set_to_none=True)
        leaf.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(leaf)
        out.float().sum().backward()

    def infer():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            layer(x)

    return (do_bench(train_step, warmup=5, rep=100, return_mode="median"),
            do_bench(infer, warmup=5, rep=100, return_mode="median"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="an earlier mamba.py")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    bootstrap()
    old = load_module(args.old, "old_mamba")
    new = importlib.import_module("medmamba.networks.blocks.mamba")
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'shape':<26}{'L':>8}  {'L strides old':>14} {'new':>12} {'max diff':>9}"
          f"{'train old':>10}{'new':>8}{'x':>6}{'infer old':>10}{'new':>8}{'x':>6}   (ms)")
    for label, channels, grid, both in SHAPES:
        torch.manual_seed(0)
        new_layer = new.MambaLayer(channels, bidirectional=both).cuda()
        old_layer = old.MambaLayer(channels, bidirectional=both).cuda()
        old_layer.load_state_dict(new_layer.state_dict())
        x = torch.randn(args.batch, channels, *grid, device="cuda")
        strides = [scan_strides(m, layer, x) for m, layer in ((old, old_layer), (new, new_layer))]
        diff = compare(old_layer, new_layer, x)
        (t_old, i_old), (t_new, i_new) = timed(old_layer, x), timed(new_layer, x)
        print(f"{label:<26}{x[0, 0].numel():>8}  {strides[0]:>14} {strides[1]:>12} {diff:>9.1e}"
              f"{t_old:>10.3f}{t_new:>8.3f}{t_old / t_new:>6.2f}{i_old:>10.3f}{i_new:>8.3f}"
              f"{i_old / i_new:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
