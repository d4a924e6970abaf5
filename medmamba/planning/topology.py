"""Network topology from patch size and spacing (nnU-Net's get_pool_and_conv_props).

Pool an axis while its feature map stays >= ``min_feature_map`` voxels after pooling and
its current spacing is within 2x of the finest; an axis that is the only one left to pool
needs >= 3x the minimum. Kernels are 3 along an axis once its spacing is within 2x of the
finest, 1 before that (so a strongly anisotropic axis gets 1 at early stages). The patch
is then padded up to a multiple of the total stride per axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_FEATURE_MAP = 4


@dataclass(frozen=True)
class Topology:
    patch_size: tuple[int, ...]  # padded to be divisible by the total stride
    strides: tuple[tuple[int, ...], ...]  # per stage; stage 0 is all ones
    kernel_sizes: tuple[tuple[int, ...], ...]  # per stage
    divisor: tuple[int, ...]  # total stride per axis

    @property
    def num_stages(self) -> int:
        return len(self.strides)


def features_per_stage(num_stages: int, base: int, cap: int) -> tuple[int, ...]:
    """Features double per stage from ``base``, capped at ``cap``."""
    return tuple(min(base * 2 ** stage, cap) for stage in range(num_stages))


def topology_for(spacing: Sequence[float], patch_size: Sequence[int],
                 min_feature_map: int = MIN_FEATURE_MAP) -> Topology:
    dims = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    strides: list[tuple[int, ...]] = [(1,) * dims]
    kernels: list[tuple[int, ...]] = []
    kernel = [1] * dims
    pools = [0] * dims
    while True:
        valid = [a for a in range(dims) if current_size[a] >= 2 * min_feature_map]
        if not valid:
            break
        finest = min(current_spacing[a] for a in valid)
        valid = [a for a in valid if current_spacing[a] / finest < 2]
        if len(valid) == 1 and current_size[valid[0]] < 3 * min_feature_map:
            break
        if not valid:
            break
        for axis in range(dims):
            if kernel[axis] != 3 and current_spacing[axis] / min(current_spacing) < 2:
                kernel[axis] = 3
        stride = [1] * dims
        for axis in valid:
            stride[axis] = 2
            pools[axis] += 1
            current_spacing[axis] *= 2
            current_size[axis] = float(np.ceil(current_size[axis] / 2))
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dims)  # the bottleneck always uses 3 per axis
    divisor = tuple(2 ** p for p in pools)
    padded = tuple(int(np.ceil(p / d) * d) for p, d in zip(patch_size, divisor))
    return Topology(padded, tuple(strides), tuple(kernels), divisor)
