"""Fixtures of the network tests (stage specifications live in network_specs.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def spatial_dims(request: pytest.FixtureRequest) -> int:
    return request.param
