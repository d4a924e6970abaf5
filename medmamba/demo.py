"""``medmamba demo``: the README's main job on the embedded phantom, end to end on a CPU.

phantom (training cases in imagesTr/labelsTr, held-out cases in imagesTs/labelsTs) ->
validate -> plan -> preprocess -> train one fold briefly -> predict the held-out cases ->
evaluate -> PNG montage of one held-out case. Everything lands in one folder; ``demo.json``
there records what was run, the stage times and the scores.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medmamba.data.io import atomic_write_text
from medmamba.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

REPORT_FILE = "demo.json"
_OWNED = ("data", "work", "predictions", "montage.png", REPORT_FILE)


@dataclass(frozen=True)
class DemoSettings:
    """How big the demo is. ``quick`` is for tests: seconds, not a meaningful Dice."""

    train_cases: int = 16
    test_cases: int = 4
    shape: tuple[int, int, int] = (32, 48, 48)
    network: str = "plainconv_unet"
    configuration: str = "3d_fullres"
    # A CPU recipe measured on the phantom (scripts/bench_train_cpu.py): the planned
    # 32..256 features and 32x48x48 patch cost seconds per iteration on 2 cores; 16..128
    # features on 16x32x32 patches run ~6 it/s there. AdamW leaves the all-background
    # plateau within ~100 iterations; nnU-Net's SGD recipe stays on it for ~300.
    base_features: int | None = 16
    patch_size: tuple[int, int, int] | None = (16, 32, 32)
    optimizer: str = "adamw"
    lr: float = 3e-3
    epochs: int = 20
    iters_per_epoch: int = 60
    val_batches: int = 4
    tta: bool = True
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(train_cases=5, test_cases=2, shape=(16, 24, 24), base_features=4,
                   patch_size=None, epochs=1, iters_per_epoch=2, val_batches=1, tta=False)


@dataclass
class DemoReport:
    out_dir: Path
    data: Path
    work: Path
    fold_dir: Path
    predictions: Path
    summary: Path
    montage: Path
    mean_dice: float | None
    dice_per_label: dict[str, float | None]
    seconds: dict[str, float] = field(default_factory=dict)
    settings: DemoSettings = field(default_factory=DemoSettings)

    def to_dict(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        return out


def _prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir``; a previous demo's outputs there are replaced, anything else refused."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError("exists and is not a folder", out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / REPORT_FILE).is_file() and not (out_dir / "data").is_dir():
            raise DatasetError("is not empty and holds no earlier demo; choose a new folder", out_dir)
        for name in _OWNED:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def hold_out(data: Path, test_cases: int) -> list[str]:
    """Move the last ``test_cases`` cases of imagesTr/labelsTr to imagesTs/labelsTs."""
    from medmamba.data.dataset import discover_cases, load_dataset_json

    info = load_dataset_json(data)
    cases = discover_cases(info)
    held = cases[len(cases) - test_cases:]
    for folder in ("imagesTs", "labelsTs"):
        (data / folder).mkdir(exist_ok=True)
    for case in held:
        for image in case.images:
            os.replace(image, data / "imagesTs" / image.name)
        os.replace(case.label, data / "labelsTs" / case.label.name)
    raw = json.loads((data / "dataset.json").read_text())
    raw["numTraining"] = len(cases) - test_cases
    atomic_write_text(data / "dataset.json", json.dumps(raw, indent=4) + "\n")
    return [case.case_id for case in held]


def run_demo(out_dir: Path, settings: DemoSettings | None = None, device: str | None = "cpu",
             progress: bool = True, say: Callable[[str], None] | None = None) -> DemoReport:
    """Run every stage of the pipeline on a fresh phantom in ``out_dir``; see the module doc."""
    from medmamba import api

    settings = settings or DemoSettings()
    if settings.train_cases < 5:
        raise ConfigError(f"the demo needs >= 5 training cases (5-fold split), got {settings.train_cases}")
    if settings.test_cases < 1:
        raise ConfigError(f"the demo needs >= 1 held-out case, got {settings.test_cases}")
    if say is None:
        if progress:
            from rich.console import Console

            console = Console(stderr=True)
            say = console.print
        else:
            say = lambda message: logger.info("%s", message)  # noqa: E731
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)
    data, work, predictions = out_dir / "data", out_dir / "work", out_dir / "predictions"
    seconds: dict[str, float] = {}

    def stage(name: str, action: Callable[[], object]) -> object:
        say(f"[{len(seconds) + 1}/7] {name} ...")
        start = time.perf_counter()
        result = action()
        seconds[name] = round(time.perf_counter() - start, 2)
        say(f"[{len(seconds)}/7] {name} done in {seconds[name]:.1f} s")
        return result

    total = settings.train_cases + settings.test_cases
    stage("phantom", lambda: (api.make_phantom(data, cases=total, seed=settings.seed,
                                               shape=settings.shape, progress=progress),
                              hold_out(data, settings.test_cases)))
    report = stage("validate", lambda: api.validate_dataset(data, progress=progress))
    if not report.ok:  # the phantom is valid by construction: this is a bug, not a user error
        raise RuntimeError(f"phantom failed validation: {report.errors[0]}")
    plans = stage("plan", lambda: api.plan(data, work, families=[settings.network],
                                           validate=False, progress=progress))
    overrides = None
    if settings.base_features is not None:
        stages = plans.configuration(settings.configuration).network(settings.network).num_stages
        overrides = {"features_per_stage": [settings.base_features * 2**i for i in range(stages)]}
    stage("preprocess", lambda: api.preprocess(work, [settings.configuration], progress=progress))
    fold_dir = stage("train", lambda: api.train(
        work, configuration=settings.configuration, network=settings.network, fold=0,
        epochs=settings.epochs, iters_per_epoch=settings.iters_per_epoch,
        val_batches=settings.val_batches, device=device, seed=settings.seed,
        optimizer=settings.optimizer, lr=settings.lr, network_overrides=overrides,
        patch_size=settings.patch_size, progress=progress))
    predicted = stage("predict", lambda: api.predict(work, data / "imagesTs", predictions,
                                                     configuration=settings.configuration,
                                                     network=settings.network, folds=[0],
                                                     tta=settings.tta, device=device,
                                                     progress=progress))
    if predicted.failed:  # phantom cases are valid by construction, like the validation above
        case_id, reason = next(iter(predicted.failed.items()))
        raise RuntimeError(f"predicting held-out phantom case {case_id} failed: {reason}")
    summary_path = stage("evaluate", lambda: api.evaluate(predictions, data / "labelsTs",
                                                          dataset_json=data / "dataset.json"))
    summary = json.loads(Path(summary_path).read_text())  # type: ignore[arg-type]
    first = sorted((data / "labelsTs").iterdir())[0].name
    case_id = first[: -len(".nii.gz")]
    montage = api.overlay(data / "imagesTs" / f"{case_id}_0000.nii.gz", predictions / first,
                          out_dir / "montage.png", label=data / "labelsTs" / first)
    result = DemoReport(
        out_dir=out_dir, data=data, work=work, fold_dir=Path(fold_dir),  # type: ignore[arg-type]
        predictions=predictions, summary=Path(summary_path), montage=montage,  # type: ignore[arg-type]
        mean_dice=summary["mean"]["dice"],
        dice_per_label={name: m["dice"]["mean"] for name, m in summary["per_label"].items()},
        seconds=seconds, settings=settings)
    atomic_write_text(out_dir / REPORT_FILE, json.dumps(result.to_dict(), indent=2) + "\n")
    return result
