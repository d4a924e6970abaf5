"""A readable rich summary of a Plans object (printed by ``medmamba plan``)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from medmamba.planning.plans import ChannelNormalization, NormScheme, Plans


def _x(values) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _norm(plan: ChannelNormalization) -> str:
    if plan.scheme is NormScheme.CT:
        return f"{plan.channel_name}: CT clip [{plan.clip_low:.4g}, {plan.clip_high:.4g}] z-score"
    if plan.scheme is NormScheme.ZSCORE:
        return f"{plan.channel_name}: z-score" + (" (nonzero mask)" if plan.use_nonzero_mask else "")
    return f"{plan.channel_name}: none"


def _strides(strides) -> str:
    # Pooling per stage after the first, compact: "2 2 2 (1,2,2)".
    parts = []
    for stride in strides[1:]:
        parts.append(str(stride[0]) if len(set(stride)) == 1 else "(" + ",".join(map(str, stride)) + ")")
    return " ".join(parts) or "-"


def plans_summary(plans: Plans) -> Group:
    """One table of configurations and one of network plans per configuration."""
    configurations = Table(title=f"{plans.dataset_name}: plans for {plans.gpu_memory_gb:g} GB GPU memory")
    for column in ("configuration", "spacing (z,y,x)", "median shape", "normalisation", "data folder"):
        configurations.add_column(column)
    networks = Table(title="networks per configuration")
    for column in ("configuration", "network", "patch", "batch", "stages", "features", "pooling",
                   "est. GB"):
        networks.add_column(column, justify="right" if column in ("batch", "stages", "est. GB") else "left")
    for name, configuration in plans.configurations.items():
        configurations.add_row(
            name, _x(configuration.target_spacing), _x(configuration.median_shape),
            "\n".join(_norm(n) for n in configuration.normalization),
            f"{name}-{configuration.data_hash()}")
        for family, network in configuration.networks.items():
            features = network.features_per_stage
            networks.add_row(
                name, family, _x(network.patch_size), str(network.batch_size),
                str(network.num_stages), f"{features[0]}-{features[-1]}",
                _strides(network.strides), f"{network.estimated_memory_gb:.1f}")
        networks.add_section()
    return Group(configurations, networks)
