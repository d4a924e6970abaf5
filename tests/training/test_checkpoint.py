import io
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medmamba.errors import CheckpointError
from medmamba.training import checkpoint as ckpt
from medmamba.data.io import atomic_write


def _state() -> dict:
    net = torch.nn.Conv3d(1, 2, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.99, nesterov=True)
    net(torch.randn(1, 1, 4, 4, 4)).sum().backward()
    opt.step()
    return {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": ckpt.capture_rng_state(),
        "epoch": 3,
        "sampler": {"next_step": 30},
        "metadata": {"network": "x", "network_kwargs": {"features_per_stage": [4, 8]}},
        "log": [{"epoch": 1, "val_dice": {"a": None}}],
    }


def test_round_trip_loads_with_weights_only(tmp_path: Path):
    path = tmp_path / "c.pt"
    state = _state()
    ckpt.save_checkpoint(path, state)
    # The file itself is safe to open with weights_only=True ...
    wrapper = torch.load(path, weights_only=True)
    assert wrapper["medmamba_checkpoint"] == 1 and len(wrapper["sha256"]) == 64
    # ... and so is the payload inside.
    inner = torch.load(io.BytesIO(wrapper["payload"].numpy().tobytes()), weights_only=True)
    assert inner["epoch"] == 3
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].shape == state["model"]["weight"].shape
    assert loaded["sampler"] == {"next_step": 30} and loaded["log"] == state["log"]


def test_rng_states_restore_exactly():
    state = ckpt.capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    ckpt.restore_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_corrupt_checkpoint_detected_naming_the_file(tmp_path: Path, damage: str):
    path = tmp_path / "checkpoint_latest.pt"
    ckpt.save_checkpoint(path, _state())
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a checkpoint at all")
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_plain_torch_file_is_not_a_checkpoint(tmp_path: Path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a medmamba checkpoint"):
        ckpt.load_checkpoint(path)


def test_missing_checkpoint(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint_for_inference(tmp_path, "best")


def test_failed_write_keeps_the_previous_file(tmp_path: Path):
    path = tmp_path / "checkpoint_latest.pt"
    ckpt.save_checkpoint(path, {"epoch": 1})

    def explode(handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, explode)
    assert ckpt.load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pt"]


def test_sigkill_during_write_keeps_the_previous_file(tmp_path: Path):
    path = tmp_path / "checkpoint_latest.pt"
    ckpt.save_checkpoint(path, {"epoch": 1})
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from medmamba.data.io import atomic_write

        def slow(handle):
            for _ in range(1000):
                handle.write(b"x" * 4096)
                handle.flush()
                print("writing", flush=True)
                time.sleep(0.01)

        atomic_write(Path({str(path)!r}), slow)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"writing")
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.load_checkpoint(path) == {"epoch": 1}
    # The next save replaces the file even with the killed writer's temp file lying around.
    ckpt.save_checkpoint(path, {"epoch": 2})
    assert ckpt.load_checkpoint(path) == {"epoch": 2}


def test_mismatched_metadata_is_refused(tmp_path: Path):
    meta = {"network": "umamba_bot", "network_tag": "umamba_bot", "configuration": "3d_fullres",
            "plans_hash": "aaaa", "network_kwargs": {}, "label_values": [0, 1]}
    ckpt.check_compatible(meta, dict(meta), tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="plans_hash"):
        ckpt.check_compatible(meta, {**meta, "plans_hash": "bbbb"}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="network="):
        ckpt.check_compatible(meta, {**meta, "network": "resenc_unet"}, tmp_path / "c.pt")


def test_strip_prefixes():
    state = {"module._orig_mod.conv.weight": torch.zeros(1), "head.bias": torch.ones(1)}
    assert set(ckpt.strip_prefixes(state)) == {"conv.weight", "head.bias"}
