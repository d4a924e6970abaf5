"""Predict every case of a folder: parts, skip-existing, per-case errors, progress."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medmamba.data.dataset import Case, discover_images
from medmamba.data.io import Geometry, read_channels
from medmamba.errors import ConfigError, DatasetError, MedMambaError
from medmamba.inference.export import probabilities_path, write_prediction
from medmamba.training.writer import BackgroundWriter

if TYPE_CHECKING:
    from medmamba.inference.predictor import Predictor
    from medmamba.planning.plans import Plans

logger = logging.getLogger(__name__)


@dataclass
class PredictionReport:
    """What ``predict`` did: written, skipped (already there) and failed cases."""

    output_folder: Path
    network: str = ""
    configuration: str = ""
    folds: list[int] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # case id -> one-line reason
    # Skips and failures are logged at INFO only: the report carries them, the CLI prints them.
    # Per case: "read" (files -> arrays), "preprocess" (arrays -> network input), "predict"
    # (network input -> mask), "write" (mask -> file).
    stage_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    # Per written case: seconds from the start of the run until its outputs were written.
    completed_at: dict[str, float] = field(default_factory=dict)

    @property
    def seconds_per_case(self) -> dict[str, float]:
        """Seconds of work per written case, read to written. Stages of consecutive cases
        overlap, so a folder takes less than their sum: see ``completed_at``."""
        return {case: sum(stages.values()) for case, stages in self.stage_seconds.items()}

    @property
    def ok(self) -> bool:
        return not self.failed


def select_part(cases: Sequence[Case], num_parts: int, part_id: int) -> list[Case]:
    """Cases of part ``part_id`` of ``num_parts``: every num_parts-th of the sorted list."""
    if num_parts < 1:
        raise ConfigError(f"num_parts must be >= 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ConfigError(f"part_id must be in 0..{num_parts - 1}, got {part_id}")
    ordered = sorted(cases, key=lambda case: case.case_id)
    return ordered[part_id::num_parts]


def list_input_cases(input_folder: Path, file_ending: str, num_channels: int) -> list[Case]:
    """The cases of an input folder in the dataset's channel layout (CASE_XXXX<ending>)."""
    input_folder = Path(input_folder)
    if not input_folder.is_dir():
        raise DatasetError("input folder does not exist", input_folder)
    cases = discover_images(input_folder, file_ending, num_channels)
    if not cases:
        raise DatasetError(f"no images named CASE_0000{file_ending} found", input_folder)
    return cases


def predict_cases(predictor, cases: Sequence[Case], output_folder: Path, file_ending: str,
                  report: PredictionReport, *, overwrite: bool = False,
                  save_probabilities: bool = False, progress: bool = True) -> PredictionReport:
    """Predict ``cases`` into ``output_folder``; a case that fails is recorded and skipped.

    Three stages run side by side on consecutive cases: a reader thread reads and
    preprocesses case i+1 and a writer thread writes case i-1 while the networks predict
    case i (reading and compressed writing were 0.43-0.49 s of a BraTS-sized case's
    0.63-0.72 s file to file on an H200, without TTA). At most one case waits at each
    hand-over.
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("predict {task.fields[case]}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    started = time.perf_counter()
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("predict", total=len(cases), case="")
        todo = []
        for case in cases:
            target = output_folder / f"{case.case_id}{file_ending}"
            if _finished(target, save_probabilities) and not overwrite:
                logger.info("%s exists; skipped (use --overwrite to replace it)", target)
                report.skipped.append(target)
                bar.advance(task)
            else:
                todo.append((case, target))
        # the bar counts a case when it fails or its write ends (rich's Progress is thread-safe)
        advance = functools.partial(bar.advance, task)
        reader = ThreadPoolExecutor(1, thread_name_prefix="medmamba-read")
        writer = BackgroundWriter()  # one write in flight; its unexpected errors re-raised here
        try:
            reading = reader.submit(_read_and_prepare, predictor, todo[0][0]) if todo else None
            for index, (case, target) in enumerate(todo):
                bar.update(task, case=case.case_id)
                current = reading
                if index + 1 < len(todo):
                    reading = reader.submit(_read_and_prepare, predictor, todo[index + 1][0])
                try:
                    prepared, stages = current.result()
                    mask, probabilities = _predict_prepared(predictor, prepared,
                                                            save_probabilities, stages)
                except MedMambaError as error:
                    _record_failure(report, case.case_id, error)
                    advance()
                    continue
                output = _CaseOutput(case.case_id, target, stages, mask, prepared.geometry,
                                     probabilities)
                writer.submit(_write_case, output, predictor.label_values, report, started,
                              advance)
        finally:
            # after an unexpected error or Ctrl-C no further case is read; a write under
            # way finishes (it is atomic either way)
            reader.shutdown(wait=True, cancel_futures=True)
            writer.close()
    return report


def _record_failure(report: PredictionReport, case_id: str, error: MedMambaError) -> None:
    report.failed[case_id] = str(error)
    logger.info("case %s failed: %s", case_id, error)


def _read_and_prepare(predictor, case: Case) -> tuple[object, dict[str, float]]:
    """(case preprocessed with the plan, seconds of the "read" and "preprocess" stages)."""
    start = time.perf_counter()
    images, geometry = read_channels(case.images)
    read = time.perf_counter()
    prepared = predictor.prepare(images, geometry)
    return prepared, {"read": read - start, "preprocess": time.perf_counter() - read}


def _predict_prepared(predictor, prepared, save_probabilities: bool, stages: dict[str, float]
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """(mask, probabilities or None) of a prepared case; adds its "predict" seconds."""
    start = time.perf_counter()
    if save_probabilities:
        probabilities = predictor.case_probabilities(prepared)
        mask = predictor.labels(probabilities)
    else:
        probabilities, mask = None, predictor.case_mask(prepared)
    stages["predict"] = time.perf_counter() - start
    return mask, probabilities


@dataclass(frozen=True)
class _CaseOutput:
    """A predicted case on its way to the writer thread."""

    case_id: str
    target: Path
    stages: dict[str, float]
    mask: np.ndarray
    geometry: Geometry
    probabilities: np.ndarray | None


def _write_case(output: _CaseOutput, label_values: Sequence[int], report: PredictionReport,
                started: float, advance: Callable[[], None]) -> None:
    """Write one case's outputs (in the writer thread) and record it as written or failed."""
    start = time.perf_counter()
    try:
        write_prediction(output.mask, output.geometry, output.target, output.probabilities,
                         label_values)
    except MedMambaError as error:
        _record_failure(report, output.case_id, error)
    else:
        end = time.perf_counter()
        output.stages["write"] = end - start
        report.written.append(output.target)
        report.stage_seconds[output.case_id] = output.stages
        report.completed_at[output.case_id] = end - started
    finally:
        advance()


def _finished(mask_path: Path, save_probabilities: bool) -> bool:
    """Every output asked for exists (a mask from a run without probabilities is redone)."""
    return mask_path.exists() and (not save_probabilities
                                   or probabilities_path(mask_path).exists())


@dataclass(frozen=True)
class LoadedRun:
    """A trained run ready to predict: its predictor and what names it."""

    predictor: Predictor
    plans: Plans
    network: str
    configuration: str
    folds: list[int]


def load_run(work: Path, *, configuration: str | None = None, network: str | None = None,
             folds: Sequence[int] | None = None, tta: bool = True, device=None,
             batch_windows: int | None = None, checkpoint: str = "latest", compile: bool = False,
             plans: Plans | None = None) -> LoadedRun:
    """Load the trained folds in ``work`` (each once) into one :class:`Predictor`.

    ``None`` picks as ``predict_folder`` documents; a missing fold, mismatched checkpoint
    or bad option raises. ``plans``: ``work``'s plans if already loaded.
    """
    from medmamba.devices import resolve_device
    from medmamba.inference.predictor import Predictor, load_fold_models, resolve_run
    from medmamba.planning.plans import Plans

    if batch_windows is not None and batch_windows < 1:
        raise ConfigError(f"batch_windows must be >= 1, got {batch_windows}")
    if checkpoint not in ("latest", "best"):
        raise ConfigError(f"unknown checkpoint '{checkpoint}'; allowed: latest, best")
    if plans is None:
        plans = Plans.load(Path(work))
    network, configuration, fold_dirs = resolve_run(work, network, configuration, folds, checkpoint)
    torch_device = resolve_device(device)
    models = load_fold_models(fold_dirs, plans, configuration, torch_device, checkpoint)
    predictor = Predictor(models, plans.configuration(configuration), models[0].meta["label_values"],
                          torch_device, tta=tta, sw_batch_size=batch_windows, compile=compile)
    return LoadedRun(predictor, plans, network, configuration, [m.fold for m in models])


def predict_folder(work: Path, input_folder: Path, output_folder: Path, *,
                   configuration: str | None = None, network: str | None = None,
                   folds: Sequence[int] | None = None, tta: bool = True,
                   save_probabilities: bool = False, device=None, overwrite: bool = False,
                   num_parts: int = 1, part_id: int = 0, batch_windows: int | None = None,
                   checkpoint: str = "latest", progress: bool = True,
                   compile: bool = False) -> PredictionReport:
    """Predict every case of ``input_folder`` with the trained folds in ``work``.

    ``None`` means: the only network trained, ``3d_fullres`` if trained else the only
    configuration, every fold that has the checkpoint. Errors that concern the whole run
    (no plans, missing fold, mismatched checkpoint, wrong channel layout of the folder)
    raise; a case that cannot be read is recorded in the report's ``failed`` and the others
    continue.
    """
    from medmamba.planning.plans import Plans

    plans = Plans.load(Path(work))  # the input folder is checked before any model loads
    cases = select_part(list_input_cases(input_folder, plans.file_ending, plans.num_channels),
                        num_parts, part_id)
    run = load_run(work, configuration=configuration, network=network, folds=folds, tta=tta,
                   device=device, batch_windows=batch_windows, checkpoint=checkpoint,
                   compile=compile, plans=plans)
    report = PredictionReport(Path(output_folder), network=run.network,
                              configuration=run.configuration, folds=run.folds)
    return predict_cases(run.predictor, cases, output_folder, run.plans.file_ending, report,
                         overwrite=overwrite, save_probabilities=save_probabilities,
                         progress=progress)
