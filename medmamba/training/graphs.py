"""The training step as a CUDA graph: one replay instead of about a thousand launches.

Small 3D patches leave the GPU idle for most of an eager step. On an H200 with the
hippocampus plan (batch 7 of 40x56x40), kernels ran for 25-28% of the step's wall time
and the host's Python and launch work for the rest (``scripts/profile_gpu_step.py``).
A captured step replays forward, loss, backward, gradient clipping and the optimizer as
one graph, so the GPU sets the pace.

What keeps a replay equal to the eager step:
- each batch is copied into the same static input tensors before the replay;
- the learning rate is a Python float that the capture bakes in, so the step is
  recaptured whenever a param group's lr changes (once per epoch under the poly schedule);
- the first steps of a run run eager, on a side stream as capture requires: cuDNN
  autotuning, Triton compiles and the optimizer's lazily created momentum buffers happen
  there, never inside a capture;
- autocast runs with its weight-cast cache off (cast tensors must not outlive a capture).
The step function must set gradients to None itself (``zero_grad(set_to_none=True)``):
the captured backward then writes the gradients instead of adding to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

StepFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (image, label) -> loss


class GraphedStep:
    """``GraphedStep(step, optimizer)(image, label) -> loss`` (a static tensor that the next
    call overwrites: copy or reduce it before then, on the same stream).

    ``step`` is the eager training step; it runs eager for the first ``eager_steps`` calls,
    then through a graph captured on the first call with a new learning rate.
    """

    def __init__(self, step: StepFunction, optimizer: torch.optim.Optimizer, eager_steps: int = 3) -> None:
        if eager_steps < 1:
            raise ValueError(f"eager_steps must be >= 1 (momentum buffers exist only after a step), got {eager_steps}")
        self.step, self.optimizer = step, optimizer
        self.eager_steps_left = eager_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.pool = None
        self.key: tuple | None = None
        self.static_image: torch.Tensor | None = None
        self.static_label: torch.Tensor | None = None
        self.static_loss: torch.Tensor | None = None
        self.captures = 0
        self.side_stream: torch.cuda.Stream | None = None
        self.failed: str | None = None  # why capture failed; every step then runs eager

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if self.eager_steps_left > 0 or self.failed:
            self.eager_steps_left = max(0, self.eager_steps_left - 1)
            return self._eager_on_side_stream(image, label)
        key = self._key(image, label)
        if self.graph is None or key != self.key:
            try:
                self._capture(image, label)
            except RuntimeError as error:  # e.g. an op that syncs with the host
                self.failed = str(error).splitlines()[0]
                self.graph = self.static_loss = None
                log.warning("training step not captured as a CUDA graph (%s); running it eagerly", self.failed)
                return self._eager_on_side_stream(image, label)
            self.key = key
        self.static_image.copy_(image, non_blocking=True)
        self.static_label.copy_(label, non_blocking=True)
        self.graph.replay()
        return self.static_loss

    def _key(self, image: torch.Tensor, label: torch.Tensor) -> tuple:
        lrs = tuple(float(group["lr"]) for group in self.optimizer.param_groups)
        return lrs, tuple(image.shape), image.dtype, tuple(label.shape), label.dtype

    def _eager_on_side_stream(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        device = self._device(image)
        if self.side_stream is None:
            self.side_stream = torch.cuda.Stream(device)
        side = self.side_stream
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            loss = self.step(image.to(device, non_blocking=True), label.to(device, non_blocking=True))
        torch.cuda.current_stream(device).wait_stream(side)
        return loss

    def _device(self, image: torch.Tensor) -> torch.device:
        if image.is_cuda:
            return image.device
        return next(p.device for group in self.optimizer.param_groups for p in group["params"])

    def _capture(self, image: torch.Tensor, label: torch.Tensor) -> None:
        device = self._device(image)
        # The new graph shares the old one's memory pool (the old one is never replayed
        # again). The old graph stays alive until the capture ends: a pool whose last graph
        # is gone cannot take a new capture (a CUDACachingAllocator assertion).
        previous = self.graph
        self.static_loss = None
        if self.static_image is None or self.static_image.shape != image.shape:
            self.static_image = torch.empty(image.shape, dtype=image.dtype, device=device)
            self.static_label = torch.empty(label.shape, dtype=label.dtype, device=device)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the data loader's pin-memory thread keeps calling CUDA meanwhile.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            loss = self.step(self.static_image, self.static_label)
        self.graph, self.static_loss = graph, loss
        del previous
        self.captures += 1
        log.debug("captured the training step (capture %d)", self.captures)


def graphs_usable(device: torch.device, distributed: bool, compiled: bool,
                  optimizer: torch.optim.Optimizer | None = None) -> tuple[bool, str]:
    """Whether the step can be captured here, and if not, why (for the log)."""
    if device.type != "cuda":
        return False, "CUDA graphs need a CUDA device"
    if distributed:
        return False, "not captured under DistributedDataParallel (its gradient hooks sync across ranks)"
    if compiled:
        return False, "torch.compile manages its own graphs"
    if optimizer is not None and any(group.get("capturable") is False for group in optimizer.param_groups):
        # Adam-style optimizers keep their step count on the host unless built capturable:
        # a capture of their step() raises, so do not try.
        return False, f"{type(optimizer).__name__} was built with capturable=False"
    return True, ""
