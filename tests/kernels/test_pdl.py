"""Programmatic dependent launch (pdl.py): off where it cannot run, and on the GPU the
scan's chains of launches give the same results launched as they are, replayed from a
CUDA graph (which turns them into programmatic edges) and behind a torch kernel that
writes their input just before them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from medmamba_kernels.selective_scan.pdl import pdl_options  # noqa: E402
from medmamba_kernels.selective_scan.triton_bwd import selective_scan_bwd_triton  # noqa: E402
from medmamba_kernels.selective_scan.triton_fwd import selective_scan_fwd_triton  # noqa: E402

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_no_pdl_for_cpu_tensors() -> None:
    # the interpreter's tensors (and any CPU tensor) launch plainly
    assert pdl_options(torch.zeros(1)) == {}


@gpu
@pytest.mark.gpu
def test_pdl_where_the_gpu_has_it() -> None:
    t = torch.zeros(1, device="cuda")
    hopper = torch.cuda.get_device_capability()[0] >= 9
    assert pdl_options(t) == ({"PDL": True, "launch_pdl": True} if hopper else {})


def _inputs(batch: int, dim: int, length: int, seed: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, device="cuda", generator=g) * scale

    return dict(u=rnd(batch, dim, length), delta=rnd(batch, dim, length, scale=0.5),
                A=-torch.exp(torch.rand(dim, 16, device="cuda", generator=g) * 2.0),
                B=rnd(batch, 1, 16, length), C=rnd(batch, 1, 16, length), D=rnd(dim),
                z=rnd(batch, dim, length), delta_bias=rnd(dim, scale=0.5) - 1.0)


def _training_call(x: dict, dout: torch.Tensor) -> list[torch.Tensor]:
    flags = dict(delta_softplus=True, reverse=False)
    out, last, states = selective_scan_fwd_triton(**x, **flags, keep_states=True)
    grads = selective_scan_bwd_triton(dout, **x, **flags, states=states)
    return [out, last, *grads]


# (2, 64, 16384): the "serial" chain (aggregate, carry, output; serial boundaries, main
# kernel); (2, 8, 3000): the tile kernels' chain (deferred forward, tile boundaries)
SHAPES = [(2, 64, 16384), (2, 8, 3000)]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=["serial", "tile"])
def test_graph_replay_matches_eager(shape: tuple[int, int, int]) -> None:
    static = _inputs(*shape, seed=0)
    dout = torch.randn(shape, device="cuda")
    _training_call(static, dout)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _training_call(static, dout)
    fresh = _inputs(*shape, seed=1)
    for name, value in fresh.items():
        static[name].copy_(value)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, _training_call(fresh, dout)):
        if want is not None:
            assert torch.equal(got, want)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=["serial", "tile"])
def test_input_written_just_before(shape: tuple[int, int, int]) -> None:
    # the first kernel of the chain must wait for the torch kernel writing u (a large
    # elementwise op, still running when the scan's first launch is queued)
    x = _inputs(*shape, seed=2)
    dout = torch.randn(shape, device="cuda")
    base = x["u"].clone()
    want = _training_call({**x, "u": base * 3.0}, dout)
    torch.cuda.synchronize()
    for _ in range(3):
        x["u"] = torch.mul(base, 3.0)
        got = _training_call(x, dout)
        for g, w in zip(got, want):
            if w is not None:
                assert torch.equal(g, w)
