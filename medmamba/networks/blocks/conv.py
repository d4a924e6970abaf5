"""Convolutional building blocks shared by every family, 2D and 3D from one code path.

The op types are chosen once from ``spatial_dims`` (dynamic-network-architectures style),
so no block has a 2D and a 3D twin. Conventions follow nnU-Net: conv (with bias) ->
InstanceNorm (affine, eps 1e-5) -> LeakyReLU(0.01).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medmamba.errors import ConfigError


@dataclass(frozen=True)
class Ops:
    """The op types for one spatial dimensionality."""

    spatial_dims: int
    conv: type[nn.Module]
    transposed_conv: type[nn.Module]
    norm: type[nn.Module]
    avg_pool: type[nn.Module]
    max_pool: type[nn.Module]


def ops_for(spatial_dims: int) -> Ops:
    if spatial_dims == 2:
        return Ops(2, nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.AvgPool2d, nn.MaxPool2d)
    if spatial_dims == 3:
        return Ops(3, nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, nn.AvgPool3d, nn.MaxPool3d)
    raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def per_axis(value: int | Sequence[int], spatial_dims: int, what: str) -> tuple[int, ...]:
    """``3`` -> ``(3, 3, 3)``; a sequence must have one entry per spatial axis."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    values = tuple(int(v) for v in value)
    if len(values) != spatial_dims:
        raise ConfigError(f"{what} must have {spatial_dims} entries (one per axis), got {list(values)}")
    return values


def stage_spec(
    features_per_stage: Sequence[int],
    kernel_sizes: Sequence[int | Sequence[int]],
    strides: Sequence[int | Sequence[int]],
    spatial_dims: int,
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Validate and normalise a stage specification: one entry per stage in each list."""
    features = tuple(int(f) for f in features_per_stage)
    n = len(features)
    if n < 2:
        raise ConfigError(f"features_per_stage needs at least 2 stages, got {list(features)}")
    if any(f < 1 for f in features):
        raise ConfigError(f"features_per_stage must be positive, got {list(features)}")
    for name, spec in (("kernel_sizes", kernel_sizes), ("strides", strides)):
        if len(spec) != n:
            raise ConfigError(f"{name} must have {n} entries (one per stage), got {len(spec)}")
    kernels = tuple(per_axis(k, spatial_dims, f"kernel_sizes[{i}]") for i, k in enumerate(kernel_sizes))
    steps = tuple(per_axis(s, spatial_dims, f"strides[{i}]") for i, s in enumerate(strides))
    return features, kernels, steps


def per_stage(value: int | Sequence[int], n_stages: int, what: str, minimum: int = 1) -> tuple[int, ...]:
    """A per-stage count: an int for every stage, or a list at least ``n_stages`` long;
    every used entry must be >= ``minimum``."""
    values = (value,) * n_stages if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) < n_stages:
        raise ConfigError(f"{what} needs {n_stages} entries (one per stage), got {list(values)}")
    values = values[:n_stages]
    if any(v < minimum for v in values):
        raise ConfigError(f"{what} must be >= {minimum} in every stage, got {list(values)}")
    return values


def padding_for(kernel: tuple[int, ...]) -> tuple[int, ...]:
    return tuple((k - 1) // 2 for k in kernel)


class ConvNormAct(nn.Module):
    """conv -> InstanceNorm -> LeakyReLU (the activation is optional)."""

    def __init__(
        self,
        ops: Ops,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, ...],
        stride: tuple[int, ...] | int = 1,
        activation: bool = True,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = ops.conv(
            in_channels, out_channels, kernel, stride=stride, padding=padding_for(kernel), groups=groups
        )
        self.norm = ops.norm(out_channels, eps=1e-5, affine=True)
        self.act = nn.LeakyReLU(0.01, inplace=True) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class StackedConvBlocks(nn.Sequential):
    """``n`` ConvNormAct; the first carries the stride (nnU-Net's encoder stage)."""

    def __init__(
        self,
        ops: Ops,
        n: int,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, ...],
        stride: tuple[int, ...] | int = 1,
    ) -> None:
        blocks = [ConvNormAct(ops, in_channels, out_channels, kernel, stride)]
        blocks += [ConvNormAct(ops, out_channels, out_channels, kernel) for _ in range(n - 1)]
        super().__init__(*blocks)


class ResidualBlock(nn.Module):
    """nnU-Net's BasicBlockD: two convs, the skip average-pools then projects (1x1) when
    the stride or the width changes; the activation follows the addition."""

    def __init__(
        self,
        ops: Ops,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, ...],
        stride: tuple[int, ...] | int = 1,
    ) -> None:
        super().__init__()
        stride = per_axis(stride, ops.spatial_dims, "stride")
        self.conv1 = ConvNormAct(ops, in_channels, out_channels, kernel, stride)
        self.conv2 = ConvNormAct(ops, out_channels, out_channels, kernel, activation=False)
        skip: list[nn.Module] = []
        if any(s != 1 for s in stride):
            skip.append(ops.avg_pool(stride, stride))
        if in_channels != out_channels:
            skip.append(ConvNormAct(ops, in_channels, out_channels, (1,) * ops.spatial_dims, activation=False))
        self.skip = nn.Sequential(*skip)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


class StackedResidualBlocks(nn.Sequential):
    def __init__(
        self,
        ops: Ops,
        n: int,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, ...],
        stride: tuple[int, ...] | int = 1,
    ) -> None:
        blocks = [ResidualBlock(ops, in_channels, out_channels, kernel, stride)]
        blocks += [ResidualBlock(ops, out_channels, out_channels, kernel) for _ in range(n - 1)]
        super().__init__(*blocks)
