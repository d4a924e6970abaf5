"""Epoch outputs (checkpoints, log, plot) written by a background thread.

With CUDA graphs an epoch of small patches takes a few seconds, and writing its outputs
took about a second more on an H200 (a 211 MB checkpoint with fsync, the log, the plot):
a third of the time went to writes the GPU need not wait for. The trainer now hands a
snapshot (every tensor copied to the host, so training may change the originals) to one
background thread and starts the next epoch.

One write is in flight at a time: the next ``submit`` first waits for the previous one,
so files are written in epoch order and at most one snapshot is held. An error in the
thread is raised in the trainer at the next ``submit`` or ``close``. ``close`` waits for
the last write; the trainer calls it before ``run`` returns or raises, so a finished or
interrupted (not killed) run leaves its last checkpoint complete. A killed process leaves
the previous checkpoint, whole: every file is written under a temporary name and renamed.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


def host_snapshot(obj: Any) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: host_snapshot(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_snapshot(value) for value in obj)
    return obj


class BackgroundWriter:
    """``submit(fn, *args)`` runs ``fn(*args)`` in a background thread, one call at a time;
    ``background=False`` runs it at once instead (same interface)."""

    def __init__(self, background: bool = True) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medmamba-writer") if background else None
        self._pending: Future | None = None

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self.wait()
        if self._executor is None:
            fn(*args)
            return
        self._pending = self._executor.submit(fn, *args)

    def wait(self) -> None:
        """Block until the write in flight is done; re-raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
