"""How many sliding windows share a forward pass when the caller leaves it to us.

On a GPU a case's windows run fastest together, one pass per mirrored copy: compiled
networks at 96x160x160 on an H200 took 9.5 ms a window at 4 per pass, 9.1 at 8, 8.7 at
16 and 8.9 at 32 (scripts/bench_window_forward.py, session 14), and BraTS with TTA went
from 1.00 to 0.94 s a case with its 12 windows in one pass instead of three (session 15).
Memory grows with the batch, so the batch is capped by what one more window adds to a
forward pass, measured once, against half the device memory the case's own buffers leave
free; never below 4, the fixed number before this choice existed (a pass that runs out of
memory is halved instead). On the CPU larger batches buy nothing and cost memory: 4.
"""

from __future__ import annotations

import contextlib
import gc
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
    """Device memory one more window adds to a forward pass: the peaks of passes of one and
    two windows apart, after an untimed pass (cuDNN's autotuning trials, autocast's weight
    copies and library workspaces are paid once, not per window).

    Resets the device's peak-memory counter: a peak read afterwards covers only what ran
    after this probe.
    """
    def peak(count: int) -> int:
        windows = torch.zeros((count, channels, *patch_size), device=device)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode(), autocast():
            network(windows)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    peak(1)
    one = peak(1)
    return max(1, peak(2) - one)


def free_device_bytes(device: torch.device) -> int:
    """Memory a new allocation can get: free on the device plus what PyTorch's caching
    allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def auto_window_batch(windows: int, per_window_bytes: int, free_bytes: int) -> int:
    """All ``windows`` in one pass where a share of ``free_bytes`` holds them, at most
    MAX_WINDOW_BATCH, and never fewer than min(windows, 4), the fixed number this choice
    replaced (an out-of-memory pass is halved by ``halve_on_out_of_memory``)."""
    fits = int(FREE_MEMORY_SHARE * max(0, free_bytes)) // max(1, per_window_bytes)
    return max(min(windows, CPU_WINDOW_BATCH), min(windows, fits, MAX_WINDOW_BATCH))


def stitching_bytes(image_voxels: int, classes: int) -> int:
    """Memory a case needs whatever the window batch (fp32): MONAI's output sum and weight
    count, the softmax of the logits and the fold sum."""
    return (3 * classes + 2) * image_voxels * 4


def halve_on_out_of_memory(run: Callable[[int], T], batch: int) -> tuple[T, int]:
    """``run(batch)``; when the device runs out of memory (other processes may have taken
    what was free when the batch was chosen), free PyTorch's cached blocks and run again
    at half the batch, down to 1. Returns the result and the batch that ran.

    Only ``torch.OutOfMemoryError`` is retried: an allocation failure that a library reports
    as another error (cuDNN, or dynamo wrapping it while compiling) is raised as it is."""
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
        gc.collect()  # tensors held only by reference cycles
        torch.cuda.empty_cache()
