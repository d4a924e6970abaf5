"""Real pieces end to end on a tiny phantom: plan -> preprocess -> `medmamba train`,
SIGKILL + resume, extending a run, and DDP with two gloo processes (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medmamba import api
from medmamba.cli import app
from medmamba.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

NETWORK = "plainconv_unet"
CONFIG = "3d_fullres"
COMMON = ["-c", CONFIG, "-n", NETWORK, "--device", "cpu", "--workers", "0", "--val-batches", "2"]


@pytest.fixture(scope="module")
def phantom_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_e2e")
    data = api.make_phantom(root / "data", cases=8, seed=1, shape=(16, 24, 24), workers=1)
    work = root / "work"
    api.plan(data, work, families=[NETWORK], validate=False, workers=1)
    api.preprocess(work, [CONFIG], workers=1)
    # Plans are human-editable JSON: a narrow network keeps the CPU test fast.
    plans_path = work / "plans.json"
    plans = json.loads(plans_path.read_text())
    network = plans["configurations"][CONFIG]["networks"][NETWORK]
    network["features_per_stage"] = [4 * 2**i for i in range(len(network["features_per_stage"]))]
    plans_path.write_text(json.dumps(plans, indent=2))
    return work


def _copy_work(work: Path, target: Path) -> Path:
    shutil.copytree(work, target, ignore=shutil.ignore_patterns("results"))
    return target


def _epochs(work: Path) -> list[dict]:
    log = work / "results" / NETWORK / CONFIG / "fold_0" / "training_log.json"
    return json.loads(log.read_text())["epochs"]


def _curve(work: Path) -> list[tuple]:
    return [(e["epoch"], e["train_loss"], e["val_loss"], e["lr"], e["mean_dice"]) for e in _epochs(work)]


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "medmamba", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_train_command_writes_a_usable_fold(phantom_work: Path, tmp_path: Path):
    work = _copy_work(phantom_work, tmp_path / "work")
    result = CliRunner().invoke(app, ["train", str(work), *COMMON, "-f", "0", "--epochs", "2", "--iters-per-epoch", "2"])
    assert result.exit_code == 0, result.output
    fold_dir = work / "results" / NETWORK / CONFIG / "fold_0"
    assert {"checkpoint_latest.pt", "checkpoint_best.pt", "training_log.json", "progress.png"} <= {
        p.name for p in fold_dir.iterdir()}
    assert (work / "splits_final.json").is_file()
    state_dict, meta = ckpt.load_checkpoint_for_inference(fold_dir)
    assert meta["network"] == NETWORK and meta["configuration"] == CONFIG and meta["epoch"] == 2
    assert meta["label_values"] == [0, 1, 2, 3]
    assert (work / "preprocessed" / f"{CONFIG}-{meta['plans_hash']}").is_dir()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-f", "9"], "fold 9 does not exist"),
        (["-f", "0", "--ssm", "none"], "has no SSM layer"),
        (["-f", "0", "-c", "3d_lowrez"], "did you mean"),
        (["-f", "0", "--features", "4,8"], "one per stage"),
        (["-f", "0", "--patch-size", "15,24,24"], "not divisible"),
        (["-f", "0", "--features", "4,x"], "comma-separated integers"),
        (["-f", "0", "--optimizer", "adam"], "did you mean 'adamw'"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(phantom_work: Path, args: list[str], message: str):
    result = CliRunner().invoke(app, ["train", str(phantom_work), *COMMON, *args, "--epochs", "1"])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(phantom_work: Path, tmp_path: Path):
    args = [*COMMON, "-f", "0", "--epochs", "4", "--iters-per-epoch", "3"]
    reference = _copy_work(phantom_work, tmp_path / "reference")
    killed = _copy_work(phantom_work, tmp_path / "killed")
    ref_proc = _cli(str(reference), *args)
    proc = _cli(str(killed), *args)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(_epochs(killed)) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.1)
    time.sleep(0.2)  # into epoch 3 (an epoch here takes > 1 s: training, validation, plot)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(_epochs(killed)) < 4
    resumed = _cli(str(killed), *args, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert ref_proc.wait(timeout=300) == 0, ref_proc.stderr.read().decode()
    assert _curve(killed) == _curve(reference)

    # Extend the finished run: 4 -> 5 epochs, the poly schedule over the new total.
    extended = _cli(str(killed), *[a if a != "4" else "5" for a in args], "--resume")
    assert extended.wait(timeout=300) == 0, extended.stderr.read().decode()
    epochs = _epochs(killed)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert epochs[4]["lr"] == pytest.approx(1e-2 * (1 - 4 / 5) ** 0.9)
    assert _curve(killed)[:4] == _curve(reference)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(work: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "medmamba", "train", str(work), *COMMON, "-f", "0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_ddp_two_gloo_processes_with_resume(phantom_work: Path, tmp_path: Path):
    work = _copy_work(phantom_work, tmp_path / "ddp")
    first = _torchrun(work, "--epochs", "1", "--iters-per-epoch", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(_epochs(work)) == 1
    second = _torchrun(work, "--epochs", "2", "--iters-per-epoch", "2", "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    epochs = _epochs(work)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["lr"] == pytest.approx(1e-2 * (1 - 1 / 2) ** 0.9)
    meta = ckpt.load_checkpoint(work / "results" / NETWORK / CONFIG / "fold_0" / ckpt.LATEST)["metadata"]
    assert meta["epoch"] == 2
    fold_dir = work / "results" / NETWORK / CONFIG / "fold_0"
    assert not [p for p in fold_dir.iterdir() if p.name.startswith(".tmp")]
