"""Segmentation networks: building blocks, Mamba layers, families and their registry.

Knows nothing of files or plans: a network is built from typed keywords
(``build_network("umamba_bot", in_channels=1, num_classes=3, spatial_dims=3, ...)``).
"""

from medmamba.networks.complexity import Complexity, count_macs, count_parameters, network_complexity
from medmamba.networks.families import SSM
from medmamba.networks.registry import STAGE_SPEC, available_networks, build_network, get_family

__all__ = [
    "SSM",
    "STAGE_SPEC",
    "Complexity",
    "available_networks",
    "build_network",
    "count_macs",
    "count_parameters",
    "get_family",
    "network_complexity",
]
