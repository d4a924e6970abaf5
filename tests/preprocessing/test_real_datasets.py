"""Planning and preprocessing on the real datasets under ../shared/data (skipped if absent).

The plans are compared with nnU-Net v2's own plans for the same data (../shared/anchors):
same target spacing, normalisation and (for plainconv_unet, nnU-Net's network) topology.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medmamba import api
from medmamba.data.dataset import discover_cases, load_dataset_json
from medmamba.data.io import read_channels, read_image
from medmamba.planning.plans import NormScheme
from medmamba.preprocessing.preprocess import preprocess_case
from medmamba.preprocessing.storage import load_case, save_case

def _nnunet_plans(anchors: Path, name: str) -> dict:
    path = anchors / f"nnunet_{name}_plans.json"
    if not path.is_file():
        pytest.skip(f"nnU-Net anchor plans not found: {path}")
    return json.loads(path.read_text())["configurations"]


@pytest.mark.slow
def test_hippocampus_plan_matches_nnunet(tmp_path, shared_dataset, anchors_dir):
    data = shared_dataset("Dataset004_Hippocampus")
    plans = api.plan(data, tmp_path, workers=2, validate=False)
    theirs = _nnunet_plans(anchors_dir, "Dataset004_Hippocampus")
    assert set(plans.configurations) == set(theirs)  # no 3d_lowres on either
    for name, configuration in plans.configurations.items():
        ours = configuration.network("plainconv_unet")
        assert list(configuration.target_spacing) == theirs[name]["spacing"]
        assert list(ours.patch_size) == theirs[name]["patch_size"]
        assert ours.batch_size == theirs[name]["batch_size"]
        arch = theirs[name]["architecture"]["arch_kwargs"]
        assert [list(s) for s in ours.strides] == arch["strides"]
        assert list(ours.features_per_stage) == arch["features_per_stage"]
        assert [n.scheme for n in configuration.normalization] == [NormScheme.ZSCORE]
    # preprocess a few cases end to end
    cases = discover_cases(load_dataset_json(data))[:3]
    configuration = plans.configuration("3d_fullres")
    folder = plans.preprocessed_folder(tmp_path, "3d_fullres")
    for case in cases:
        images, geometry = read_channels(case.images)
        seg, _ = read_image(case.label)
        save_case(folder, case.case_id, *preprocess_case(images, geometry, configuration, seg,
                                                         case.case_id))
        array, out_seg, props = load_case(folder, case.case_id)
        assert abs(float(array.mean())) < 1e-3 and abs(float(array.std()) - 1) < 1e-2
        assert set(np.unique(out_seg)) <= {0, 1, 2}


@pytest.mark.slow
def test_brats_plan_and_two_cases(tmp_path, shared_dataset, anchors_dir):
    data = shared_dataset("Dataset101_BraTS2015DeepMedicSample")
    plans = api.plan(data, tmp_path, workers=2, validate=False)
    theirs = _nnunet_plans(anchors_dir, "Dataset101_BraTS2015DeepMedicSample")
    assert set(plans.configurations) == set(theirs)
    full = plans.configuration("3d_fullres")
    assert list(full.target_spacing) == theirs["3d_fullres"]["spacing"]
    assert [n.scheme for n in full.normalization] == [NormScheme.ZSCORE] * 2
    network = full.network("plainconv_unet")
    assert network.batch_size == 2 and network.num_stages == 6
    assert network.estimated_memory_gb <= 10
    assert plans.configuration("2d").network("plainconv_unet").patch_size == tuple(
        theirs["2d"]["patch_size"])
    for case in discover_cases(load_dataset_json(data))[:2]:
        images, geometry = read_channels(case.images)
        seg, _ = read_image(case.label)
        array, out_seg, props = preprocess_case(images, geometry, full, seg, case.case_id)
        assert array.shape[0] == 2 and out_seg.shape[1:] == array.shape[1:]
        assert props["class_locations"]
