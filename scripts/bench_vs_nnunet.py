"""Accuracy and speed against nnU-Net on one GPU: hippocampus fold 0 at nnU-Net's wall time.

    python scripts/bench_vs_nnunet.py OUT --data .devdata/bench/hippo/Dataset004_Hippocampus \
        --split-file .devdata/bench/hippo/splits_final.json [--networks lightm_unet umamba_bot \
        umamba_bot:none resenc_unet] [--budget 250] [--brats .devdata/bench/brats3]
    python scripts/bench_vs_nnunet.py OUT --table-only   # one table from OUT/*.json
    python scripts/bench_vs_nnunet.py OUT --smoke        # CPU, phantom, 2 iterations (CI)
    python scripts/bench_vs_nnunet.py OUT --data ... --split-file ... --prepare-only   # then, one
        process per GPU: CUDA_VISIBLE_DEVICES=i python scripts/bench_vs_nnunet.py OUT ... --networks NAME

Plans and preprocesses --data with medmamba (OUT/work), then per network (NAME, or NAME:none
for ssm="none") trains fold 0 of --split-file within --budget wall seconds, start-up and
final validation (the fold's validation cases predicted with TTA and scored) included, as
nnU-Net's 250 s were. api.train has no wall-time limit, so the schedule is chosen here: a
warm-up run (3 epochs of --warmup-iters, default a whole epoch, then --calib-cases cases
predicted with TTA and scored; before it, unmeasured, two steps and a case compile the
Triton kernels the real run finds compiled) measures start-up, iterations/s, the rest of a
steady epoch (validation and the hand-over of its outputs to the background writer: from
the wall-clock start times of epochs 2 and 3) and the final
validation (once per call, and per case); the real run gets as many epochs of
--iters-per-epoch as fit in 96% of the budget (bench_schedule.BUDGET_TARGET), the remainder spread over them as extra
iterations (one shorter epoch if none fits), so its poly schedule ends on time. With
--compile, training runs through torch.compile from empty Inductor and Triton caches, so the
compile counts in the budget as nnU-Net's does. Training replays each step as a CUDA graph
(api.train's default on one GPU); --no-cuda-graphs runs it eagerly (results tagged __eager). The warm-up runs in the same process and
is not counted (CUDA context, cuDNN autotuning and the scan's Triton kernels are warm for the
real run; the .md gives the size of that). Reported per
network: wall time used, iterations/s (median over epochs), peak GPU memory of training
(torch max_memory_allocated/reserved: without the CUDA context, which the nvidia-smi anchor
includes), parameters, fold-0 Dice per label (api.predict + api.evaluate against labelsTr),
inference s/case with and without TTA (api.predict wall / cases, model loading included),
and with --brats the same on BraTS-sized cases (weights after one training step; median per
case, the first excluded as warm-up; the span of nnU-Net's anchor, image array in and mask
array out, and apart from it files to file as `medmamba predict` runs a folder;
bench_case_timing.py). Results go to OUT/<dataset>__<tag>.json, so runs
spread over several device calls merge into one table, nnU-Net's anchor rows first.

Device set-up (the wheels to carry, the set-up line, the calls): scripts/bench_vs_nnunet.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from medmamba import api
from medmamba.data.dataset import load_dataset_json
from medmamba.networks import network_complexity
from medmamba.planning.plans import Plans
from medmamba.training.paths import network_tag
from medmamba.training.setup import preprocessed_case_ids

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_case_timing import median_after_first, stage_medians, time_cases  # noqa: E402
from bench_schedule import (  # noqa: E402,F401
    BUDGET_TARGET, Calibration, choose_schedule, epoch_overhead, training_costs)
from vs_nnunet_table import read_json, table, write_json  # noqa: E402

CONFIG = "3d_fullres"
DEFAULT_NETWORKS = ["lightm_unet", "umamba_bot", "umamba_bot:none", "resenc_unet"]


@dataclass(frozen=True)
class Settings:
    device: str = "cuda"
    budget_s: float = 250.0
    iters_per_epoch: int = 250
    val_batches: int = 50
    warmup_iters: int = 250  # a whole epoch: its rate then includes what a real epoch's does
    calib_cases: int = 4
    max_iters: int | None = None  # cap on the real run's total iterations (smoke)
    workers: int | None = None
    features: int | None = None  # first stage's features instead of the plan's (smoke)
    compile: bool = False  # api.train(compile=True): torch.compile, its compile inside the budget
    cuda_graphs: bool = True  # api.train's default: each step replayed as a CUDA graph
    predict_compile: bool = False  # BraTS timings with api.predict(compile=True)
    batch_windows: int | None = None  # BraTS: windows per forward pass (None: api.predict's choice)
    brats_cases: int = 3
    gpu_memory_gb: float = 10.0


def parse_network(spec: str) -> tuple[str, str | None]:
    name, _, ssm = spec.partition(":")
    return name, (ssm or None)


def tag_of(spec: str, compiled: bool = False, eager: bool = False) -> str:
    """The result's name: the network's tag, then how it trained when not the default."""
    return network_tag(*parse_network(spec)) + ("__compile" if compiled else "") + ("__eager" if eager else "")


def run_tag(spec: str, settings: Settings, brats: bool = False) -> str:
    """A result's name. Training: compiled runs never use graphs, so only an eager run that
    could have used them is marked. BraTS (one training step): how it predicted."""
    if brats:
        return (tag_of(spec) + ("__predict-compile" if settings.predict_compile else "")
                + (f"__bw{settings.batch_windows}" if settings.batch_windows is not None else ""))
    return tag_of(spec, settings.compile, eager=not settings.cuda_graphs and not settings.compile)


def fresh_compile_caches(folder: Path) -> None:
    """Empty Inductor and Triton caches for what follows, so a compile costs what it costs a
    user's first run (nnU-Net's measured 250 s include its cold compile)."""
    shutil.rmtree(folder, ignore_errors=True)
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        os.environ[name] = str(folder / name.lower())
    torch._dynamo.reset()


def prepare(data: Path, work: Path, networks: list[str], settings: Settings) -> dict[str, float]:
    """Plan and preprocess 3d_fullres; both skip finished work."""
    families = sorted({parse_network(n)[0] for n in [*DEFAULT_NETWORKS, *networks]})  # same plans every call
    start = time.perf_counter()
    api.plan(data, work, gpu_memory_gb=settings.gpu_memory_gb, families=families)
    planned = time.perf_counter()
    api.preprocess(work, [CONFIG])
    return {"plan_s": planned - start, "preprocess_s": time.perf_counter() - planned}


def overrides(work: Path, network: str, settings: Settings) -> dict | None:
    if settings.features is None:
        return None
    stages = len(Plans.load(work).configuration(CONFIG).network(network).network_kwargs()["strides"])
    return {"features_per_stage": [settings.features * 2 ** i for i in range(stages)]}


def train(work: Path, spec: str, split_file: Path, settings: Settings, epochs: int, iters: int,
          val_batches: int | None = None) -> Path:
    network, ssm = parse_network(spec)
    return api.train(work, CONFIG, network, 0, epochs=epochs, iters_per_epoch=iters, device=settings.device,
                     split_file=split_file, workers=settings.workers, ssm=ssm, compile=settings.compile,
                     cuda_graphs=settings.cuda_graphs,
                     val_batches=val_batches or settings.val_batches,
                     network_overrides=overrides(work, network, settings))


def link_images(data: Path, cases: list[str], folder: Path) -> Path:
    """A folder of symbolic links to the cases' channel files (an api.predict input)."""
    info = load_dataset_json(data)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for case in cases:
        for channel in range(len(info.channel_names)):
            name = f"{case}_{channel:04d}{info.file_ending}"
            os.symlink((data / "imagesTr" / name).resolve(), folder / name)
    return folder


def predict(work: Path, spec: str, images: Path, out: Path, tta: bool, settings: Settings) -> dict[str, Any]:
    """Time one api.predict call; s/case = call wall time / cases (model loading included)."""
    shutil.rmtree(out, ignore_errors=True)
    if settings.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    report = api.predict(work, images, out, configuration=CONFIG, network=tag_of(spec), folds=[0], tta=tta,
                         device=settings.device, overwrite=True)
    wall = time.perf_counter() - start
    if report.failed:
        raise RuntimeError(f"prediction failed for {report.failed}")
    per_case = list(report.seconds_per_case.values())
    return {"cases": len(per_case), "call_s": wall, "call_s_per_case": wall / len(per_case),
            "first_case_s": per_case[0],
            "median_s_per_case_after_first": median_after_first(per_case),
            "median_stage_s_after_first": stage_medians(report), "peak_alloc_gib": gpu_peaks(settings)[0]}


def dice(data: Path, pred: Path) -> tuple[dict[str, float], float]:
    summary = read_json(api.evaluate(pred, data / "labelsTr", dataset_json=data / "dataset.json"))
    return {name: v["dice"]["mean"] for name, v in summary["per_label"].items()}, summary["mean"]["dice"]


def gpu_peaks(settings: Settings) -> tuple[float | None, float | None]:
    if settings.device != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def prewarm(data: Path, work: Path, spec: str, split_file: Path, val_cases: list[str], scratch: Path,
            settings: Settings) -> None:
    """Two steps and one predicted case, unmeasured: the first call in a process compiles the
    selective scan's Triton kernels (20 s for lightm_unet's shapes) and the real run, in the
    same process, finds them compiled; the measured warm-up must find them so too. With
    --compile both start from empty caches instead, so this is skipped."""
    fold = train(work, spec, split_file, settings, 1, 2, val_batches=1)
    predict(work, spec, link_images(data, val_cases[:1], scratch / "prewarm_images"), scratch / "prewarm_pred", True,
            settings)
    shutil.rmtree(fold.parents[1])


def calibrate(data: Path, work: Path, spec: str, split_file: Path, val_cases: list[str], scratch: Path,
              settings: Settings) -> Calibration:
    """A short run of 3 epochs measures what the budget must cover; its folder is deleted.

    :func:`bench_schedule.training_costs` reads start-up (set-up, worker start, compile when
    compiling, the wait for the last writes), the steady rate and the per-epoch overhead
    from its log. Epoch 1 is not the steady one: its validation builds the validation
    batches, which later epochs reuse. Then ``calib_cases`` validation cases are predicted
    with TTA and scored: the median case after the first, plus scoring, per case, and the
    rest of the call once (model loading).
    """
    if settings.compile:
        fresh_compile_caches(scratch / "compile_cache_warmup")
    else:
        prewarm(data, work, spec, split_file, val_cases, scratch, settings)
    called_at = time.time()
    fold = train(work, spec, split_file, settings, 3, settings.warmup_iters)
    returned_at = time.time()
    startup_s, rate, val_s = training_costs(called_at, returned_at, read_json(fold / "training_log.json")["epochs"],
                                            settings.warmup_iters)
    cases = val_cases[: settings.calib_cases]
    timing = predict(work, spec, link_images(data, cases, scratch / "calib_images"), scratch / "calib_pred",
                     True, settings)
    start = time.perf_counter()
    dice(data, scratch / "calib_pred")
    score_s = time.perf_counter() - start
    # the sum of a case's stages, which overlap in a folder: a little more than its wall
    # share, so the final validation is estimated on the safe side
    case_s = timing["median_s_per_case_after_first"]
    shutil.rmtree(fold.parents[1])  # the real run starts from scratch
    return Calibration(startup_s=startup_s, iters_per_s=rate, val_s=val_s,
                       final_s_per_case=case_s + score_s / timing["cases"],
                       final_fixed_s=max(0.0, timing["call_s"] - case_s * timing["cases"]))


def bench_network(data: Path, work: Path, spec: str, split_file: Path, out: Path,
                  settings: Settings) -> dict[str, Any]:
    val_cases = read_json(split_file)[0]["val"]
    scratch = out / "scratch" / run_tag(spec, settings)
    val_images = link_images(data, val_cases, scratch / "val_images")
    cal = calibrate(data, work, spec, split_file, val_cases, scratch, settings)
    epochs, iters = choose_schedule(cal, settings.budget_s, settings.iters_per_epoch, len(val_cases),
                                    settings.max_iters)
    print(f"{spec}: warm-up {asdict(cal)} -> {epochs} epochs x {iters} iterations", flush=True)
    if settings.compile:
        fresh_compile_caches(scratch / "compile_cache")
    if settings.device == "cuda":  # peaks of this network's training alone
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fold = train(work, spec, split_file, settings, epochs, iters)
    train_s = time.perf_counter() - start
    peak_alloc, peak_reserved = gpu_peaks(settings)
    tta = predict(work, spec, val_images, scratch / "pred_tta", True, settings)
    per_label, mean = dice(data, scratch / "pred_tta")
    wall = time.perf_counter() - start
    if wall > 1.02 * settings.budget_s:
        print(f"WARNING {spec}: {wall:.0f} s used of a {settings.budget_s:.0f} s budget", flush=True)
    no_tta = predict(work, spec, val_images, scratch / "pred_notta", False, settings)
    log = read_json(fold / "training_log.json")
    meta = log["metadata"]
    params = network_complexity(meta["network"], meta["patch_size"], **meta["network_kwargs"]).parameters
    return {"name": run_tag(spec, settings), "wall_s": wall, "train_s": train_s, "budget_s": settings.budget_s,
            "schedule": f"{epochs}x{iters}", "calibration": asdict(cal),
            "iters_per_s": statistics.median(e["iters_per_s"] for e in log["epochs"]),
            "epoch_overhead": epoch_overhead(log["epochs"], iters),
            "batch": Plans.load(work).configuration(CONFIG).network(meta["network"]).batch_size,
            "patch": meta["patch_size"], "peak_alloc_gib": peak_alloc, "peak_reserved_gib": peak_reserved,
            "parameters_m": params / 1e6, "dice": per_label, "mean_dice": mean,
            "val_s_per_case": no_tta["call_s_per_case"],
            "val_s_per_case_tta": tta["call_s_per_case"], "val_timing": {"tta": tta, "no_tta": no_tta}}


def bench_brats(brats: Path, work: Path, networks: list[str], out: Path, settings: Settings) -> Iterator[dict]:
    """Inference s/case on BraTS-sized cases with each network's planned model (one training step)."""
    prepare(brats, work, networks, settings)
    folder = Plans.load(work).preprocessed_folder(work, CONFIG)
    cases = preprocessed_case_ids(folder)[: settings.brats_cases]
    split = out / "scratch" / "brats_split.json"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(json.dumps([{"train": cases[:-1], "val": cases[-1:]}]))
    images = link_images(brats, cases, out / "scratch" / "brats_images")
    for spec in networks:
        fold = train(work, spec, split, settings, 1, 1, val_batches=1)
        timing = {f"tta_{tta}": time_cases(work, tag_of(spec), CONFIG, images, out / "scratch" / "brats_pred",
                                           tta, settings.device, settings.predict_compile,
                                           settings.batch_windows)
                  for tta in (False, True)}
        meta = read_json(fold / "training_log.json")["metadata"]
        shutil.rmtree(fold.parents[1])
        # The anchor's span (infer_time.py): image array in, mask array out; files -> file
        # apart (bench_case_timing.py).
        yield {"name": run_tag(spec, settings, brats=True), "patch": meta["patch_size"], "timing": timing,
               "brats_s_per_case": timing["tta_False"]["median_array_to_mask_s_after_first"],
               "brats_s_per_case_tta": timing["tta_True"]["median_array_to_mask_s_after_first"],
               "brats_file_s_per_case": timing["tta_False"]["median_interval_s_after_first"],
               "brats_file_s_per_case_tta": timing["tta_True"]["median_interval_s_after_first"]}


def smoke_inputs(out: Path) -> tuple[Path, Path, Path]:
    """A tiny phantom, its one-fold split file and a 2-channel phantom standing in for BraTS."""
    data = api.make_phantom(out / "phantom" / "Dataset900_Phantom", cases=6, shape=(16, 24, 24),
                            spacing=(1.0, 1.0, 1.0), num_labels=2)
    cases = [p.name[: -len("_0000.nii.gz")] for p in sorted((data / "imagesTr").glob("*_0000.nii.gz"))]
    split = out / "phantom" / "splits_final.json"
    split.write_text(json.dumps([{"train": cases[:-2], "val": cases[-2:]}]))
    brats = api.make_phantom(out / "phantom" / "Dataset901_Phantom2ch", cases=3, shape=(16, 24, 24),
                             spacing=(1.0, 1.0, 1.0), channels=2, num_labels=2, seed=1)
    return data, split, brats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="results (JSON per network and dataset), work and scratch")
    parser.add_argument("--data", type=Path, help="hippocampus raw dataset (nnU-Net v2 layout)")
    parser.add_argument("--split-file", type=Path, help="nnU-Net splits_final.json (fold 0 is used)")
    parser.add_argument("--networks", nargs="+", default=DEFAULT_NETWORKS, help="NAME or NAME:none (ssm)")
    parser.add_argument("--budget", type=float, default=250.0, help="wall seconds per network (nnU-Net's)")
    parser.add_argument("--device", default="cuda", help="cuda or cpu (smoke: cpu)")
    parser.add_argument("--gpu-memory", type=float, default=10.0, help="planner's GB (api.plan's default)")
    for name, default in [("iters-per-epoch", 250), ("val-batches", 50), ("warmup-iters", 250),
                          ("calib-cases", 4), ("brats-cases", 3), ("workers", None), ("batch-windows", None)]:
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--compile", action="store_true",
                        help="train with torch.compile (cold caches: the compile counts in the budget)")
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="train every step eagerly (results tagged __eager)")
    parser.add_argument("--brats", type=Path, help="BraTS-sized raw dataset: time inference on its cases")
    parser.add_argument("--predict-compile", action="store_true",
                        help="BraTS: predict with torch.compile (results tagged __predict-compile; the first "
                             "case, which compiles, is left out of s/case as always)")
    parser.add_argument("--table-only", action="store_true", help="print the table of OUT/*.json and exit")
    parser.add_argument("--prepare-only", action="store_true",
                        help="plan and preprocess --data, then exit (before runs in parallel, one per GPU)")
    parser.add_argument("--smoke", action="store_true", help="CPU, phantom, tiny network, 2 iterations")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        # A budget no loaded CI machine can overrun: the 2-iteration cap decides the schedule.
        settings = Settings(device="cpu", budget_s=3600.0, iters_per_epoch=2, val_batches=1, warmup_iters=1,
                            calib_cases=1, max_iters=2, workers=0, features=4, brats_cases=3,
                            predict_compile=args.predict_compile, batch_windows=args.batch_windows)
        args.data, args.split_file, args.brats = smoke_inputs(out)
    else:
        settings = Settings(device=args.device, budget_s=args.budget, iters_per_epoch=args.iters_per_epoch,
                            val_batches=args.val_batches, warmup_iters=args.warmup_iters,
                            calib_cases=args.calib_cases, workers=args.workers, brats_cases=args.brats_cases,
                            compile=args.compile, cuda_graphs=not args.no_cuda_graphs,
                            predict_compile=args.predict_compile, gpu_memory_gb=args.gpu_memory,
                            batch_windows=args.batch_windows)
    if not args.table_only:
        run(args, out, settings)
    if not args.prepare_only:
        print(table(out), flush=True)


def run(args: argparse.Namespace, out: Path, settings: Settings) -> None:
    if args.data is not None:
        if args.split_file is None:
            raise SystemExit("--split-file is needed with --data (fold 0 of nnU-Net's split)")
        work = out / "work"
        print("prepare:", prepare(args.data.resolve(), work, args.networks, settings), flush=True)
        if args.prepare_only:
            return
        for spec in args.networks:
            result = bench_network(args.data.resolve(), work, spec, args.split_file.resolve(), out, settings)
            write_json(out / f"hippocampus__{result['name']}.json", result)
            print(json.dumps({k: v for k, v in result.items() if k != "val_timing"}), flush=True)
    if args.brats is not None:
        for result in bench_brats(args.brats.resolve(), out / "work_brats", args.networks, out, settings):
            write_json(out / f"brats__{result['name']}.json", result)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
