from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from medmamba.errors import ConfigError
from medmamba.planning.plans import schema_text
from medmamba.planning.templates import FAMILIES, load_template

PLANS_DIR = Path(__file__).resolve().parents[2] / "plans"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_a_valid_template(family):
    template = load_template(family)
    assert template.family == family
    assert template.features_base == 32
    assert template.cap(2) == 512 and template.cap(3) == 320
    assert template.memory_model.source.startswith(("estimate", "measured"))


def test_per_stage_knobs_fit_the_stage_count():
    template = load_template("resenc_unet")
    assert template.knobs(4)["n_blocks_per_stage"] == (1, 3, 4, 6)
    assert template.knobs(10)["n_blocks_per_stage"][-3:] == (6, 6, 6)
    assert len(template.knobs(10)["n_blocks_per_stage"]) == 10


def test_unknown_family_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'umamba_bot'"):
        load_template("umamba_bto")


def test_templates_ship_as_package_data():
    names = {p.name for p in resources.files("medmamba.plan_templates").iterdir()}
    assert {f"{f}.json" for f in FAMILIES} | {"plans.schema.json"} <= names


def test_committed_schema_matches_the_models():
    committed = (PLANS_DIR / "plans.schema.json").read_text()
    assert json.loads(committed) == json.loads(schema_text()), (
        "plans/plans.schema.json is stale; regenerate with "
        "python -c 'from medmamba.planning.plans import schema_text; "
        "open(\"plans/plans.schema.json\", \"w\").write(schema_text())'")
