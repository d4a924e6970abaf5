"""Typed, frozen plan objects: what ``medmamba plan`` writes to WORK/plans.json.

Layout (``schema_version`` 1)::

    Plans
      dataset_name, raw_dataset, channel_names, labels, file_ending,
      fingerprint {file, signature}, gpu_memory_gb (the budget it was planned for)
      configurations: {"2d" | "3d_fullres" | "3d_lowres": ConfigurationPlan}
    ConfigurationPlan  (shared by every network family: one preprocessed folder)
      spatial_dims, target_spacing, median_shape, normalization[channel],
      resampling, out_of_plane_axis, networks: {family: NetworkPlan}
    NetworkPlan  (sized by that family's memory model)
      family, in_channels, num_classes, spatial_dims, patch_size, batch_size,
      features_per_stage, kernel_sizes, strides (per stage, per axis), knobs,
      estimated_memory_gb;  network_kwargs() -> kwargs for networks.registry.build_network

Arrays are in (z, y, x) order; a 2d configuration works on axis-0 slices, so its
spacing/shape/patch are the (y, x) in-plane values. Reading a plans.json re-validates
everything: unknown, missing or mistyped keys raise PlansError naming the key path.
Runtime flags (epochs, devices, workers...) never enter plans.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import model_validator

from medmamba.data.io import atomic_write_text
from medmamba.errors import PlansError
from medmamba.options import suggest
from medmamba.planning.validation import StrictModel, load_json_model, validate_json_model

PLANS_SCHEMA_VERSION = 1
PLANS_FILE = "plans.json"
PREPROCESSED_DIR = "preprocessed"
ConfigName = Literal["2d", "3d_fullres", "3d_lowres"]
CONFIGURATION_NAMES: tuple[str, ...] = ("2d", "3d_fullres", "3d_lowres")

#: A family knob copied from the template into the plan (and on to the network).
Knob = bool | int | float | str | tuple[int, ...]


class NormScheme(str, Enum):
    """Per-channel intensity normalisation."""

    CT = "ct"  # clip to dataset foreground p0.5/p99.5, z-score with foreground mean/std
    ZSCORE = "zscore"  # per-image z-score (inside the nonzero mask if use_nonzero_mask)
    NONE = "none"  # leave intensities as they are


class LabelResampling(str, Enum):
    ONEHOT_LINEAR = "onehot_linear"  # linear interpolation of each label's mask, argmax
    NEAREST = "nearest"


class ChannelNormalization(StrictModel):
    channel_name: str
    scheme: NormScheme
    use_nonzero_mask: bool
    clip_low: float | None  # CT only: foreground p0.5
    clip_high: float | None  # CT only: foreground p99.5
    mean: float | None  # CT only: foreground mean
    std: float | None  # CT only: foreground std

    @model_validator(mode="after")
    def _ct_needs_stats(self) -> ChannelNormalization:
        stats = (self.clip_low, self.clip_high, self.mean, self.std)
        if self.scheme is NormScheme.CT and any(v is None for v in stats):
            raise ValueError("scheme 'ct' needs clip_low, clip_high, mean and std")
        if self.scheme is NormScheme.CT and self.clip_low > self.clip_high:  # type: ignore[operator]
            raise ValueError("clip_low must not exceed clip_high")
        return self


class ResamplingPlan(StrictModel):
    image_order: int  # spline order for images (3)
    image_order_out_of_plane: int  # along the out-of-plane axis of anisotropic data (0)
    label_mode: LabelResampling
    anisotropy_threshold: float  # max/min spacing above which axes are resampled apart


class NetworkPlan(StrictModel):
    family: str
    in_channels: int
    num_classes: int  # including background
    spatial_dims: Literal[2, 3]
    patch_size: tuple[int, ...]
    batch_size: int
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    knobs: dict[str, Knob]
    estimated_memory_gb: float  # memory model estimate at this patch and batch (1 GB = 1e9 bytes)

    @model_validator(mode="after")
    def _consistent(self) -> NetworkPlan:
        dims = self.spatial_dims
        stages = len(self.features_per_stage)
        if len(self.patch_size) != dims:
            raise ValueError(f"patch_size has {len(self.patch_size)} axes, spatial_dims is {dims}")
        if stages < 1 or len(self.kernel_sizes) != stages or len(self.strides) != stages:
            raise ValueError("features_per_stage, kernel_sizes and strides need one entry per stage")
        for what, per_stage in (("kernel_sizes", self.kernel_sizes), ("strides", self.strides)):
            if any(len(entry) != dims for entry in per_stage):
                raise ValueError(f"every {what} entry needs {dims} values")
        if self.batch_size < 1 or min(self.patch_size) < 1 or min(self.features_per_stage) < 1:
            raise ValueError("batch_size, patch_size and features must be positive")
        divisor = np.prod(np.array(self.strides), axis=0)
        if any(p % d for p, d in zip(self.patch_size, divisor)):
            raise ValueError(f"patch_size {list(self.patch_size)} is not divisible by the "
                             f"total stride {divisor.tolist()}")
        return self

    @property
    def num_stages(self) -> int:
        return len(self.features_per_stage)

    def network_kwargs(self) -> dict:
        """Keyword arguments for ``medmamba.networks.registry.build_network(family, **kw)``."""
        kwargs = {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "spatial_dims": self.spatial_dims,
            "features_per_stage": list(self.features_per_stage),
            "kernel_sizes": [list(k) for k in self.kernel_sizes],
            "strides": [list(s) for s in self.strides],
        }
        for key, value in self.knobs.items():
            kwargs[key] = list(value) if isinstance(value, tuple) else value
        return kwargs


class ConfigurationPlan(StrictModel):
    spatial_dims: Literal[2, 3]
    target_spacing: tuple[float, ...]
    median_shape: tuple[int, ...]  # median case shape at target_spacing (after crop)
    normalization: tuple[ChannelNormalization, ...]
    resampling: ResamplingPlan
    out_of_plane_axis: int | None  # axis of the coarse spacing on anisotropic data
    networks: dict[str, NetworkPlan]

    @model_validator(mode="after")
    def _consistent(self) -> ConfigurationPlan:
        if len(self.target_spacing) != self.spatial_dims or len(self.median_shape) != self.spatial_dims:
            raise ValueError("target_spacing and median_shape need spatial_dims values")
        for name, network in self.networks.items():
            if network.family != name:
                raise ValueError(f"networks.{name}.family is '{network.family}'")
            if network.spatial_dims != self.spatial_dims:
                raise ValueError(f"networks.{name}.spatial_dims differs from the configuration's")
        return self

    def data_fields(self) -> dict:
        """The fields that determine the preprocessed data (and so its folder hash)."""
        dumped = self.model_dump(mode="json")
        return {key: dumped[key] for key in
                ("spatial_dims", "target_spacing", "normalization", "resampling")}

    def data_hash(self) -> str:
        canonical = json.dumps(self.data_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]

    def network(self, family: str) -> NetworkPlan:
        if family not in self.networks:
            raise suggest(family, list(self.networks), "network family in this plan")
        return self.networks[family]


class FingerprintRef(StrictModel):
    file: str  # relative to WORK
    signature: str  # Fingerprint.signature of the dataset that was planned


class Plans(StrictModel):
    schema_version: Literal[1]
    dataset_name: str
    raw_dataset: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    file_ending: str
    fingerprint: FingerprintRef
    gpu_memory_gb: float
    configurations: dict[ConfigName, ConfigurationPlan]

    @model_validator(mode="after")
    def _consistent(self) -> Plans:
        if "3d_fullres" not in self.configurations and "2d" not in self.configurations:
            raise ValueError("configurations needs at least '2d' or '3d_fullres'")
        for name, configuration in self.configurations.items():
            if len(configuration.normalization) != len(self.channel_names):
                raise ValueError(f"configurations.{name}.normalization needs one entry per channel")
            for family, network in configuration.networks.items():
                if (network.in_channels, network.num_classes) != (self.num_channels, self.num_classes):
                    raise ValueError(f"configurations.{name}.networks.{family}: in_channels/"
                                     "num_classes do not match channel_names/labels")
        return self

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise suggest(name, list(self.configurations), "configuration")
        return self.configurations[name]  # type: ignore[index]

    def preprocessed_folder(self, work: Path, name: str) -> Path:
        """WORK/preprocessed/<name>-<hash of the data fields of that configuration>."""
        return Path(work) / PREPROCESSED_DIR / f"{name}-{self.configuration(name).data_hash()}"

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def from_json(cls, text: str | bytes, source: Path | str | None = None) -> Plans:
        return validate_json_model(cls, text, source)

    @classmethod
    def load(cls, path: Path) -> Plans:
        """Read and re-validate a plans.json (PlansError naming any bad key)."""
        path = Path(path)
        if path.is_dir():
            path = path / PLANS_FILE
        if not path.is_file():
            raise PlansError("no plans.json; run `medmamba plan DATA WORK` first", path)
        return load_json_model(cls, path)


def plans_json_schema() -> dict:
    """The JSON schema of plans.json, as committed in plans/plans.schema.json."""
    return Plans.model_json_schema()


def schema_text() -> str:
    return json.dumps(plans_json_schema(), indent=2, sort_keys=True) + "\n"
