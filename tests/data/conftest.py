"""Fixtures for the data tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

# Same place as tests/conftest.py's SHARED_DATA; that module cannot be imported by name
# from here (every conftest.py is a module called "conftest").
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_dataset() -> Callable[[str], Path]:
    """``shared_dataset(name)``: a real dataset under ../shared/data, or skip with a message."""

    def find(name: str) -> Path:
        path = SHARED_DATA / name
        if not (path / "dataset.json").is_file():
            pytest.skip(f"real dataset {name} not found under {SHARED_DATA}")
        return path

    return find
