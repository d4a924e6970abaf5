"""The U-Net skeleton every family fills: encoder stages, a decoder with skips, seg heads.

Families differ in what an encoder stage holds (plain convs, residual blocks, + Mamba or
multi-head-scan layers); the decoder is nnU-Net's (transposed conv up, concatenate the
skip, convs, a 1x1 segmentation head per decoder stage). Seg heads exist for every
decoder stage whether or not deep supervision is on, so one state dict serves both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medmamba.networks.blocks.conv import Ops, StackedConvBlocks


class UNetDecoder(nn.Module):
    def __init__(
        self,
        ops: Ops,
        features: Sequence[int],
        kernels: Sequence[tuple[int, ...]],
        strides: Sequence[tuple[int, ...]],
        num_classes: int,
        n_conv_per_stage: Sequence[int],
        deep_supervision: bool,
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        n = len(features)
        self.upsample = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.seg_heads = nn.ModuleList()
        for s in range(1, n):
            below, here = features[-s], features[-(s + 1)]
            stride = strides[-s]
            self.upsample.append(ops.transposed_conv(below, here, stride, stride))
            self.stages.append(StackedConvBlocks(ops, n_conv_per_stage[s - 1], 2 * here, here, kernels[-(s + 1)]))
            self.seg_heads.append(ops.conv(here, num_classes, 1))

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s, (up, stage, head) in enumerate(zip(self.upsample, self.stages, self.seg_heads)):
            x = stage(torch.cat((up(x), skips[-(s + 2)]), dim=1))
            if self.deep_supervision or s == last:
                outputs.append(head(x))
        if not self.deep_supervision:
            return outputs[0]
        return outputs[::-1]


class UNet(nn.Module):
    """stem -> encoder stages (each keeps its output as a skip) -> decoder."""

    def __init__(self, stem: nn.Module, stages: nn.ModuleList, decoder: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.decoder = decoder

    @property
    def deep_supervision(self) -> bool:
        return bool(self.decoder.deep_supervision)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self.decoder.deep_supervision = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return self.decoder(skips)


def he_init(module: nn.Module) -> None:
    """nnU-Net's InitWeights_He(1e-2) on the conv layers of the grid (not the Mamba conv1d)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=1e-2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
