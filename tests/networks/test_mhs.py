from __future__ import annotations

import math

import pytest
import torch

import medmamba_kernels
from medmamba.networks.blocks.mhs import (
    MHSLayer,
    Route,
    default_routes,
    inverse_permutation,
    route_permutation,
)

SHAPES = [(5, 6), (3, 4, 5), (1, 7), (2, 1, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_routes_are_permutations_and_inverses_restore_the_grid(shape: tuple[int, ...]) -> None:
    grid = torch.randn(2, 3, *shape)
    flat = grid.flatten(2)
    for route in default_routes(len(shape), 12):
        perm = route_permutation(shape, route)
        assert torch.equal(perm.sort().values, torch.arange(math.prod(shape)))
        restored = flat[..., perm][..., inverse_permutation(perm)]
        assert torch.equal(restored.view_as(grid), grid)


@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 5)], ids=str)
def test_every_route_steps_between_neighbours(shape: tuple[int, ...]) -> None:
    """Snake routes are continuous: consecutive tokens are grid neighbours."""
    for route in default_routes(len(shape), 2 * len(shape)):
        coords = torch.stack(torch.unravel_index(route_permutation(shape, route), shape), dim=1)
        steps = (coords[1:] - coords[:-1]).abs().sum(1)
        if route.snake:
            assert torch.all(steps == 1), route.name


def test_default_routes_cover_each_axis_as_the_fastest() -> None:
    names = [r.name for r in default_routes(3, 4)]
    assert names == ["row-major", "column-major", "slice-major", "snake-row-major"]
    assert [r.name for r in default_routes(2, 4)] == [
        "row-major", "column-major", "snake-row-major", "snake-column-major",
    ]
    column = route_permutation((2, 3), Route((1, 0)))
    assert column.tolist() == [0, 3, 1, 4, 2, 5]


def test_layer_makes_one_grouped_kernel_call_and_caches_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    real = medmamba_kernels.selective_scan
    calls: list[tuple] = []

    def counting(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        calls.append(tuple(a.shape for a in args))
        return real(*args, **kwargs)

    monkeypatch.setattr(medmamba_kernels, "selective_scan", counting)
    layer = MHSLayer(8, spatial_dims=3, n_heads=4)
    x = torch.randn(2, 8, 3, 4, 5, requires_grad=True)
    out = layer(x)
    layer(x[:, :, :2])
    layer(x)
    assert out.shape == x.shape
    assert len(calls) == 3
    assert calls[0][3] == (2, 4, 16, 60)  # B: (batch, heads, d_state, L)
    assert set(layer.mhs._route_cache) == {((3, 4, 5), torch.device("cpu")), ((2, 4, 5), torch.device("cpu"))}
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_heads_see_different_routes() -> None:
    """Permuting the routes of a trained-free layer changes its output: routes matter."""
    torch.manual_seed(0)
    layer = MHSLayer(8, spatial_dims=2, n_heads=2)
    x = torch.randn(1, 8, 5, 6)
    with torch.no_grad():
        a = layer(x)
        layer.mhs.routes = (layer.mhs.routes[0], layer.mhs.routes[0])
        layer.mhs._route_cache.clear()
        b = layer(x)
    assert not torch.allclose(a, b)
