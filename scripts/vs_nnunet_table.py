"""The tables of scripts/bench_vs_nnunet.py: nnU-Net's anchor rows first, then every
network's JSON result in an output folder (hippocampus rows, then BraTS timings).

    python scripts/vs_nnunet_table.py LOGS --cases 42 [--gpus 2] --out RESULTS/nnunet__rerun.json
        # a row of the table from an nnU-Net re-run's output (LOGS/nnunet.log and gpu_mem.csv)
    python scripts/vs_nnunet_table.py --brats-log LOG --out RESULTS/nnunet_brats__rerun.json
        # a BraTS row from the output of anchors/nnunet_h100/infer_time.py
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from medmamba.data.io import atomic_write_text

ANCHOR_SOURCE = ("../shared/ANCHORS.md section 2: nnU-Net v2.8.1 measured on the H100 (torch 2.11, "
                 "nnUNetTrainer_20epochs, fold 0 of its own split); inference s/case there is a whole "
                 "`nnUNetv2_predict` command over 52 held-out cases, BraTS per case by "
                 "anchors/nnunet_h100/infer_time.py; peak memory from nvidia-smi (CUDA context included)")
# Constants copied from ANCHORS.md, not measured by this script.
NNUNET_MEASURED = {"name": "nnU-Net v2.8.1 (anchor, measured)", "wall_s": 250, "schedule": "20x250",
                   "iters_per_s": 45.0, "batch": 7, "peak_alloc_gib": None, "peak_reserved_gib": 1.7,
                   "parameters_m": None, "dice": {"Anterior": 0.891, "Posterior": 0.875}, "mean_dice": 0.883,
                   "val_s_per_case": 0.55, "val_s_per_case_tta": 0.6, "brats_s_per_case": 0.86,
                   "brats_s_per_case_tta": 2.28}
NNUNET_PUBLISHED = {"name": "nnU-Net (published, MSD test set, 1000 epochs; arXiv 1809.10486)",
                    "dice": {"Anterior": 0.90, "Posterior": 0.89}, "mean_dice": 0.895}


RERUN_NAME = "nnU-Net v2.8.1 (re-run, same session)"


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(Path(path), json.dumps(value, indent=2) + "\n")


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def fmt(value: Any, digits: int = 2) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(out: Path) -> str:
    """Markdown tables of the results written so far to ``out``: hippocampus, then BraTS."""
    rows, brats = collect(out)
    labels = list(NNUNET_MEASURED["dice"])
    for row in rows:
        labels += [k for k in row.get("dice", {}) if k not in labels]
    head = (["network", "wall s", "epochs x it", "it/s", "batch", "peak alloc GiB", "peak reserved GiB",
             "params M"] + [f"Dice {k}" for k in labels] + ["mean Dice", "val s/case", "val s/case TTA"])
    lines = [markdown_row(head), "|" + "---|" * len(head)]
    for row in [NNUNET_MEASURED, NNUNET_PUBLISHED, *rows]:
        cells = [row["name"], fmt(row.get("wall_s"), 0), fmt(row.get("schedule")), fmt(row.get("iters_per_s"), 1),
                 fmt(row.get("batch")), fmt(row.get("peak_alloc_gib")), fmt(row.get("peak_reserved_gib")),
                 fmt(row.get("parameters_m"))] + [fmt(row.get("dice", {}).get(k), 3) for k in labels]
        cells += [fmt(row.get("mean_dice"), 3), fmt(row.get("val_s_per_case")), fmt(row.get("val_s_per_case_tta"))]
        lines.append(markdown_row(cells))
    text = "\n".join(lines) + f"\n\nnnU-Net anchor rows: constants from {ANCHOR_SOURCE}."
    return text + ("\n\n" + brats_table(brats) if brats else "")


def brats_table(brats: dict[str, dict]) -> str:
    """BraTS-sized inference: the anchor's span (array in, mask out), then with the files."""
    head = ["network", "patch", "array->mask s/case", "TTA", "files->file s/case", "TTA",
            "read s", "write s", "peak alloc GiB"]
    lines = [markdown_row(head), "|" + "---|" * len(head)]
    anchor = {"name": "nnU-Net v2.8.1 (anchor, H100)", "patch": "96x160x160",
              "brats_s_per_case": NNUNET_MEASURED["brats_s_per_case"],
              "brats_s_per_case_tta": NNUNET_MEASURED["brats_s_per_case_tta"]}
    lines += [markdown_row(brats_cells(row["name"], row)) for row in [anchor, *brats.values()]]
    return "\n".join(lines)


def brats_cells(name: str, row: dict) -> list[str]:
    """One BraTS row. nnU-Net's rows (the anchor, nnunet_brats_row) have only the
    array->mask span; ours also the files and stages, apart from results written before
    the stages were timed, whose s/case is the whole case. Results written before folder
    prediction overlapped its stages (session 13 and earlier) give files->file as the sum
    of the stages; later ones as the time between consecutive cases' outputs."""
    if "timing" in row and "brats_file_s_per_case" not in row:
        row = {**row, "brats_file_s_per_case": row["brats_s_per_case"], "brats_s_per_case": None,
               "brats_file_s_per_case_tta": row["brats_s_per_case_tta"], "brats_s_per_case_tta": None}
    timing = row.get("timing", {})
    stages = timing.get("tta_False", {}).get("median_stage_s_after_first", {})
    patch = row["patch"] if isinstance(row["patch"], str) else "x".join(str(p) for p in row["patch"])
    peak = timing["tta_True"]["peak_alloc_gib"] if timing else row.get("peak_alloc_gib")
    return [name, patch, fmt(row["brats_s_per_case"]), fmt(row["brats_s_per_case_tta"]),
            fmt(row.get("brats_file_s_per_case")), fmt(row.get("brats_file_s_per_case_tta")),
            fmt(stages.get("read")), fmt(stages.get("write")), fmt(peak)]


def collect(out: Path) -> tuple[list[dict], dict[str, dict]]:
    """The hippocampus rows (nnU-Net re-runs first) and the BraTS timings (by network tag)."""
    paths = sorted(out.glob("nnunet_brats__*.json")) + sorted(out.glob("brats__*.json"))
    brats = {r["name"]: r for r in (read_json(p) for p in paths)}
    rerun = [read_json(p) for p in sorted(out.glob("nnunet__*.json"))]
    return rerun + [read_json(p) for p in sorted(out.glob("hippocampus__*.json"))], brats


def nnunet_rerun_row(log: str, gpu_memory_csv: str, cases: int, gpu: int = 0, gpus: int = 1,
                     name: str = RERUN_NAME) -> dict:
    """A table row from the output of anchors/nnunet_h100/run.sh (the folder that
    scripts/prepare_nnunet_anchor.sh builds) and its nvidia-smi memory log.

    run.sh prints "52 cases" whatever its ts/ folder holds: ``cases`` is the real count.
    With ``gpus`` > 1 the memory log interleaves the GPUs; ``gpu`` picks one.
    """
    def found(pattern: str) -> str:
        match = re.search(pattern, log)
        if match is None:
            raise ValueError(f"nnU-Net log: no line matches {pattern!r} (did the run finish?)")
        return match.group(1)

    def number(pattern: str) -> float:
        return float(found(pattern))

    wall_s = number(r"train rc=0 wall ([0-9.]+) s")  # first: a failed run stops here
    dice = ast.literal_eval(found(r"val fold0 mean [0-9.]+ (\{.*\})"))
    epoch_s = [float(v) for v in re.findall(r"Epoch time: ([0-9.]+) s", log)]
    if not epoch_s:
        raise ValueError("nnU-Net log: no 'Epoch time' lines")
    if not 0 <= gpu < gpus:
        raise ValueError(f"gpu {gpu} is not one of the {gpus} GPUs in the memory log")
    memory = [float(v) for v in gpu_memory_csv.split()[gpu::gpus]]
    if not memory:
        raise ValueError("the GPU memory log is empty")
    # iters_per_s from nnU-Net's epoch times (its per-epoch validation included; run.sh keeps
    # the last epochs' lines), where ours count training steps only.
    return {"name": name, "wall_s": wall_s, "schedule": "20x250",
            "iters_per_s": 250 / statistics.median(epoch_s), "batch": 7, "peak_reserved_gib": max(memory) / 1024,
            "dice": {"Anterior": dice["1"], "Posterior": dice["2"]},
            "mean_dice": number(r"val fold0 mean ([0-9.]+)"),
            "val_s_per_case": number(r"predict notta rc=0 \d+ cases ([0-9.]+) s") / cases,
            "val_s_per_case_tta": number(r"predict tta rc=0 \d+ cases ([0-9.]+) s") / cases}


def nnunet_brats_row(log: str, name: str = RERUN_NAME) -> dict:
    """A BraTS row from the output of anchors/nnunet_h100/infer_time.py: its whole-case
    medians (image array in, mask out; the first case left out), as the anchor's."""
    def median(tta: bool, what: str) -> float:
        match = re.search(rf"TTA={tta}: whole case median ([0-9.]+) s, sliding window median ([0-9.]+) s", log)
        if match is None:
            raise ValueError(f"infer_time.py log: no 'TTA={tta}:' summary line (did it finish?)")
        return float(match.group(1 if what == "whole" else 2))

    patch = re.search(r"patch \[([0-9, ]+)\]", log)
    peak = re.search(r"peak GPU memory GiB ([0-9.]+)", log)
    return {"name": name, "patch": "x".join(patch.group(1).replace(" ", "").split(",")) if patch else "-",
            "brats_s_per_case": median(False, "whole"), "brats_s_per_case_tta": median(True, "whole"),
            "sliding_window_s": median(False, "window"), "sliding_window_s_tta": median(True, "window"),
            "peak_alloc_gib": float(peak.group(1)) if peak else None}


def main() -> None:
    parser = argparse.ArgumentParser(description="A table row (JSON) from an nnU-Net re-run's output")
    parser.add_argument("folder", type=Path, nargs="?", help="holds nnunet.log (run.sh's stdout) and gpu_mem.csv")
    parser.add_argument("--out", type=Path, required=True, help="the row's JSON: RESULTS/nnunet__NAME.json")
    parser.add_argument("--cases", type=int, help="cases in run.sh's ts/ folder")
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--gpus", type=int, default=1, help="GPUs interleaved in gpu_mem.csv")
    parser.add_argument("--name", default=RERUN_NAME)
    parser.add_argument("--brats-log", type=Path, help="infer_time.py's output: write a BraTS row instead")
    args = parser.parse_args()
    if args.brats_log is not None:
        row = nnunet_brats_row(args.brats_log.read_text(), args.name)
    elif args.folder is None or args.cases is None:
        parser.error("FOLDER and --cases are needed without --brats-log")
    else:
        row = nnunet_rerun_row((args.folder / "nnunet.log").read_text(),
                               (args.folder / "gpu_mem.csv").read_text(), args.cases, args.gpu, args.gpus, args.name)
    write_json(args.out, row)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
