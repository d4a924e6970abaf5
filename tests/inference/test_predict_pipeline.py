"""Folder prediction runs reading, predicting and writing of consecutive cases side by side.

A fake predictor records when each stage starts and ends; events make the overlap a
matter of order, not of timing: the networks' work on case i waits (with a timeout) for
case i+1's preprocessing to have started, and case i's write for case i+1's prediction.
A sequential loop would time out on every wait, which the test reports.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from medmamba.data.dataset import Case
from medmamba.data.io import Geometry, read_image, write_image
from medmamba.errors import DatasetError
from medmamba.inference import folder
from medmamba.inference.folder import PredictionReport, predict_cases

SHAPE = (4, 5, 6)
GEOMETRY = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), shape=SHAPE)
WAIT_S = 10.0  # only reached when the stages do not overlap


class Prepared:
    def __init__(self, value: float, geometry: Geometry) -> None:
        self.value, self.geometry = value, geometry


class RecordingPredictor:
    """Thresholds the image's first voxel; waits for the next case's preprocessing."""

    label_values = [0, 1]

    def __init__(self, cases: int) -> None:
        self.prepare_started = [threading.Event() for _ in range(cases + 1)]
        self.predict_started = [threading.Event() for _ in range(cases + 1)]
        self.overlapped: list[str] = []
        self.prepared = 0

    def prepare(self, images: np.ndarray, geometry: Geometry) -> Prepared:
        index = self.prepared
        self.prepared += 1
        self.prepare_started[index].set()
        return Prepared(float(images.flat[0]), geometry)

    def case_mask(self, case: Prepared) -> np.ndarray:
        index = int(case.value)
        self.predict_started[index].set()
        if self.prepare_started[index + 1].wait(WAIT_S):
            self.overlapped.append(f"prepare {index + 1} during predict {index}")
        return np.full(SHAPE, index % 2, np.uint8)


def write_cases(folder_path: Path, count: int) -> list[Case]:
    cases = []
    for index in range(count):
        path = folder_path / f"case{index}_0000.nii.gz"
        write_image(np.full(SHAPE, float(index), np.float32), GEOMETRY, path)
        cases.append(Case(f"case{index}", (path,), None))
    return cases


def test_next_case_is_prepared_and_previous_written_while_the_networks_run(tmp_path, monkeypatch):
    cases = write_cases(tmp_path, 4)
    predictor = RecordingPredictor(len(cases))
    predictor.prepare_started[len(cases)].set()  # no case after the last one
    predictor.predict_started[len(cases)].set()
    written_during: list[str] = []
    real_write = folder.write_prediction

    def write_waiting_for_the_next_prediction(mask, geometry, target, probabilities, labels):
        index = int(Path(target).name[4])
        if predictor.predict_started[index + 1].wait(WAIT_S):
            written_during.append(f"write {index} during predict {index + 1}")
        real_write(mask, geometry, target, probabilities, labels)

    monkeypatch.setattr(folder, "write_prediction", write_waiting_for_the_next_prediction)
    report = predict_cases(predictor, cases, tmp_path / "out", ".nii.gz",
                           PredictionReport(tmp_path / "out"), progress=False)
    assert report.ok and [p.name for p in report.written] == [f"case{i}.nii.gz" for i in range(4)]
    assert len(predictor.overlapped) == 4 and len(written_during) == 4
    for index, path in enumerate(report.written):
        mask, geometry = read_image(path)
        assert geometry.shape == SHAPE and (mask == index % 2).all()
    finished = [report.completed_at[f"case{i}"] for i in range(4)]
    assert finished == sorted(finished) and finished[0] > 0
    assert all(set(s) == {"read", "preprocess", "predict", "write"}
               for s in report.stage_seconds.values())


class FailingPredictor(RecordingPredictor):
    def case_mask(self, case: Prepared) -> np.ndarray:
        if int(case.value) == 1:
            raise DatasetError("network input is empty", Path("case1"))
        return np.zeros(SHAPE, np.uint8)


@pytest.mark.parametrize("failure", ["read", "predict", "write"])
def test_a_failing_stage_fails_its_case_and_the_others_are_written(tmp_path, monkeypatch, failure):
    cases = write_cases(tmp_path, 3)
    predictor = FailingPredictor(3) if failure == "predict" else RecordingPredictor(3)
    for event in predictor.prepare_started:  # overlap is the other test's business
        event.set()
    if failure == "read":
        cases[1].images[0].write_bytes(b"not an image")
    if failure == "write":
        real_write = folder.write_prediction

        def write(mask, geometry, target, probabilities, labels):
            if Path(target).name.startswith("case1"):
                raise DatasetError("disk full", Path(target))
            real_write(mask, geometry, target, probabilities, labels)

        monkeypatch.setattr(folder, "write_prediction", write)
    if failure == "read":
        predictor.prepared = 0  # case 1 never reaches prepare: keep the case index in the value

        def prepare(images, geometry):
            return Prepared(float(images.flat[0]), geometry)

        monkeypatch.setattr(predictor, "prepare", prepare)
    report = predict_cases(predictor, cases, tmp_path / "out", ".nii.gz",
                           PredictionReport(tmp_path / "out"), progress=False)
    assert list(report.failed) == ["case1"]
    assert [p.name for p in report.written] == ["case0.nii.gz", "case2.nii.gz"]
    assert not (tmp_path / "out" / "case1.nii.gz").exists()
    assert sorted(report.stage_seconds) == ["case0", "case2"]


def test_an_unexpected_error_propagates_without_reading_further_cases(tmp_path):
    cases = write_cases(tmp_path, 4)

    class Crashing(RecordingPredictor):
        def case_mask(self, case: Prepared) -> np.ndarray:
            raise RuntimeError("CUDA out of memory")

    predictor = Crashing(len(cases))
    with pytest.raises(RuntimeError, match="out of memory"):
        predict_cases(predictor, cases, tmp_path / "out", ".nii.gz",
                      PredictionReport(tmp_path / "out"), progress=False)
    assert predictor.prepared <= 2  # case 0, and at most the one read ahead
    assert not list((tmp_path / "out").glob("*.nii.gz"))
