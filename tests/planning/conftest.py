"""Synthetic fingerprints for planner tests (no files)."""

from __future__ import annotations

import pytest

from medmamba.fingerprint import CaseFingerprint, Fingerprint, IntensityStats


def make_fingerprint(spacings, shapes, channel_names=("MRI",), labels=None,
                     shapes_after_crop=None, stats=None) -> Fingerprint:
    labels = labels or {"background": 0, "a": 1, "b": 2}
    shapes_after_crop = shapes_after_crop or shapes
    stats = stats or IntensityStats(mean=100.0, std=50.0, min=-1000.0, max=3000.0, median=90.0,
                                    percentile_00_5=-900.0, percentile_99_5=2000.0)
    cases = tuple(
        CaseFingerprint(case_id=f"case_{i:03d}", spacing=tuple(map(float, sp)),
                        shape=tuple(sh), shape_after_crop=tuple(cr))
        for i, (sp, sh, cr) in enumerate(zip(spacings, shapes, shapes_after_crop)))
    return Fingerprint(
        schema_version=1, dataset_name="Synthetic", raw_dataset="/nonexistent", signature="0" * 16,
        channel_names=tuple(channel_names), labels=labels, file_ending=".nii.gz",
        samples_per_case=10, cases=cases, intensity=tuple(stats for _ in channel_names))


@pytest.fixture
def fingerprint_factory():
    return make_fingerprint
