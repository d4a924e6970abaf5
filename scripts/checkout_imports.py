"""`medmamba` and `medmamba_kernels` importable from a plain checkout, for the scripts
that run on the GPU machine without installing the package."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bootstrap() -> None:
    """Put the repository on sys.path; where `medmamba_kernels` is not installed, its
    source folder `kernels/` stands in for it."""
    sys.path.insert(0, str(REPO))
    try:
        importlib.import_module("medmamba_kernels")
    except ImportError:
        sys.modules["medmamba_kernels"] = importlib.import_module("kernels")
