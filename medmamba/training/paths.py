"""Where a training run keeps its files."""

from __future__ import annotations

from pathlib import Path

RESULTS_DIR = "results"


def network_tag(network: str, ssm: str | None = None) -> str:
    """The results folder name: ``umamba_bot``, or ``umamba_bot__ssm-none`` for the ablation."""
    return f"{network}__ssm-{ssm}" if ssm not in (None, "mamba") else network


def fold_dir(work: Path, network: str, configuration: str, fold: int, ssm: str | None = None) -> Path:
    """WORK/results/<network_tag>/<configuration>/fold_<fold>/."""
    return Path(work) / RESULTS_DIR / network_tag(network, ssm) / configuration / f"fold_{fold}"
