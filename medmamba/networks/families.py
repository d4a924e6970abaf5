"""The U-Net families built on the shared skeleton (LightM-UNet has its own module).

Every builder takes the plan's stage specification (in_channels, num_classes,
spatial_dims, features_per_stage, kernel_sizes, strides), deep_supervision and ssm, then
its own keyword-only knobs. Unknown keywords are refused by the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from torch import nn

from medmamba.errors import ConfigError
from medmamba.networks.blocks.conv import (
    ConvNormAct,
    StackedConvBlocks,
    StackedResidualBlocks,
    ops_for,
    per_stage,
    stage_spec,
)
from medmamba.networks.blocks.mamba import MambaLayer
from medmamba.networks.blocks.mhs import MHSLayer
from medmamba.networks.blocks.unet import UNet, UNetDecoder, he_init
from medmamba.options import parse_enum

Spec = Sequence[int | Sequence[int]]

# nnU-Net ResEnc M: residual blocks per encoder stage (extended with 6 for deeper plans).
RESENC_M_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6)


class SSM(str, Enum):
    """What the Mamba families put in their token mixer."""

    MAMBA = "mamba"
    NONE = "none"


def parse_ssm(value: str | SSM | None, has_ssm: bool, name: str) -> bool:
    """``None`` -> the family's default; CNN families accept only ``"none"``."""
    if value is None:
        return has_ssm
    ssm = parse_enum(SSM, value, "ssm")
    if ssm is SSM.MAMBA and not has_ssm:
        raise ConfigError(f"{name} is a CNN without a state space model; ssm must be 'none', got 'mamba'")
    return ssm is SSM.MAMBA


def plainconv_unet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    features_per_stage: Sequence[int],
    kernel_sizes: Spec,
    strides: Spec,
    deep_supervision: bool = False,
    ssm: str | None = None,
    *,
    n_conv_per_stage: int | Sequence[int] = 2,
    n_conv_per_stage_decoder: int | Sequence[int] = 2,
) -> UNet:
    """nnU-Net's default: two conv-InstanceNorm-LeakyReLU per stage, transposed-conv up."""
    parse_ssm(ssm, False, "plainconv_unet")
    ops = ops_for(spatial_dims)
    features, kernels, steps = stage_spec(features_per_stage, kernel_sizes, strides, spatial_dims)
    n = len(features)
    convs = per_stage(n_conv_per_stage, n, "n_conv_per_stage")
    stages = nn.ModuleList()
    previous = in_channels
    for s in range(n):
        stages.append(StackedConvBlocks(ops, convs[s], previous, features[s], kernels[s], steps[s]))
        previous = features[s]
    decoder = UNetDecoder(
        ops, features, kernels, steps, num_classes,
        per_stage(n_conv_per_stage_decoder, n - 1, "n_conv_per_stage_decoder"), deep_supervision,
    )
    net = UNet(nn.Identity(), stages, decoder)
    he_init(net)
    return net


def _residual_unet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    features_per_stage: Sequence[int],
    kernel_sizes: Spec,
    strides: Spec,
    deep_supervision: bool,
    n_blocks_per_stage: int | Sequence[int],
    n_conv_per_stage_decoder: int | Sequence[int],
    mamba_stages: Sequence[int],
    ssm: bool,
    bidirectional: bool,
) -> UNet:
    """ResEnc encoder (stem + residual stages), Mamba layers after the listed stages."""
    ops = ops_for(spatial_dims)
    features, kernels, steps = stage_spec(features_per_stage, kernel_sizes, strides, spatial_dims)
    n = len(features)
    blocks = per_stage(n_blocks_per_stage, n, "n_blocks_per_stage")
    stem = ConvNormAct(ops, in_channels, features[0], kernels[0])
    stages = nn.ModuleList()
    previous = features[0]
    for s in range(n):
        layers: list[nn.Module] = [StackedResidualBlocks(ops, blocks[s], previous, features[s], kernels[s], steps[s])]
        if s in mamba_stages:
            layers.append(MambaLayer(features[s], bidirectional=bidirectional, ssm=ssm))
        stages.append(nn.Sequential(*layers))
        previous = features[s]
    decoder = UNetDecoder(
        ops, features, kernels, steps, num_classes,
        per_stage(n_conv_per_stage_decoder, n - 1, "n_conv_per_stage_decoder"), deep_supervision,
    )
    net = UNet(stem, stages, decoder)
    he_init(net)
    return net


def resenc_unet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    features_per_stage: Sequence[int],
    kernel_sizes: Spec,
    strides: Spec,
    deep_supervision: bool = False,
    ssm: str | None = None,
    *,
    n_blocks_per_stage: int | Sequence[int] = RESENC_M_BLOCKS,
    n_conv_per_stage_decoder: int | Sequence[int] = 1,
) -> UNet:
    """nnU-Net ResEnc M: residual encoder 1-3-4-6-6..., one conv per decoder stage."""
    parse_ssm(ssm, False, "resenc_unet")
    return _residual_unet(
        in_channels, num_classes, spatial_dims, features_per_stage, kernel_sizes, strides,
        deep_supervision, n_blocks_per_stage, n_conv_per_stage_decoder, (), False, False,
    )


def umamba_bot(
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    features_per_stage: Sequence[int],
    kernel_sizes: Spec,
    strides: Spec,
    deep_supervision: bool = False,
    ssm: str | None = None,
    *,
    n_blocks_per_stage: int | Sequence[int] = RESENC_M_BLOCKS,
    n_conv_per_stage_decoder: int | Sequence[int] = 1,
    bidirectional: bool = False,
) -> UNet:
    """U-Mamba Bot: resenc_unet plus one Mamba layer at the bottleneck."""
    n = len(features_per_stage)
    return _residual_unet(
        in_channels, num_classes, spatial_dims, features_per_stage, kernel_sizes, strides,
        deep_supervision, n_blocks_per_stage, n_conv_per_stage_decoder, (n - 1,),
        parse_ssm(ssm, True, "umamba_bot"), bidirectional,
    )


def umamba_enc(
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    features_per_stage: Sequence[int],
    kernel_sizes: Spec,
    strides: Spec,
    deep_supervision: bool = False,
    ssm: str | None = None,
    *,
    n_blocks_per_stage: int | Sequence[int] = RESENC_M_BLOCKS,
    n_conv_per_stage_decoder: int | Sequence[int] = 1,
    bidirectional: bool = False,
    first_mamba_stage: int = 0,
) -> UNet:
    """U-Mamba Enc: a Mamba layer after every encoder stage from ``first_mamba_stage`` on."""
    n = len(features_per_stage)
    if not 0 <= first_mamba_stage < n:
        raise ConfigError(f"first_mamba_stage must be in 0..{n - 1}, got {first_mamba_stage}")
    return _residual_unet(
        in_channels, num_classes, spatial_dims, features_per_stage, kernel_sizes, strides,
        deep_supervision, n_blocks_per_stage, n_conv_per_stage_decoder, tuple(range(first_mamba_stage, n)),
        parse_ssm(ssm, True, "umamba_enc"), bidirectional,
    )


def mhs_unet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    features_per_stage: Sequence[int],
    kernel_sizes: Spec,
    strides: Spec,
    deep_supervision: bool = False,
    ssm: str | None = None,
    *,
    n_conv_per_stage: int | Sequence[int] = 2,
    n_conv_per_stage_decoder: int | Sequence[int] = 2,
    n_mhs_per_stage: int | Sequence[int] = (0, 1, 1, 1, 1, 1, 1, 1, 1, 1),
    mhs_heads: int = 4,
) -> UNet:
    """A plain conv U-Net whose encoder stages end in multi-head-scan token mixers
    (none at full resolution by default: the first stage holds the most tokens)."""
    use_ssm = parse_ssm(ssm, True, "mhs_unet")
    if mhs_heads < 1:
        raise ConfigError(f"mhs_heads must be >= 1, got {mhs_heads}")
    ops = ops_for(spatial_dims)
    features, kernels, steps = stage_spec(features_per_stage, kernel_sizes, strides, spatial_dims)
    n = len(features)
    convs = per_stage(n_conv_per_stage, n, "n_conv_per_stage")
    mixers = per_stage(n_mhs_per_stage, n, "n_mhs_per_stage", minimum=0)
    stages = nn.ModuleList()
    previous = in_channels
    for s in range(n):
        layers: list[nn.Module] = [StackedConvBlocks(ops, convs[s], previous, features[s], kernels[s], steps[s])]
        layers += [MHSLayer(features[s], spatial_dims, n_heads=mhs_heads, ssm=use_ssm) for _ in range(mixers[s])]
        stages.append(nn.Sequential(*layers))
        previous = features[s]
    decoder = UNetDecoder(
        ops, features, kernels, steps, num_classes,
        per_stage(n_conv_per_stage_decoder, n - 1, "n_conv_per_stage_decoder"), deep_supervision,
    )
    net = UNet(nn.Identity(), stages, decoder)
    he_init(net)
    return net
