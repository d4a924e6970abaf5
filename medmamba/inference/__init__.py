"""Inference: sliding-window prediction, mirroring TTA, fold ensembles, export to the input grid.

- :mod:`.sliding_window`: MONAI sliding windows (batched, gaussian, overlap 0.5) + mirroring.
- :mod:`.predictor`: trained folds -> probabilities of a raw case (preprocess with the plan,
  windows, softmax, fold average, back to the input grid).
- :mod:`.export`: resample back, un-crop, argmax, write with the input's geometry.
- :mod:`.folder`: a folder of cases with parts, skip-existing and per-case errors.
"""

from medmamba.inference.folder import PredictionReport, predict_folder, select_part
from medmamba.inference.sliding_window import mirrored, sliding_window_logits

__all__ = ["PredictionReport", "mirrored", "predict_folder", "select_part", "sliding_window_logits"]
