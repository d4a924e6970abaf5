"""Stand-ins for the package's Triton kernels: CPU tensors launched as a GPU's would be,
each launch logged as the compiled kernel's launch function receives it (the replay and
inference-shortcut tests)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from medmamba_kernels.selective_scan import launch as launch_module
from medmamba_kernels.selective_scan import triton_bwd, triton_fwd
from medmamba_kernels.selective_scan.launch import CachedLaunch
from replay_launch_log import STREAM


class Compiled:
    """A compiled kernel as Triton 3.4-3.9 expose it, whose launch function logs."""

    packed_metadata = ("packed",)

    def __init__(self, name: str, log: list) -> None:
        self.function = name
        self._log = log

    def __getitem__(self, grid: tuple) -> Callable[..., None]:
        return lambda *args: self._log.append(("runner", self.function, grid, args))

    def run(self, gx: int, gy: int, gz: int, stream: int, function: str, packed: tuple,
            *rest: Any) -> None:
        addresses = list(rest[3:])
        self._log.append(("run", function, (gx, gy, gz), stream, addresses))


class StandInJit:
    """A @triton.jit kernel whose launches log their arguments and compile to Compiled."""

    def __init__(self, jit: Any, log: list) -> None:
        self.fn = jit.fn if hasattr(jit, "fn") else jit
        self._name = self.fn.__name__
        self._log = log

    def __getitem__(self, grid: tuple) -> Callable[..., Compiled]:
        def call(*args: Any, **kwargs: Any) -> Compiled:
            self._log.append(("triton", self._name, grid, args, kwargs))
            return Compiled(self._name, self._log)
        return call


def stand_in_launches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """The package's kernels stood in for, CPU tensors launched as a GPU's would be;
    yields the log of launches (conftest's `launches` fixture). Caches start empty and
    are restored afterwards."""
    log: list = []
    package = importlib.import_module("medmamba_kernels.selective_scan")
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for launcher in [v for v in vars(module).values() if isinstance(v, CachedLaunch)]:
            monkeypatch.setattr(launcher, "_fn", StandInJit(launcher._fn, log))
            for cache in ("_runners", "_keyed", "_resident"):
                monkeypatch.setattr(launcher, cache, {})
    monkeypatch.setattr(launch_module, "current_device", lambda tensor: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: STREAM,
                        raising=False)
    for fn in (triton_fwd.selective_scan_fwd_triton, triton_bwd.selective_scan_bwd_triton):
        fn.forget()
    yield log
    for fn in (triton_fwd.selective_scan_fwd_triton, triton_bwd.selective_scan_bwd_triton):
        fn.forget()
