"""Trained folds -> probabilities of one case: preprocessing, windows, TTA, fold ensemble.

A :class:`Predictor` holds one network per fold (each loaded once) and the configuration
plan they were trained with. ``predict_case`` takes the raw channels and geometry of a case
and returns probabilities in the input's voxel grid, ``predict_mask`` the label mask there.
Each is ``prepare`` (CPU preprocessing) then ``case_probabilities`` / ``case_mask`` (the
networks); :mod:`medmamba.inference.folder` runs the two halves of consecutive cases
side by side.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medmamba.data.io import Geometry
from medmamba.errors import CheckpointError, ConfigError, DatasetError, PlansError
from medmamba.inference.export import label_lookup, labels_from_probabilities, to_original_grid
from medmamba.inference.sliding_window import sliding_window_logits
from medmamba.inference.window_batch import (
    CPU_WINDOW_BATCH,
    MAX_WINDOW_BATCH,
    auto_window_batch,
    free_device_bytes,
    halve_on_out_of_memory,
    stitching_bytes,
    window_bytes,
    window_count,
)
from medmamba.preprocessing.crop import paste_into
from medmamba.training.paths import RESULTS_DIR


@dataclass(frozen=True)
class PreparedCase:
    """A case preprocessed with the plan: network input and what maps it back."""

    data: np.ndarray  # (C, *preprocessed shape) float32
    properties: dict  # preprocess_case's: crop box, shapes and spacings
    geometry: Geometry  # of the input files


@dataclass(frozen=True)
class FoldModel:
    fold: int
    network: torch.nn.Module
    meta: dict


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def resolve_run(work: Path, network: str | None, configuration: str | None,
                folds: Sequence[int] | None, checkpoint: str) -> tuple[str, str, list[Path]]:
    """Pick the trained network, configuration and fold folders under WORK/results.

    ``None`` means: the only one trained (network), ``3d_fullres`` if trained else the only
    one (configuration), every fold that has the checkpoint (folds).
    """
    results = Path(work) / RESULTS_DIR
    networks = _subfolders(results)
    if not networks:
        raise CheckpointError("no trained networks; run `medmamba train` first", results)
    if network is None:
        if len(networks) > 1:
            raise ConfigError(f"several trained networks in {results}; choose one with -n: "
                              f"{', '.join(networks)}")
        network = networks[0]
    elif network not in networks:
        from medmamba.options import suggest

        raise suggest(network, networks, f"trained network in {results}")
    configurations = _subfolders(results / network)
    if configuration is None:
        if "3d_fullres" in configurations or len(configurations) != 1:
            configuration = "3d_fullres"
        else:
            configuration = configurations[0]
    if configuration not in configurations:
        raise CheckpointError(
            f"network '{network}' has no trained configuration '{configuration}' "
            f"(trained: {', '.join(configurations) or 'none'})", results / network)
    base = results / network / configuration
    name = f"checkpoint_{checkpoint}.pt"
    if folds is None:
        found = sorted(int(d[5:]) for d in _subfolders(base)
                       if d.startswith("fold_") and d[5:].isdigit() and (base / d / name).is_file())
        if not found:
            raise CheckpointError(f"no fold has {name}; train a fold first", base)
        folds = found
    fold_dirs = []
    for fold in folds:
        fold_dir = base / f"fold_{int(fold)}"
        if not (fold_dir / name).is_file():
            raise CheckpointError(f"fold {fold} is missing (no {name})", fold_dir / name)
        fold_dirs.append(fold_dir)
    return network, configuration, fold_dirs


def load_fold_models(fold_dirs: Sequence[Path], plans, configuration: str,
                     device: torch.device, checkpoint: str = "latest") -> list[FoldModel]:
    """Load each fold's network once, checking it matches the plans and the other folds."""
    from medmamba.training.checkpoint import (
        build_inference_network, load_checkpoint_for_inference, resolve_checkpoint_path,
    )

    plan = plans.configuration(configuration)
    expected_hash = plan.data_hash()
    models = []
    for fold_dir in fold_dirs:
        state_dict, meta = load_checkpoint_for_inference(fold_dir, checkpoint=checkpoint)
        source = resolve_checkpoint_path(fold_dir, checkpoint)
        if meta.get("configuration") != configuration:
            raise CheckpointError(
                f"trained for configuration '{meta.get('configuration')}', not '{configuration}'",
                source)
        if meta.get("plans_hash") != expected_hash:
            raise PlansError(
                f"checkpoint was trained with plans hash {meta.get('plans_hash')} but "
                f"plans.json's '{configuration}' now hashes to {expected_hash}; re-train or "
                "restore the plans it was trained with", source)
        if meta.get("num_input_channels") != plans.num_channels:
            raise CheckpointError(
                f"network expects {meta.get('num_input_channels')} channel(s), plans have "
                f"{plans.num_channels}", source)
        if list(meta.get("label_values", [])) != sorted(plans.labels.values()):
            raise CheckpointError(
                f"network predicts labels {meta.get('label_values')}, plans have "
                f"{sorted(plans.labels.values())}", source)
        if models and (meta["patch_size"] != models[0].meta["patch_size"]
                       or meta["network"] != models[0].meta["network"]):
            raise CheckpointError("folds disagree on network or patch size", source)
        network = build_inference_network(meta, state_dict, device=device)
        models.append(FoldModel(int(meta.get("fold", -1)), network, meta))
    return models


class Predictor:
    """Probabilities of a case from an ensemble of fold networks under one configuration plan."""

    def __init__(self, models: Sequence[FoldModel], plan, label_values: Sequence[int],
                 device: torch.device, *, tta: bool = True, sw_batch_size: int | None = None,
                 overlap: float = 0.5, mirror_axes: Sequence[int] | None = None,
                 compile: bool = False) -> None:
        if not models:
            raise ConfigError("no fold networks to predict with")
        self.models = list(models)
        self.plan = plan
        self.label_values = [int(v) for v in label_values]
        self.device = device
        self.tta = tta
        # None: chosen per case on a GPU (window_batch.py)
        self.sw_batch_size = None if sw_batch_size is None else int(sw_batch_size)
        self._window_bytes: int | None = None
        self._batch_cap = MAX_WINDOW_BATCH  # lowered when a chosen batch ran out of memory
        # compiled: the first case's choice, kept so that every pass has one shape
        self._compiled_batch: int | None = None
        self.overlap = overlap
        self.patch_size = tuple(int(p) for p in models[0].meta["patch_size"])
        self.spatial_dims = len(self.patch_size)
        self.mirror_axes = mirror_axes
        self.compile = compile
        self._window_runners = [self._window_runner(model.network) for model in self.models]
        self.last_window_batch: int | None = None  # windows a pass in the last case
        if device.type == "cuda":
            # Every window has the plan's patch shape, so cuDNN autotunes each convolution
            # once per window batch (at most 16 of them) and reuses it for every case.
            torch.backends.cudnn.benchmark = True

    def _autocast(self):
        # bf16 on CUDA (tensor cores, no overflow); plain fp32 on the CPU.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _window_runner(self, net: torch.nn.Module):
        """The network on a batch of windows, under autocast; with ``compile`` through
        torch.compile, every call padded to ``full`` windows (the pass's batch) so one shape
        (one compile) serves every batch, the last partial one included."""
        network = torch.compile(net, dynamic=False) if self.compile else net

        def run(windows: torch.Tensor, full: int) -> torch.Tensor:
            count = windows.shape[0]
            with self._autocast():
                if self.compile and count < full:
                    padding = windows.new_zeros((full - count, *windows.shape[1:]))
                    return network(torch.cat([windows, padding]))[:count]
                return network(windows)

        return run

    def probabilities(self, data: np.ndarray) -> torch.Tensor:
        """Fold-averaged softmax of preprocessed ``data`` (C, *spatial) -> (K, *spatial), on device.

        3d: the volume is one sliding-window input. 2d: the volume's axis-0 slices form the
        batch, so windows of several slices share a forward pass.
        """
        image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(self.device)
        if self.spatial_dims == 2:
            if image.ndim != 4:
                raise ValueError(f"2d prediction needs (C, z, y, x) data, got {tuple(image.shape)}")
            image = image.permute(1, 0, 2, 3)  # slices as batch: (z, C, y, x)
        else:
            image = image[None]
        total = self._windows_fold_average(image)
        if self.spatial_dims == 2:
            return total.permute(1, 0, 2, 3)
        return total[0]

    def _windows_fold_average(self, image: torch.Tensor) -> torch.Tensor:
        """``_fold_average`` at the window batch for ``image``; a batch we chose is halved
        while the GPU runs out of memory, and later cases start from what fitted."""
        batch = self._window_batch(image)
        if self.sw_batch_size is not None or self.device.type != "cuda":
            self.last_window_batch = batch
            return self._fold_average(image, batch)
        total, ran = halve_on_out_of_memory(functools.partial(self._fold_average, image), batch)
        if ran < batch:
            self._batch_cap = ran
            if self.compile:
                self._compiled_batch = ran
        self.last_window_batch = ran
        return total

    def _fold_average(self, image: torch.Tensor, batch: int) -> torch.Tensor:
        """Fold-averaged softmax of ``image`` (batch, C, *spatial), ``batch`` windows a pass."""
        total = None
        for runner in self._window_runners:
            logits = sliding_window_logits(
                functools.partial(runner, full=batch), image, self.patch_size, sw_batch_size=batch,
                overlap=self.overlap, device=self.device, mirror_axes=self.mirror_axes,
                tta=self.tta)
            probabilities = torch.softmax(logits, dim=1)
            total = probabilities if total is None else total + probabilities
        return total / len(self.models)

    def _window_batch(self, image: torch.Tensor) -> int:
        """Windows per forward pass for ``image`` (batch, C, *spatial): as asked, else 4 on
        the CPU, else as many of the case's windows as fit (window_batch.py). Compiled, the
        first case's choice is kept, and is at least 4 (padding fills smaller passes)."""
        if self.sw_batch_size is not None:
            return self.sw_batch_size
        if self.device.type != "cuda":
            return CPU_WINDOW_BATCH
        if self._compiled_batch is not None:
            return self._compiled_batch
        if self._window_bytes is None:
            self._window_bytes = window_bytes(self.models[0].network, image.shape[1],
                                              self.patch_size, self.device, self._autocast)
        windows = image.shape[0] * window_count(image.shape[2:], self.patch_size, self.overlap)
        if self.compile:  # one shape for every case: a one-window first case must not fix 1
            windows = max(windows, CPU_WINDOW_BATCH)
        voxels = image.shape[0] * math.prod(image.shape[2:])
        free = (free_device_bytes(self.device)
                - stitching_bytes(voxels, len(self.label_values)))
        batch = min(self._batch_cap, auto_window_batch(windows, self._window_bytes, free))
        if self.compile:
            self._compiled_batch = batch
        return batch

    def prepare(self, images: np.ndarray, geometry: Geometry) -> PreparedCase:
        """Raw channels ``images`` (C, *geometry.shape) preprocessed with the plan (CPU only,
        so a folder's next case can be prepared while the networks run on this one)."""
        from medmamba.preprocessing.preprocess import preprocess_case

        if images.ndim != 4:
            raise DatasetError(f"image has {images.ndim - 1} spatial axes; medmamba predicts 3D "
                               "volumes (save 2D images as volumes of one slice)")
        data, _, properties = preprocess_case(images, geometry, self.plan)
        return PreparedCase(data, properties, geometry)

    def _to_original_grid(self, probabilities: np.ndarray, properties: dict,
                          geometry: Geometry) -> np.ndarray:
        from medmamba.preprocessing.resampling import resample_to_shape

        resampling = self.plan.resampling

        def back_to_crop(p: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
            # Linear on probabilities; the coarse axis of anisotropic data as in preprocessing.
            return resample_to_shape(
                p, shape, properties["spacing_after_resampling"], properties["spacing_after_crop"],
                order=1, is_seg=False, order_out_of_plane=resampling.image_order_out_of_plane,
                anisotropy_threshold=resampling.anisotropy_threshold)

        return to_original_grid(probabilities, properties["crop_bbox"], geometry, back_to_crop)

    def predict_case(self, images: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Probabilities (K, *geometry.shape) of raw channels ``images`` (C, *geometry.shape)."""
        return self.case_probabilities(self.prepare(images, geometry))

    def predict_mask(self, images: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Label mask (*geometry.shape) of raw channels ``images``; equals
        ``labels(predict_case(...))``."""
        return self.case_mask(self.prepare(images, geometry))

    def case_probabilities(self, case: PreparedCase) -> np.ndarray:
        """Probabilities (K, *shape) of a prepared case in its input's voxel grid."""
        probabilities = self.probabilities(case.data).float().cpu().numpy()
        return self._to_original_grid(probabilities, case.properties, case.geometry)

    def case_mask(self, case: PreparedCase) -> np.ndarray:
        """Label mask (*shape) of a prepared case in its input's voxel grid.

        When the preprocessed grid is the crop's own (no resampling back), the argmax runs
        where the probabilities are and only the mask leaves the device: on a BraTS-sized
        case that avoids copying and un-cropping K float32 volumes on the CPU.
        """
        properties, geometry = case.properties, case.geometry
        probabilities = self.probabilities(case.data)
        if list(probabilities.shape[1:]) != properties["shape_after_crop"]:
            full = self._to_original_grid(probabilities.float().cpu().numpy(), properties, geometry)
            return self.labels(full)
        # Mapped to label values in the mask's own dtype on the device: a few bytes a voxel cross.
        values = torch.from_numpy(label_lookup(self.label_values)).to(probabilities.device)
        cropped = values[probabilities.argmax(dim=0)].cpu().numpy()
        # Outside the crop box is background, as un-cropping the probabilities gives.
        return paste_into(cropped[None], properties["crop_bbox"], tuple(geometry.shape),
                          fill=self.label_values[0])[0]

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        return labels_from_probabilities(probabilities, self.label_values)
