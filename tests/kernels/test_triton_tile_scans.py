"""The tile scans (triton_tile_scans.py) against plain loops: the tile scan both ways,
over chunk lengths that take its in-register path and those that do not, and the
backward's adjoint scan from unshifted decays, each by groups of 4 and 8 positions."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from medmamba_kernels.selective_scan.triton_tile_scans import (  # noqa: E402
    _adjoint_scan_by_groups,
    _scan_tile,
)
from test_triton import _fast_interpreter  # noqa: E402, F401  (fixture)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


@triton.jit
def _scan_tile_kernel(a_ptr, b_ptr, h_ptr, NP: tl.constexpr, CHUNK: tl.constexpr,
                      REVERSE: tl.constexpr, K: tl.constexpr):
    offs = tl.arange(0, NP)[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
    h = _scan_tile(tl.load(a_ptr + offs), tl.load(b_ptr + offs), NP, CHUNK, REVERSE, K)
    tl.store(h_ptr + offs, h)


@triton.jit
def _adjoint_scan_kernel(d_ptr, c_ptr, g_ptr, NP: tl.constexpr, CHUNK: tl.constexpr,
                         REVERSE: tl.constexpr, K: tl.constexpr):
    offs = tl.arange(0, NP)[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
    g = _adjoint_scan_by_groups(tl.load(d_ptr + offs), tl.load(c_ptr + offs), NP, CHUNK,
                                REVERSE, K)
    tl.store(g_ptr + offs, g)


def _scan_reference(a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
    h = torch.empty_like(b)
    state = torch.zeros(b.shape[0], dtype=torch.float64)
    steps = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    for t in steps:
        state = a[:, t].double() * state + b[:, t].double()
        h[:, t] = state.float()
    return h


@pytest.mark.parametrize("chunk", [1, 2, 4, 8, 64, 128])
@pytest.mark.parametrize("n_rows", [1, 16])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("group", [4, 8])
def test_scan_tile_matches_a_loop(chunk: int, n_rows: int, reverse: bool, group: int) -> None:
    gen = torch.Generator().manual_seed(chunk * 10 + n_rows)
    # decays in (0, 1] with some exact zeros: a zero cuts the recurrence, so a position
    # must not see anything from beyond it
    a = torch.rand(n_rows, chunk, generator=gen)
    a[torch.rand(n_rows, chunk, generator=gen) < 0.1] = 0.0
    b = torch.randn(n_rows, chunk, generator=gen)
    h = torch.full_like(b, float("nan"), device=DEVICE)
    _scan_tile_kernel[(1,)](a.to(DEVICE), b.to(DEVICE), h, n_rows, chunk, reverse, group)
    torch.testing.assert_close(h.cpu(), _scan_reference(a, b, reverse), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [4, 8, 64, 128])
@pytest.mark.parametrize("n_rows", [1, 16])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("group", [4, 8])
def test_adjoint_scan_takes_each_successors_decay(chunk: int, n_rows: int, reverse: bool,
                                                  group: int) -> None:
    # forward order: g_t = d_(t+1) g_(t+1) + c_t, the reverse scan of (d shifted by one,
    # 1 at the end); under reverse the mirror image
    gen = torch.Generator().manual_seed(chunk * 10 + n_rows + 1)
    d = torch.rand(n_rows, chunk, generator=gen)
    d[torch.rand(n_rows, chunk, generator=gen) < 0.1] = 0.0
    c = torch.randn(n_rows, chunk, generator=gen)
    ones = torch.ones(n_rows, 1)
    if reverse:
        successor_decay = torch.cat([ones, d[:, :-1]], dim=1)
    else:
        successor_decay = torch.cat([d[:, 1:], ones], dim=1)
    g = torch.full_like(c, float("nan"), device=DEVICE)
    _adjoint_scan_kernel[(1,)](d.to(DEVICE), c.to(DEVICE), g, n_rows, chunk, reverse, group)
    torch.testing.assert_close(g.cpu(), _scan_reference(successor_decay, c, not reverse),
                               rtol=1e-5, atol=1e-5)
