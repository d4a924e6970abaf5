"""Patch batches: a batch is a pure function of (seed, epoch, iteration, rank).

:class:`StepSampler` yields global step numbers forever (its only state is the next
step, stored in checkpoints); :class:`PatchBatchDataset` turns a step into a whole batch
with a ``numpy.random.Generator`` seeded from ``(seed, step, rank)``. Worker processes
therefore change speed, never content, and a resumed run sees the very same batches.

Cases are opened memory-mapped in each process, so a patch reads only its own bytes.
Worker processes hand batches to the trainer through shared memory; with a small
/dev/shm (containers often have 64 MB) use ``workers=0``, which builds batches in the
main process and needs no shared memory at all. With workers, tensors are sent through
the ``file_system`` sharing strategy (see :func:`make_loader`), and a batch is small
(batch x channels x patch float32: about 1 MB for hippocampus).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medmamba.errors import DatasetError
from medmamba.preprocessing.storage import load_case
from medmamba.training.augment import CENTER_KEY, seed_transforms, training_transforms


@dataclass
class CaseArrays:
    image: np.ndarray  # (C, *spatial), usually a read-only memmap
    label: np.ndarray  # (1, *spatial)
    # foreground channel index -> (n, spatial ndim) voxel coordinates
    locations: dict[int, np.ndarray]


class CaseStore:
    """Lazy, per-process access to preprocessed cases of one folder."""

    def __init__(self, folder: Path, case_ids: Sequence[str], label_values: Sequence[int]) -> None:
        self.folder = Path(folder)
        self.case_ids = list(case_ids)
        self.label_values = [int(v) for v in label_values]
        self._cache: dict[str, CaseArrays] = {}
        missing = [c for c in self.case_ids if not (self.folder / f"{c}.json").is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} case(s) of the split are not preprocessed, e.g. {missing[0]}; "
                "run `medmamba preprocess WORK`",
                self.folder,
            )

    def __getstate__(self) -> dict[str, Any]:
        # Workers reopen the memmaps themselves.
        return {**self.__dict__, "_cache": {}}

    def get(self, case_id: str) -> CaseArrays:
        if case_id not in self._cache:
            self._cache[case_id] = self._load(case_id)
        return self._cache[case_id]

    def _load(self, case_id: str) -> CaseArrays:
        image, label, properties = load_case(self.folder, case_id, mmap=True)
        if label is None:
            raise DatasetError("preprocessed case has no segmentation (_seg.npy)", self.folder / f"{case_id}.npy")
        if label.shape[1:] != image.shape[1:]:
            raise DatasetError(f"label shape {label.shape} does not match image {image.shape}", self.folder / case_id)
        if self.label_values != list(range(len(self.label_values))):
            label = _to_channel_indices(np.asarray(label), self.label_values)
        return CaseArrays(image, label, self._locations(properties.get("class_locations", {}), image.ndim - 1))

    def _locations(self, raw: dict[str, Any], ndim: int) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for key, coords in raw.items():
            value = int(key)
            if value == 0 or value not in self.label_values:
                continue
            array = np.asarray(coords, dtype=np.int64).reshape(-1, np.asarray(coords).shape[-1] if coords else ndim)
            if array.shape[1] == ndim + 1:  # nnU-Net style: a leading channel index
                array = array[:, 1:]
            if len(array):
                out[self.label_values.index(value)] = array
        return out


def _to_channel_indices(label: np.ndarray, values: Sequence[int]) -> np.ndarray:
    lookup = np.zeros(int(max(values)) + 1, dtype=np.int16)
    for index, value in enumerate(values):
        lookup[value] = index
    return lookup[np.clip(label, 0, len(lookup) - 1)]


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> np.random.Generator:
    """The generator of one batch; ``stream`` separates training (0) from validation (1)."""
    return np.random.default_rng([seed, stream, step, rank])


def choose_center(
    case: CaseArrays, patch_size: Sequence[int], force_foreground: bool, rng: np.random.Generator
) -> list[int]:
    """Full-dimensional centre of a patch: random, or on a foreground voxel of a random
    present class (nnU-Net's oversampling). Patches may extend past the case border by up
    to half the patch, where they are zero-padded."""
    spatial = case.image.shape[1:]
    if force_foreground and case.locations:
        label = sorted(case.locations)[rng.integers(len(case.locations))]
        coords = case.locations[label]
        return [int(c) for c in coords[rng.integers(len(coords))]]
    patch = list(patch_size)
    if len(patch) < len(spatial):  # 2d patches from 3d cases: any slice along axis 0
        patch = [1] * (len(spatial) - len(patch)) + patch
    center = []
    for size, p in zip(spatial, patch):
        pad = max(0, p - size)
        low = -(pad // 2) + p // 2
        high = size + pad // 2 + pad % 2 - p + p // 2
        center.append(int(rng.integers(low, max(low, high) + 1)))
    return center


def sample_patch(
    case: CaseArrays, center: Sequence[int], patch_dims: int
) -> dict[str, Any]:
    """The transform input for one sample; 2d patches take the slice at ``center[0]``."""
    extra = case.image.ndim - 1 - patch_dims
    image, label = case.image, case.label
    if extra:
        index = (slice(None), *[int(c) for c in center[:extra]])
        image, label = image[index], label[index]
    return {"image": image, "label": label, CENTER_KEY: list(center[extra:])}


class PatchBatchDataset(Dataset):
    """Index = global step; item = a whole batch ``{"image": (B, C, *patch) float32,
    "label": (B, 1, *patch) int64}``."""

    def __init__(
        self,
        store: CaseStore,
        patch_size: Sequence[int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        oversample_foreground: float = 1 / 3,
        augment: bool = True,
        stream: int = 0,
    ) -> None:
        self.store = store
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = batch_size
        self.seed, self.rank, self.stream = seed, rank, stream
        self.oversample = oversample_foreground
        self.augment = augment
        self._transforms = None

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        from monai.data import set_track_meta

        set_track_meta(False)  # plain tensors: faster, and picklable across workers
        if self._transforms is None:
            self._transforms = training_transforms(self.patch_size, self.augment)
        rng = step_seed(self.seed, step, self.rank, self.stream)
        images, labels = [], []
        for _ in range(self.batch_size):
            case = self.store.get(self.store.case_ids[rng.integers(len(self.store.case_ids))])
            foreground = bool(rng.random() < self.oversample)
            center = choose_center(case, self.patch_size, foreground, rng)
            seed_transforms(self._transforms, int(rng.integers(2**31)))
            sample = self._transforms(sample_patch(case, center, len(self.patch_size)))
            images.append(torch.as_tensor(sample["image"], dtype=torch.float32))
            labels.append(torch.as_tensor(sample["label"]).long())
        return {"image": torch.stack(images), "label": torch.stack(labels)}


class StepSampler(Sampler[int]):
    """Yields start, start + 1, ... forever (the DataLoader's only state)."""

    def __init__(self, start: int = 0) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        step = self.start
        while True:
            yield step
            step += 1


def make_loader(
    dataset: PatchBatchDataset,
    start_step: int,
    workers: int,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """An endless loader of batches starting at ``start_step``."""
    if workers > 0:
        # Descriptors would need one open file per tensor; file_system keeps the count low.
        torch.multiprocessing.set_sharing_strategy("file_system")
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=StepSampler(start_step),
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        pin_memory=pin_memory,
        generator=generator,
    )


# Host memory the validation patches may keep between epochs (pinned when training on a GPU;
# the pinned allocator may round up). 4 GiB holds 50 batches of 2 x 4 x 128^3 fp32 images
# twice over, and stays small beside the host memory of a GPU node.
VALIDATION_CACHE_MAX_BYTES = 4 * 2**30


class ValidationBatches:
    """The fixed validation batches of one rank: steps ``rank, rank + world, ...`` below
    ``count``, the same patches every epoch.

    They are built once, on the first pass, and kept on the host (labels as uint8 when the
    classes fit): rebuilding them every epoch cost the trainer's main thread seconds per
    epoch on a loaded machine, where the GPU waited. When the whole set would pass
    ``max_bytes``, every batch is rebuilt on every pass instead, one at a time.
    """

    def __init__(self, dataset: PatchBatchDataset, count: int, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False, max_bytes: int = VALIDATION_CACHE_MAX_BYTES) -> None:
        self.dataset, self.steps = dataset, range(rank, count, world_size)
        self.pin_memory, self.max_bytes = pin_memory, max_bytes
        self._cached: list[dict[str, torch.Tensor]] | None = None
        self._too_big = False

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._cached is not None:
            yield from self._cached
            return
        built: list[dict[str, torch.Tensor]] = []
        total = 0
        for step in self.steps:
            batch = _compact(self.dataset[step])
            total += sum(t.numel() * t.element_size() for t in batch.values())
            self._too_big = self._too_big or total > self.max_bytes
            if not self._too_big:
                batch = _pinned(batch) if self.pin_memory else batch
                built.append(batch)
            yield batch
        if not self._too_big:  # only once a whole pass has been built
            self._cached = built


def _pinned(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch in page-locked memory (faster copies to the GPU), or as it is where the
    host refuses to lock more."""
    try:
        return {k: v.pin_memory() for k, v in batch.items()}
    except RuntimeError:
        return batch


def _compact(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's image and label (all the trainer reads), the label as uint8 when the
    classes fit (an eighth of int64's bytes)."""
    label = batch["label"]
    if label.numel() and 0 <= int(label.min()) and int(label.max()) <= 255:
        label = label.to(torch.uint8)
    return {"image": batch["image"], "label": label}
