"""The carried walk over a short row's chunks (triton_chunks_carried) against the two-launch
aggregate and carry (triton_chunks.chunk_boundary_states) and against the states the
reference scan passes at each chunk's end: forward states, the adjoint's, both, the last
state; reverse, z, bias, softplus, groups, strided inputs, a partial last chunk, bf16 and fp16.
The whole backward, which runs it, is tested in test_triton.py and test_triton_bwd_options.py."""

from __future__ import annotations

import pytest
import torch

from scan_cases import ScanCase

pytest.importorskip("triton")

from medmamba_kernels.selective_scan import triton_chunks_carried  # noqa: E402
from medmamba_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402
from medmamba_kernels.selective_scan.triton_chunks import chunk_boundary_states  # noqa: E402
from medmamba_kernels.selective_scan.triton_chunks_carried import (  # noqa: E402
    carried_boundary_states)
from medmamba_kernels.selective_scan.triton_common import plan_launch  # noqa: E402
from test_triton import DEVICE, _fast_interpreter, _four_d  # noqa: E402, F401  (fixture)

CHUNK = 16
CASES = [
    ScanCase(1, 3, 64, 4),
    ScanCase(2, 4, 71, 5, has_z=True, has_bias=True, softplus=True),  # a partial chunk
    ScanCase(2, 4, 71, 5, has_z=True, has_bias=True, softplus=True, reverse=True),
    ScanCase(1, 6, 100, 16, groups=3, has_z=True),
    ScanCase(1, 4, 48, 4, dtype=torch.bfloat16, has_z=True, softplus=True),
    ScanCase(2, 3, 40, 4, dtype=torch.float16, has_bias=True, reverse=True),  # "auto": as bf16
    ScanCase(1, 2, 256, 3, has_bias=True, reverse=True),  # 16 chunks
]


@pytest.fixture(autouse=True)
def _nan_filled_allocations(monkeypatch):
    """Every float allocation starts as NaN: a state the walk leaves unwritten shows."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(triton_chunks_carried.torch, "empty", empty)


def _inputs(case: ScanCase, strided: bool) -> tuple[dict, torch.Tensor, dict]:
    x = _four_d(case.inputs(DEVICE))
    if strided:  # u and delta read with a position stride of 2
        for name in ("u", "delta"):
            x[name] = torch.stack([x[name], x[name]], dim=-1)[..., 0]
    gen = torch.Generator().manual_seed(case.length)
    dout = torch.randn(x["u"].shape, generator=gen).to(x["u"].dtype).to(DEVICE)
    return x, dout, {"delta_softplus": case.softplus, "reverse": case.reverse}


def _both(case: ScanCase, x: dict, dout: torch.Tensor, flags: dict, forward: bool,
          adjoint: bool):
    batch, dim, length = x["u"].shape
    plan = plan_launch(batch, dim, x["B"].shape[1], length, chunk=CHUNK, backward=True)
    args = (x["u"], x["delta"], x["z"], dout, x["A"], x["B"], x["C"], x["delta_bias"],
            flags["delta_softplus"], flags["reverse"], plan)
    lasts = [torch.full((batch, dim, case.nstate), float("nan"), device=DEVICE)
             for _ in range(2)]
    got = carried_boundary_states(*args, forward=forward, adjoint=adjoint,
                                  last_state=lasts[0] if forward else None)
    want = chunk_boundary_states(*args, forward=forward, adjoint=adjoint,
                                 last_state=lasts[1] if forward else None)
    return got, want, lasts


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_carried_walk_matches_the_aggregate_and_carry(case: ScanCase, strided: bool) -> None:
    x, dout, flags = _inputs(case, strided)
    (H, Q), (want_H, want_Q), (last, want_last) = _both(case, x, dout, flags, True, True)
    tol = 1e-5 if case.dtype == torch.float32 else 1e-4  # fp32 sums of the same loads
    for got, want in ((H, want_H), (Q, want_Q), (last, want_last)):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("forward, adjoint", [(True, False), (False, True)])
def test_carried_walk_of_one_kind_alone(forward: bool, adjoint: bool) -> None:
    case = CASES[2]
    x, dout, flags = _inputs(case, False)
    (H, Q), (want_H, want_Q), (last, want_last) = _both(case, x, dout, flags, forward,
                                                        adjoint)
    assert (H is None) != forward and (Q is None) != adjoint
    for got, want in ((H, want_H), (Q, want_Q)):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if forward:
        torch.testing.assert_close(last, want_last, rtol=1e-5, atol=1e-5)
    else:
        assert last.isnan().all()  # not asked: left alone


@pytest.mark.parametrize("case", CASES[1:3], ids=lambda c: c.id)
def test_carried_forward_states_are_the_reference_scans_states(case: ScanCase) -> None:
    # the true state at each chunk's end in scan order: the reference's last state of the
    # row cut there (reverse: the row's tail from the chunk's first position)
    x, dout, flags = _inputs(case, False)
    (H, _), _, _ = _both(case, x, dout, flags, True, False)
    length = x["u"].shape[-1]
    for c in range(H.shape[2]):
        start, end = c * CHUNK, min((c + 1) * CHUNK, length)
        part = slice(start, None) if case.reverse else slice(0, end)
        cut = {k: (v[..., part] if k in ("u", "delta", "z", "B", "C") and v is not None
                   else v) for k, v in x.items()}
        _, want = selective_scan_reference(**cut, **flags, return_last_state=True)
        torch.testing.assert_close(H[:, :, c], want.float(), rtol=1e-4, atol=1e-4)


def test_auto_takes_the_walk_for_many_rows_of_few_chunks() -> None:
    from medmamba_kernels.selective_scan import bwd_options

    def boundary(sequences: int, n_chunks: int, dtype: torch.dtype) -> str:
        return bwd_options.auto_boundary(sequences, 64 * n_chunks, 512, dtype, n_chunks)

    assert bwd_options.auto_boundary(1024, 512, 512, torch.float32, 8) == "carried"  # row 4
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert boundary(512, 8, dtype) == "carried"
        # too few rows to hide the walk's latency (measured: 48 rows)
        assert boundary(511, 8, dtype) == "tile"
    # 9-16 chunks: faster in 2-byte inputs on 1024 rows, slower in fp32; 32: slower
    assert boundary(1024, 16, torch.bfloat16) == boundary(1024, 16, torch.float16) == "carried"
    assert boundary(1024, 9, torch.float32) == boundary(1024, 17, torch.bfloat16) == "tile"
    assert boundary(1023, 16, torch.bfloat16) == "tile"


def test_the_forward_walks_its_chunks_of_128_by_its_own_limit() -> None:
    walk_pays = triton_chunks_carried.walk_pays
    for element_size in (4, 2):
        assert walk_pays(1024, 6, False, element_size)
        # 8 chunks: mixed; 12 or more: slower; 256 rows: slower
        assert not walk_pays(1024, 7, False, element_size)
        assert not walk_pays(1023, 6, False, element_size)
