"""Fingerprint -> Plans: nnU-Net's planning rules as pure functions.

- Target spacing (3d_fullres): median spacing per axis. When the data is anisotropic
  (coarsest median spacing > 3x the finest other one AND that axis has < 1/3 of the
  voxels of the others, nnU-Net's two-part test) the coarse axis takes the 10th
  percentile of its spacings instead (but never finer than the other axes).
- 2d: the in-plane (y, x) part of the 3d_fullres spacing and median shape; slices are
  taken along array axis 0.
- Per family (template + memory model): the patch starts at the median shape (3D: capped
  at the volume of 256^3 with the spacing's aspect ratio; 2D: 2048^2), topology from
  medmamba.planning.topology, then the axis largest relative to the median shape shrinks
  by one stride step until ``estimate_training_bytes`` at batch 2 fits the budget. Batch:
  the largest that fits, capped so one batch covers <= 5% of the dataset's voxels, >= 2.
- 3d_lowres (nnU-Net's rule): when the reference family's fullres patch covers < 25% of
  the median image, the spacing grows by 3% steps (coarse axes first while any is > 2x
  finer than the coarsest) until the patch covers >= 25% of the median image at that
  spacing; dropped when that shrinks the median image by less than 2x.
- Normalisation: channel named CT -> clip to foreground p0.5/p99.5 + z-score with
  foreground mean/std; "noNorm" -> none; else per-image z-score, inside the nonzero mask
  when crop-to-nonzero shrank the median case below 3/4 of its volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medmamba.errors import DatasetError, PlansError
from medmamba.fingerprint import FINGERPRINT_FILE, Fingerprint
from medmamba.planning.memory import estimate_training_bytes
from medmamba.planning.plans import (
    PLANS_SCHEMA_VERSION, ChannelNormalization, ConfigurationPlan, FingerprintRef,
    LabelResampling, NetworkPlan, NormScheme, Plans, ResamplingPlan,
)
from medmamba.planning.templates import REFERENCE_FAMILY, Template, load_template, load_templates
from medmamba.planning.topology import Topology, features_per_stage, topology_for

ANISOTROPY_THRESHOLD = 3.0
MIN_BATCH_SIZE = 2
MAX_DATASET_COVERED = 0.05
LOWRES_CREATION_THRESHOLD = 0.25
LOWRES_SPACING_STEP = 1.03
MASK_FOR_NORM_BELOW = 0.75
GB = 1e9  # --gpu-memory is in decimal GB


def fullres_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Median spacing; the coarse axis at its 10th percentile on anisotropic data."""
    target = np.median(spacings, axis=0)
    median_shape = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[others])
    aniso_voxels = median_shape[worst] * ANISOTROPY_THRESHOLD < min(median_shape[others])
    if aniso_spacing and aniso_voxels:
        coarse = float(np.percentile(spacings[:, worst], 10))
        if coarse < max(target[others]):
            coarse = max(max(target[others]), coarse) + 1e-5
        target[worst] = coarse
    return target


def median_shape_at(spacings: np.ndarray, shapes: np.ndarray, target: Sequence[float]) -> np.ndarray:
    """Median over cases of the cropped shape resampled to ``target``."""
    new_shapes = np.round(shapes * spacings / np.asarray(target, dtype=np.float64))
    return np.median(new_shapes, axis=0)


def out_of_plane_axis(spacing: Sequence[float]) -> int | None:
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.max() / spacing.min() <= ANISOTROPY_THRESHOLD:
        return None
    axes = np.flatnonzero(spacing == spacing.max())
    return int(axes[0]) if len(axes) == 1 else None


def channel_normalization(fingerprint: Fingerprint) -> tuple[ChannelNormalization, ...]:
    use_mask = fingerprint.median_relative_size_after_cropping < MASK_FOR_NORM_BELOW
    result = []
    for name, stats in zip(fingerprint.channel_names, fingerprint.intensity):
        key = name.strip().lower()
        if key == "ct":
            result.append(ChannelNormalization(
                channel_name=name, scheme=NormScheme.CT, use_nonzero_mask=False,
                clip_low=stats.percentile_00_5, clip_high=stats.percentile_99_5,
                mean=stats.mean, std=stats.std))
        else:
            scheme = NormScheme.NONE if key == "nonorm" else NormScheme.ZSCORE
            result.append(ChannelNormalization(
                channel_name=name, scheme=scheme,
                use_nonzero_mask=use_mask and scheme is NormScheme.ZSCORE,
                clip_low=None, clip_high=None, mean=None, std=None))
    return tuple(result)


def _initial_patch(spacing: np.ndarray, median_shape: np.ndarray) -> np.ndarray:
    inverse = 1.0 / spacing
    edge = 256 if len(spacing) == 3 else 2048
    scaled = inverse * (edge ** len(spacing) / np.prod(inverse)) ** (1.0 / len(spacing))
    return np.minimum(np.round(scaled), np.maximum(median_shape, 1)).astype(int)


def _estimate(template: Template, topology: Topology, batch: int, in_channels: int,
              num_classes: int) -> float:
    dims = len(topology.patch_size)
    features = features_per_stage(topology.num_stages, template.features_base, template.cap(dims))
    return estimate_training_bytes(
        template, topology.patch_size, batch, features, topology.strides, in_channels,
        num_classes, dims, kernel_sizes=topology.kernel_sizes)


def plan_network(template: Template, spacing: Sequence[float], median_shape: Sequence[float],
                 in_channels: int, num_classes: int, dataset_voxels: float,
                 budget_bytes: float) -> NetworkPlan:
    """Patch, batch and topology of one family for one configuration."""
    spacing = np.asarray(spacing, dtype=np.float64)
    median = np.asarray(median_shape, dtype=np.float64)
    topology = topology_for(spacing, _initial_patch(spacing, median))
    while _estimate(template, topology, MIN_BATCH_SIZE, in_channels, num_classes) > budget_bytes:
        patch = list(topology.patch_size)
        ratios = [p / m for p, m in zip(patch, np.maximum(median, 1))]
        for axis in np.argsort(ratios)[::-1]:
            # Subtract the divisor the smaller patch would have (nnU-Net's two-step
            # rule): stepping by the current divisor could skip valid sizes.
            trial = list(patch)
            trial[axis] -= topology.divisor[axis]
            if trial[axis] < 2 * 4:
                continue
            step = topology_for(spacing, trial).divisor[axis] if trial[axis] > 0 else 1
            patch[axis] -= step
            break
        else:
            raise PlansError(
                f"network '{template.family}' does not fit in {budget_bytes / GB:.1f} GB even "
                f"with patch {list(topology.patch_size)}; raise --gpu-memory")
        topology = topology_for(spacing, patch)

    fixed = _estimate(template, topology, 0, in_channels, num_classes)
    per_sample = _estimate(template, topology, 1, in_channels, num_classes) - fixed
    batch = int((budget_bytes - fixed) // per_sample)
    cover_cap = round(dataset_voxels * MAX_DATASET_COVERED / np.prod(topology.patch_size, dtype=np.float64))
    batch = max(min(batch, cover_cap), MIN_BATCH_SIZE)
    dims = len(spacing)
    features = features_per_stage(topology.num_stages, template.features_base, template.cap(dims))
    return NetworkPlan(
        family=template.family, in_channels=in_channels, num_classes=num_classes,
        spatial_dims=dims, patch_size=topology.patch_size, batch_size=batch,
        features_per_stage=features, kernel_sizes=topology.kernel_sizes,
        strides=topology.strides, knobs=template.knobs(topology.num_stages),
        estimated_memory_gb=round(
            _estimate(template, topology, batch, in_channels, num_classes) / GB, 3),
    )


def _configuration(templates: dict[str, Template], spacing: np.ndarray, median: np.ndarray,
                   normalization: tuple[ChannelNormalization, ...], in_channels: int,
                   num_classes: int, dataset_voxels: float, budget: float) -> ConfigurationPlan:
    networks = {family: plan_network(template, spacing, median, in_channels, num_classes,
                                     dataset_voxels, budget)
                for family, template in templates.items()}
    return ConfigurationPlan(
        spatial_dims=len(spacing),
        target_spacing=tuple(round(float(s), 6) for s in spacing),
        median_shape=tuple(int(round(m)) for m in median),
        normalization=normalization,
        resampling=ResamplingPlan(image_order=3, image_order_out_of_plane=0,
                                  label_mode=LabelResampling.ONEHOT_LINEAR,
                                  anisotropy_threshold=ANISOTROPY_THRESHOLD),
        out_of_plane_axis=out_of_plane_axis(spacing) if len(spacing) == 3 else None,
        networks=networks,
    )


def lowres_spacing(reference: Template, fullres_spacing: np.ndarray, fullres_median: np.ndarray,
                   fullres_patch: Sequence[int], in_channels: int, num_classes: int,
                   dataset_voxels: float, budget: float) -> np.ndarray | None:
    """nnU-Net's 3d_lowres spacing search; None when no lowres configuration is needed."""
    median_voxels = float(np.prod(fullres_median))
    patch_voxels = float(np.prod(fullres_patch))
    spacing = fullres_spacing.copy()
    found = None
    while patch_voxels / median_voxels < LOWRES_CREATION_THRESHOLD:
        coarse = spacing.max() / spacing > 2
        if np.any(coarse):
            spacing[coarse] *= LOWRES_SPACING_STEP
        else:
            spacing *= LOWRES_SPACING_STEP
        shape = fullres_spacing / spacing * fullres_median
        median_voxels = float(np.prod(shape))
        network = plan_network(reference, spacing, np.round(shape), in_channels, num_classes,
                               dataset_voxels, budget)
        patch_voxels = float(np.prod(network.patch_size))
        found = spacing.copy()
    if found is None or np.prod(fullres_median) / median_voxels < 2:
        return None
    return found


def plan_experiment(fingerprint: Fingerprint, gpu_memory_gb: float = 10.0,
                    families: Sequence[str] | None = None,
                    templates: dict[str, Template] | None = None) -> Plans:
    """All configurations for every family (pure: no file access beyond templates)."""
    if gpu_memory_gb <= 0:
        raise PlansError(f"--gpu-memory must be positive, got {gpu_memory_gb}")
    templates = templates if templates is not None else load_templates(
        tuple(families) if families else None)
    spacings, shapes = fingerprint.spacings, fingerprint.shapes_after_crop
    if spacings.shape[1] != 3:
        raise DatasetError(f"images have {spacings.shape[1]} axes; medmamba plans 3D images",
                           fingerprint.raw_dataset)
    budget = gpu_memory_gb * 1e9
    in_channels, num_classes = len(fingerprint.channel_names), len(fingerprint.labels)
    normalization = channel_normalization(fingerprint)

    spacing = fullres_target_spacing(spacings, shapes)
    median = median_shape_at(spacings, shapes, spacing)
    dataset_voxels = float(np.prod(median)) * len(fingerprint.cases)
    configurations: dict[str, ConfigurationPlan] = {}
    configurations["2d"] = _configuration(templates, spacing[1:], median[1:], normalization,
                                          in_channels, num_classes, dataset_voxels, budget)
    if min(median) > 1:
        fullres = _configuration(templates, spacing, median, normalization, in_channels,
                                 num_classes, dataset_voxels, budget)
        configurations["3d_fullres"] = fullres
        reference = templates.get(REFERENCE_FAMILY) or load_template(REFERENCE_FAMILY)
        reference_patch = (fullres.networks[REFERENCE_FAMILY].patch_size
                           if REFERENCE_FAMILY in fullres.networks else plan_network(
                               reference, spacing, median, in_channels, num_classes,
                               dataset_voxels, budget).patch_size)
        low = lowres_spacing(reference, spacing, median, reference_patch, in_channels,
                             num_classes, dataset_voxels, budget)
        if low is not None:
            low_median = median_shape_at(spacings, shapes, low)
            configurations["3d_lowres"] = _configuration(
                templates, low, low_median, normalization, in_channels, num_classes,
                float(np.prod(low_median)) * len(fingerprint.cases), budget)
    return Plans(
        schema_version=PLANS_SCHEMA_VERSION,
        dataset_name=fingerprint.dataset_name,
        raw_dataset=fingerprint.raw_dataset,
        channel_names=fingerprint.channel_names,
        labels=dict(fingerprint.labels),
        file_ending=fingerprint.file_ending,
        fingerprint=FingerprintRef(file=FINGERPRINT_FILE, signature=fingerprint.signature),
        gpu_memory_gb=float(gpu_memory_gb),
        configurations=configurations,
    )
