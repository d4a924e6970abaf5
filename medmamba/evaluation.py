"""Dice, HD95 and normalised surface Dice per label and case (MONAI metrics).

Empty masks (the policy the summary also records):

- reference and prediction both empty: Dice 1, NSD 1, HD95 0 (nothing to find, nothing found);
- exactly one of them empty: Dice 0, NSD 0, HD95 NaN (a distance to an empty surface is
  undefined). NaN values are written as ``null`` in summary.json, as empty cells in
  summary.csv, and are left out of means and medians; ``n`` in each aggregate says how many
  cases it covers.

Distances are in millimetres: the reference image's spacing is handed to MONAI.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmamba.data.io import SUPPORTED_ENDINGS, Geometry, atomic_write_text, read_image
from medmamba.errors import DatasetError

logger = logging.getLogger(__name__)

METRICS = ("dice", "hd95", "nsd")
NAN_POLICY = (
    "both empty: dice 1, nsd 1, hd95 0; exactly one empty: dice 0, nsd 0, hd95 NaN; "
    "NaN is null in JSON, empty in CSV and left out of mean/median (n counts the cases used)"
)
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LabelScores:
    dice: float
    hd95: float
    nsd: float
    reference_voxels: int
    predicted_voxels: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "dice": _json_number(self.dice),
            "hd95": _json_number(self.hd95),
            "nsd": _json_number(self.nsd),
            "reference_voxels": self.reference_voxels,
            "predicted_voxels": self.predicted_voxels,
        }


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def label_scores(prediction: np.ndarray, reference: np.ndarray,
                 spacing: tuple[float, ...], tolerance_mm: float = 1.0) -> LabelScores:
    """Scores of one binary mask against its reference; ``spacing`` in array axis order."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, reference {reference.shape}")
    pred = np.asarray(prediction, dtype=bool)
    ref = np.asarray(reference, dtype=bool)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred == 0 and n_ref == 0:
        return LabelScores(1.0, 0.0, 1.0, 0, 0)
    if n_pred == 0 or n_ref == 0:
        return LabelScores(0.0, math.nan, 0.0, n_ref, n_pred)
    dice = 2.0 * float(np.logical_and(pred, ref).sum()) / (n_pred + n_ref)
    pred_t = torch.from_numpy(pred)[None, None].float()
    ref_t = torch.from_numpy(ref)[None, None].float()
    spacing_list = [float(s) for s in spacing]
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about its own internal use of a deprecated argument.
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(pred_t, ref_t, include_background=True, percentile=95,
                                          spacing=spacing_list)
        nsd = compute_surface_dice(pred_t, ref_t, class_thresholds=[float(tolerance_mm)],
                                   include_background=True, spacing=spacing_list)
    return LabelScores(dice, float(hd95.item()), float(nsd.item()), n_ref, n_pred)


def case_scores(prediction: np.ndarray, reference: np.ndarray, labels: dict[str, int],
                spacing: tuple[float, ...], tolerance_mm: float = 1.0) -> dict[str, LabelScores]:
    """Scores per foreground label (name -> scores) of one case's label maps."""
    return {
        name: label_scores(prediction == value, reference == value, spacing, tolerance_mm)
        for name, value in labels.items()
        if value != 0
    }


def _aggregate(values: list[float]) -> dict[str, float | int | None]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": None, "median": None, "n": 0}
    return {"mean": float(np.mean(finite)), "median": float(np.median(finite)), "n": len(finite)}


def _strip_ending(name: str, ending: str) -> str | None:
    return name[: -len(ending)] if name.endswith(ending) and not name.startswith(".") else None


def _detect_ending(folder: Path) -> str:
    for path in sorted(folder.iterdir()):
        for ending in SUPPORTED_ENDINGS:
            if _strip_ending(path.name, ending) is not None:
                return ending
    raise DatasetError("no label images found", folder)


def _labels_from_files(paths: list[Path]) -> dict[str, int]:
    values: set[int] = set()
    for path in paths:
        array, _ = read_image(path)
        values.update(int(v) for v in np.unique(array))
    values.discard(0)
    return {"background": 0, **{f"label_{v}": v for v in sorted(values)}}


def _check_same_grid(pred_geometry: Geometry, ref_geometry: Geometry, path: Path) -> None:
    if pred_geometry.shape != ref_geometry.shape:
        raise DatasetError(
            f"prediction shape {pred_geometry.shape} differs from the reference's {ref_geometry.shape}",
            path)
    if not np.allclose(pred_geometry.spacing, ref_geometry.spacing, rtol=1e-4, atol=1e-5):
        raise DatasetError(
            f"prediction spacing {pred_geometry.spacing} differs from the reference's "
            f"{ref_geometry.spacing}", path)


def evaluate_folder(prediction_folder: Path, label_folder: Path,
                    labels: dict[str, int] | None = None, file_ending: str | None = None,
                    tolerance_mm: float = 1.0, output: Path | None = None) -> Path:
    """Score every prediction against the label of the same name; write summary.json + .csv.

    ``labels`` maps names to values (dataset.json's ``labels``); without it the label values
    found in the reference files are used, named ``label_<value>``. Returns the path of
    summary.json (default: inside ``prediction_folder``).
    """
    prediction_folder, label_folder = Path(prediction_folder), Path(label_folder)
    for folder in (prediction_folder, label_folder):
        if not folder.is_dir():
            raise DatasetError("folder does not exist", folder)
    ending = file_ending or _detect_ending(label_folder)
    references = {
        case: path for path in sorted(label_folder.iterdir())
        if (case := _strip_ending(path.name, ending)) is not None
    }
    predictions = {
        case: path for path in sorted(prediction_folder.iterdir())
        if (case := _strip_ending(path.name, ending)) is not None
    }
    if not predictions:
        raise DatasetError(f"no predictions ending in {ending}", prediction_folder)
    unmatched = sorted(set(predictions) - set(references))
    if unmatched:
        raise DatasetError(
            f"prediction of case '{unmatched[0]}' has no reference label "
            f"({len(unmatched)} unmatched)", label_folder / f"{unmatched[0]}{ending}")
    missing = sorted(set(references) - set(predictions))
    if missing:
        logger.warning("%d reference case(s) have no prediction and are not scored: %s",
                       len(missing), ", ".join(missing[:5]))
    if labels is None:
        labels = _labels_from_files([references[c] for c in predictions])
    foreground = {name: value for name, value in labels.items() if value != 0}

    cases = []
    for case_id, pred_path in predictions.items():
        prediction, pred_geometry = read_image(pred_path)
        reference, ref_geometry = read_image(references[case_id])
        _check_same_grid(pred_geometry, ref_geometry, pred_path)
        scores = case_scores(prediction, reference, foreground, ref_geometry.spacing, tolerance_mm)
        cases.append((case_id, scores))

    per_label = {
        name: {metric: _aggregate([getattr(s[name], metric) for _, s in cases]) for metric in METRICS}
        for name in foreground
    }
    overall = {}
    for metric in METRICS:
        means = [per_label[name][metric]["mean"] for name in foreground]
        finite = [m for m in means if m is not None]
        overall[metric] = float(np.mean(finite)) if finite else None
    summary = {
        "schema_version": SCHEMA_VERSION,
        "prediction_folder": str(prediction_folder),
        "label_folder": str(label_folder),
        "labels": foreground,
        "nsd_tolerance_mm": float(tolerance_mm),
        "nan_policy": NAN_POLICY,
        "num_cases": len(cases),
        "missing_predictions": missing,
        "mean": overall,
        "per_label": per_label,
        "cases": [
            {"case_id": case_id, "labels": {name: s.as_dict() for name, s in scores.items()}}
            for case_id, scores in cases
        ],
    }
    summary_path = Path(output) if output is not None else prediction_folder / "summary.json"
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(summary_path.with_suffix(".csv"), _summary_csv(cases, per_label))
    return summary_path


def _summary_csv(cases: list[tuple[str, dict[str, LabelScores]]], per_label: dict) -> str:
    def cell(value: float | None) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "label", *METRICS])
    for case_id, scores in cases:
        for name, s in scores.items():
            writer.writerow([case_id, name, *(cell(getattr(s, m)) for m in METRICS)])
    for statistic in ("mean", "median"):
        for name, metrics in per_label.items():
            writer.writerow([statistic, name, *(cell(metrics[m][statistic]) for m in METRICS)])
    return buffer.getvalue()
