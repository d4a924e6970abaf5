"""The one parser of ``--device`` for training and inference."""

from __future__ import annotations

import torch

from medmamba.errors import ConfigError


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``None`` -> CUDA when available, else CPU; ``cuda`` -> GPU ``local_rank`` (torchrun).

    An unknown or unavailable device is a ConfigError, not torch's RuntimeError.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cuda", "cpu"):
        raise ConfigError(f"unknown device '{device}'; allowed: cuda, cpu")
    if parsed.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    index = parsed.index if parsed.index is not None else local_rank
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
