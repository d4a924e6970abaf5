"""Fixtures of the kernel tests."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _fresh_replays():
    """Each test starts without recorded host-function calls (replay.py): a test that
    monkeypatches a host function's internals must run them, not a replay recorded by an
    earlier test. Nothing to do where the Triton host functions were never imported."""
    yield
    for name, attribute in (("triton_fwd", "selective_scan_fwd_triton"),
                            ("triton_bwd", "selective_scan_bwd_triton")):
        module = sys.modules.get(f"medmamba_kernels.selective_scan.{name}")
        if module is not None:
            getattr(module, attribute).forget()


@pytest.fixture
def launches(monkeypatch):
    """The package's kernels stood in for on the CPU, each launch logged (the log)."""
    from stand_in_launches import stand_in_launches

    yield from stand_in_launches(monkeypatch)
