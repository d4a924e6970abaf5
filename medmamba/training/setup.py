"""Resolve a training run from WORK: plans, preprocessed folder, split, network kwargs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import torch

from medmamba.errors import ConfigError, PlansError
from medmamba.training.paths import fold_dir, network_tag
from medmamba.training.splits import SPLITS_FILE, load_or_create_splits, select_fold
from medmamba.training.trainer import RunSpec


def preprocessed_case_ids(folder: Path) -> list[str]:
    from medmamba.preprocessing.storage import list_cases

    if not folder.is_dir():
        raise PlansError("preprocessed data not found; run `medmamba preprocess WORK` first", folder)
    return sorted(list_cases(folder))


def resolve_run(
    work: Path,
    configuration: str,
    network: str,
    fold: int,
    ssm: str | None = None,
    split_file: Path | None = None,
    write_splits: bool = True,
    network_overrides: dict[str, Any] | None = None,
    patch_size: Sequence[int] | None = None,
) -> RunSpec:
    """Everything the trainer needs; errors name the file to fix."""
    from medmamba.networks.registry import get_family
    from medmamba.planning.plans import Plans

    work = Path(work)
    plans = Plans.load(work)
    config_plan = plans.configuration(configuration)
    network_plan = config_plan.network(network)
    kwargs = network_plan.network_kwargs()
    if ssm is not None:
        from medmamba.networks.families import SSM
        from medmamba.options import parse_enum

        ssm = parse_enum(SSM, ssm, "ssm").value
        if not get_family(network).has_ssm:
            raise ConfigError(f"network {network} has no SSM layer; --ssm applies to Mamba families only")
        if ssm == SSM.NONE.value:  # "mamba" is the family default: same kwargs, same folder
            kwargs["ssm"] = ssm
    if network_overrides:
        unknown = sorted(set(network_overrides) - set(kwargs) - set(get_family(network).knobs) - {"ssm"})
        if unknown:
            raise ConfigError(f"network override {unknown[0]!r} is not a keyword of network {network}")
        kwargs.update({k: list(v) if isinstance(v, tuple) else v for k, v in network_overrides.items()})
        if len(kwargs["features_per_stage"]) != len(kwargs["strides"]):
            raise ConfigError(
                f"features per stage {kwargs['features_per_stage']} need {len(kwargs['strides'])} values "
                f"(one per stage of the plan)"
            )
    patch = tuple(int(p) for p in (patch_size or network_plan.patch_size))
    _check_patch(patch, kwargs)
    data_folder = plans.preprocessed_folder(work, configuration)
    case_ids = preprocessed_case_ids(data_folder)
    splits = load_or_create_splits(work, case_ids, split_file, write=write_splits)
    split = select_fold(splits, fold, Path(split_file) if split_file else work / SPLITS_FILE)
    return RunSpec(
        fold_dir=fold_dir(work, network, configuration, fold, ssm if ssm != "mamba" else None),
        data_folder=data_folder,
        train_cases=tuple(split["train"]),
        val_cases=tuple(split["val"]),
        network=network,
        network_tag=network_tag(network, ssm),
        network_kwargs=kwargs,
        configuration=configuration,
        plans_hash=config_plan.data_hash(),
        patch_size=patch,
        batch_size=network_plan.batch_size,
        label_values=tuple(sorted(plans.labels.values())),
        label_names=dict(plans.labels),
        fold=fold,
    )


def default_workers(device: torch.device) -> int:
    """Worker processes when not given: on a GPU min(8, cores - 1); on the CPU the cores
    are busy training, so 1 worker (0 on a single core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return 1 if cores > 1 else 0


def _check_patch(patch: tuple[int, ...], kwargs: dict[str, Any]) -> None:
    strides = np.asarray(kwargs["strides"])
    if len(patch) != kwargs["spatial_dims"]:
        raise ConfigError(f"patch size {list(patch)} needs {kwargs['spatial_dims']} values")
    divisor = strides.prod(axis=0)
    if any(p % d for p, d in zip(patch, divisor)):
        raise ConfigError(f"patch size {list(patch)} is not divisible by the total stride {divisor.tolist()}")
