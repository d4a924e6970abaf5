"""Run one function over many cases in worker processes, with a rich progress bar.

Reading NIfTI files is CPU-bound (gzip), so processes rather than threads. With 0 or 1
worker (or one item) everything runs in this process: simpler to debug, no pool start-up,
no /dev/shm.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medmamba.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """min(4, CPU count): reading is I/O and gzip bound, more processes rarely pay off."""
    return max(1, min(4, os.cpu_count() or 1))


def check_workers(workers: int | None) -> int:
    """``workers`` as an int >= 0 (None -> default_workers(); 0 = this process only)."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be a non-negative integer, got {workers!r}")
    return workers


def progress_bar(description: str, enabled: bool = True) -> Progress:
    """A transient progress bar on stderr (stdout stays clean for results); shown only
    on a terminal, since elsewhere (logs, pipes) it would leave just a blank line."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )


def map_with_progress(function: Callable[[T], R], items: Sequence[T], workers: int | None = None,
                      description: str = "working", progress: bool = True) -> list[R]:
    """``[function(item) for item in items]`` over ``workers`` processes, in item order.

    ``function`` and the items must be picklable (a module-level function, dataclasses).
    """
    workers = min(check_workers(workers), len(items))
    with progress_bar(description, progress) as bar:
        task = bar.add_task(description, total=len(items))
        if workers <= 1:
            results = []
            for item in items:
                results.append(function(item))
                bar.advance(task)
            return results
        chunksize = max(1, len(items) // (workers * 8))
        with ProcessPoolExecutor(max_workers=workers) as executor:
            results = []
            for result in executor.map(function, items, chunksize=chunksize):
                results.append(result)
                bar.advance(task)
            return results
