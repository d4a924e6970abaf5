import numpy as np
import pytest
import torch

from medmamba.errors import DatasetError
from medmamba.training.data import (
    CaseStore,
    PatchBatchDataset,
    StepSampler,
    ValidationBatches,
    choose_center,
    make_loader,
    sample_patch,
)


@pytest.fixture
def store(tiny_folder):
    return CaseStore(tiny_folder, [f"case_{i:03d}" for i in range(6)], [0, 1, 2])


def _patch_has_foreground(case, center, patch=(8, 8, 8)):
    from medmamba.training.augment import crop_padded

    return crop_padded(np.asarray(case.label), center, patch).max() > 0


def test_oversampling_fraction(store, monkeypatch):
    import medmamba.training.data as data_module

    calls = []
    original = data_module.choose_center

    def recording(case, patch_size, force_foreground, rng):
        center = original(case, patch_size, force_foreground, rng)
        calls.append((force_foreground, int(np.asarray(case.label)[(0, *center)])))
        return center

    monkeypatch.setattr(data_module, "choose_center", recording)
    data = PatchBatchDataset(store, (8, 8, 8), batch_size=10, seed=0, augment=False)
    for step in range(60):
        data[step]
    forced = [label for force, label in calls if force]
    assert len(forced) / len(calls) == pytest.approx(1 / 3, abs=0.05)
    assert all(label > 0 for label in forced)  # centred on a voxel of a present class


def test_foreground_classes_chosen_uniformly(store):
    rng = np.random.default_rng(1)
    case = store.get("case_000")
    values = [int(np.asarray(case.label)[(0, *choose_center(case, (8, 8, 8), True, rng))]) for _ in range(600)]
    assert np.mean(np.array(values) == 1) == pytest.approx(0.5, abs=0.07)


def test_random_centres_stay_in_reach(store):
    rng = np.random.default_rng(2)
    case = store.get("case_001")
    shape = case.image.shape[1:]
    for _ in range(200):
        center = choose_center(case, (32, 8, 8), False, rng)
        lower = [c - p // 2 for c, p in zip(center, (32, 8, 8))]
        assert lower[0] <= 0 and lower[0] + 32 >= shape[0]  # an axis shorter than the patch: covered
        assert 0 <= lower[1] <= shape[1] - 8 and 0 <= lower[2] <= shape[2] - 8


def test_batch_shapes_dtypes_and_determinism(store):
    data = PatchBatchDataset(store, (16, 12, 16), batch_size=3, seed=5)
    batch = data[7]
    assert batch["image"].shape == (3, 1, 16, 12, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (3, 1, 16, 12, 16) and batch["label"].dtype == torch.int64
    again = PatchBatchDataset(store, (16, 12, 16), batch_size=3, seed=5)[7]
    assert torch.equal(batch["image"], again["image"]) and torch.equal(batch["label"], again["label"])
    other_rank = PatchBatchDataset(store, (16, 12, 16), batch_size=3, seed=5, rank=1)[7]
    assert not torch.equal(batch["image"], other_rank["image"])


def test_loader_with_workers_yields_the_same_batches(store):
    data = PatchBatchDataset(store, (8, 8, 8), batch_size=2, seed=0)
    direct = [data[s] for s in (4, 5, 6)]
    loader = iter(make_loader(data, 4, workers=1, generator=torch.Generator().manual_seed(0)))
    for expected in direct:
        got = next(loader)
        assert torch.equal(got["image"], expected["image"])


def test_sampler_continues_from_its_state():
    it = iter(StepSampler(10))
    assert [next(it) for _ in range(3)] == [10, 11, 12]


def test_2d_patches_from_3d_cases(store):
    case = store.get("case_002")
    rng = np.random.default_rng(0)
    center = choose_center(case, (12, 12), True, rng)
    assert len(center) == 3
    sample = sample_patch(case, center, 2)
    assert sample["image"].shape == (1, *case.image.shape[2:])
    batch = PatchBatchDataset(store, (12, 12), batch_size=4, seed=0)[0]
    assert batch["image"].shape == (4, 1, 12, 12)


def test_unpreprocessed_case_is_reported(tiny_folder):
    with pytest.raises(DatasetError, match="not preprocessed"):
        CaseStore(tiny_folder, ["case_000", "missing_case"], [0, 1, 2])


def test_non_contiguous_label_values_map_to_channels(tiny_folder):
    seg = np.load(tiny_folder / "case_000_seg.npy")
    np.save(tiny_folder / "case_000_seg.npy", np.where(seg == 2, 4, seg).astype(np.int16))
    case = CaseStore(tiny_folder, ["case_000"], [0, 1, 4]).get("case_000")
    assert set(np.unique(case.label)) == {0, 1, 2}


class _CountingDataset:
    """Stands in for PatchBatchDataset: batch ``step`` is filled with ``step``."""

    def __init__(self, label_value=1):
        self.calls, self.label_value = [], label_value

    def __getitem__(self, step):
        self.calls.append(step)
        return {"image": torch.full((2, 1, 3, 3), float(step)),
                "label": torch.full((2, 1, 3, 3), self.label_value, dtype=torch.long)}


def test_validation_batches_are_built_once_and_split_across_ranks():
    dataset = _CountingDataset()
    batches = ValidationBatches(dataset, count=5, rank=1, world_size=2)
    first = [b["image"][0, 0, 0, 0].item() for b in batches]
    second = list(batches)
    assert first == [1.0, 3.0] and len(batches) == 2
    assert dataset.calls == [1, 3]  # the second pass came from the cache
    assert [b["image"][0, 0, 0, 0].item() for b in second] == first
    assert all(b["label"].dtype == torch.uint8 and b["label"].max() == 1 for b in second)


def test_validation_batches_over_the_memory_cap_are_rebuilt_each_pass():
    dataset = _CountingDataset(label_value=300)  # does not fit uint8: kept as int64
    one_batch = 2 * 9 * 4 + 2 * 9 * 8
    batches = ValidationBatches(dataset, count=3, max_bytes=2 * one_batch)
    for _ in range(2):
        assert [b["image"][0, 0, 0, 0].item() for b in batches] == [0.0, 1.0, 2.0]
    assert dataset.calls == [0, 1, 2, 0, 1, 2]
    assert next(iter(batches))["label"].dtype == torch.long


def test_validation_batches_from_patches_equal_the_dataset(store):
    data = PatchBatchDataset(store, (8, 8, 8), batch_size=2, seed=3, augment=False, stream=1)
    cached = list(ValidationBatches(data, count=3))
    for step, batch in enumerate(cached):
        expected = data[step]
        assert torch.equal(batch["image"], expected["image"])
        assert torch.equal(batch["label"].long(), expected["label"])
