"""The loop on tiny in-memory-sized data (real plainconv_unet with 4-8 features)."""

import dataclasses
import json
import os

import pytest
import torch

from medmamba.errors import CheckpointError
from medmamba.training import checkpoint as ckpt
from medmamba.training.config import TrainingConfig
from medmamba.training.optim import poly_lr
from medmamba.training.trainer import Trainer

CPU = torch.device("cpu")
FAST = TrainingConfig(epochs=2, iters_per_epoch=2, val_batches=2)


def _losses(fold_dir):
    log = json.loads((fold_dir / "training_log.json").read_text())
    return [(e["epoch"], e["train_loss"], e["val_loss"], e["lr"]) for e in log["epochs"]]


def test_two_epochs_write_every_output(tiny_spec):
    fold_dir = Trainer(tiny_spec, FAST, CPU).run()
    assert {p.name for p in fold_dir.iterdir()} >= {
        "checkpoint_latest.pt", "checkpoint_best.pt", "training_log.json", "progress.png"}
    log = json.loads((fold_dir / "training_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert all(e["validation_s"] >= 0 for e in log["epochs"])
    assert set(log["epochs"][0]["val_dice"]) == {"a", "b"}
    assert [e["lr"] for e in log["epochs"]] == pytest.approx([1e-2, poly_lr(1e-2, 1, 2)])
    state_dict, meta = ckpt.load_checkpoint_for_inference(fold_dir, "latest")
    assert meta["epoch"] == 2 and meta["label_values"] == [0, 1, 2] and meta["plans_hash"] == "abc"
    assert meta["network_kwargs"]["features_per_stage"] == [4, 8]
    net = ckpt.build_inference_network(meta, state_dict)
    with torch.no_grad():
        out = net(torch.randn(1, 1, 16, 16, 16))
    assert out.shape == (1, 3, 16, 16, 16)


def test_existing_checkpoint_needs_resume(tiny_spec):
    Trainer(tiny_spec, FAST.replace(epochs=1), CPU).run()
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(tiny_spec, FAST.replace(epochs=1), CPU).run()


def test_resume_after_crash_equals_uninterrupted_run(tiny_spec, tmp_path, monkeypatch):
    config = TrainingConfig(epochs=3, iters_per_epoch=2, val_batches=2)
    reference = Trainer(dataclasses.replace(tiny_spec, fold_dir=tmp_path / "ref"), config, CPU).run()

    crashed = dataclasses.replace(tiny_spec, fold_dir=tmp_path / "crash")
    original = Trainer._train_epoch

    def crash_in_epoch_3(self, loader, epoch):
        if epoch == 2:
            next(loader)  # consume a batch, as a killed process would have
            raise KeyboardInterrupt
        return original(self, loader, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed, config, CPU).run()
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert len(_losses(crashed.fold_dir)) == 2
    Trainer(crashed, config, CPU).run(resume=True)
    assert _losses(crashed.fold_dir) == _losses(reference)
    a = ckpt.load_checkpoint(reference / ckpt.LATEST)
    b = ckpt.load_checkpoint(crashed.fold_dir / ckpt.LATEST)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_extend_a_finished_run(tiny_spec):
    fold_dir = Trainer(tiny_spec, FAST, CPU).run()
    Trainer(tiny_spec, FAST, CPU).run(resume=True)  # finished: nothing to do
    assert len(_losses(fold_dir)) == 2
    Trainer(tiny_spec, FAST.replace(epochs=3), CPU).run(resume=True)
    epochs = _losses(fold_dir)
    assert [e[0] for e in epochs] == [1, 2, 3]
    assert epochs[2][3] == pytest.approx(poly_lr(1e-2, 2, 3))  # schedule over the new total
    assert ckpt.load_checkpoint(fold_dir / ckpt.LATEST)["metadata"]["epochs"] == 3


def test_resume_refuses_another_network(tiny_spec):
    Trainer(tiny_spec, FAST.replace(epochs=1), CPU).run()
    other = dataclasses.replace(tiny_spec, network_kwargs={**tiny_spec.network_kwargs, "features_per_stage": [4, 16]})
    with pytest.raises(CheckpointError, match="network_kwargs"):
        Trainer(other, FAST, CPU).run(resume=True)


def test_adamw_selectable(tiny_spec):
    fold_dir = Trainer(tiny_spec, FAST.replace(epochs=1, optimizer="adamw"), CPU).run()
    state = ckpt.load_checkpoint(fold_dir / ckpt.LATEST)
    assert "exp_avg" in state["optimizer"]["state"][0]
    assert _losses(fold_dir)[0][3] == pytest.approx(1e-3)


@pytest.mark.parametrize("spatial", [(4, 5, 6), (5, 6)], ids=["3d", "2d"])
def test_validation_counts_every_class_over_all_batches(tiny_spec, spatial):
    """Dice per label from tp/fp/fn summed over the validation batches (kept on the device)."""
    trainer = Trainer(tiny_spec, FAST, CPU)
    trainer._setup()
    generator = torch.Generator().manual_seed(0)
    labels = [torch.randint(0, 3, (2, 1, *spatial), generator=generator).float() for _ in range(2)]
    logits = [torch.randn(2, 3, *spatial, generator=generator) for _ in range(2)]
    # the image carries the batch's index, so the stand-in network returns that batch's logits
    trainer.val_batches = [{"image": torch.full((2, 1, *spatial), float(i)), "label": label}
                        for i, label in enumerate(labels)]

    class Lookup(torch.nn.Module):
        def forward(self, image):
            return logits[int(image.flatten()[0])]

    trainer.network = Lookup()
    loss, dice = trainer._validate()
    predicted = torch.cat([x.argmax(1) for x in logits])
    truth = torch.cat([y[:, 0] for y in labels])
    for value, name in [(1, "a"), (2, "b")]:
        p, t = predicted == value, truth == value
        tp, fp, fn = (p & t).sum().item(), (p & ~t).sum().item(), (~p & t).sum().item()
        assert dice[name] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    expected = [float(trainer.loss_fn(x, y)) for x, y in zip(logits, labels)]
    assert loss == pytest.approx(sum(expected) / 2)


def test_improved_epoch_writes_best_once_and_links_latest(tiny_spec):
    fold_dir = Trainer(tiny_spec, FAST.replace(epochs=1), CPU).run()  # the first epoch always improves
    best, latest = fold_dir / ckpt.BEST, fold_dir / ckpt.LATEST
    assert best.stat().st_ino == latest.stat().st_ino  # one file, two names
    ckpt.save_latest_and_best(fold_dir, {"epoch": 2}, improved=False)
    assert ckpt.load_checkpoint(latest)["epoch"] == 2 and ckpt.load_checkpoint(best)["epoch"] == 1
    ckpt.save_latest_and_best(fold_dir, {"epoch": 3}, improved=True)
    assert ckpt.load_checkpoint(latest)["epoch"] == ckpt.load_checkpoint(best)["epoch"] == 3
    assert not [p.name for p in fold_dir.iterdir() if p.name.endswith(".tmp")]


def test_filesystem_without_hard_links_gets_a_second_write(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", refuse)
    ckpt.save_latest_and_best(tmp_path, {"epoch": 1}, improved=True)
    assert ckpt.load_checkpoint(tmp_path / ckpt.LATEST)["epoch"] == 1
    assert (tmp_path / ckpt.BEST).stat().st_ino != (tmp_path / ckpt.LATEST).stat().st_ino


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_compiled_training_matches_eager(tiny_spec, tmp_path, device):
    """torch.compile (inductor) of a Mamba network: the selective-scan op stays in the
    graph (Triton on CUDA), the losses follow the eager run, and the checkpoint keeps
    plain parameter names."""
    spec = dataclasses.replace(tiny_spec, network="umamba_bot", network_tag="umamba_bot")
    config = TrainingConfig(epochs=1, iters_per_epoch=2, val_batches=1)
    run_on = torch.device(device)
    eager = Trainer(dataclasses.replace(spec, fold_dir=tmp_path / "eager"), config, run_on).run()
    compiled = Trainer(dataclasses.replace(spec, fold_dir=tmp_path / "compiled"), config.replace(compile=True),
                       run_on).run()
    (e_epoch, e_train, e_val, _), = _losses(eager)
    (c_epoch, c_train, c_val, _), = _losses(compiled)
    # bf16 autocast on CUDA: the fused kernels round differently from the eager ones
    rel = 1e-3 if device == "cpu" else 3e-2
    assert c_train == pytest.approx(e_train, rel=rel) and c_val == pytest.approx(e_val, rel=rel)
    state = ckpt.load_checkpoint(compiled / ckpt.LATEST)
    assert not any(key.startswith("_orig_mod.") for key in state["model"])
    assert ckpt.load_checkpoint(compiled / ckpt.LATEST)["config"]["compile"] is True
