"""Small plan-like stage specifications shared by the network tests."""

from __future__ import annotations


def tiny_kwargs(spatial_dims: int) -> dict:
    """A 3-stage plan, 2 input channels, 3 classes, anisotropic first stride in 3D."""
    strides = [[1, 1], [2, 2], [2, 2]] if spatial_dims == 2 else [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    kernels = [[3, 3], [3, 3], [3, 3]] if spatial_dims == 2 else [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
    return {
        "in_channels": 2,
        "num_classes": 3,
        "spatial_dims": spatial_dims,
        "features_per_stage": [4, 8, 16],
        "kernel_sizes": kernels,
        "strides": strides,
    }


def tiny_patch(spatial_dims: int) -> tuple[int, ...]:
    return (16, 12) if spatial_dims == 2 else (6, 8, 12)


HIPPOCAMPUS_3D = {
    "in_channels": 1,
    "num_classes": 3,
    "spatial_dims": 3,
    "features_per_stage": [32, 64, 128, 256],
    "kernel_sizes": [[3, 3, 3]] * 4,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
}
HIPPOCAMPUS_PATCH = (40, 56, 40)
