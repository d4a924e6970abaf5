"""Measure peak training memory of every network family on a GPU and fit its memory model.

    python scripts/measure_memory.py --out DIR [--families umamba_bot ...] [--verify 8 16 40]

Runs from the repository root without installing (the repo root goes on sys.path and
``kernels`` is aliased as ``medmamba_kernels``). Per family: training steps (bf16 autocast,
deep supervision, SGD momentum; see medmamba.networks.profiling) over 2D and 3D patches
and batch sizes; peak = max_memory_reserved + CUDA context. The coefficients of
medmamba.planning.memory's functional form are fitted by non-negative least squares on
relative error, then scaled so that no measurement is under-estimated. Stage weights are
the family's conv-output elements per stage (profiling.stage_activation_weights).
``--verify`` then plans the hippocampus and a CT-sized 3d_fullres configuration at each
budget (GB) with the fitted model and measures the planned network at its patch and batch.
``--verify-only`` skips the fit and verifies the models plans/ holds (do plans made
with them still fit after a change to the networks or the kernel?).
Writes DIR/memory_fit.json (coefficients, measurements, verification) as it goes.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout_imports import bootstrap  # noqa: E402  (re-exported: bench_networks)


def force_backend(backend: str) -> None:
    """Send every kernel call to ``backend`` ("auto" leaves the networks' choice alone)."""
    if backend == "auto":
        return
    import medmamba_kernels

    real = medmamba_kernels.selective_scan
    medmamba_kernels.selective_scan = lambda *a, **k: real(*a, **{**k, "backend": backend})


bootstrap()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import nnls  # noqa: E402

from medmamba.networks import build_network  # noqa: E402
from medmamba.networks.profiling import measure_training_step, stage_activation_weights  # noqa: E402
from medmamba.planning.memory import estimate_training_bytes  # noqa: E402
from medmamba.planning.planner import plan_network  # noqa: E402
from medmamba.planning.templates import FAMILIES, Template  # noqa: E402
from medmamba.planning.topology import features_per_stage, topology_for  # noqa: E402
from medmamba.planning.validation import validate_json_model  # noqa: E402

# (spatial_dims, spacing, patch, batches): 3D isotropic and anisotropic, 2D.
FIT_CONFIGS = [
    (3, (1.0, 1.0, 1.0), (40, 56, 40), (2, 8)),
    (3, (1.0, 1.0, 1.0), (64, 64, 64), (2,)),
    (3, (1.0, 1.0, 1.0), (96, 96, 96), (2,)),
    (3, (1.0, 1.0, 1.0), (128, 128, 128), (2,)),
    (3, (2.5, 0.8, 0.8), (48, 160, 160), (2,)),
    (2, (1.0, 1.0), (256, 256), (8, 32)),
    (2, (1.0, 1.0), (512, 512), (8,)),
]
# Datasets for --verify: (name, spacing, median shape, in_channels, classes, dataset voxels).
VERIFY_DATASETS = [
    ("hippocampus", (1.0, 1.0, 1.0), (36, 50, 35), 1, 3, 36 * 50 * 35 * 208),
    ("ct-512x512x300", (2.5, 0.8, 0.8), (300, 512, 512), 1, 3, 300 * 512 * 512 * 100),
]


def load_template(family: str) -> Template:
    path = REPO / "plans" / f"{family}.json"
    return validate_json_model(Template, path.read_bytes(), str(path))


def with_model(template: Template, **update: object) -> Template:
    model = template.memory_model.model_copy(update=update)
    return template.model_copy(update={"memory_model": model})


def terms(template: Template, spatial_dims: int, patch, batch, features, strides, kernels) -> np.ndarray:
    """The four regressors of the memory model (overhead, activations, params, tokens)."""
    unit = []
    for name in ("overhead_bytes", "activation_bytes", "param_bytes", "token_bytes"):
        coefficients = {k: 0.0 for k in ("overhead_bytes", "activation_bytes", "param_bytes", "token_bytes")}
        coefficients[name] = 1.0
        unit.append(estimate_training_bytes(with_model(template, **coefficients), patch, batch, features,
                                            strides, 1, 3, spatial_dims, kernel_sizes=kernels))
    return np.array(unit)


def measure(family: str, kwargs: dict, batch: int, patch, device: torch.device) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    start = time.perf_counter()
    try:
        with device:  # initialise on the GPU: much faster than on the CPU for 100 M parameters
            network = build_network(family, deep_supervision=True, **kwargs)
        m = measure_training_step(network, batch, kwargs["in_channels"], patch, kwargs["num_classes"], device,
                                  timed_steps=1)
        result = {"total": m.total, "reserved": m.peak_reserved, "allocated": m.peak_allocated,
                  "context": m.context, "step_ms": round(m.step_ms, 1)}
    except torch.cuda.OutOfMemoryError:
        result = {"total": None, "oom": True}
    finally:
        network = None  # noqa: F841 - release before the next build
        gc.collect()
        torch.cuda.empty_cache()
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def stage_weights(family: str, template: Template) -> list[float]:
    """Conv-output weights per stage on a deep 3D plan (6 stages, 32..320)."""
    topology = topology_for((1.0, 1.0, 1.0), (128, 128, 128))
    n = topology.num_stages
    features = features_per_stage(n, template.features_base, template.cap(3))
    with torch.device("meta"):
        network = build_network(family, in_channels=1, num_classes=3, spatial_dims=3,
                                features_per_stage=features, kernel_sizes=topology.kernel_sizes,
                                strides=topology.strides, deep_supervision=True, **template.knobs(n))
    weights = stage_activation_weights(network, 1, topology.patch_size, features, topology.strides)
    return [round(w, 3) for w in weights]


def fit_family(family: str, device: torch.device, ssm_from_stage: int | None, log) -> dict:
    template = load_template(family)
    weights = stage_weights(family, template)
    template = with_model(template, stage_weights=tuple(weights), ssm_from_stage=ssm_from_stage)
    rows, targets, measurements = [], [], []
    for dims, spacing, patch, batches in FIT_CONFIGS:
        topology = topology_for(spacing, patch)
        n = topology.num_stages
        features = features_per_stage(n, template.features_base, template.cap(dims))
        kwargs = {"in_channels": 1, "num_classes": 3, "spatial_dims": dims, "features_per_stage": list(features),
                  "kernel_sizes": [list(k) for k in topology.kernel_sizes],
                  "strides": [list(s) for s in topology.strides], **template.knobs(n)}
        for batch in batches:
            result = measure(family, kwargs, batch, topology.patch_size, device)
            entry = {"patch": list(topology.patch_size), "batch": batch, **result}
            measurements.append(entry)
            log(f"{family:15s} {dims}d patch {'x'.join(map(str, topology.patch_size)):>12s} batch {batch:3d}: "
                + ("OOM" if result["total"] is None else f"{result['total'] / 1e9:6.2f} GB  {result['step_ms']} ms"))
            if result["total"] is not None:
                rows.append(terms(template, dims, topology.patch_size, batch, features, topology.strides,
                                  topology.kernel_sizes))
                targets.append(result["total"])
    x, y = np.array(rows), np.array(targets, dtype=np.float64)
    coefficients, _ = nnls(x / y[:, None], np.ones_like(y))
    predicted = x @ coefficients
    raw_error = float(np.max(np.abs(predicted - y) / y))
    scale = float(max(1.0, np.max(y / predicted)))  # never under-estimate a measurement
    coefficients = coefficients * scale
    predicted = x @ coefficients
    for entry, p in zip([m for m in measurements if m["total"] is not None], predicted):
        entry["predicted"] = float(p)
    names = ("overhead_bytes", "activation_bytes", "param_bytes", "token_bytes")
    model = {name: float(f"{value:.6g}") for name, value in zip(names, coefficients)}
    return {
        "family": family, "stage_weights": weights, "ssm_from_stage": ssm_from_stage, **model,
        "fit_max_rel_error": raw_error, "scale": scale,
        "max_overestimate": float(np.max((predicted - y) / y)), "measurements": measurements,
    }


def verify(family: str, fit: dict, budgets: list[float], device: torch.device, log) -> list[dict]:
    model = {k: fit[k] for k in ("overhead_bytes", "activation_bytes", "param_bytes", "token_bytes",
                                 "ssm_from_stage")}
    template = with_model(load_template(family), stage_weights=tuple(fit["stage_weights"]), **model)
    results = []
    for budget in budgets:
        for name, spacing, median, channels, classes, voxels in VERIFY_DATASETS:
            try:
                plan = plan_network(template, spacing, median, channels, classes, voxels, budget * 1e9)
            except Exception as error:  # a PlansError: nothing fits this budget
                results.append({"budget_gb": budget, "dataset": name, "error": str(error)})
                log(f"{family:15s} {name:15s} {budget:4.0f} GB: {error}")
                continue
            result = measure(family, plan.network_kwargs(), plan.batch_size, plan.patch_size, device)
            fits = result["total"] is not None and result["total"] < budget * 1e9
            results.append({"budget_gb": budget, "dataset": name, "patch": list(plan.patch_size),
                            "batch": plan.batch_size, "estimated_gb": plan.estimated_memory_gb,
                            "fits": fits, **result})
            measured = "OOM" if result["total"] is None else f"{result['total'] / 1e9:.2f}"
            log(f"{family:15s} {name:15s} {budget:4.0f} GB: patch {'x'.join(map(str, plan.patch_size))} "
                f"batch {plan.batch_size} est {plan.estimated_memory_gb:.2f} measured {measured} "
                f"{'fits' if fits else 'DOES NOT FIT'}")
    return results


def committed_model(family: str) -> dict:
    """The memory model plans/<family>.json holds, in fit_family's keys (for --verify-only)."""
    model = load_template(family).memory_model
    return {"family": family, "source": model.source, "stage_weights": list(model.stage_weights),
            **{k: getattr(model, k) for k in ("overhead_bytes", "activation_bytes", "param_bytes",
                                              "token_bytes", "ssm_from_stage")}}


SSM_FROM_STAGE = {"umamba_bot": -1, "umamba_enc": 0, "lightm_unet": 0, "mhs_unet": 1,
                  "plainconv_unet": None, "resenc_unet": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--verify", nargs="*", type=float, default=[8.0, 16.0, 40.0])
    parser.add_argument("--backend", default="auto", help="kernel backend for every scan (auto, torch)")
    parser.add_argument("--verify-only", action="store_true",
                        help="no fit: verify the models committed in plans/ (do the plans still fit?)")
    args = parser.parse_args()
    force_backend(args.backend)
    device = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                    "backend": args.backend, "families": {}}

    def log(line: str) -> None:
        print(line, flush=True)

    for family in args.families:
        if args.verify_only:
            report["families"][family] = committed_model(family)
            continue
        fit = fit_family(family, device, SSM_FROM_STAGE[family], log)
        log(f"== {family}: a={fit['overhead_bytes']:.4g} b={fit['activation_bytes']:.4g} "
            f"c={fit['param_bytes']:.4g} d={fit['token_bytes']:.4g} weights={fit['stage_weights']} "
            f"max rel error {fit['fit_max_rel_error']:.1%} (scaled x{fit['scale']:.3f}, "
            f"max over-estimate {fit['max_overestimate']:.1%})")
        report["families"][family] = fit
        (args.out / "memory_fit.json").write_text(json.dumps(report, indent=1))
    for family in args.families:
        report["families"][family]["verification"] = verify(family, report["families"][family], args.verify,
                                                            device, log)
        (args.out / "memory_fit.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
