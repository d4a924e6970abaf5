"""Where a GPU training step and a sliding-window pass spend their time (one table each).

    python scripts/profile_gpu_step.py --plans WORK_OR_PLANS_JSON --networks resenc_unet umamba_bot \
        [--data-work WORK] [--inference-plans PLANS_JSON] [--compile] [--steps 60]

Training, per network of the 3d_fullres plan, on one fixed batch already on the GPU (the
trainer's step: bf16 autocast forward with deep supervision, Dice+CE, backward, gradient
clipping, SGD Nesterov):
- it/s eager, replayed as a CUDA graph (the trainer's default on one GPU) and with
  --compile through torch.compile;
- the phases (forward, loss, backward, clip, optimizer) in ms, each synchronised;
- GPU busy share: kernel time over wall time in a torch.profiler trace of 10 steps (far
  below 1 means the host's launches, not the GPU, set the pace), and the top kernels.
With --data-work (a WORK with the plan preprocessed), also the data loader's batches/s
with the trainer's default worker count: the step cannot go faster than this.

Inference, per network of --inference-plans: one forward of the predictor's window batch
(4 windows of the patch, bf16, no grad), ms per window and TFLOP/s from the network's MACs:
as built, in channels_last_3d, with InstanceNorm computed by group_norm, through torch.compile.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from medmamba.networks import network_complexity
from medmamba.networks.profiling import synced_median_s
from medmamba.networks.registry import build_network
from medmamba.planning.plans import Plans
from medmamba.training.config import TrainingConfig
from medmamba.training.graphs import GraphedStep
from medmamba.training.loss import DeepSupervisionDiceCE
from medmamba.training.optim import build_optimizer

CONFIG = "3d_fullres"
WINDOWS = 4  # the predictor's default batch of windows
TRAINING = TrainingConfig()  # the trainer's defaults: optimizer, gradient clipping


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"  # CPU: a smoke run of the script only


def network_from_plan(plans: Plans, name: str, deep_supervision: bool) -> tuple[nn.Module, dict]:
    kwargs = plans.configuration(CONFIG).network(name).network_kwargs()
    return build_network(name, **kwargs, deep_supervision=deep_supervision), kwargs


class Step:
    """The trainer's step on a fixed batch, phase by phase."""

    def __init__(self, network: nn.Module, model: nn.Module, image: torch.Tensor, label: torch.Tensor) -> None:
        self.network, self.model, self.image, self.label = network, model, image, label
        self.optimizer = build_optimizer(network.parameters(), TRAINING)
        self.loss_fn = DeepSupervisionDiceCE()

        self.cast_cache = True  # autocast's weight-cast cache; off for a CUDA-graph capture

    def forward(self, image: torch.Tensor | None = None):
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type(), dtype=torch.bfloat16, cache_enabled=self.cast_cache):
            return self.model(self.image if image is None else image)

    def run(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        # The body of Trainer._step, written out so that phases() can time its parts.
        loss = self.loss_fn(self.forward(image), label)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), TRAINING.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def __call__(self) -> None:
        self.run(self.image, self.label)

    def phases(self, repeats: int) -> dict[str, float]:
        """ms per phase, each phase synchronised (so their sum exceeds a pipelined step)."""
        out: dict[str, list[float]] = {k: [] for k in ("forward", "loss", "backward", "clip", "optimizer")}
        marks: list[float] = []

        def mark() -> None:
            sync()
            marks.append(time.perf_counter())

        for _ in range(repeats):
            marks.clear()
            mark()
            output = self.forward()
            mark()
            loss = self.loss_fn(output, self.label)
            mark()
            loss.backward()
            mark()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), TRAINING.grad_clip)
            mark()
            self.optimizer.step()
            mark()
            for key, a, b in zip(out, marks, marks[1:]):
                out[key].append(1e3 * (b - a))
        return {k: statistics.median(v) for k, v in out.items()}


def busy_share(fn: Callable[[], object], steps: int = 10, top: int = 6) -> tuple[float, list[tuple[str, float]]]:
    """Kernel time / wall time over ``steps`` calls, and the top kernels (share of kernel time)."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])

    sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        wall = time.perf_counter() - start

    def self_us(event) -> float:
        return event.self_device_time_total if on_gpu else event.self_cpu_time_total

    kernels = [e for e in prof.key_averages() if not on_gpu or e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(self_us(e) for e in kernels)
    ranked = sorted(kernels, key=self_us, reverse=True)[:top]
    return total_us / 1e6 / wall, [(e.key[:70], self_us(e) / max(total_us, 1)) for e in ranked]


def make_batch(kwargs: dict, batch: int, patch: list[int], classes: int, channels_last: bool = False):
    image = torch.randn(batch, kwargs["in_channels"], *patch, device=device_type())
    label = torch.randint(0, classes, (batch, 1, *patch), device=device_type())
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)
    return image, label


def profile_training(plans: Plans, name: str, steps: int, compile_too: bool) -> list[str]:
    plan = plans.configuration(CONFIG).network(name)
    lines = []
    layouts = ("ncdhw",) + (("cuda_graph",) if torch.cuda.is_available() else ()) + (("compile",) if compile_too else ())
    for layout in layouts:
        torch.manual_seed(0)
        network, kwargs = network_from_plan(plans, name, deep_supervision=True)
        network = network.to(device_type())
        model = torch.compile(network) if layout == "compile" else network
        image, label = make_batch(kwargs, plan.batch_size, list(plan.patch_size), plans.num_classes)
        step = Step(network, model, image, label)
        timed: Callable[[], object] = step
        if layout == "cuda_graph":  # fed from pinned host memory, as the trainer does
            step.cast_cache = False
            graphed = GraphedStep(step.run, step.optimizer)
            host_image, host_label = image.cpu().pin_memory(), label.cpu().pin_memory()
            timed = lambda: graphed(host_image, host_label)  # noqa: E731
        first = synced_median_s(timed, 1)  # autotuning / compile
        for _ in range(10):
            timed()
        rate = 1.0 / synced_median_s(lambda: [timed() for _ in range(steps)], 3) * steps
        busy, top = busy_share(timed)
        phases = step.phases(10) if layout == "ncdhw" else {}
        lines.append(f"| {name} | {layout} | {first:.1f} | {rate:.1f} | {busy:.2f} | "
                     + " | ".join(f"{phases[k]:.1f}" if phases else "-" for k in
                                  ("forward", "loss", "backward", "clip", "optimizer")) + " |")
        lines.append("|   top kernels | " + "; ".join(f"{k} {s:.0%}" for k, s in top) + " |")
        del step, network, model
        torch.cuda.empty_cache()
    return lines


def loader_rate(work: Path, plans: Plans, name: str, batches: int) -> float:
    from medmamba.training.data import CaseStore, PatchBatchDataset, make_loader
    from medmamba.training.setup import default_workers, preprocessed_case_ids

    folder = plans.preprocessed_folder(work, CONFIG)
    cases = preprocessed_case_ids(folder)
    plan = plans.configuration(CONFIG).network(name)
    store = CaseStore(folder, cases, sorted(plans.labels.values()))
    dataset = PatchBatchDataset(store, plan.patch_size, plan.batch_size, seed=0)
    workers = default_workers(torch.device(device_type()))
    loader = iter(make_loader(dataset, 0, workers, pin_memory=torch.cuda.is_available()))
    for _ in range(20):
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches / (time.perf_counter() - start)


class GroupNormAsInstanceNorm(nn.Module):
    """InstanceNorm (affine) computed by torch's group_norm kernel with one group per channel."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)


def swap_instance_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.instancenorm._InstanceNorm) and child.affine:
            setattr(module, name, GroupNormAsInstanceNorm(child))
        else:
            swap_instance_norms(child)


WINDOW_VARIANTS = ("ncdhw", "channels_last_3d", "group_norm", "compile")


def profile_window(plans: Plans, name: str, variants: tuple[str, ...] = WINDOW_VARIANTS) -> list[str]:
    plan = plans.configuration(CONFIG).network(name)
    lines = []
    for layout in variants:
        network, kwargs = network_from_plan(plans, name, deep_supervision=False)
        network = network.to(device_type()).eval()
        channels_last = layout == "channels_last_3d"
        if channels_last:
            network = network.to(memory_format=torch.channels_last_3d)
        if layout == "group_norm":
            swap_instance_norms(network)
        model = torch.compile(network) if layout == "compile" else network
        image, _ = make_batch(kwargs, WINDOWS, list(plan.patch_size), plans.num_classes, channels_last)

        def forward() -> None:
            with torch.inference_mode(), torch.autocast(device_type(), dtype=torch.bfloat16):
                model(image)

        first = synced_median_s(forward, 1)
        forward()
        seconds = synced_median_s(forward, 5)
        busy, top = busy_share(forward, steps=3)
        macs = network_complexity(name, list(plan.patch_size), **kwargs).macs
        tflops = 2 * macs * WINDOWS / seconds / 1e12
        lines.append(f"| {name} | {layout} | {list(plan.patch_size)} | {first:.1f} | {1e3 * seconds / WINDOWS:.1f} | "
                     f"{tflops:.0f} | {busy:.2f} |")
        lines.append("|   top kernels | " + "; ".join(f"{k} {s:.0%}" for k, s in top) + " |")
        del network, model
        torch.cuda.empty_cache()
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", type=Path, help="training plans (WORK or plans.json)")
    parser.add_argument("--networks", nargs="+", default=["resenc_unet", "umamba_bot", "lightm_unet"])
    parser.add_argument("--data-work", type=Path, help="WORK with --plans preprocessed: time the loader")
    parser.add_argument("--inference-plans", type=Path, help="plans whose windows to time (BraTS)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd training steps")
    parser.add_argument("--window-variants", nargs="+", default=list(WINDOW_VARIANTS), choices=WINDOW_VARIANTS)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{name}, torch {torch.__version__}", flush=True)
    torch.backends.cudnn.benchmark = True  # as the trainer and the predictor set it
    if args.plans and not args.skip_training:
        plans = Plans.load(args.plans)
        print("\n| network | layout | first step s | it/s | GPU busy | forward ms | loss ms | backward ms "
              "| clip ms | optimizer ms |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for name in args.networks:
            for line in profile_training(plans, name, args.steps, args.compile):
                print(line, flush=True)
        if args.data_work:
            print("\n| network | loader batches/s |\n|---|---|")
            for name in args.networks:
                print(f"| {name} | {loader_rate(args.data_work, plans, name, 200):.1f} |", flush=True)
    if args.inference_plans:
        plans = Plans.load(args.inference_plans)
        print(f"\n| network | variant | patch | first pass s | ms/window ({WINDOWS} per pass) | TFLOP/s | GPU busy |\n"
              "|---|---|---|---|---|---|---|", flush=True)
        for name in args.networks:
            if name in plans.configuration(CONFIG).networks:
                for line in profile_window(plans, name, tuple(args.window_variants)):
                    print(line, flush=True)


if __name__ == "__main__":
    main()
