"""Tiny in-memory stand-ins for preprocessed data, for the fast unit tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medmamba.training.trainer import RunSpec

TINY_KWARGS = {
    "in_channels": 1,
    "num_classes": 3,
    "spatial_dims": 3,
    "features_per_stage": [4, 8],
    "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [2, 2, 2]],
}


def write_case(folder: Path, case_id: str, rng: np.random.Generator, shape=(20, 24, 22)) -> None:
    """Two labelled blocks in noise; class_locations as the preprocessing writes them."""
    label = np.zeros((1, *shape), dtype=np.int16)
    z, y, x = (int(rng.integers(4, s - 10)) for s in shape)
    label[0, z : z + 5, y : y + 6, x : x + 5] = 1
    label[0, z + 5 : z + 8, y : y + 6, x : x + 5] = 2
    image = rng.normal(size=(1, *shape)).astype(np.float32) + 2.0 * label.astype(np.float32)
    np.save(folder / f"{case_id}.npy", image)
    np.save(folder / f"{case_id}_seg.npy", label)
    locations = {str(v): np.argwhere(label[0] == v)[:50].tolist() for v in (1, 2)}
    (folder / f"{case_id}.json").write_text(json.dumps({"class_locations": locations}))


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "preprocessed" / "3d_fullres-abc"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        write_case(folder, f"case_{i:03d}", rng)
    return folder


@pytest.fixture
def tiny_spec(tmp_path: Path, tiny_folder: Path) -> RunSpec:
    cases = sorted(p.stem for p in tiny_folder.glob("case_???.npy"))
    return RunSpec(
        fold_dir=tmp_path / "results" / "plainconv_unet" / "3d_fullres" / "fold_0",
        data_folder=tiny_folder,
        train_cases=tuple(cases[:4]),
        val_cases=tuple(cases[4:]),
        network="plainconv_unet",
        network_tag="plainconv_unet",
        network_kwargs=dict(TINY_KWARGS),
        configuration="3d_fullres",
        plans_hash="abc",
        patch_size=(16, 16, 16),
        batch_size=2,
        label_values=(0, 1, 2),
        label_names={"background": 0, "a": 1, "b": 2},
        fold=0,
    )
