"""DistributedDataParallel set-up; the CLI reads RANK/WORLD_SIZE/... and passes them in.

One process per GPU (``torchrun --nproc-per-node K [--nnodes M ...] -m medmamba train``):
nccl on CUDA, gloo on CPU. The plan's batch is split over the ranks, each rank draws its
own batches (its rank is part of the batch seed), only rank 0 writes files.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medmamba.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits; ``init_method`` is e.g. ``tcp://host:port``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    init_method: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"invalid distributed setting: rank {self.rank} of world size {self.world_size}")
        if self.world_size > 1 and not self.init_method:
            raise ConfigError("distributed training needs an init method (MASTER_ADDR and MASTER_PORT)")


def rank_batch_size(batch_size: int, world_size: int, rank: int) -> int:
    """This rank's share of the global batch (the remainder goes to the first ranks; >= 1)."""
    share = batch_size // world_size + (1 if rank < batch_size % world_size else 0)
    return max(1, share)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=info.init_method,
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(minutes=30),
    )


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
