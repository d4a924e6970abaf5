"""Plan templates: one JSON file per network family in ``plans/`` (package
``medmamba.plan_templates``).

A template says how the planner sizes that family: feature widths (``features_base``
doubling per stage up to ``features_cap`` per spatial dimensionality), the knobs copied
into every NetworkPlan (``network_kwargs``, scalars; ``per_stage_kwargs``, lists fitted to
the planned number of stages by truncating or repeating the last value) and the
coefficients of its memory model (see medmamba.planning.memory).
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

from pydantic import model_validator

from medmamba.errors import PlansError
from medmamba.options import suggest
from medmamba.planning.plans import Knob
from medmamba.planning.validation import StrictModel, validate_json_model

FAMILIES: tuple[str, ...] = (
    "umamba_bot", "umamba_enc", "lightm_unet", "mhs_unet", "plainconv_unet", "resenc_unet",
)
#: The family whose plan decides whether a 3d_lowres configuration is needed (nnU-Net's
#: default network, so the decision matches nnU-Net's).
REFERENCE_FAMILY = "plainconv_unet"


class MemoryModel(StrictModel):
    """Coefficients of ``estimate_training_bytes`` (medmamba.planning.memory).

    bytes = overhead_bytes
          + activation_bytes * batch * sum_s weight_s * voxels_s * features_s
          + param_bytes      * sum_s weight_s * kernel_volume_s * features_s * (features_{s-1} + features_s)
          + token_bytes      * batch * sum_{s carrying SSM layers} voxels_s * features_s
    """

    source: str  # "estimate: ..." until the networks helper writes "measured: ..."
    overhead_bytes: float
    activation_bytes: float
    param_bytes: float
    token_bytes: float
    #: stages s >= ssm_from_stage carry SSM layers (negative counts from the bottleneck,
    #: -1 = bottleneck only); null: no SSM layers.
    ssm_from_stage: int | None
    #: relative activation/parameter weight per stage (e.g. residual blocks per stage);
    #: the last value repeats for deeper stages.
    stage_weights: tuple[float, ...]

    @model_validator(mode="after")
    def _positive(self) -> MemoryModel:
        if not self.stage_weights:
            raise ValueError("stage_weights needs at least one value")
        values = (self.overhead_bytes, self.activation_bytes, self.param_bytes, self.token_bytes)
        if min(values) < 0 or min(self.stage_weights) <= 0:
            raise ValueError("memory model coefficients must be non-negative")
        return self


class Template(StrictModel):
    family: str
    description: str
    network_kwargs: dict[str, Knob]
    per_stage_kwargs: dict[str, tuple[int, ...]]
    features_base: int
    features_cap: dict[Literal["2", "3"], int]
    memory_model: MemoryModel

    def cap(self, spatial_dims: int) -> int:
        return self.features_cap[str(spatial_dims)]  # type: ignore[index]

    def knobs(self, num_stages: int) -> dict[str, Knob]:
        """network_kwargs plus per_stage_kwargs fitted to ``num_stages``."""
        knobs: dict[str, Knob] = dict(self.network_kwargs)
        for key, values in self.per_stage_kwargs.items():
            fitted = list(values[:num_stages])
            fitted += [values[-1]] * (num_stages - len(fitted))
            knobs[key] = tuple(fitted)
        return knobs


def load_template(family: str) -> Template:
    """The packaged template of ``family`` (ConfigError with a suggestion if unknown)."""
    if family not in FAMILIES:
        raise suggest(family, list(FAMILIES), "network family")
    resource = resources.files("medmamba.plan_templates").joinpath(f"{family}.json")
    if not resource.is_file():
        raise PlansError(f"plan template of '{family}' is missing from the installation",
                         str(resource))
    template = validate_json_model(Template, resource.read_bytes(), str(resource))
    if template.family != family:
        raise PlansError(f"family: template says '{template.family}'", str(resource))
    return template


def load_templates(families: tuple[str, ...] | list[str] | None = None) -> dict[str, Template]:
    return {family: load_template(family) for family in (families or FAMILIES)}
