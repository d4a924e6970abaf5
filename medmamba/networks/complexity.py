"""Parameter count and multiply-accumulates of a network for one input patch.

MACs come from one forward pass on shape-only ("meta") tensors with hooks: nothing is
computed or allocated, so a 3D network at a 128^3 patch counts in well under a second.
Counted: convolutions, transposed convolutions, linear layers and the selective scan
(its projections and about 3 MACs per state element and token); norms, activations,
pooling and interpolation are left out, as fvcore and nnU-Net's reports do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medmamba.networks.blocks.mamba import ScanBranch
from medmamba.networks.registry import build_network

SCAN_MACS_PER_STATE = 3


@dataclass(frozen=True)
class Complexity:
    parameters: int
    macs: int


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def _macs_hook(counter: list[int]):  # noqa: ANN202 - a forward hook
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            kernel = math.prod(module.kernel_size)
            counter[0] += output.numel() * kernel * module.in_channels // module.groups
        elif isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            kernel = math.prod(module.kernel_size)
            counter[0] += inputs[0].numel() * kernel * module.out_channels // module.groups
        elif isinstance(module, nn.Linear):
            counter[0] += output.numel() * module.in_features
        elif isinstance(module, ScanBranch) and module.ssm:
            batch, channels, length = output.shape
            tokens = batch * channels * length
            projections = module.x_proj_weight.shape[1] + module.dt_rank
            counter[0] += tokens * (projections + SCAN_MACS_PER_STATE * module.d_state)

    return hook


def count_macs(network: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass of ``network`` (built on any device) on ``input_shape``
    (batch, channels, *spatial)."""
    counter = [0]
    handles = [m.register_forward_hook(_macs_hook(counter)) for m in network.modules()]
    try:
        with torch.no_grad():
            network(torch.empty(*input_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return counter[0]


def network_complexity(name: str, patch_size: Sequence[int], **kwargs: object) -> Complexity:
    """Parameters and MACs (batch 1) of family ``name`` built from ``kwargs`` at ``patch_size``."""
    with torch.device("meta"):
        network = build_network(name, **kwargs)
    in_channels = int(kwargs["in_channels"])  # type: ignore[call-overload]
    return Complexity(count_parameters(network), count_macs(network, (1, in_channels, *patch_size)))
