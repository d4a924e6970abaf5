"""The ``medmamba`` command line: a thin typer shell over :mod:`medmamba.api`.

Only this module reads environment variables and chooses exit codes. Heavy imports
(torch, SimpleITK) happen inside the commands so ``medmamba --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from medmamba.errors import MedMambaError

app = typer.Typer(
    name="medmamba",
    help="Self-configuring medical image segmentation with Mamba U-Nets.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

EXIT_USER_ERROR = 2


def run_or_exit(action: Callable[[], T]) -> T:
    """Run ``action``; a MedMambaError becomes one line on stderr and exit code 2."""
    try:
        return action()
    except MedMambaError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """medmamba: plan, preprocess, train, predict and evaluate."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", "-j", min=0, help="Worker processes (default: min(4, CPU count)); 0 = none."),
]


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(help="Raw dataset folder (nnU-Net v2 layout).")],
    workers: WorkersOption = None,
) -> None:
    """Check every case of a raw dataset; one line per problem, exit code 2 on errors."""
    from medmamba import api

    start = time.perf_counter()
    report = run_or_exit(lambda: api.validate_dataset(data, workers=workers, progress=True))
    for problem in report.errors:
        typer.echo(f"error: {problem}", err=True)
    for problem in report.warnings:
        typer.echo(f"warning: {problem}", err=True)
    verdict = "ok" if report.ok else "FAILED"
    typer.echo(f"{data}: {verdict}: {report.num_cases} case(s), {len(report.errors)} error(s), "
               f"{len(report.warnings)} warning(s) in {time.perf_counter() - start:.1f} s")
    if not report.ok:
        raise typer.Exit(EXIT_USER_ERROR)


@app.command("convert-msd")
def convert_msd(
    src: Annotated[Path, typer.Argument(help="Decathlon task folder (dataset.json, imagesTr, labelsTr).")],
    dst: Annotated[Path, typer.Argument(help="New nnU-Net v2 raw dataset folder (must not exist).")],
    workers: WorkersOption = None,
) -> None:
    """Convert a Medical Segmentation Decathlon task (4D images) to the nnU-Net v2 raw layout."""
    from medmamba import api

    out = run_or_exit(lambda: api.convert_msd(src, dst, workers=workers, progress=True))
    typer.echo(f"wrote {out}")


@app.command("make-phantom")
def make_phantom(
    out: Annotated[Path, typer.Argument(help="New dataset folder (must not exist).")],
    cases: Annotated[int, typer.Option(min=1, help="Number of cases.")] = 20,
    seed: Annotated[int, typer.Option(min=0, help="Random seed; same seed, same files.")] = 0,
    channels: Annotated[int, typer.Option(min=1, max=2, help="Image channels (1 or 2).")] = 1,
    labels: Annotated[int, typer.Option(min=2, max=3, help="Labelled structures (2 or 3).")] = 3,
    size: Annotated[tuple[int, int, int], typer.Option(help="Volume shape z y x (voxels).")] = (32, 48, 48),
    spacing: Annotated[tuple[float, float, float], typer.Option(help="Voxel spacing z y x (mm).")] = (2.5, 1.0, 1.0),
    workers: WorkersOption = None,
) -> None:
    """Write the synthetic phantom dataset (the embedded default) in the nnU-Net v2 raw layout."""
    from medmamba import api

    path = run_or_exit(lambda: api.make_phantom(out, cases=cases, seed=seed, channels=channels,
                                                 shape=size, spacing=spacing, num_labels=labels,
                                                 workers=workers, progress=True))
    typer.echo(f"wrote {path} ({cases} case(s))")


@app.command()
def fingerprint(
    data: Annotated[Path, typer.Argument(help="Raw dataset folder (nnU-Net v2 layout).")],
    work: Annotated[Path, typer.Argument(help="Working folder; gets fingerprint.json.")],
    workers: WorkersOption = None,
) -> None:
    """Fingerprint a raw dataset: spacings, shapes, foreground intensity statistics."""
    from medmamba import api

    start = time.perf_counter()
    result = run_or_exit(lambda: api.fingerprint(data, work, workers=workers, progress=True))
    typer.echo(f"wrote {work / 'fingerprint.json'} ({len(result.cases)} case(s)) in "
               f"{time.perf_counter() - start:.1f} s")


@app.command()
def plan(
    data: Annotated[Path, typer.Argument(help="Raw dataset folder (nnU-Net v2 layout).")],
    work: Annotated[Path, typer.Argument(help="Working folder; gets fingerprint.json and plans.json.")],
    gpu_memory: Annotated[float, typer.Option("--gpu-memory", min=0.5, help="Training GPU memory budget in GB.")] = 10.0,
    networks: Annotated[list[str] | None, typer.Option("--network", "-n", help="Plan only these families (repeat) [default: all].")] = None,
    workers: WorkersOption = None,
) -> None:
    """Plan 2d / 3d_fullres (/ 3d_lowres) for every network family -> WORK/plans.json."""
    from rich.console import Console

    from medmamba import api
    from medmamba.planning.summary import plans_summary

    start = time.perf_counter()
    plans = run_or_exit(lambda: api.plan(data, work, gpu_memory_gb=gpu_memory, workers=workers,
                                         families=networks or None, progress=True))
    console = Console()
    console.width = max(console.width, 120)  # keep the table readable in logs and pipes
    console.print(plans_summary(plans))
    typer.echo(f"wrote {work / 'plans.json'} in {time.perf_counter() - start:.1f} s")


@app.command()
def preprocess(
    work: Annotated[Path, typer.Argument(help="Working folder with plans.json.")],
    configurations: Annotated[list[str] | None, typer.Option("--configuration", "-c", help="Configuration(s) to preprocess (repeat) [default: all planned].")] = None,
    workers: WorkersOption = None,
) -> None:
    """Crop, normalise and resample every training case into WORK/preprocessed/<config>-<hash>/."""
    from medmamba import api

    start = time.perf_counter()
    folders = run_or_exit(lambda: api.preprocess(work, configurations or None, workers=workers,
                                                 progress=True))
    for folder in folders:
        typer.echo(f"wrote {folder}")
    typer.echo(f"preprocessed in {time.perf_counter() - start:.1f} s")


@app.command()
def predict(
    work: Annotated[Path, typer.Argument(help="WORK folder with plans.json and results/.")],
    input_folder: Annotated[Path, typer.Argument(help="Images CASE_XXXX<ending> in the dataset's channel layout.")],
    output_folder: Annotated[Path, typer.Argument(help="Where the masks go (created if needed).")],
    configuration: Annotated[str | None, typer.Option("--configuration", "-c", help="2d, 3d_fullres or 3d_lowres (default: 3d_fullres if trained).")] = None,
    network: Annotated[str | None, typer.Option("--network", "-n", help="Trained network folder name (default: the only one).")] = None,
    folds: Annotated[list[int] | None, typer.Option("--folds", "-f", help="Folds to ensemble (repeat) (default: all trained).")] = None,
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Mirroring test-time augmentation.")] = True,
    save_probabilities: Annotated[bool, typer.Option("--save-probabilities", help="Also write CASE.npz with class probabilities.")] = False,
    device: Annotated[str | None, typer.Option("--device", help="cuda or cpu (default: cuda if available).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    num_parts: Annotated[int, typer.Option("--num-parts", min=1, help="Split the sorted cases into this many parts.")] = 1,
    part_id: Annotated[int, typer.Option("--part-id", min=0, help="Which part this process predicts (0-based).")] = 0,
    batch_windows: Annotated[int | None, typer.Option("--batch-windows", min=1, help="Sliding windows per forward pass (default: on a GPU as many of a case's as fit in half the free memory, 4 to 16; on the CPU 4).")] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="latest or best.")] = "latest",
    compile: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the network (a compile first, then faster windows).")] = False,
) -> None:
    """Segment a folder of images with the trained folds; exit code 2 if any case failed."""
    from medmamba import api

    report = run_or_exit(lambda: api.predict(
        work, input_folder, output_folder, configuration=configuration, network=network,
        folds=folds or None, tta=tta, save_probabilities=save_probabilities, device=device,
        overwrite=overwrite, num_parts=num_parts, part_id=part_id, batch_windows=batch_windows,
        checkpoint=checkpoint, progress=True, compile=compile))
    for path in report.skipped:
        typer.echo(f"skipped: {path} exists (use --overwrite to replace it)", err=True)
    for case_id, reason in report.failed.items():
        typer.echo(f"error: case {case_id}: {reason}", err=True)
    typer.echo(f"{report.network}/{report.configuration} folds {report.folds}: wrote "
               f"{len(report.written)}, skipped {len(report.skipped)}, failed "
               f"{len(report.failed)} -> {report.output_folder}")
    if report.failed:
        raise typer.Exit(EXIT_USER_ERROR)


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Folder of predicted masks.")],
    labels: Annotated[Path, typer.Argument(help="Folder of reference masks (same names).")],
    dataset_json: Annotated[Path | None, typer.Option("--dataset-json", help="dataset.json for label names.")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="Surface Dice tolerance (mm).")] = 1.0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="summary.json path (default: PRED/summary.json).")] = None,
) -> None:
    """Dice, HD95 and normalised surface Dice per label and case -> summary.json + summary.csv."""
    import json

    from medmamba import api

    summary_path = run_or_exit(lambda: api.evaluate(pred, labels, dataset_json=dataset_json,
                                                    tolerance_mm=tolerance, output=output))
    summary = json.loads(summary_path.read_text())

    def show(value: float | None) -> str:
        return "  n/a" if value is None else f"{value:.3f}"

    typer.echo(f"{summary['num_cases']} case(s)        Dice   HD95(mm)   NSD@{tolerance:g}mm")
    for name, metrics in summary["per_label"].items():
        typer.echo(f"  {name:<18} {show(metrics['dice']['mean'])}  {show(metrics['hd95']['mean']):>8}"
                   f"   {show(metrics['nsd']['mean'])}")
    mean = summary["mean"]
    typer.echo(f"  {'mean':<18} {show(mean['dice'])}  {show(mean['hd95']):>8}   {show(mean['nsd'])}")
    typer.echo(f"wrote {summary_path} and {summary_path.with_suffix('.csv')}")


@app.command()
def overlay(
    image: Annotated[Path, typer.Argument(help="Image file (one channel).")],
    prediction: Annotated[Path, typer.Argument(help="Predicted mask of that image.")],
    output: Annotated[Path, typer.Argument(help="PNG file to write.")],
    label: Annotated[Path | None, typer.Option("--label", help="Reference mask, shown in a second row.")] = None,
    slices: Annotated[int, typer.Option("--slices", min=1, help="Axial slices in the montage.")] = 6,
) -> None:
    """PNG montage of axial slices through the foreground with the masks overlaid."""
    from medmamba import api

    path = run_or_exit(lambda: api.overlay(image, prediction, output, label=label, num_slices=slices))
    typer.echo(f"wrote {path}")


@app.command()
def networks(
    work: Annotated[Path | None, typer.Argument(help="Working folder with plans.json [default: a built-in 3D example].")] = None,
    configuration: Annotated[str | None, typer.Option("--configuration", "-c", help="Configuration of the plan [default: 3d_fullres].")] = None,
) -> None:
    """List every network family with its parameters and MACs for a plan (and its no-SSM twin)."""
    from rich.console import Console
    from rich.table import Table

    from medmamba import api

    rows = run_or_exit(lambda: api.list_networks(work, configuration))
    first = rows[0] if rows else {"configuration": configuration, "patch_size": []}
    table = Table(title=f"networks: {first['configuration']}, patch {'x'.join(map(str, first['patch_size']))}")
    for column in ("network", "batch", "params (M)", "GMACs", "params ssm=none (M)", "GMACs ssm=none"):
        table.add_column(column, justify="left" if column == "network" else "right")

    def show(value: int | None, scale: float) -> str:
        return "-" if value is None else f"{value / scale:.2f}"

    for row in rows:
        table.add_row(row["network"], "-" if row["batch_size"] is None else str(row["batch_size"]),
                      show(row["parameters"], 1e6), show(row["macs"], 1e9),
                      show(row["parameters_no_ssm"], 1e6), show(row["macs_no_ssm"], 1e9))
    Console().print(table)


def _int_list(text: str, option: str) -> list[int]:
    from medmamba.errors import ConfigError

    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} needs comma-separated integers, got '{text}'") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{option} values must be positive, got '{text}'")
    return values


def _distributed_env() -> dict:
    """torchrun's variables (this is the only place that reads them)."""
    import os

    from medmamba.errors import ConfigError

    def number(name: str, default: str) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            raise ConfigError(f"environment variable {name} must be an integer, "
                              f"got '{os.environ[name]}'") from None

    world_size = number("WORLD_SIZE", "1")
    if world_size <= 1:
        return {}
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    return {
        "rank": number("RANK", "0"),
        "world_size": world_size,
        "local_rank": number("LOCAL_RANK", "0"),
        "init_method": f"tcp://{address}:{port}" if address and port else None,
    }


@app.command()
def train(
    work: Annotated[Path, typer.Argument(help="Work folder (plans.json, preprocessed/).")],
    configuration: Annotated[str, typer.Option("--configuration", "-c", help="2d, 3d_fullres or 3d_lowres.")] = "3d_fullres",
    network: Annotated[str, typer.Option("--network", "-n", help="Network family (registry name).")] = "umamba_bot",
    fold: Annotated[int, typer.Option("--fold", "-f", min=0, help="Cross-validation fold.")] = 0,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default 1000).")] = None,
    iters_per_epoch: Annotated[int | None, typer.Option(min=1, help="Iterations per epoch (default 250).")] = None,
    val_batches: Annotated[int | None, typer.Option(min=1, help="Validation batches per epoch (default 50).")] = None,
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default cuda if available).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue checkpoint_latest.pt (may raise --epochs).")] = False,
    split_file: Annotated[Path | None, typer.Option(help="nnU-Net style splits_final.json to use as it is.")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Data loader processes; 0 = none (small /dev/shm).")] = None,
    ssm: Annotated[str | None, typer.Option(help="mamba or none (ablation: the scan becomes identity).")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd (default) or adamw.")] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate (default 1e-2 SGD, 1e-3 AdamW).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of all training randomness.")] = 0,
    features: Annotated[str | None, typer.Option(
        help="Override the plan's features per stage, e.g. 16,32,64,128 (small = fast on CPU).")] = None,
    patch_size: Annotated[str | None, typer.Option(help="Override the plan's patch size, e.g. 16,32,32.")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Data augmentation.")] = True,
    compile: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the training steps (faster on a GPU after ~1 min of compiling).")] = False,
    cuda_graphs: Annotated[bool, typer.Option(
        "--cuda-graphs/--no-cuda-graphs", help="Replay training steps as CUDA graphs (one GPU).")] = True,
) -> None:
    """Train one fold; results in WORK/results/NETWORK/CONFIG/fold_F (torchrun for several GPUs)."""
    from medmamba import api

    overrides = {"features_per_stage": run_or_exit(lambda: _int_list(features, "--features"))} if features else None
    patch = tuple(run_or_exit(lambda: _int_list(patch_size, "--patch-size"))) if patch_size else None
    dist = run_or_exit(_distributed_env)
    fold_dir = run_or_exit(lambda: api.train(
        work, configuration=configuration, network=network, fold=fold, epochs=epochs,
        iters_per_epoch=iters_per_epoch, val_batches=val_batches, device=device, resume=resume,
        split_file=split_file, workers=workers, seed=seed, ssm=ssm, optimizer=optimizer, lr=lr,
        augment=augment, network_overrides=overrides, patch_size=patch, compile=compile, cuda_graphs=cuda_graphs,
        progress=dist.get("rank", 0) == 0, **dist))
    if dist.get("rank", 0) == 0:
        typer.echo(f"wrote {fold_dir}")


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Folder for everything the demo writes.")] = Path("demo_output"),
    quick: Annotated[bool, typer.Option("--quick", help="Tiny run in seconds (for tests; Dice meaningless).")] = False,
    network: Annotated[str | None, typer.Option("--network", "-n", help="Network family to train.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Training epochs.")] = None,
    iters_per_epoch: Annotated[int | None, typer.Option("--iters-per-epoch", min=1, help="Iterations per epoch.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Mirroring TTA when predicting.")] = None,
) -> None:
    """The whole pipeline on the embedded phantom: plan, preprocess, train, predict, evaluate."""
    from medmamba import api

    start = time.perf_counter()
    report = run_or_exit(lambda: api.demo(out, quick=quick, network=network, epochs=epochs,
                                          iters_per_epoch=iters_per_epoch, device=device, tta=tta,
                                          progress=True))
    per_label = ", ".join(f"{name} {value:.3f}" if value is not None else f"{name} n/a"
                          for name, value in report.dice_per_label.items())
    mean = "n/a" if report.mean_dice is None else f"{report.mean_dice:.3f}"
    typer.echo(f"mean Dice on {report.settings.test_cases} held-out phantom case(s): {mean} ({per_label})")
    typer.echo(f"  data:        {report.data}")
    typer.echo(f"  plans:       {report.work / 'plans.json'}")
    typer.echo(f"  model:       {report.fold_dir}")
    typer.echo(f"  predictions: {report.predictions}")
    typer.echo(f"  scores:      {report.summary} (+ .csv)")
    typer.echo(f"  montage:     {report.montage}")
    typer.echo(f"finished in {time.perf_counter() - start:.0f} s")
