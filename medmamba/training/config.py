"""TrainingConfig: every knob of a training run, overridable from the CLI and the API.

Runtime choices live here, never in plans.json. Defaults follow nnU-Net v2 (SGD
Nesterov 0.99, lr 1e-2, weight decay 3e-5, poly 0.9, 1000 x 250 iterations, a third
of the patches on foreground, gradient norm clipped at 12).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from medmamba.errors import ConfigError
from medmamba.options import parse_enum


class OptimizerName(str, Enum):
    SGD = "sgd"
    ADAMW = "adamw"


DEFAULT_LR = {OptimizerName.SGD: 1e-2, OptimizerName.ADAMW: 1e-3}


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 1000
    iters_per_epoch: int = 250
    # Validation after each epoch: this many batches of fixed, foreground-oversampled
    # patches from the fold's validation cases, Dice from summed TP/FP/FN (nnU-Net's
    # "pseudo Dice"); the full sliding-window validation is `medmamba predict`'s job.
    val_batches: int = 50
    optimizer: OptimizerName = OptimizerName.SGD
    lr: float | None = None  # None: 1e-2 for SGD, 1e-3 for AdamW
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    oversample_foreground: float = 1 / 3
    deep_supervision: bool = True
    augment: bool = True
    amp: bool = True  # bf16 autocast on CUDA; CPU always trains in fp32
    ema_alpha: float = 0.9  # best checkpoint: ema = alpha * ema + (1 - alpha) * mean Dice
    batch_size: int | None = None  # None: the plan's batch size (split over ranks)
    seed: int = 0
    workers: int | None = None  # None: automatic; 0: load batches in the main process
    # torch.compile the training model: fused kernels and far fewer launches, which is what
    # small 3D patches are bound by on a GPU; pays a compile (about a minute) at start-up.
    compile: bool = False
    # Replay the training step as a CUDA graph on a single GPU (recaptured when the lr
    # changes): the host's launches, not the GPU, bound small-patch steps. Ignored on the
    # CPU, under DistributedDataParallel and with compile.
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", parse_enum(OptimizerName, self.optimizer, "optimizer"))
        for name in ("epochs", "iters_per_epoch", "val_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.oversample_foreground <= 1.0:
            raise ConfigError(f"oversample_foreground must be in [0, 1], got {self.oversample_foreground}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["optimizer"] = self.optimizer.value
        return out

    def replace(self, **changes: Any) -> TrainingConfig:
        return dataclasses.replace(self, **changes)
