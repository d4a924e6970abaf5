"""How many sliding windows share a forward pass when the caller leaves it to us.

On a GPU a case's windows run fastest together, one pass per mirrored copy: compiled
networks at 96x160x160 on an H200 took 9.5 ms a window at 4 per pass, 9.1 at 8, 8.7 at
16 and 8.9 at 32 (scripts/bench_window_forward.py, session 14), and BraTS with TTA went
from 1.00 to 0.94 s a case with its 12 windows in one pass instead of three (session 15).
Memory grows with the batch, so the batch is capped by what one window's forward takes,
measured once, against half the device memory still free. On the CPU larger batches buy
nothing and cost memory: 4, the default before this choice existed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)
T = TypeVar("T")

CPU_WINDOW_BATCH = 4
MAX_WINDOW_BATCH = 16  # 32 was slower than 16 in the bench above
FREE_MEMORY_SHARE = 0.5  # the rest: stitching buffers, mirrored copies, other processes


def window_count(image_shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding_window_inference cuts from one image of ``image_shape``
    (spatial axes): the image padded to the patch, steps of ``patch * (1 - overlap)``."""
    total = 1
    for size, patch in zip(image_shape, patch_size):
        size = max(int(size), int(patch))
        step = int(patch) if size == patch else max(1, int(patch * (1 - overlap)))
        total *= 1 + max(0, math.ceil((size - patch) / step))
    return total


def window_bytes(network: Callable[[torch.Tensor], torch.Tensor], channels: int,
                 patch_size: Sequence[int], device: torch.device,
                 autocast: Callable[[], contextlib.AbstractContextManager]) -> int:
    """Peak device memory of one window's forward beyond what was allocated before it.

    Resets the device's peak-memory counter (callers reading it should do so after).
    """
    window = torch.zeros((1, channels, *patch_size), device=device)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), autocast():
        network(window)
    torch.cuda.synchronize(device)
    return max(1, torch.cuda.max_memory_allocated(device) - before)


def free_device_bytes(device: torch.device) -> int:
    """Memory a new allocation can get: free on the device plus what PyTorch's caching
    allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def auto_window_batch(windows: int, per_window_bytes: int, free_bytes: int) -> int:
    """All ``windows`` in one pass where a share of ``free_bytes`` holds them, at most
    MAX_WINDOW_BATCH and at least 1."""
    fits = int(FREE_MEMORY_SHARE * free_bytes) // max(1, per_window_bytes)
    return max(1, min(windows, fits, MAX_WINDOW_BATCH))


def halve_on_out_of_memory(run: Callable[[int], T], batch: int) -> tuple[T, int]:
    """``run(batch)``; when the device runs out of memory (other processes may have taken
    what was free when the batch was chosen), free PyTorch's cached blocks and run again
    at half the batch, down to 1. Returns the result and the batch that ran."""
    while True:
        try:
            return run(batch), batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
        # outside the except block: the traceback no longer holds the failed pass's tensors
        smaller = max(1, batch // 2)
        logger.warning("out of GPU memory at %d windows a pass; trying %d", batch, smaller)
        batch = smaller
        torch.cuda.empty_cache()
