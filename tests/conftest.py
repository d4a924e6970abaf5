"""Shared test fixtures and markers.

Triton kernels run through Triton's interpreter on machines without a GPU; the variable
must be set before triton is first imported, hence here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not _HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def shared_dataset() -> Callable[[str], Path]:
    """``shared_dataset(name)``: a real dataset under ../shared/data, or skip with a message.

    A fixture rather than a function: test folders cannot import this module by name
    (every conftest.py is a module called ``conftest``).
    """

    def find(name: str) -> Path:
        path = SHARED_DATA / name
        if not (path / "dataset.json").is_file():
            pytest.skip(f"real dataset {name} not found under {SHARED_DATA}")
        return path

    return find


@pytest.fixture
def anchors_dir() -> Path:
    """../shared/anchors (nnU-Net's own plans for the shared data)."""
    return SHARED_DATA.parent / "anchors"
