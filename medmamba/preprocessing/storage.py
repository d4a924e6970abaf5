"""On-disk layout of preprocessed data: WORK/preprocessed/<config>-<hash>/.

Per case: ``<case>.npy`` (float32, (C, *spatial)), ``<case>_seg.npy`` (int8, or int16
when a label is >= 128; (1, *spatial)) and ``<case>.json`` (properties). Every file is
written to a temporary name and renamed; the JSON goes last, so its presence marks a
finished case and an interrupted run never leaves a case that looks complete.
``manifest.json`` records the configuration, its data fields and hash, and the cases.
``load_case(folder, case_id)`` memory-maps the arrays (a training patch reads only its
own bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medmamba.data.io import atomic_write, atomic_write_text
from medmamba.errors import PlansError

MANIFEST = "manifest.json"
PROPERTIES_SCHEMA_VERSION = 1


def case_paths(folder: Path, case_id: str) -> tuple[Path, Path, Path]:
    folder = Path(folder)
    return folder / f"{case_id}.npy", folder / f"{case_id}_seg.npy", folder / f"{case_id}.json"


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, np.ascontiguousarray(array), allow_pickle=False))


def save_case(folder: Path, case_id: str, data: np.ndarray, seg: np.ndarray | None,
              properties: dict) -> None:
    """Write one case atomically, properties last (the done marker)."""
    data_path, seg_path, json_path = case_paths(folder, case_id)
    json_path.unlink(missing_ok=True)  # a rewrite is unfinished until the JSON is back
    atomic_save_npy(data_path, data.astype(np.float32, copy=False))
    if seg is not None:
        atomic_save_npy(seg_path, seg)
    atomic_write_text(json_path, json.dumps(properties, indent=1) + "\n")


def is_case_done(folder: Path, case_id: str, needs_seg: bool = True) -> bool:
    data_path, seg_path, json_path = case_paths(folder, case_id)
    return json_path.is_file() and data_path.is_file() and (seg_path.is_file() or not needs_seg)


def load_case(folder: Path, case_id: str, mmap: bool = True
              ) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(data (C, *spatial) float32, seg (1, *spatial) or None, properties) of one case."""
    data_path, seg_path, json_path = case_paths(folder, case_id)
    if not json_path.is_file():
        raise PlansError(f"case '{case_id}' is not preprocessed (run `medmamba preprocess`)",
                         json_path)
    mode = "r" if mmap else None
    data = np.load(data_path, mmap_mode=mode, allow_pickle=False)
    seg = np.load(seg_path, mmap_mode=mode, allow_pickle=False) if seg_path.is_file() else None
    return data, seg, _read_json(json_path)


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise PlansError("no manifest: the folder was not preprocessed completely", path)
    return _read_json(path)


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; a damaged file is a one-line PlansError naming it."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PlansError(f"not valid JSON ({error}); run `medmamba preprocess` again", path) from None
    if not isinstance(value, dict):
        raise PlansError("must hold a JSON object; run `medmamba preprocess` again", path)
    return value


def list_cases(folder: Path) -> list[str]:
    """Case ids of a completely preprocessed folder (from its manifest)."""
    manifest = read_manifest(folder)
    if not manifest.get("complete", False):
        raise PlansError("preprocessing did not finish; re-run `medmamba preprocess`",
                         Path(folder) / MANIFEST)
    return list(manifest["cases"])
