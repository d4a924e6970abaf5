"""The Python API: every pipeline step as a function of Paths.

The CLI (:mod:`medmamba.cli`) is a thin shell over these functions. Heavy imports
happen inside the functions so ``import medmamba.api`` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medmamba.data.validate import ValidationReport
    from medmamba.demo import DemoReport
    from medmamba.fingerprint import Fingerprint
    from medmamba.inference.folder import PredictionReport
    from medmamba.planning.plans import Plans


def validate_dataset(data: Path, workers: int | None = None, progress: bool = False) -> ValidationReport:
    """Check every case of the raw dataset ``data``; the report lists all errors and warnings.

    Never raises for bad data: problems are in ``report.errors`` (``report.ok`` is False).
    """
    from medmamba.data.validate import validate_dataset as validate

    return validate(Path(data), workers=workers, progress=progress)


def convert_msd(src: Path, dst: Path, workers: int | None = None, progress: bool = False) -> Path:
    """Convert a Medical Segmentation Decathlon folder ``src`` to the nnU-Net v2 raw layout at ``dst``."""
    from medmamba.data.msd import convert_msd as convert

    return convert(Path(src), Path(dst), workers=workers, progress=progress)


def make_phantom(out: Path, cases: int = 20, seed: int = 0, channels: int = 1,
                 shape: tuple[int, int, int] = (32, 48, 48),
                 spacing: tuple[float, float, float] = (2.5, 1.0, 1.0),
                 num_labels: int = 3, workers: int | None = None, progress: bool = False) -> Path:
    """Write the synthetic phantom dataset (nnU-Net v2 raw layout) to ``out``; same seed, same bytes."""
    from medmamba.data.phantom import write_phantom_dataset

    return write_phantom_dataset(Path(out), cases=cases, seed=seed, channels=channels, shape=shape,
                                 spacing=spacing, num_labels=num_labels, workers=workers,
                                 progress=progress)


def fingerprint(data: Path, work: Path, workers: int | None = None,
                progress: bool = False) -> Fingerprint:
    """Fingerprint the raw dataset ``data`` into WORK/fingerprint.json and return it."""
    from medmamba.fingerprint import FINGERPRINT_FILE, compute_fingerprint

    result = compute_fingerprint(Path(data), workers=workers, show_progress=progress)
    result.save(Path(work) / FINGERPRINT_FILE)
    return result


def plan(data: Path, work: Path, gpu_memory_gb: float = 10.0, workers: int | None = None,
         families: list[str] | None = None, validate: bool = True,
         progress: bool = False) -> Plans:
    """Plan every configuration and network family for ``data``; writes WORK/plans.json.

    Fingerprints first when WORK/fingerprint.json is missing or stale (the dataset's files
    changed); a dataset being fingerprinted is validated first (``validate``) and a broken
    one raises DatasetError naming the first problem. ``gpu_memory_gb`` is the training
    memory budget the memory models size patches and batches for.
    """
    from medmamba.errors import DatasetError
    from medmamba.fingerprint import FINGERPRINT_FILE, Fingerprint, fingerprint_is_current
    from medmamba.planning.planner import plan_experiment
    from medmamba.planning.plans import PLANS_FILE

    work = Path(work)
    fingerprint_path = work / FINGERPRINT_FILE
    if fingerprint_is_current(fingerprint_path, Path(data)):
        current = Fingerprint.load(fingerprint_path)
    else:
        if validate:
            report = validate_dataset(data, workers=workers, progress=progress)
            if not report.ok:
                more = f" (and {len(report.errors) - 1} more; see `medmamba validate`)" if len(
                    report.errors) > 1 else ""
                first = report.errors[0]
                raise DatasetError(f"{first.message}{more}", first.path)
        current = fingerprint(data, work, workers=workers, progress=progress)
    plans = plan_experiment(current, gpu_memory_gb=gpu_memory_gb, families=families)
    plans.save(work / PLANS_FILE)
    return plans


def preprocess(work: Path, configurations: list[str] | None = None, workers: int | None = None,
               progress: bool = False) -> list[Path]:
    """Preprocess the training cases for ``configurations`` (default: all planned) into
    WORK/preprocessed/<config>-<hash>/; finished cases are skipped. Returns the folders."""
    from medmamba.preprocessing.preprocess import preprocess_dataset

    return preprocess_dataset(Path(work), configurations, workers=workers, show_progress=progress)


def predict(work: Path, input_folder: Path, output_folder: Path, configuration: str | None = None,
            network: str | None = None, folds: list[int] | None = None, tta: bool = True,
            save_probabilities: bool = False, device: str | None = None, overwrite: bool = False,
            num_parts: int = 1, part_id: int = 0, batch_windows: int | None = None,
            checkpoint: str = "latest", progress: bool = False, compile: bool = False) -> PredictionReport:
    """Segment every case of ``input_folder`` (dataset channel layout) into ``output_folder``.

    Uses the trained folds in ``work`` (``None``: every fold found; the only trained network;
    ``3d_fullres`` if trained), sliding windows of the plan's patch size (gaussian weighting,
    overlap 0.5; ``batch_windows`` per forward pass, ``None``: on a GPU as many of a case's
    windows as fit in half the free memory, 4 to 16, on the CPU 4), mirroring TTA, fold
    averaging. Masks get the input's exact geometry and file ending. Cases that fail are
    listed in ``report.failed``; existing outputs are skipped unless ``overwrite``.
    ``num_parts``/``part_id`` select every num_parts-th case of the sorted list.
    ``compile=True`` runs the windows through torch.compile: the first case compiles
    (24-55 s for a BraTS-sized case on an H200, less once the on-disk caches are warm), then
    window passes are faster (with TTA, ``resenc_unet`` took 1.82 s a case eager there, and
    compiled 1.09-1.22 s at 4 windows a pass, 0.95 s with the case's 12 windows in one pass);
    worth it for many or large cases.
    """
    from medmamba.inference.folder import predict_folder

    return predict_folder(Path(work), Path(input_folder), Path(output_folder),
                          configuration=configuration, network=network, folds=folds, tta=tta,
                          save_probabilities=save_probabilities, device=device,
                          overwrite=overwrite, num_parts=num_parts, part_id=part_id,
                          batch_windows=batch_windows, checkpoint=checkpoint, progress=progress,
                          compile=compile)


def evaluate(pred: Path, labels: Path, dataset_json: Path | None = None,
             tolerance_mm: float = 1.0, output: Path | None = None) -> Path:
    """Dice, HD95 and normalised surface Dice of every prediction in ``pred`` against ``labels``.

    Label names come from ``dataset_json`` (or are ``label_<value>``). Writes summary.json and
    summary.csv (default: into ``pred``) and returns the path of summary.json.
    """
    from medmamba.data.dataset import load_dataset_json
    from medmamba.evaluation import evaluate_folder

    names = ending = None
    if dataset_json is not None:
        dataset_json = Path(dataset_json)
        if not dataset_json.is_dir() and dataset_json.name != "dataset.json":
            from medmamba.errors import DatasetError

            raise DatasetError("expected a dataset.json file or the folder holding it", dataset_json)
        info = load_dataset_json(dataset_json if dataset_json.is_dir() else dataset_json.parent)
        names, ending = info.labels, info.file_ending
    return evaluate_folder(Path(pred), Path(labels), labels=names, file_ending=ending,
                           tolerance_mm=tolerance_mm, output=output)


def overlay(image: Path, prediction: Path, output: Path, label: Path | None = None,
            num_slices: int = 6) -> Path:
    """PNG montage of axial slices through the foreground: prediction (and reference) overlaid."""
    from medmamba.visualization import overlay_files

    return overlay_files(Path(image), Path(prediction), Path(output), label_path=label,
                         num_slices=num_slices)


def train(
    work: Path,
    configuration: str = "3d_fullres",
    network: str = "umamba_bot",
    fold: int = 0,
    epochs: int | None = None,
    iters_per_epoch: int | None = None,
    device: str | None = None,
    resume: bool = False,
    split_file: Path | None = None,
    workers: int | None = None,
    seed: int = 0,
    ssm: str | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    val_batches: int | None = None,
    batch_size: int | None = None,
    augment: bool | None = None,
    network_overrides: dict | None = None,
    patch_size: tuple[int, ...] | None = None,
    progress: bool = False,
    compile: bool = False,
    cuda_graphs: bool = True,
    rank: int = 0,
    world_size: int = 1,
    local_rank: int = 0,
    init_method: str | None = None,
) -> Path:
    """Train one fold on WORK's preprocessed data; returns WORK/results/<net>/<config>/fold_<k>.

    ``epochs``/``iters_per_epoch``/``val_batches`` default to TrainingConfig's (1000 x 250,
    50). ``resume`` continues checkpoint_latest.pt exactly, and with a larger ``epochs``
    extends a finished run (the poly schedule is recomputed over the new total).
    ``workers=0`` loads batches in the main process (for a small /dev/shm).
    ``augment=False`` only crops patches (no rotation, intensity or mirroring transforms).
    ``rank``/``world_size``/``local_rank``/``init_method`` come from torchrun (the CLI
    reads them from the environment). ``network_overrides`` replaces network kwargs of the
    plan (e.g. ``{"features_per_stage": [8, 16, 32, 64]}`` for a quick CPU run) and
    ``patch_size`` the plan's patch; both are recorded in the checkpoint metadata.
    ``compile=True`` runs the training steps through torch.compile (faster steps on a GPU
    after a compile of about a minute; nnU-Net does the same). ``cuda_graphs`` (default)
    replays each training step as a CUDA graph on a single GPU, which small patches need
    to keep the GPU busy; False runs every step eagerly.
    """
    from medmamba.training.config import TrainingConfig
    from medmamba.training.distributed import DistInfo
    from medmamba.devices import resolve_device
    from medmamba.training.setup import default_workers, resolve_run
    from medmamba.training.trainer import Trainer

    overrides = {
        "epochs": epochs, "iters_per_epoch": iters_per_epoch, "optimizer": optimizer, "lr": lr,
        "val_batches": val_batches, "batch_size": batch_size, "workers": workers, "augment": augment,
        "compile": compile or None, "cuda_graphs": cuda_graphs,
    }
    config = TrainingConfig(seed=seed, **{k: v for k, v in overrides.items() if v is not None})
    dist = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, init_method=init_method)
    torch_device = resolve_device(device, local_rank)
    spec = resolve_run(Path(work), configuration, network, fold, ssm, split_file, write_splits=dist.is_main,
                       network_overrides=network_overrides, patch_size=patch_size)
    n_workers = config.workers if config.workers is not None else default_workers(torch_device)
    trainer = Trainer(spec, config, torch_device, dist, workers=n_workers, progress=progress)
    return trainer.run(resume=resume)


#: The configuration ``list_networks`` shows without WORK: the hippocampus 3d_fullres plan
#: of nnU-Net (../shared/anchors), 1 channel, 3 classes, 4 stages 32-256.
EXAMPLE_NETWORK_PLAN = {
    "in_channels": 1,
    "num_classes": 3,
    "spatial_dims": 3,
    "features_per_stage": [32, 64, 128, 256],
    "kernel_sizes": [[3, 3, 3]] * 4,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
}
EXAMPLE_PATCH_SIZE = (40, 56, 40)


def list_networks(work: Path | None = None, configuration: str | None = None) -> list[dict]:
    """One row per network family: parameters and MACs (batch 1) for a plan.

    With ``work``, the families planned in WORK/plans.json for ``configuration`` (default
    3d_fullres, else the first planned); without, every family on the built-in example
    (``EXAMPLE_NETWORK_PLAN`` at ``EXAMPLE_PATCH_SIZE``). Mamba families also report their
    ``ssm="none"`` twin. Row keys: network, configuration, patch_size, batch_size (None
    without a plan), parameters, macs, parameters_no_ssm, macs_no_ssm (None for CNNs).
    """
    from medmamba.networks import available_networks, get_family, network_complexity

    entries: list[tuple[str, str, tuple[int, ...], int | None, dict]] = []
    if work is None:
        for name in available_networks():
            entries.append((name, "example 3d", EXAMPLE_PATCH_SIZE, None, dict(EXAMPLE_NETWORK_PLAN)))
    else:
        from medmamba.planning.plans import Plans

        plans = Plans.load(Path(work))
        if configuration is None:
            configuration = "3d_fullres" if "3d_fullres" in plans.configurations else next(iter(plans.configurations))
        plan = plans.configuration(configuration)
        for name, network in plan.networks.items():
            entries.append((name, configuration, tuple(network.patch_size), network.batch_size,
                            network.network_kwargs()))
    rows = []
    for name, config_name, patch, batch, kwargs in entries:
        full = network_complexity(name, patch, **kwargs)
        ablated = network_complexity(name, patch, **{**kwargs, "ssm": "none"}) if get_family(name).has_ssm else None
        rows.append({
            "network": name, "configuration": config_name, "patch_size": list(patch), "batch_size": batch,
            "parameters": full.parameters, "macs": full.macs,
            "parameters_no_ssm": ablated.parameters if ablated else None,
            "macs_no_ssm": ablated.macs if ablated else None,
        })
    return rows


def demo(out_dir: Path, quick: bool = False, network: str | None = None, epochs: int | None = None,
         iters_per_epoch: int | None = None, device: str | None = "cpu", tta: bool | None = None,
         progress: bool = False) -> DemoReport:
    """The whole pipeline on a fresh phantom in ``out_dir`` (CPU by default, a few minutes).

    make_phantom (held-out cases in imagesTs/labelsTs) -> validate -> plan -> preprocess ->
    train fold 0 briefly -> predict the held-out cases -> evaluate -> montage.png.
    ``quick`` shrinks everything to seconds (for tests; the Dice is then meaningless).
    """
    import dataclasses

    from medmamba.demo import DemoSettings, run_demo

    settings = DemoSettings.quick() if quick else DemoSettings()
    changes = {"network": network, "epochs": epochs, "iters_per_epoch": iters_per_epoch, "tta": tta}
    settings = dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})
    return run_demo(Path(out_dir), settings, device=device, progress=progress)
