from __future__ import annotations

import pytest
import torch
from network_specs import HIPPOCAMPUS_3D, HIPPOCAMPUS_PATCH, tiny_kwargs, tiny_patch

from medmamba.networks import available_networks, build_network, get_family, network_complexity

MAMBA_FAMILIES = [n for n in available_networks() if get_family(n).has_ssm]


def expected_shapes(spatial_dims: int) -> list[tuple[int, ...]]:
    full = tiny_patch(spatial_dims)
    half = tuple(p // s for p, s in zip(full, tiny_kwargs(spatial_dims)["strides"][1]))
    return [(2, 3, *full), (2, 3, *half)]


@pytest.mark.parametrize("name", available_networks())
def test_forward_shapes_and_finite_gradients(name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    net = build_network(name, deep_supervision=True, **tiny_kwargs(spatial_dims))
    x = torch.randn(2, 2, *tiny_patch(spatial_dims))
    outputs = net(x)
    assert isinstance(outputs, list)
    assert [tuple(o.shape) for o in outputs] == expected_shapes(spatial_dims)
    sum(o.square().mean() for o in outputs).backward()
    for key, p in net.named_parameters():
        assert p.grad is not None, f"{key} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{key} has a non-finite gradient"

    net.deep_supervision = False
    with torch.no_grad():
        single = net(x)
    assert isinstance(single, torch.Tensor)
    assert tuple(single.shape) == expected_shapes(spatial_dims)[0]
    torch.testing.assert_close(single, outputs[0].detach())


@pytest.mark.parametrize("name", MAMBA_FAMILIES)
def test_ssm_none_changes_the_output_and_drops_the_scan(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = tiny_kwargs(3)
    x = torch.randn(1, 2, *tiny_patch(3))
    torch.manual_seed(0)
    with_ssm = build_network(name, **kwargs)
    torch.manual_seed(0)
    without = build_network(name, ssm="none", **kwargs)
    assert sum(p.numel() for p in without.parameters()) < sum(p.numel() for p in with_ssm.parameters())
    # Same weights where both have them: only the scan differs.
    without.load_state_dict(with_ssm.state_dict(), strict=False)
    with torch.no_grad():
        a, b = with_ssm(x), without(x)
    assert a.shape == b.shape
    assert not torch.allclose(a, b)


# Counted from the implementation, hippocampus 3d_fullres plan; a band catches accidental
# architecture changes without pinning every parameter.
PARAMETER_BANDS = {
    "plainconv_unet": (5.0e6, 6.2e6),
    "resenc_unet": (24e6, 28e6),
    "umamba_bot": (25e6, 28e6),
    "umamba_enc": (25e6, 28e6),
    "mhs_unet": (5.5e6, 7.0e6),
    "lightm_unet": (0.7e6, 1.5e6),  # paper: 1.09 M; issue bound: <= 1.5 M
}


@pytest.mark.parametrize("name", available_networks())
def test_parameter_counts_and_macs_for_the_hippocampus_plan(name: str) -> None:
    complexity = network_complexity(name, HIPPOCAMPUS_PATCH, **HIPPOCAMPUS_3D)
    low, high = PARAMETER_BANDS[name]
    assert low <= complexity.parameters <= high
    assert 1e9 < complexity.macs < 1e11
    if get_family(name).has_ssm:
        ablated = network_complexity(name, HIPPOCAMPUS_PATCH, ssm="none", **HIPPOCAMPUS_3D)
        assert ablated.macs < complexity.macs


def test_macs_grow_with_the_patch() -> None:
    small = network_complexity("umamba_bot", (32, 32, 32), **HIPPOCAMPUS_3D).macs
    large = network_complexity("umamba_bot", (64, 64, 64), **HIPPOCAMPUS_3D).macs
    assert large == pytest.approx(8 * small, rel=0.02)


@pytest.mark.parametrize("name", ["umamba_bot", "mhs_unet", "lightm_unet"])
def test_bf16_autocast_stays_finite(name: str) -> None:
    torch.manual_seed(0)
    net = build_network(name, deep_supervision=False, **tiny_kwargs(3))
    # Realistic magnitudes: z-scored intensities with outliers, as after preprocessing.
    x = torch.randn(2, 2, *tiny_patch(3)) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    # Without deep supervision the lower seg heads get no gradient; the rest must be finite.
    grads = {key: p.grad for key, p in net.named_parameters() if p.grad is not None}
    assert len(grads) > 0.9 * len(list(net.parameters()))
    for key, grad in grads.items():
        assert torch.isfinite(grad).all(), key
