"""Optimizer and the poly learning-rate schedule.

The schedule is a function of the epoch only: ``lr = lr0 * (1 - epoch / epochs) ** 0.9``,
set at the start of each epoch. Extending a finished run (``--resume --epochs E2``)
recomputes it over the new total E2, so the learning rate rises again to
``lr0 * (1 - E1 / E2) ** 0.9`` and decays to 0 at E2.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from medmamba.training.config import OptimizerName, TrainingConfig


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: TrainingConfig) -> torch.optim.Optimizer:
    lr = config.learning_rate
    if config.optimizer is OptimizerName.SGD:
        return torch.optim.SGD(
            parameters, lr=lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=config.weight_decay)


def poly_lr(initial_lr: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    return initial_lr * max(0.0, 1.0 - epoch / epochs) ** exponent


class PolyLRScheduler:
    """Sets the optimizer's lr per epoch; state = the numbers, never a callable."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, epochs: int, exponent: float) -> None:
        self.optimizer = optimizer
        self.initial_lr, self.epochs, self.exponent = initial_lr, epochs, exponent
        self.epoch = 0

    def set_epoch(self, epoch: int) -> float:
        self.epoch = epoch
        lr = poly_lr(self.initial_lr, epoch, self.epochs, self.exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"initial_lr": self.initial_lr, "epochs": self.epochs, "exponent": self.exponent, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # ``epochs`` is deliberately not restored: a resume may extend the run.
        self.initial_lr, self.exponent, self.epoch = state["initial_lr"], state["exponent"], state["epoch"]
