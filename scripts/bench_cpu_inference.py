"""CPU inference seconds per case, with and without mirroring TTA, on a real dataset.

Plans the dataset (on its first ``--plan-cases`` cases, to keep planning short), builds the
planned network with random weights (speed does not depend on the weights) and times the
whole per-case path that ``medmamba predict`` runs: read -> preprocess -> sliding windows
(-> 8 flips) -> softmax -> mask in the input grid -> write. One warm-up case first. Then
the same cases as a folder (``folder_mean_s``: reading and writing overlap the networks, as
in ``medmamba predict``).

    python scripts/bench_cpu_inference.py ../shared/data/Dataset004_Hippocampus \
        --network plainconv_unet --cases 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--network", default="plainconv_unet")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--cases", type=int, default=5, help="timed cases (after one warm-up)")
    parser.add_argument("--plan-cases", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batch-windows", type=int, default=4)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from medmamba import api
    from medmamba.data.dataset import discover_cases, load_dataset_json
    from medmamba.data.io import read_channels
    from medmamba.inference.export import write_prediction
    from medmamba.inference.folder import PredictionReport, predict_cases
    from medmamba.inference.predictor import FoldModel, Predictor
    from medmamba.networks.registry import build_network

    info = load_dataset_json(args.data)
    cases = discover_cases(info)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        subset = scratch / "data"
        for folder in ("imagesTr", "labelsTr"):
            (subset / folder).mkdir(parents=True)
        for case in cases[: args.plan_cases]:
            for path in (*case.images, case.label):
                os.symlink(path.resolve(), subset / path.parent.name / path.name)
        raw = json.loads((args.data / "dataset.json").read_text())
        raw["numTraining"] = min(args.plan_cases, len(cases))
        (subset / "dataset.json").write_text(json.dumps(raw))
        plans = api.plan(subset, scratch / "work", families=[args.network], validate=False)
        plan = plans.configuration(args.configuration)
        network_plan = plan.network(args.network)
        torch.manual_seed(0)
        network = build_network(args.network, **network_plan.network_kwargs()).eval()
        parameters = sum(p.numel() for p in network.parameters())
        model = FoldModel(0, network, {"patch_size": list(network_plan.patch_size)})
        timed = cases[-(args.cases + 1):]
        results = {}
        for tta in (False, True):
            predictor = Predictor([model], plan, sorted(plans.labels.values()), torch.device("cpu"),
                                  tta=tta, sw_batch_size=args.batch_windows)
            seconds = []
            for index, case in enumerate(timed):
                start = time.perf_counter()
                images, geometry = read_channels(case.images)
                write_prediction(predictor.predict_mask(images, geometry), geometry,
                                 scratch / "out" / f"{case.case_id}{info.file_ending}")
                if index > 0:  # the first case warms up
                    seconds.append(time.perf_counter() - start)
            # the same cases as `medmamba predict` runs a folder: stages of consecutive cases
            # overlap; per case = time between consecutive cases' outputs after the first
            report = predict_cases(predictor, timed, scratch / "folder", info.file_ending,
                                   PredictionReport(scratch / "folder"), overwrite=True,
                                   progress=False)
            done = sorted(report.completed_at.values())
            results["tta" if tta else "no_tta"] = {
                "median_s": statistics.median(seconds), "mean_s": statistics.fmean(seconds),
                "cases": len(seconds),
                "folder_mean_s": (done[-1] - done[0]) / (len(done) - 1)}
        shutil.rmtree(scratch / "out", ignore_errors=True)
    print(json.dumps({
        "dataset": info.name, "network": args.network, "configuration": args.configuration,
        "weights": "random (planned network)", "parameters": parameters,
        "patch_size": list(network_plan.patch_size), "target_spacing": list(plan.target_spacing),
        "torch_threads": torch.get_num_threads(), "batch_windows": args.batch_windows,
        **results}, indent=2))


if __name__ == "__main__":
    main()
