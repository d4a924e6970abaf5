"""CUDA-graph training steps: when they are used, and (GPU) that a replay equals the eager step."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from medmamba.training.config import TrainingConfig
from medmamba.training.graphs import GraphedStep, graphs_usable
from medmamba.training.trainer import Trainer

CUDA = torch.device("cuda")


@pytest.mark.parametrize("device, distributed, compiled, usable", [
    ("cuda", False, False, True),
    ("cpu", False, False, False),
    ("cuda", True, False, False),
    ("cuda", False, True, False),
])
def test_graphs_usable_only_on_one_gpu_without_compile(device, distributed, compiled, usable):
    ok, why = graphs_usable(torch.device(device), distributed, compiled)
    assert ok is usable
    assert (why == "") is usable


def test_an_optimizer_built_without_capturable_is_not_captured():
    parameters = [nn.Parameter(torch.zeros(1))]
    ok, why = graphs_usable(torch.device("cuda"), False, False, torch.optim.AdamW(parameters))
    assert not ok and "capturable=False" in why
    sgd = torch.optim.SGD(parameters, lr=0.1, momentum=0.99, nesterov=True)
    assert graphs_usable(torch.device("cuda"), False, False, sgd) == (True, "")


def test_eager_steps_must_create_the_momentum_buffers_first():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="eager_steps must be >= 1"):
        GraphedStep(lambda image, label: image.sum(), optimizer, eager_steps=0)


def test_cpu_trainer_runs_eagerly_with_graphs_requested(tiny_spec):
    trainer = Trainer(tiny_spec, TrainingConfig(epochs=1, iters_per_epoch=2, val_batches=1), torch.device("cpu"))
    trainer.run()
    assert trainer.graphed_step is None


def _tiny_setup(seed: int):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(),
                        nn.Conv3d(4, 3, 1)).to(CUDA)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)

    def step(image, label):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            out = net(image)
        loss = nn.functional.cross_entropy(out.float(), label[:, 0])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        optimizer.step()
        return loss.detach()

    return net, optimizer, step


@pytest.mark.gpu
def test_replayed_steps_equal_eager_steps_and_follow_the_lr():
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 1, 8, 8, 8, generator=generator).pin_memory(),
                torch.randint(0, 3, (2, 1, 8, 8, 8), generator=generator).pin_memory()) for _ in range(8)]
    eager_net, eager_opt, eager_step = _tiny_setup(0)
    graph_net, graph_opt, graph_step = _tiny_setup(0)
    graphed = GraphedStep(graph_step, graph_opt, eager_steps=2)
    eager_losses, graph_losses = [], []
    for index, (image, label) in enumerate(batches):
        if index == 5:  # a new epoch's lr: the baked-in lr must not survive
            for opt in (eager_opt, graph_opt):
                for group in opt.param_groups:
                    group["lr"] = 5e-3
        eager_losses.append(eager_step(image.to(CUDA), label.to(CUDA)).item())
        graph_losses.append(graphed(image, label).clone().item())
    assert graphed.captures == 2 and graphed.failed is None
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    for a, b in zip(eager_net.parameters(), graph_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("network", ["plainconv_unet", "umamba_bot"])
def test_graphed_training_follows_eager_training(tiny_spec, tmp_path, network):
    """The trainer's own step (deep supervision, Dice+CE, the Triton scan) captures, and its
    losses follow the eager run's."""
    spec = dataclasses.replace(tiny_spec, network=network, network_tag=network)
    config = TrainingConfig(epochs=2, iters_per_epoch=6, val_batches=1)
    runs = {}
    for graphs in (False, True):
        trainer = Trainer(dataclasses.replace(spec, fold_dir=tmp_path / str(graphs)),
                          config.replace(cuda_graphs=graphs), CUDA)
        fold = trainer.run()
        if graphs:
            assert trainer.graphed_step.captures == 2 and trainer.graphed_step.failed is None
        epochs = json.loads((fold / "training_log.json").read_text())["epochs"]
        runs[graphs] = [(e["train_loss"], e["val_loss"]) for e in epochs]
    for (eager_train, eager_val), (graph_train, graph_val) in zip(runs[False], runs[True]):
        assert graph_train == pytest.approx(eager_train, rel=2e-2)
        assert graph_val == pytest.approx(eager_val, rel=2e-2)
