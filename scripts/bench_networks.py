"""Benchmark every network family on a GPU, side by side with the CNN baselines.

    python scripts/bench_networks.py [--out DIR] [--batch 2] [--steps 10]

Two plans: nnU-Net's hippocampus 3d_fullres (1 channel, 3 classes, patch 40x56x40,
4 stages 32-256, strides 1,2,2,2) and a 128^3 one-channel patch (the planner's topology:
6 stages 32-320). Per family: training step ms (bf16 autocast fwd + bwd + SGD, deep
supervision), inference ms per patch (batch 1, bf16), peak memory of the training step
(max_memory_reserved + CUDA context), parameters; step time and memory also as ratios
to plainconv_unet and resenc_unet measured in the same run. Prints a markdown table and
writes DIR/bench_networks.json. Runs from the repository root without installing.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_memory import bootstrap, force_backend  # noqa: E402

bootstrap()

import torch  # noqa: E402

from medmamba.networks import available_networks, build_network, count_parameters  # noqa: E402
from medmamba.networks.profiling import inference_ms, measure_training_step  # noqa: E402
from medmamba.planning.topology import features_per_stage, topology_for  # noqa: E402


def plans() -> dict[str, tuple[dict, tuple[int, ...]]]:
    hippocampus = {
        "in_channels": 1, "num_classes": 3, "spatial_dims": 3, "features_per_stage": [32, 64, 128, 256],
        "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    }
    topology = topology_for((1.0, 1.0, 1.0), (128, 128, 128))
    cube = {
        "in_channels": 1, "num_classes": 3, "spatial_dims": 3,
        "features_per_stage": list(features_per_stage(topology.num_stages, 32, 320)),
        "kernel_sizes": [list(k) for k in topology.kernel_sizes], "strides": [list(s) for s in topology.strides],
    }
    return {"hippocampus 40x56x40": (hippocampus, (40, 56, 40)), "128^3": (cube, topology.patch_size)}


def bench(name: str, kwargs: dict, patch: tuple[int, ...], batch: int, steps: int, device: torch.device) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    with device:
        network = build_network(name, deep_supervision=True, **kwargs)
    row = {"network": name, "parameters": count_parameters(network)}
    try:
        step = measure_training_step(network, batch, kwargs["in_channels"], patch, kwargs["num_classes"],
                                     device, timed_steps=steps)
        row.update(step_ms=step.step_ms, peak_gb=step.total / 1e9)
        network.deep_supervision = False
        row["inference_ms"] = inference_ms(network, kwargs["in_channels"], patch, device)
    except torch.cuda.OutOfMemoryError:
        row.update(step_ms=None, peak_gb=None, inference_ms=None)
    return row


def check_backends(device: torch.device) -> None:
    """The layers through Triton (backend auto on CUDA) against the chunked torch path."""
    import medmamba_kernels
    from medmamba.networks.blocks.mamba import MambaLayer
    from medmamba.networks.blocks.mhs import MHSLayer

    real = medmamba_kernels.selective_scan
    for layer in (MambaLayer(32, bidirectional=True), MHSLayer(32, spatial_dims=3)):
        layer.to(device)
        x = torch.randn(2, 32, 12, 20, 16, device=device)
        results = []
        for backend in ("auto", "torch"):
            medmamba_kernels.selective_scan = lambda *a, _forced=backend, **k: real(*a, **{**k, "backend": _forced})
            layer.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = layer(x)
            out.float().square().mean().backward()
            results.append((out.float(), [p.grad.float().clone() for p in layer.parameters()]))
        medmamba_kernels.selective_scan = real
        (a, ga), (b, gb) = results
        grad_error = max(((g1 - g2).abs().max() / g2.abs().max().clamp_min(1e-6)).item() for g1, g2 in zip(ga, gb))
        print(f"{type(layer).__name__}: triton vs torch max |out diff| {(a - b).abs().max().item():.3g}, "
              f"max relative grad diff {grad_error:.3g}", flush=True)


def ratio(value: float | None, reference: float | None) -> str:
    return "-" if value is None or not reference else f"{value / reference:.2f}"


def table(plan: str, rows: list[dict], batch: int) -> str:
    by_name = {r["network"]: r for r in rows}
    plain, resenc = by_name.get("plainconv_unet", {}), by_name.get("resenc_unet", {})
    lines = [
        f"**{plan}**, batch {batch} (train step) / 1 (inference)", "",
        "| network | params (M) | train step ms | x plain | x resenc | infer ms/patch | peak GB | x plain | x resenc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        def show(value: float | None, fmt: str) -> str:
            return "OOM" if value is None else format(value, fmt)

        lines.append(
            f"| {r['network']} | {r['parameters'] / 1e6:.2f} | {show(r['step_ms'], '.1f')} | "
            f"{ratio(r['step_ms'], plain.get('step_ms'))} | {ratio(r['step_ms'], resenc.get('step_ms'))} | "
            f"{show(r['inference_ms'], '.2f')} | {show(r['peak_gb'], '.2f')} | "
            f"{ratio(r['peak_gb'], plain.get('peak_gb'))} | {ratio(r['peak_gb'], resenc.get('peak_gb'))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--families", nargs="*", default=available_networks())
    parser.add_argument("--backend", default="auto", help="kernel backend for every scan (auto, torch)")
    parser.add_argument("--check-only", action="store_true", help="only compare Triton with torch, then exit")
    args = parser.parse_args()
    device = torch.device("cuda")
    check_backends(device)
    if args.check_only:
        return
    force_backend(args.backend)
    results = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
               "backend": args.backend, "plans": {}}
    for plan, (kwargs, patch) in plans().items():
        rows = []
        for name in args.families:
            rows.append(bench(name, kwargs, patch, args.batch, args.steps, device))
            print(json.dumps({"plan": plan, **rows[-1]}), flush=True)
        results["plans"][plan] = rows
        print(table(plan, rows, args.batch) + "\n", flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "bench_networks.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
