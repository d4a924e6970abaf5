"""Memory model interface: estimated peak GPU bytes of one training step.

``estimate_training_bytes`` is what the planner calls to size patch and batch per network
family. Its functional form is fixed here; its coefficients live in each family's
template (``plans/<family>.json``, block ``memory_model``)::

    bytes = a                                     fixed: CUDA context, cuDNN workspace, allocator slack
          + b * batch * sum_s w_s * V_s * F_s     activations kept for backward (V_s voxels, F_s features at stage s)
          + c * sum_s w_s * K_s * F_s * (F_{s-1} + F_s)   parameter proxy: weights, grads, optimizer state
          + d * batch * sum_{s in SSM stages} V_s * F_s   selective-scan tokens x channels (linear in tokens)

plus the full-resolution logits (``b * batch * V_0 * num_classes``).

The shipped coefficients are an ESTIMATE: plainconv_unet's are calibrated so nnU-Net's
own BraTS plan (96x160x160, batch 2) lands near the 7.7 GB that "nnU-Net Revisited"
reports for its 8 GB target; the other families scale those by their extra blocks and
by the memory ratios published in that paper. The networks helper measures peak memory
per family on a GPU and rewrites the ``memory_model`` blocks with fitted values (its
``source`` then says "measured: ..."); nothing else changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medmamba.planning.templates import Template


def stage_shapes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Feature-map shape per stage (stage s is downsampled by strides[0..s])."""
    shapes = []
    current = np.array(patch_size, dtype=np.int64)
    for stride in strides:
        current = np.ceil(current / np.array(stride)).astype(np.int64)
        shapes.append(current.tolist())
    return shapes


def _weights(template: Template, num_stages: int) -> np.ndarray:
    weights = list(template.memory_model.stage_weights[:num_stages])
    weights += [weights[-1]] * (num_stages - len(weights))
    return np.array(weights, dtype=np.float64)


def ssm_stage_mask(template: Template, num_stages: int) -> np.ndarray:
    """Boolean per stage: does the family put SSM layers there?"""
    first = template.memory_model.ssm_from_stage
    mask = np.zeros(num_stages, dtype=bool)
    if first is not None:
        mask[(first if first >= 0 else num_stages + first):] = True
    return mask


def estimate_training_bytes(template: Template, patch_size: Sequence[int], batch_size: int,
                            features_per_stage: Sequence[int],
                            strides: Sequence[Sequence[int]], in_channels: int,
                            num_classes: int, spatial_dims: int,
                            kernel_sizes: Sequence[Sequence[int]] | None = None) -> float:
    """Estimated peak training memory in bytes (see the module docstring for the form)."""
    if len(patch_size) != spatial_dims:
        raise ValueError(f"patch_size {list(patch_size)} does not have {spatial_dims} axes")
    model = template.memory_model
    features = np.array(features_per_stage, dtype=np.float64)
    num_stages = len(features)
    voxels = np.array([np.prod(s, dtype=np.float64) for s in stage_shapes(patch_size, strides)])
    weights = _weights(template, num_stages)
    kernels = (np.array([np.prod(k) for k in kernel_sizes], dtype=np.float64)
               if kernel_sizes is not None else np.full(num_stages, 3.0 ** spatial_dims))
    previous = np.concatenate([[in_channels], features[:-1]])

    activations = float(np.sum(weights * voxels * features) + voxels[0] * num_classes)
    params = float(np.sum(weights * kernels * features * (previous + features)))
    tokens = float(np.sum((voxels * features)[ssm_stage_mask(template, num_stages)]))
    return (model.overhead_bytes
            + model.activation_bytes * batch_size * activations
            + model.param_bytes * params
            + model.token_bytes * batch_size * tokens)
