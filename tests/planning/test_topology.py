from __future__ import annotations

import pytest

from medmamba.planning.topology import features_per_stage, topology_for


def test_isotropic_pools_every_axis_while_at_least_4_voxels():
    topology = topology_for((1.0, 1.0, 1.0), (36, 50, 35))
    # nnU-Net's hippocampus plan: 4 stages, patch padded 36x50x35 -> 40x56x40.
    assert topology.patch_size == (40, 56, 40)
    assert topology.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert topology.kernel_sizes == ((3, 3, 3),) * 4


def test_brats_patch_gives_nnunets_topology():
    topology = topology_for((1.0, 1.0, 1.0), (96, 160, 160))
    assert topology.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    assert topology.divisor == (16, 32, 32)


def test_anisotropic_axis_not_pooled_and_kernel_1_early():
    topology = topology_for((5.0, 0.8, 0.8), (20, 192, 192))
    assert topology.strides[1] == (1, 2, 2)  # z is > 2x coarser than y, x
    assert topology.kernel_sizes[0] == (1, 3, 3)
    # once y, x reach 3.2 mm (2 pools), z (5 mm) is within 2x: pooled and kernel 3
    assert topology.strides[3] == (2, 2, 2)
    assert topology.kernel_sizes[-1] == (3, 3, 3)
    for size, divisor in zip(topology.patch_size, topology.divisor):
        assert size % divisor == 0


def test_every_pooled_map_stays_at_least_4():
    topology = topology_for((1.0, 1.0), (17, 300))
    size = list(topology.patch_size)
    for stride in topology.strides:
        size = [s // st for s, st in zip(size, stride)]
        assert min(size) >= 4


@pytest.mark.parametrize("stages, cap, expected", [
    (4, 320, (32, 64, 128, 256)),
    (6, 320, (32, 64, 128, 256, 320, 320)),
    (7, 512, (32, 64, 128, 256, 512, 512, 512)),
])
def test_features_double_and_cap(stages, cap, expected):
    assert features_per_stage(stages, 32, cap) == expected
