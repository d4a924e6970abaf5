"""CPU training speed and short-run Dice on the default phantom.

    python scripts/bench_train_cpu.py OUT [--networks plainconv_unet umamba_bot]
        [--features 8 16 32 64] [--patch 16 32 32] [--epochs 4] [--iters 25] [--threads 2]

OUT/work is reused when it holds a plans.json (make it elsewhere when this machine has no
image IO); otherwise the default phantom (20 cases, 32x48x48) is made and planned there.

Prints per network: wall iterations/s, CPU seconds per iteration (independent of other
load on the machine: on an idle machine wall s/it ~ CPU s/it / threads), and the
validation Dice per label after the run (patch-based, from training_log.json).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import torch

from medmamba import api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--networks", nargs="+", default=["plainconv_unet", "umamba_bot"])
    parser.add_argument("--features", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--patch", nargs="+", type=int, default=None, help="default: the plan's")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iters", type=int, default=25)
    parser.add_argument("--val-batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--optimizer", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, work = args.out / "data", args.out / "work"
    if not (work / "plans.json").is_file():
        api.make_phantom(data, cases=20, seed=0)
        api.plan(data, work, families=args.networks)
        api.preprocess(work, ["3d_fullres"])
    for network in args.networks:
        shutil.rmtree(work / "results" / network, ignore_errors=True)
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        fold_dir = api.train(work, "3d_fullres", network, 0, epochs=args.epochs, iters_per_epoch=args.iters,
                             val_batches=args.val_batches, device="cpu", workers=args.workers,
                             optimizer=args.optimizer, lr=args.lr,
                             patch_size=tuple(args.patch) if args.patch else None,
                             network_overrides={"features_per_stage": args.features})
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
        epochs = json.loads((fold_dir / "training_log.json").read_text())["epochs"]
        its = [e["iters_per_s"] for e in epochs]
        n_iter = args.epochs * args.iters
        print(json.dumps({
            "network": network, "features": args.features, "patch": args.patch, "optimizer": args.optimizer,
            "lr": args.lr, "threads": args.threads, "iterations": n_iter,
            "train_iters_per_s_median": sorted(its)[len(its) // 2],
            "cpu_s_per_iter_incl_val": cpu / n_iter, "wall_s_total": wall,
            "val_dice_per_epoch": [e["val_dice"] for e in epochs],
            "train_loss_per_epoch": [round(e["train_loss"], 4) for e in epochs],
        }))


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
