"""LightM-UNet (Liao et al. 2024): Residual Vision Mamba encoder, light residual decoder.

Encoder: a conv stem, then per stage max-pool (by the plan's stride) and Residual Vision
Mamba (RVM) layers: y = Mamba(LN(x)) + s * x, out = Linear(LN(y)); the first RVM layer of a
stage projects to the stage's width, so no full convolution carries the channels up (the
released code's strided 3x3x3 convs are why it has 5 M parameters, not the paper's 1.09 M).
Decoder: 1x1 conv to the skip's width, linear upsampling, add the skip, a depthwise
residual block, a 1x1 segmentation head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmamba.errors import ConfigError
from medmamba.networks.blocks.conv import ConvNormAct, Ops, ops_for, per_stage, stage_spec
from medmamba.networks.blocks.mamba import Mamba
from medmamba.networks.blocks.unet import he_init
from medmamba.networks.families import Spec, parse_ssm


class ResidualVisionMamba(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, ssm: bool, bidirectional: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_channels)
        self.mamba = Mamba(in_channels, bidirectional=bidirectional, ssm=ssm)
        self.scale = nn.Parameter(torch.ones(in_channels))
        self.proj_norm = nn.LayerNorm(in_channels)
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        y = self.mamba(self.norm(tokens)) + self.scale * tokens
        y = self.proj(self.proj_norm(y))
        return y.transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])


class DepthwiseResidualBlock(nn.Module):
    """x + IN(pw(LReLU(IN(dw(x))))), then LeakyReLU."""

    def __init__(self, ops: Ops, channels: int, kernel: tuple[int, ...]) -> None:
        super().__init__()
        self.depthwise = ConvNormAct(ops, channels, channels, kernel, groups=channels)
        self.pointwise = ConvNormAct(ops, channels, channels, (1,) * ops.spatial_dims, activation=False)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.pointwise(self.depthwise(x)))


class LightMUNet(nn.Module):
    def __init__(
        self,
        ops: Ops,
        in_channels: int,
        num_classes: int,
        features: tuple[int, ...],
        kernels: tuple[tuple[int, ...], ...],
        strides: tuple[tuple[int, ...], ...],
        n_rvm: tuple[int, ...],
        deep_supervision: bool,
        ssm: bool,
        bidirectional: bool,
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        n = len(features)
        self.stem = ConvNormAct(ops, in_channels, features[0], kernels[0])
        self.stages = nn.ModuleList()
        for s in range(n):
            layers: list[nn.Module] = []
            if any(k != 1 for k in strides[s]):
                layers.append(ops.max_pool(strides[s], strides[s]))
            previous = features[max(s - 1, 0)]
            for i in range(n_rvm[s]):
                layers.append(ResidualVisionMamba(previous if i == 0 else features[s], features[s], ssm, bidirectional))
            self.stages.append(nn.Sequential(*layers))
        self.reduce = nn.ModuleList(ops.conv(features[s + 1], features[s], 1) for s in range(n - 1))
        self.blocks = nn.ModuleList(DepthwiseResidualBlock(ops, features[s], kernels[s]) for s in range(n - 1))
        self.seg_heads = nn.ModuleList(ops.conv(features[s], num_classes, 1) for s in range(n - 1))
        self.mode = "bilinear" if ops.spatial_dims == 2 else "trilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        outputs = []
        for s in range(len(skips) - 2, -1, -1):
            x = F.interpolate(self.reduce[s](x), size=skips[s].shape[2:], mode=self.mode, align_corners=False)
            x = self.blocks[s](x + skips[s])
            if self.deep_supervision or s == 0:
                outputs.append(self.seg_heads[s](x))
        return outputs[::-1] if self.deep_supervision else outputs[-1]


def lightm_unet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    features_per_stage: Sequence[int],
    kernel_sizes: Spec,
    strides: Spec,
    deep_supervision: bool = False,
    ssm: str | None = None,
    *,
    n_rvm_per_stage: int | Sequence[int] = (1, 1, 2, 2, 2, 2, 2, 2, 2, 2),
    bidirectional: bool = False,
) -> LightMUNet:
    """LightM-UNet; ``n_rvm_per_stage`` RVM layers per stage (at least 1 after the first)."""
    use_ssm = parse_ssm(ssm, True, "lightm_unet")
    ops = ops_for(spatial_dims)
    features, kernels, steps = stage_spec(features_per_stage, kernel_sizes, strides, spatial_dims)
    n_rvm = per_stage(n_rvm_per_stage, len(features), "n_rvm_per_stage", minimum=0)
    if any(count < 1 for count in n_rvm[1:]):
        raise ConfigError(f"n_rvm_per_stage needs >= 1 layer in every stage after the first, got {list(n_rvm)}")
    net = LightMUNet(ops, in_channels, num_classes, features, kernels, steps, n_rvm, deep_supervision, use_ssm, bidirectional)
    he_init(net)
    return net
