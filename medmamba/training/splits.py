"""Cross-validation splits: written once per dataset as WORK/splits_final.json, reused.

The split reproduces scikit-learn's ``KFold(n_splits, shuffle=True, random_state=seed)``
over the sorted case ids (what nnU-Net v2 does with seed 12345), without importing
scikit-learn; an nnU-Net ``splits_final.json`` is therefore accepted as it is and the
folds compare one for one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from medmamba.errors import ConfigError
from medmamba.data.io import atomic_write_text

SPLITS_FILE = "splits_final.json"
DEFAULT_FOLDS = 5
DEFAULT_SPLIT_SEED = 12345

Split = dict[str, list[str]]


def make_splits(
    case_ids: Iterable[str], n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SPLIT_SEED
) -> list[Split]:
    """K folds over the sorted ids: each case is in exactly one ``val`` list."""
    ids = sorted(case_ids)
    if n_folds < 2:
        raise ConfigError(f"n_folds must be >= 2, got {n_folds}")
    if len(ids) < n_folds:
        raise ConfigError(f"{len(ids)} training case(s) cannot be split into {n_folds} folds")
    order = np.arange(len(ids))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_folds, len(ids) // n_folds)
    sizes[: len(ids) % n_folds] += 1
    splits: list[Split] = []
    start = 0
    for size in sizes:
        val = set(order[start : start + size].tolist())
        start += size
        splits.append(
            {
                "train": [ids[i] for i in range(len(ids)) if i not in val],
                "val": [ids[i] for i in range(len(ids)) if i in val],
            }
        )
    return splits


def parse_splits(raw: object, path: Path, known_cases: Sequence[str] | None = None) -> list[Split]:
    """Validate an nnU-Net style splits list; ConfigError names the file and the problem."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError("split file must hold a non-empty JSON list of {'train': [...], 'val': [...]}", path)
    known = set(known_cases) if known_cases is not None else None
    splits: list[Split] = []
    for index, fold in enumerate(raw):
        if not isinstance(fold, dict) or set(fold) != {"train", "val"}:
            raise ConfigError(f"fold {index} must be an object with exactly the keys 'train' and 'val'", path)
        clean: Split = {}
        for key in ("train", "val"):
            ids = fold[key]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ConfigError(f"fold {index} '{key}' must be a list of case id strings", path)
            if known is not None:
                unknown = sorted(set(ids) - known)
                if unknown:
                    shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                    raise ConfigError(
                        f"fold {index} '{key}' names {len(unknown)} case(s) not in the preprocessed data: {shown}",
                        path,
                    )
            clean[key] = list(ids)
        if not clean["train"]:
            raise ConfigError(f"fold {index} has no training cases", path)
        overlap = set(clean["train"]) & set(clean["val"])
        if overlap:
            raise ConfigError(f"fold {index} has case(s) in both train and val: {sorted(overlap)[:5]}", path)
        splits.append(clean)
    return splits


def read_splits(path: Path, known_cases: Sequence[str] | None = None) -> list[Split]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("split file not found", path)
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"split file is not valid JSON ({error})", path) from None
    return parse_splits(raw, path, known_cases)


def load_or_create_splits(
    work: Path,
    case_ids: Sequence[str],
    split_file: Path | None = None,
    *,
    write: bool = True,
) -> list[Split]:
    """The splits for ``work``: ``split_file`` if given, else WORK/splits_final.json,
    created from ``case_ids`` the first time (``write=False`` on non-zero ranks)."""
    if split_file is not None:
        return read_splits(Path(split_file), case_ids)
    path = Path(work) / SPLITS_FILE
    if path.is_file():
        return read_splits(path, case_ids)
    splits = make_splits(case_ids)
    if write:
        atomic_write_text(path, json.dumps(splits, indent=2) + "\n")
    return splits


def select_fold(splits: list[Split], fold: int, source: Path) -> Split:
    if not 0 <= fold < len(splits):
        raise ConfigError(f"fold {fold} does not exist; the split file has folds 0..{len(splits) - 1}", source)
    split = splits[fold]
    if not split["val"]:
        raise ConfigError(f"fold {fold} has no validation cases", source)
    return split
