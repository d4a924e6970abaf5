"""Time one sliding-window forward pass of planned networks under the ways it could run.

    python scripts/bench_window_forward.py WORK [-c 3d_fullres] [--networks resenc_unet umamba_bot]
        [--variants eager:4 eager-cl:4 compile:4 ...] [--out FILE.json]

What it decides: how prediction should feed windows to the network on a GPU (issue 7,
BraTS TTA runs 8 mirrored passes per window batch, so the network's own time is the case's
time). Networks come from WORK/plans.json with random weights (the time does not depend on
the values), in eval mode without deep supervision, bf16 autocast, inference_mode, as
``medmamba.inference.predictor.Predictor`` runs them.

A variant is ``MODE[-cl]:BATCH``: MODE ``eager``, ``compile`` (torch.compile, dynamic=False,
the predictor's ``compile=True``) or ``graphs`` (torch.compile mode="reduce-overhead": the
compiled windows replayed as a CUDA graph); ``-cl`` puts the weights and the windows in
channels_last_3d memory format; BATCH windows per forward (the predictor's was 4 until session
15, and is now a case's windows up to 16 on a GPU; 32 is 4 windows x 8 mirrors in one pass). Reported per variant: compile/first-call s, ms
per forward (median of timed calls, synchronised), ms per window, and the ratio of ms per
window to the first variant's, measured in the same run. Runs from the repository root
without installing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # medmamba from this checkout

import torch  # noqa: E402

from medmamba.networks import build_network  # noqa: E402
from medmamba.networks.profiling import synced_median_s  # noqa: E402
from medmamba.planning.plans import Plans  # noqa: E402

DEFAULT_VARIANTS = ("eager:4", "eager-cl:4", "eager:32", "eager-cl:32",
                    "compile:4", "compile-cl:4", "graphs:4", "compile-cl:32")


def parse_variant(text: str) -> tuple[str, bool, int]:
    mode_part, _, batch = text.partition(":")
    mode, _, suffix = mode_part.partition("-")
    if mode not in ("eager", "compile", "graphs") or suffix not in ("", "cl") or not batch.isdigit():
        raise SystemExit(f"variant {text!r}: expected MODE[-cl]:BATCH, MODE eager|compile|graphs")
    return mode, suffix == "cl", int(batch)


def time_forward(run, windows: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(first call s, median ms of ``repeats`` synchronised calls after two warm-up calls)."""
    first_s = synced_median_s(lambda: run(windows), 1)
    for _ in range(2):
        run(windows)
    return first_s, synced_median_s(lambda: run(windows), repeats) * 1e3


def bench_variant(name: str, kwargs: dict, patch: tuple[int, ...], variant: str, repeats: int) -> dict:
    mode, channels_last, batch = parse_variant(variant)
    torch.manual_seed(0)
    torch._dynamo.reset()
    network = build_network(name, deep_supervision=False, **kwargs).cuda().eval()
    windows = torch.randn(batch, kwargs["in_channels"], *patch, device="cuda")
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
        windows = windows.contiguous(memory_format=torch.channels_last_3d)
    if mode == "compile":
        network = torch.compile(network, dynamic=False)
    elif mode == "graphs":
        network = torch.compile(network, dynamic=False, mode="reduce-overhead")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return network(x)

    row = {"network": name, "variant": variant, "batch": batch}
    try:
        torch.cuda.reset_peak_memory_stats()
        first_s, ms = time_forward(run, windows, repeats)
        row.update(first_s=first_s, ms=ms, ms_per_window=ms / batch,
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    except Exception as error:  # a variant that cannot run is a result, not the end of the run
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    del network, windows
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("--networks", nargs="+", default=["resenc_unet", "umamba_bot"])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for variant in args.variants:
        parse_variant(variant)
    if not torch.cuda.is_available():
        raise SystemExit("bench_window_forward needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    plan = Plans.load(args.work).configuration(args.configuration)
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| network | variant | first call s | ms/forward | ms/window | vs first | peak GiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.networks:
        network_plan = plan.networks[name]
        patch = tuple(network_plan.patch_size)
        reference = None
        for variant in args.variants:
            row = bench_variant(name, network_plan.network_kwargs(), patch, variant, args.repeats)
            row["patch"] = list(patch)
            rows.append(row)
            if "error" in row:
                print(f"| {name} | {variant} | failed: {row['error']} |")
                continue
            reference = reference or row["ms_per_window"]
            print(f"| {name} {'x'.join(map(str, patch))} | {variant} | {row['first_s']:.1f} | {row['ms']:.2f} | "
                  f"{row['ms_per_window']:.3f} | {row['ms_per_window'] / reference:.3f} | {row['peak_gib']:.2f} |",
                  flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
