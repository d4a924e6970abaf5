import json
from pathlib import Path

import pytest

from medmamba.errors import ConfigError
from medmamba.training.splits import SPLITS_FILE, load_or_create_splits, make_splits, read_splits, select_fold

ANCHOR_SPLITS = Path(__file__).resolve().parents[3] / "shared" / "anchors" / "nnunet_Dataset004_Hippocampus_splits_final.json"
CASES = [f"case_{i:03d}" for i in range(23)]


def test_folds_are_deterministic_disjoint_and_cover_all_cases():
    splits = make_splits(reversed(CASES))
    assert splits == make_splits(CASES)
    assert len(splits) == 5
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == CASES
    assert [len(s["val"]) for s in splits] == [5, 5, 5, 4, 4]
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
        assert len(s["train"]) + len(s["val"]) == len(CASES)


def test_reproduces_nnunet_kfold_split():
    if not ANCHOR_SPLITS.is_file():
        pytest.skip("nnU-Net anchor split not available")
    nnunet = json.loads(ANCHOR_SPLITS.read_text())
    ids = nnunet[0]["train"] + nnunet[0]["val"]
    ours = make_splits(ids)
    assert [sorted(s["val"]) for s in ours] == [sorted(s["val"]) for s in nnunet]


def test_written_once_and_reused(tmp_path: Path):
    first = load_or_create_splits(tmp_path, CASES)
    path = tmp_path / SPLITS_FILE
    custom = [{"train": CASES[2:], "val": CASES[:2]}]
    path.write_text(json.dumps(custom))
    assert load_or_create_splits(tmp_path, CASES) == custom
    assert first != custom


def test_nnunet_file_accepted_as_is(tmp_path: Path):
    source = tmp_path / "splits_final.json"
    splits = [{"train": CASES[5:], "val": CASES[:5]}, {"train": CASES[:5], "val": CASES[5:]}]
    source.write_text(json.dumps(splits))
    assert load_or_create_splits(tmp_path / "work", CASES, source) == splits
    assert not (tmp_path / "work" / SPLITS_FILE).exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        ("{}", "non-empty JSON list"),
        ('[{"train": ["case_000"]}]', "exactly the keys"),
        ('[{"train": ["case_000"], "val": [1]}]', "list of case id strings"),
        ('[{"train": ["case_000"], "val": ["nope"]}]', "not in the preprocessed data"),
        ('[{"train": ["case_000"], "val": ["case_000"]}]', "both train and val"),
    ],
)
def test_bad_split_file_names_file_and_problem(tmp_path: Path, content: str, message: str):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        read_splits(path, CASES)
    assert str(path) in str(info.value)


def test_missing_fold_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="fold 7 does not exist"):
        select_fold(make_splits(CASES), 7, tmp_path / SPLITS_FILE)
