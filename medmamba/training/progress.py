"""training_log.json and progress.png, rewritten (atomically) after every epoch."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmamba.data.io import atomic_write_bytes, atomic_write_text

LOG_FILE = "training_log.json"
PLOT_FILE = "progress.png"


def write_log(folder: Path, header: dict[str, Any], epochs: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(Path(folder) / LOG_FILE, json.dumps({**header, "epochs": list(epochs)}, indent=2) + "\n")


def plot_progress(folder: Path, epochs: Sequence[dict[str, Any]], label_names: dict[int, str]) -> None:
    """Loss (train/val), validation Dice per label with its EMA, and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    x = [e["epoch"] for e in epochs]
    figure = Figure(figsize=(9, 9), dpi=80)
    loss_ax, dice_ax, lr_ax = figure.subplots(3, 1, sharex=True)
    loss_ax.plot(x, [e["train_loss"] for e in epochs], label="train")
    loss_ax.plot(x, [e["val_loss"] for e in epochs], label="val")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(loc="upper right")
    for index, name in label_names.items():
        dice_ax.plot(x, [e["val_dice"].get(name, float("nan")) for e in epochs], label=name)
    dice_ax.plot(x, [e["ema_dice"] for e in epochs], "k--", label="EMA of mean")
    dice_ax.set_ylabel("validation Dice")
    dice_ax.set_ylim(0, 1)
    dice_ax.legend(loc="lower right", fontsize="small")
    lr_ax.plot(x, [e["lr"] for e in epochs])
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("epoch")
    for ax in (loss_ax, dice_ax, lr_ax):
        ax.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(Path(folder) / PLOT_FILE, buffer.getvalue())
