"""The table of scripts/bench_vs_nnunet.py: nnU-Net's anchor rows first, then every
network's JSON result in an output folder (hippocampus rows, BraTS timings joined by tag)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def fmt(value: Any, digits: int = 2) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(out: Path) -> str:
    """Markdown table of the results written so far to ``out``."""
    rows, brats = collect(out)
    labels = list(NNUNET_MEASURED["dice"])
    for row in rows:
        labels += [k for k in row.get("dice", {}) if k not in labels]
    head = (["network", "wall s", "epochs x it", "it/s", "batch", "peak alloc GiB", "peak reserved GiB",
             "params M"] + [f"Dice {k}" for k in labels]
            + ["mean Dice", "val s/case", "val s/case TTA", "BraTS s/case", "BraTS s/case TTA"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in [NNUNET_MEASURED, NNUNET_PUBLISHED, *rows]:
        b = brats.get(row["name"], row)
        cells = [row["name"], fmt(row.get("wall_s"), 0), fmt(row.get("schedule")), fmt(row.get("iters_per_s"), 1),
                 fmt(row.get("batch")), fmt(row.get("peak_alloc_gib")), fmt(row.get("peak_reserved_gib")),
                 fmt(row.get("parameters_m"))] + [fmt(row.get("dice", {}).get(k), 3) for k in labels]
        cells += [fmt(row.get("mean_dice"), 3), fmt(row.get("val_s_per_case")), fmt(row.get("val_s_per_case_tta")),
                  fmt(b.get("brats_s_per_case")), fmt(b.get("brats_s_per_case_tta"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nnnU-Net rows: constants from {ANCHOR_SOURCE}."


def collect(out: Path) -> tuple[list[dict], dict[str, dict]]:
    """The hippocampus rows and the BraTS timings (by network tag) written so far to ``out``."""
    brats = {r["name"]: r for r in (read_json(p) for p in sorted(out.glob("brats__*.json")))}
    return [read_json(p) for p in sorted(out.glob("hippocampus__*.json"))], brats
