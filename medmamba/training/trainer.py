"""The training loop: one class, configured by TrainingConfig and a resolved RunSpec.

Per epoch: set the poly lr, ``iters_per_epoch`` steps (forward under bf16 autocast on
CUDA, Dice+CE with deep supervision, gradient norm clipped; on one GPU replayed as a CUDA
graph, :mod:`medmamba.training.graphs`), validation on fixed patches
of the fold's validation cases, then (rank 0) checkpoint_latest.pt, checkpoint_best.pt
when the EMA of the mean validation Dice improves, training_log.json and progress.png,
written by a background thread while the next epoch trains (:mod:`medmamba.training.writer`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import medmamba
from medmamba.errors import CheckpointError
from medmamba.training import checkpoint as ckpt
from medmamba.training.config import TrainingConfig
from medmamba.training.data import CaseStore, PatchBatchDataset, ValidationBatches, make_loader
from medmamba.training.graphs import GraphedStep, graphs_usable
from medmamba.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    init_distributed,
    rank_batch_size,
    shutdown_distributed,
)
from medmamba.training.loss import DeepSupervisionDiceCE
from medmamba.training.optim import PolyLRScheduler, build_optimizer
from medmamba.training.progress import plot_progress, write_log
from medmamba.training.writer import BackgroundWriter, host_snapshot

log = logging.getLogger(__name__)

NetworkBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class RunSpec:
    """Everything a run needs, resolved from WORK (see :func:`medmamba.training.setup.resolve_run`)."""

    fold_dir: Path
    data_folder: Path
    train_cases: tuple[str, ...]
    val_cases: tuple[str, ...]
    network: str
    network_tag: str
    network_kwargs: dict[str, Any]
    configuration: str
    plans_hash: str
    patch_size: tuple[int, ...]
    batch_size: int  # global, before the split over ranks
    label_values: tuple[int, ...]
    label_names: dict[str, int] = field(default_factory=dict)
    fold: int = 0

    def metadata(self, config: TrainingConfig) -> dict[str, Any]:
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "network": self.network,
            "network_tag": self.network_tag,
            "network_kwargs": self.network_kwargs,
            "configuration": self.configuration,
            "plans_hash": self.plans_hash,
            "patch_size": list(self.patch_size),
            "label_values": list(self.label_values),
            "label_names": dict(self.label_names),
            "num_input_channels": int(self.network_kwargs.get("in_channels", 1)),
            "fold": self.fold,
            "epochs": config.epochs,
            "seed": config.seed,
            "medmamba_version": medmamba.__version__,
        }


def _default_builder(name: str, **kwargs: Any) -> nn.Module:
    from medmamba.networks.registry import build_network

    return build_network(name, **kwargs)


class Trainer:
    """``Trainer(spec, config, device, dist).run(resume)`` -> the fold folder."""

    def __init__(
        self,
        spec: RunSpec,
        config: TrainingConfig,
        device: torch.device,
        dist: DistInfo | None = None,
        workers: int = 0,
        progress: bool = False,
        build_network: NetworkBuilder = _default_builder,
    ) -> None:
        self.spec, self.config, self.device = spec, config, device
        self.dist = dist or DistInfo()
        self.workers, self.show_progress = workers, progress
        self.build_network = build_network
        self.label_names = _label_names(spec)
        self.history: list[dict[str, Any]] = []
        self.ema: float | None = None
        self.best_ema: float | None = None
        self.writer: BackgroundWriter | None = None

    # set-up -------------------------------------------------------------------------
    def _setup(self) -> None:
        if self.device.type == "cuda":
            # Fastest kernels for the fixed patch shape; exact reproducibility is a CPU promise.
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(self.config.seed)  # identical initial weights on every rank and run
        kwargs = {**self.spec.network_kwargs, "deep_supervision": self.config.deep_supervision}
        self.network = self.build_network(self.spec.network, **kwargs).to(self.device)
        self.model: nn.Module = self.network
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.network, device_ids=ids)
        if self.config.compile:
            # Training steps only; validation and checkpoints use the plain module.
            # Static shapes: training has one patch shape. Dynamo's automatic dynamic shapes
            # (after any recompile in the process) failed in inductor on the CPU
            # (ValueRangeError) and recompiled umamba_bot over and over on the GPU.
            self.model = torch.compile(self.model, dynamic=False)
        self.optimizer = build_optimizer(self.network.parameters(), self.config)
        self.scheduler = PolyLRScheduler(
            self.optimizer, self.config.learning_rate, self.config.epochs, self.config.poly_exponent
        )
        # bf16 needs no loss scaling; the scaler is kept (disabled) so checkpoints stay uniform.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        self.use_amp = self.config.amp and self.device.type == "cuda"
        self.loss_fn = DeepSupervisionDiceCE()
        self.graphed_step: GraphedStep | None = None
        if self.config.cuda_graphs:
            usable, why = graphs_usable(self.device, self.dist.enabled, self.config.compile,
                                         self.optimizer)
            if usable:
                self.graphed_step = GraphedStep(self._step, self.optimizer)
            elif self.device.type == "cuda":
                log.info("training steps run eagerly: %s", why)
        store = CaseStore(self.spec.data_folder, self.spec.train_cases, self.spec.label_values)
        val_store = CaseStore(self.spec.data_folder, self.spec.val_cases, self.spec.label_values)
        batch = self.config.batch_size or self.spec.batch_size
        self.rank_batch = rank_batch_size(batch, self.dist.world_size, self.dist.rank)
        common = dict(seed=self.config.seed, oversample_foreground=self.config.oversample_foreground)
        self.train_data = PatchBatchDataset(
            store, self.spec.patch_size, self.rank_batch, rank=self.dist.rank, augment=self.config.augment, **common
        )
        # Validation patches do not depend on the rank: steps are dealt out across ranks.
        val_patches = PatchBatchDataset(
            val_store, self.spec.patch_size, self.rank_batch, rank=0, augment=False, stream=1, **common
        )
        self.val_batches = ValidationBatches(val_patches, self.config.val_batches, self.dist.rank,
                                             self.dist.world_size, pin_memory=self.device.type == "cuda")

    def _state(self, epoch: int, next_step: int) -> dict[str, Any]:
        return {
            "metadata": {**self.spec.metadata(self.config), "epoch": epoch, "best_ema_dice": self.best_ema},
            "model": ckpt.strip_prefixes(self.network.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "rng": ckpt.capture_rng_state(),
            "sampler": {"next_step": next_step},
            "ema": self.ema,
            "best_ema": self.best_ema,
            "log": self.history,
            "config": self.config.to_dict(),
        }

    def _restore(self, path: Path) -> tuple[int, int]:
        state = ckpt.load_checkpoint(path)
        ckpt.check_compatible(state.get("metadata", {}), self.spec.metadata(self.config), path)
        try:
            self.network.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"checkpoint does not fit this network ({str(error).splitlines()[0]})", path) from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["grad_scaler"])
        ckpt.restore_rng_state(state["rng"])
        self.ema, self.best_ema = state["ema"], state["best_ema"]
        self.history = list(state["log"])
        return int(state["epoch"]), int(state["sampler"]["next_step"])

    # the loop -----------------------------------------------------------------------
    def run(self, resume: bool = False) -> Path:
        init_distributed(self.dist, self.device)
        try:
            self._setup()
            latest = self.spec.fold_dir / ckpt.LATEST
            start_epoch, step = 0, 0
            if resume and latest.is_file():
                start_epoch, step = self._restore(latest)
                log.info("resuming %s at epoch %d", latest, start_epoch)
            elif latest.is_file():
                raise CheckpointError("a checkpoint exists already: pass --resume to continue it, or delete it", latest)
            if start_epoch >= self.config.epochs:
                log.info("training already finished (%d epochs)", start_epoch)
                return self.spec.fold_dir
            self._train(start_epoch, step)
            return self.spec.fold_dir
        finally:
            if self.writer is not None:  # the last epoch's files complete before returning
                self.writer.close()
                self.writer = None
            shutdown_distributed(self.dist)

    def _train(self, start_epoch: int, step: int) -> None:
        generator = torch.Generator().manual_seed(self.config.seed)  # keeps the global RNG untouched
        loader = iter(make_loader(self.train_data, step, self.workers, generator, self.device.type == "cuda"))
        for epoch in range(start_epoch, self.config.epochs):
            lr = self.scheduler.set_epoch(epoch)
            started_at = time.time()
            start = time.perf_counter()
            train_loss = self._train_epoch(loader, epoch)
            step += self.config.iters_per_epoch
            train_time = time.perf_counter() - start
            val_loss, dice = self._validate()
            validation_s = time.perf_counter() - start - train_time
            mean = float(np.nanmean(list(dice.values()))) if not all(math.isnan(d) for d in dice.values()) else 0.0
            self.ema = mean if self.ema is None else self.config.ema_alpha * self.ema + (1 - self.config.ema_alpha) * mean
            improved = self.best_ema is None or self.ema > self.best_ema
            if improved:
                self.best_ema = self.ema
            self.history.append({
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_dice": {name: (None if math.isnan(d) else d) for name, d in dice.items()},
                "mean_dice": mean,
                "ema_dice": self.ema,
                "lr": lr,
                "started_at": started_at,  # wall clock: differences give whole epochs, writes included
                "epoch_time_s": time.perf_counter() - start,
                "iters_per_s": self.config.iters_per_epoch / train_time,
                "validation_s": validation_s,
            })
            if self.dist.is_main:
                self._write_outputs(epoch + 1, step, improved)
            barrier(self.dist)
            summary = ", ".join(f"{name} {d:.3f}" for name, d in dice.items())
            log.info("epoch %d: loss %.4f, val loss %.4f, Dice %s", epoch + 1, train_loss, val_loss, summary)
            if self.show_progress and self.dist.is_main:
                from rich.console import Console

                Console(stderr=True).print(
                    f"  loss {train_loss:.4f}  val loss {val_loss:.4f}  Dice {summary}  (EMA {self.ema:.3f}"
                    f"{', best' if improved else ''}) lr {lr:.2e}, {self.history[-1]['iters_per_s']:.2f} it/s"
                )

    def _train_epoch(self, loader: Any, epoch: int) -> float:
        self.model.train()
        # Losses stay on the device: reading one back each step would make the host wait
        # for the GPU instead of queueing the next step (the bar reads them now and then).
        losses = torch.zeros(self.config.iters_per_epoch, dtype=torch.float64, device=self.device)
        last = self.config.iters_per_epoch - 1
        with _progress_bar(self.show_progress and self.dist.is_main, epoch, self.config) as bar:
            for iteration in range(self.config.iters_per_epoch):
                batch = next(loader)
                if self.graphed_step is not None:  # copies the (pinned) batch into its inputs
                    loss = self.graphed_step(batch["image"], batch["label"])
                else:
                    image = batch["image"].to(self.device, non_blocking=True)
                    loss = self._step(image, batch["label"].to(self.device, non_blocking=True))
                losses[iteration] = loss
                if bar.enabled:
                    refresh = iteration % _BAR_REFRESH_STEPS == 0 or iteration == last
                    bar(iteration + 1, float(losses[: iteration + 1].mean()) if refresh else None)
        mean = all_reduce_sum(losses.mean().reshape(1).float(), self.dist)
        return float(mean.item()) / self.dist.world_size

    def _step(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """One optimisation step; returns the detached loss. Also the body that
        :class:`GraphedStep` captures, so it starts by setting the gradients to None."""
        self.optimizer.zero_grad(set_to_none=True)
        # A capture must not keep autocast's cast weights across steps: no cache then.
        cache = self.graphed_step is None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp, cache_enabled=cache):
            output = self.model(image)
        loss = self.loss_fn(output, label)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def _validate(self) -> tuple[float, dict[str, float]]:
        self.model.eval()
        n_classes = len(self.spec.label_values)
        # A confusion matrix and the loss, summed on the device over the batches: a read-back
        # per batch would stall the queue of launches each time.
        confusion = torch.zeros(n_classes * n_classes, dtype=torch.int64, device=self.device)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, batches
        for batch in self.val_batches:
            image = batch["image"].to(self.device, non_blocking=True)
            label = batch["label"].to(self.device, non_blocking=True).long()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                output = self.network(image)
            output = output[0] if isinstance(output, (list, tuple)) else output
            loss_sum[0] += self.loss_fn(output, label).detach().double()
            loss_sum[1] += 1
            pairs = label[:, 0].flatten() * n_classes + output.argmax(1).flatten()
            confusion += torch.bincount(pairs, minlength=n_classes * n_classes)
        # [tp, fp, fn] per foreground class, then loss sum and count (one all-reduce)
        matrix = confusion.view(n_classes, n_classes).double()  # rows: truth, columns: predicted
        tp = matrix.diagonal()
        counts = torch.stack([tp, matrix.sum(0) - tp, matrix.sum(1) - tp], dim=1)[1:]
        totals = torch.cat([counts.flatten(), loss_sum])
        totals = all_reduce_sum(totals, self.dist).cpu()
        dice = {}
        for c in range(1, n_classes):
            tp, fp, fn = totals[3 * (c - 1) : 3 * c].tolist()
            dice[self.label_names[c]] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else float("nan")
        return float(totals[-2] / max(totals[-1], 1)), dice

    def _write_outputs(self, epoch: int, next_step: int, improved: bool) -> None:
        """Hand this epoch's state (copied to the host) to the background writer."""
        if self.writer is None:
            self.writer = BackgroundWriter()
        state = host_snapshot(self._state(epoch, next_step))
        header = {"metadata": state["metadata"], "config": state["config"]}
        self.writer.submit(_write_epoch_files, self.spec.fold_dir, state, improved, header, self.label_names)


def _write_epoch_files(folder: Path, state: dict[str, Any], improved: bool, header: dict[str, Any],
                       label_names: dict[int, str]) -> None:
    ckpt.save_latest_and_best(folder, state, improved)
    write_log(folder, header, state["log"])
    plot_progress(folder, state["log"], label_names)


def _label_names(spec: RunSpec) -> dict[int, str]:
    by_value = {v: k for k, v in spec.label_names.items()}
    return {i: by_value.get(v, f"label_{v}") for i, v in enumerate(spec.label_values)}


# The bar's loss (a read-back from the GPU) is refreshed every this many steps.
_BAR_REFRESH_STEPS = 10


class _progress_bar:
    """A rich progress bar for one epoch (loss and ETA), or nothing."""

    def __init__(self, enabled: bool, epoch: int, config: TrainingConfig) -> None:
        self.enabled, self.epoch, self.config = enabled, epoch, config

    def __enter__(self) -> _progress_bar:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"epoch {self.epoch + 1}/{self.config.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.config.iters_per_epoch, loss=float("nan"))
        return self

    def __call__(self, done: int, loss: float | None = None) -> None:
        """Advance to ``done`` steps (an enabled bar only); ``loss`` None keeps the loss shown."""
        fields = {} if loss is None else {"loss": loss}
        self.progress.update(self.task, completed=done, **fields)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()
