"""Dice + cross-entropy with deep supervision (nnU-Net's training loss, via MONAI).

Soft Dice over foreground channels per sample (``batch=False``) with smoothing 1e-5,
plus cross-entropy, summed with weight 1 each. Deep supervision: output ``i`` (0 = full
resolution) gets weight ``2**-i``, the lowest resolution gets 0, the weights are
normalised to sum to 1; targets are downsampled to each output by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """``[1, 1/2, 1/4, ...]`` with the last (lowest resolution) dropped, normalised."""
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
    if n_outputs == 1:
        return [1.0]
    weights = [2.0**-i for i in range(n_outputs)]
    weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    if tuple(target.shape[2:]) == tuple(shape):
        return target
    return F.interpolate(target.float(), size=tuple(shape), mode="nearest").to(target.dtype)


class DeepSupervisionDiceCE(nn.Module):
    """``loss(outputs, target)``; outputs is one logits tensor or a list (full res first),
    target is ``(B, 1, *spatial)`` of channel indices. Computed in fp32."""

    def __init__(self) -> None:
        super().__init__()
        self.dice_ce = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=False,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
        )

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.dice_ce(outputs.float(), target)
        weights = deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, output in zip(weights, outputs):
            if weight > 0:
                total = total + weight * self.dice_ce(output.float(), downsample_target(target, output.shape[2:]))
            else:
                # Zero gradient, but the head stays in the graph: DDP expects a gradient
                # for every parameter (no find_unused_parameters search each step).
                total = total + 0.0 * output.float().mean()
        return total
