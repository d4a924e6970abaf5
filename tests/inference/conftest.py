"""One tiny trained phantom model shared by the inference tests (built once per session)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

NETWORK = "plainconv_unet"
CONFIGURATION = "3d_fullres"


@dataclass(frozen=True)
class TrainedWork:
    data: Path  # phantom raw dataset (held-out cases in imagesTs/labelsTs)
    work: Path  # plans, preprocessed data and results/ with fold 0 trained

    def images(self, tmp_path: Path) -> Path:
        """A private copy of the held-out images that a test may damage."""
        target = tmp_path / "images"
        shutil.copytree(self.data / "imagesTs", target)
        return target


@pytest.fixture(scope="session")
def trained_work(tmp_path_factory: pytest.TempPathFactory) -> TrainedWork:
    from medmamba import api
    from medmamba.demo import hold_out

    root = tmp_path_factory.mktemp("trained")
    data, work = root / "data", root / "work"
    api.make_phantom(data, cases=8, seed=3, shape=(16, 24, 24), workers=1)
    hold_out(data, 3)
    plans = api.plan(data, work, families=[NETWORK], validate=False, workers=1)
    stages = plans.configuration(CONFIGURATION).network(NETWORK).num_stages
    api.preprocess(work, [CONFIGURATION], workers=1)
    api.train(work, configuration=CONFIGURATION, network=NETWORK, fold=0, epochs=1,
              iters_per_epoch=2, val_batches=1, device="cpu", workers=0,
              # 4 features in the first stage: fast on a CPU
              network_overrides={"features_per_stage": [4 * 2**i for i in range(stages)]})
    return TrainedWork(data, work)
