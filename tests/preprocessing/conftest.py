"""A tiny phantom dataset and its plans, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmamba import api


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "Dataset900_Phantom"
    return api.make_phantom(out, cases=4, seed=3, channels=2, shape=(12, 32, 32),
                            spacing=(3.5, 1.0, 1.0), workers=1)


@pytest.fixture
def phantom_work(phantom_data, tmp_path) -> Path:
    work = tmp_path / "work"
    api.plan(phantom_data, work, families=["plainconv_unet", "umamba_bot"], workers=1)
    return work
