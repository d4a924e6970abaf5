"""Measuring networks on a GPU: peak training memory and step times (scripts use these).

A training step here is what the trainer does per iteration: bf16 autocast forward with
deep supervision, a cross-entropy per output against a target at that resolution,
backward, SGD with Nesterov momentum (nnU-Net's optimizer; its momentum buffer is one
copy of the parameters). Also: per-stage activation weights of a family, counted from
the sizes of its convolution outputs, for the planner's memory model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class StepMeasurement:
    peak_allocated: int  # torch.cuda.max_memory_allocated during a steady step
    peak_reserved: int  # torch.cuda.max_memory_reserved (what the allocator holds)
    context: int  # CUDA context + libraries outside the allocator (from mem_get_info)
    step_ms: float  # median fwd+bwd+optimizer step

    @property
    def total(self) -> int:
        """What the process needs on the card: reserved memory plus the context."""
        return self.peak_reserved + self.context


def _targets(outputs: list[torch.Tensor], num_classes: int) -> list[torch.Tensor]:
    return [torch.randint(0, num_classes, (o.shape[0], *o.shape[2:]), device=o.device) for o in outputs]


def training_step(network: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  targets: list[torch.Tensor] | None, num_classes: int) -> list[torch.Tensor]:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = network(x)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        targets = targets if targets is not None else _targets(outputs, num_classes)
        loss = sum(F.cross_entropy(o.float(), t) for o, t in zip(outputs, targets))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return targets


def context_bytes(device: torch.device) -> int:
    """Memory the process holds on the card outside PyTorch's allocator."""
    free, total = torch.cuda.mem_get_info(device)
    return max(total - free - torch.cuda.memory_reserved(device), 0)


def measure_training_step(network: nn.Module, batch_size: int, in_channels: int,
                          patch_size: Sequence[int], num_classes: int,
                          device: torch.device, timed_steps: int = 3) -> StepMeasurement:
    """Peak memory and median time of a training step (after one warm-up step, so the
    optimizer state exists); the network is moved to ``device`` and trained in place."""
    network.to(device).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    x = torch.randn(batch_size, in_channels, *patch_size, device=device)
    targets = training_step(network, optimizer, x, None, num_classes)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    seconds = synced_median_s(lambda: training_step(network, optimizer, x, targets, num_classes),
                              timed_steps, device)
    return StepMeasurement(
        peak_allocated=torch.cuda.max_memory_allocated(device),
        peak_reserved=torch.cuda.max_memory_reserved(device),
        context=context_bytes(device),
        step_ms=seconds * 1e3,
    )


def inference_ms(network: nn.Module, in_channels: int, patch_size: Sequence[int],
                 device: torch.device, repeats: int = 5) -> float:
    """Median ms of one bf16-autocast forward of a single patch (no deep supervision)."""
    network.to(device).eval()
    x = torch.randn(1, in_channels, *patch_size, device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        network(x)  # warm-up: cuDNN's choice and the scan's compile stay out of the median
        seconds = synced_median_s(lambda: network(x), repeats, device)
    network.train()
    return seconds * 1e3


def synced_median_s(fn: Callable[[], object], repeats: int, device: torch.device | None = None) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls (the upper middle for an even count),
    each between synchronisations of the CUDA device (none on the CPU)."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    times = []
    for _ in range(repeats):
        if on_cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if on_cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def stage_activation_weights(network: nn.Module, in_channels: int, patch_size: Sequence[int],
                             features: Sequence[int], strides: Sequence[Sequence[int]]) -> list[float]:
    """Per stage: elements written by the grid convolutions at that stage's resolution,
    divided by voxels x features of the stage (so 1.0 = one feature map), on meta tensors."""
    shapes = []
    current = list(patch_size)
    for stride in strides:
        current = [math.ceil(c / s) for c, s in zip(current, stride)]
        shapes.append(tuple(current))
    written = [0.0] * len(shapes)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        spatial = tuple(output.shape[2:])
        if spatial in shapes:
            written[shapes.index(spatial)] += output.numel()

    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, convs)]
    try:
        with torch.no_grad():
            network(torch.empty(1, in_channels, *patch_size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return [w / (math.prod(s) * f) for w, s, f in zip(written, shapes, features)]
