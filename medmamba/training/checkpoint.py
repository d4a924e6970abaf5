"""Checkpoints: only tensors and primitives, a SHA-256 over the payload, atomic writes.

File layout (itself loadable with ``torch.load(weights_only=True)``)::

    {"medmamba_checkpoint": 1, "sha256": "<hex>", "payload": uint8 tensor}

``payload`` holds the bytes of ``torch.save(state)``; ``state`` is a dict of tensors,
lists, dicts, numbers and strings (model, optimizer, scheduler, grad scaler, epoch, RNG
states, sampler state, training log, metadata), so nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmamba.errors import CheckpointError
from medmamba.data.io import atomic_link, atomic_write

FORMAT_VERSION = 1
LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically with its checksum."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    # A view of the buffer, not a copy: a network's state runs to hundreds of MB, and the
    # checkpoint is written every epoch inside the training budget.
    payload = buffer.getbuffer()
    wrapper = {
        "medmamba_checkpoint": FORMAT_VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(payload, dtype=torch.uint8),
    }
    atomic_write(Path(path), lambda handle: torch.save(wrapper, handle))


def save_latest_and_best(folder: Path, state: dict[str, Any], improved: bool) -> None:
    """Write LATEST; when ``improved``, BEST holds the same state.

    BEST is written first (a kill in between leaves the older LATEST, whose epoch then
    runs again) and LATEST becomes a hard link to it, renamed into place: one
    serialisation instead of two. Filesystems without hard links get a second write.
    """
    folder = Path(folder)
    if not improved:
        save_checkpoint(folder / LATEST, state)
        return
    save_checkpoint(folder / BEST, state)
    if not atomic_link(folder / BEST, folder / LATEST):
        save_checkpoint(folder / LATEST, state)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and verify a checkpoint; CheckpointError names the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    wrapper = _torch_load(path.read_bytes(), path, "file")
    if not isinstance(wrapper, dict) or wrapper.get("medmamba_checkpoint") is None:
        raise CheckpointError("not a medmamba checkpoint", path)
    if wrapper["medmamba_checkpoint"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format {wrapper['medmamba_checkpoint']} is not supported (expected {FORMAT_VERSION})",
            path,
        )
    payload_tensor = wrapper.get("payload")
    if not isinstance(payload_tensor, torch.Tensor) or payload_tensor.dtype != torch.uint8:
        raise CheckpointError("corrupt checkpoint: payload missing", path)
    payload = payload_tensor.numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != wrapper.get("sha256"):
        raise CheckpointError("corrupt checkpoint: SHA-256 checksum does not match", path)
    state = _torch_load(payload, path, "payload")
    if not isinstance(state, dict):
        raise CheckpointError("corrupt checkpoint: payload is not a dict", path)
    return state


def _torch_load(data: bytes, path: Path, what: str) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"corrupt or unreadable checkpoint {what} ({reason})", path) from None


# RNG states as tensors and plain lists, so that weights_only loading accepts them.
def capture_rng_state() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) key prefixes."""
    clean = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        clean[key] = value.detach().cpu()
    return clean


def check_compatible(meta: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Refuse to resume from a checkpoint of another network, configuration or plan."""
    for key in ("network", "network_tag", "configuration", "plans_hash", "network_kwargs", "label_values"):
        if meta.get(key) != expected.get(key):
            raise CheckpointError(
                f"checkpoint was trained with {key}={meta.get(key)!r}, this run uses {expected.get(key)!r}; "
                "use another results folder or delete the checkpoint",
                path,
            )


def resolve_checkpoint_path(fold_dir: Path, checkpoint: str | Path) -> Path:
    if str(checkpoint) in ("latest", "best"):
        return Path(fold_dir) / (LATEST if str(checkpoint) == "latest" else BEST)
    return Path(checkpoint)


def load_checkpoint_for_inference(
    fold_dir: Path, checkpoint: str | Path = "latest"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict on CPU, metadata) of a trained fold (metadata keys: RunSpec.metadata in trainer.py)."""
    path = resolve_checkpoint_path(fold_dir, checkpoint)
    state = load_checkpoint(path)
    if "model" not in state or "metadata" not in state:
        raise CheckpointError("checkpoint lacks model weights or metadata", path)
    return state["model"], dict(state["metadata"])


def build_inference_network(
    meta: dict[str, Any], state_dict: dict[str, torch.Tensor], device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The trained network in eval mode, returning full-resolution logits only."""
    from medmamba.networks.registry import build_network

    kwargs = dict(meta["network_kwargs"])
    kwargs["deep_supervision"] = False
    network = build_network(meta["network"], **kwargs)
    try:
        network.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint weights do not fit network {meta['network']!r} ({str(error).splitlines()[0]})"
        ) from None
    return network.to(device).eval()
