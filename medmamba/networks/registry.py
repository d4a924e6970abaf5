"""Networks by short name: ``build_network(name, **kwargs)``, ``available_networks()``.

Plans name a family; they never hold a dotted import path. Keywords are checked against
the builder's signature, so a typo in a knob fails naming it instead of being swallowed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from medmamba.errors import ConfigError
from medmamba.networks import families, lightm
from medmamba.options import suggest

STAGE_SPEC = ("in_channels", "num_classes", "spatial_dims", "features_per_stage", "kernel_sizes", "strides")


@dataclass(frozen=True)
class NetworkFamily:
    name: str
    builder: Callable[..., nn.Module]
    has_ssm: bool
    description: str

    @property
    def knobs(self) -> dict[str, object]:
        """Family-specific keywords and their defaults."""
        params = inspect.signature(self.builder).parameters
        return {k: p.default for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


_FAMILIES = {
    f.name: f
    for f in (
        NetworkFamily("umamba_bot", families.umamba_bot, True, "ResEnc U-Net + Mamba layer at the bottleneck"),
        NetworkFamily("umamba_enc", families.umamba_enc, True, "ResEnc U-Net + Mamba layer after every encoder stage"),
        NetworkFamily("lightm_unet", lightm.lightm_unet, True, "LightM-UNet: Residual Vision Mamba encoder"),
        NetworkFamily("mhs_unet", families.mhs_unet, True, "conv U-Net + multi-head-scan token mixers"),
        NetworkFamily("plainconv_unet", families.plainconv_unet, False, "nnU-Net default plain conv U-Net"),
        NetworkFamily("resenc_unet", families.resenc_unet, False, "nnU-Net ResEnc M (residual encoder U-Net)"),
    )
}


def available_networks() -> list[str]:
    return list(_FAMILIES)


def get_family(name: str) -> NetworkFamily:
    if name not in _FAMILIES:
        raise suggest(name, list(_FAMILIES), "network")
    return _FAMILIES[name]


def build_network(name: str, **kwargs: object) -> nn.Module:
    """Build family ``name`` from the stage specification (``STAGE_SPEC``), optional
    ``deep_supervision`` and ``ssm`` (``"mamba"``, ``"none"`` or None for the family's
    default), and the family's knobs (``get_family(name).knobs``)."""
    family = get_family(name)
    params = inspect.signature(family.builder).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise suggest(unknown[0], list(params), f"keyword for network {name}")
    missing = [k for k in STAGE_SPEC if k not in kwargs]
    if missing:
        raise ConfigError(f"network {name} needs {', '.join(missing)}")
    return family.builder(**kwargs)
