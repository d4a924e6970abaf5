from __future__ import annotations

import json
import os

import numpy as np
import pytest

from medmamba import api
from medmamba.errors import DatasetError, PlansError
from medmamba.fingerprint import Fingerprint, compute_fingerprint, fingerprint_is_current


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp") / "Dataset901_Phantom"
    return api.make_phantom(out, cases=3, seed=5, channels=2, shape=(10, 24, 24),
                            spacing=(2.0, 0.9, 0.9), workers=1)


def test_fingerprint_contents(phantom, tmp_path):
    result = api.fingerprint(phantom, tmp_path, workers=1)
    assert (tmp_path / "fingerprint.json").is_file()
    assert len(result.cases) == 3 and len(result.intensity) == 2
    case = result.cases[0]
    assert case.spacing == pytest.approx((2.0, 0.9, 0.9))
    assert case.shape == (10, 24, 24)
    assert all(c <= s for c, s in zip(case.shape_after_crop, case.shape))
    for stats in result.intensity:
        assert stats.min <= stats.percentile_00_5 <= stats.median <= stats.percentile_99_5 <= stats.max
        assert stats.std > 0
    assert Fingerprint.load(tmp_path / "fingerprint.json") == result


def test_deterministic_and_worker_independent(phantom):
    one = compute_fingerprint(phantom, workers=1, show_progress=False)
    two = compute_fingerprint(phantom, workers=2, show_progress=False)
    assert one == two


def test_sample_is_bounded(phantom):
    small = compute_fingerprint(phantom, workers=1, show_progress=False, samples_per_case=50)
    full = compute_fingerprint(phantom, workers=1, show_progress=False)
    assert small.samples_per_case == 50
    assert small.intensity[0].mean == pytest.approx(full.intensity[0].mean, rel=0.2)


def test_staleness(phantom, tmp_path):
    api.fingerprint(phantom, tmp_path, workers=1)
    path = tmp_path / "fingerprint.json"
    assert fingerprint_is_current(path, phantom)
    label = sorted((phantom / "labelsTr").iterdir())[0]
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert not fingerprint_is_current(path, phantom)
    finally:
        os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not fingerprint_is_current(tmp_path / "missing.json", phantom)


def test_bad_fingerprint_file_names_the_key(phantom, tmp_path):
    api.fingerprint(phantom, tmp_path, workers=1)
    path = tmp_path / "fingerprint.json"
    data = json.loads(path.read_text())
    data["cases"][1]["spacing"] = "1x1x1"
    path.write_text(json.dumps(data))
    with pytest.raises(PlansError, match=r"cases\[1\]\.spacing: expected list of number"):
        Fingerprint.load(path)


def test_label_shape_mismatch_is_a_dataset_error(tmp_path):
    from medmamba.data.io import Geometry, write_image

    root = tmp_path / "Dataset902_Bad"
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 5, 6))
    write_image(np.ones((4, 5, 6), np.float32), geometry, root / "imagesTr" / "c_0000.nii.gz")
    write_image(np.ones((4, 5, 7), np.uint8), geometry, root / "labelsTr" / "c.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1},
        "numTraining": 1, "file_ending": ".nii.gz"}))
    with pytest.raises(DatasetError, match="label shape"):
        compute_fingerprint(root, workers=1, show_progress=False)
