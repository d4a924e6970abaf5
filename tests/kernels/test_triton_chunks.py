"""The carry over chunks (triton_chunks.carry_chunks) vs a step-by-step carry: blocks in
turn and block-parallel (recursively), both directions, the adjoint Q in the same
launches, groups of chunks folded into one entry. The whole forward and backward, which
run it, are tested in test_triton.py."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from medmamba_kernels.selective_scan import triton_chunks  # noqa: E402
from medmamba_kernels.selective_scan.triton_chunks import carry_chunks  # noqa: E402
from test_triton import _fast_interpreter  # noqa: E402, F401  (fixture)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def _carry_reference(S: torch.Tensor, E: torch.Tensor, A: torch.Tensor, reverse: bool):
    """The carry scan step by step: (true states at each chunk's end, last state)."""
    out = torch.empty_like(E)
    h = torch.zeros(E.shape[0], E.shape[1], E.shape[3])
    order = range(E.shape[2] - 1, -1, -1) if reverse else range(E.shape[2])
    for c in order:
        h = torch.exp(S[:, :, c, None] * A) * h + E[:, :, c]
        out[:, :, c] = h
    return out, h


def _carried(seed: int, n_chunks: int, carry_block: int, reverse: bool, **options) -> tuple:
    """carry_chunks (with `options`) of random E, and Q the other way, the last state
    NaN-filled before: (E and Q as given, as carried and as the step-by-step carry
    wants them, then the last state carried and wanted), all on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    batch, dim, n_state = 2, 3, 5
    S = torch.rand(batch, dim, n_chunks, generator=gen) * 0.5
    E = torch.randn(batch, dim, n_chunks, n_state, generator=gen)
    Q = torch.randn(batch, dim, n_chunks, n_state, generator=gen)
    A = -torch.rand(dim, n_state, generator=gen) * 2
    want_E, want_last = _carry_reference(S, E, A, reverse)
    want_Q, _ = _carry_reference(S, Q, A, not reverse)
    # copies even on the CPU: E and Q are returned as given
    E_dev, Q_dev = E.to(DEVICE, copy=True), Q.to(DEVICE, copy=True)
    last = torch.full((batch, dim, n_state), float("nan"), device=DEVICE)
    carry_chunks(S.to(DEVICE), E_dev, A.to(DEVICE), last, carry_block, reverse, Q_dev,
                 **options)
    return (E, E_dev.cpu(), want_E, Q, Q_dev.cpu(), want_Q, last.cpu(), want_last)


def _check_carry(seed: int, n_chunks: int, carry_block: int, reverse: bool,
                 **options) -> None:
    """`_carried`'s states at every chunk and last state against the step-by-step carry."""
    _, E, want_E, _, Q, want_Q, last, want_last = _carried(seed, n_chunks, carry_block,
                                                           reverse, **options)
    for got, want in ((E, want_E), (Q, want_Q), (last, want_last)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_chunks", [1, 5, 37])
@pytest.mark.parametrize("carry_block", [1, 2, 4, 64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("parallel_from", [2, 16], ids=["parallel", "default"])
def test_carry_chunks_over_blocks(n_chunks: int, carry_block: int, reverse: bool,
                                  parallel_from: int) -> None:
    # rows of many blocks are carried block-parallel, recursively (from 2 blocks on, 37
    # chunks in blocks of 2 take six levels), the others block after block; the adjoint Q
    # flows the other way in the same launches; parallel blocks capped below the given
    # block (4 -> 2)
    parallel_block = 2 if parallel_from == 2 else triton_chunks.PARALLEL_BLOCK
    _check_carry(n_chunks * 100 + carry_block, n_chunks, carry_block, reverse,
                 parallel_from=parallel_from, parallel_block=parallel_block)


@pytest.mark.parametrize("split", [2, 4, 8])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("parallel_from", [2, 16], ids=["parallel", "default"])
def test_carry_chunks_with_states_split_over_programs(split: int, reverse: bool,
                                                      parallel_from: int) -> None:
    # 5 states padded to 8: 4 and 8 programs a row leave some with masked states, or none
    _check_carry(split * 10 + reverse, 37, 4, reverse, parallel_from=parallel_from,
                 parallel_block=4, split=split, num_warps=2)


def _flow_ends(n_chunks: int, fold: int, backwards: bool) -> list[int]:
    """The last chunk of each group of `fold` in the direction of flow, inside the row."""
    starts = range(0, n_chunks, fold)
    if backwards:
        return list(starts)
    return [c + fold - 1 for c in starts if c + fold - 1 < n_chunks]


@pytest.mark.parametrize(("n_chunks", "fold"), [(1, 3), (5, 2), (7, 3), (37, 3), (36, 4)])
@pytest.mark.parametrize("carry_block", [1, 4, 64])
@pytest.mark.parametrize("reverse", [False, True])
def test_folded_carry_writes_each_groups_flow_end(n_chunks: int, fold: int, carry_block: int,
                                                  reverse: bool) -> None:
    # groups of `fold` chunks (the last one short where fold does not divide the row)
    # scanned as one entry: the state at each group's far end in the direction of flow
    # (E forwards, Q the other way) and the last state as the step-by-step carry's, every
    # other entry left as it was
    E, got_E, want_E, Q, got_Q, want_Q, last, want_last = _carried(
        n_chunks * 10 + fold + carry_block, n_chunks, carry_block, reverse,
        split=2 if carry_block == 4 else None, fold=fold)
    torch.testing.assert_close(last, want_last, rtol=1e-5, atol=1e-5)
    for got, given, want, backwards in ((got_E, E, want_E, reverse),
                                        (got_Q, Q, want_Q, not reverse)):
        ends = _flow_ends(n_chunks, fold, backwards)  # none: one short group, forwards
        torch.testing.assert_close(got[:, :, ends], want[:, :, ends], rtol=1e-5, atol=1e-5)
        others = [c for c in range(n_chunks) if c not in ends]
        assert torch.equal(got[:, :, others], given[:, :, others])


def test_folded_carry_of_a_parallel_row_carries_every_boundary() -> None:
    # rows long enough to scan their blocks in parallel are carried unfolded: every entry
    # is the true state (the wanted ends among them)
    _check_carry(5, 37, 2, False, parallel_from=2, parallel_block=2, fold=3)


def test_carry_chunks_refuses_a_bad_fold() -> None:
    S, E, A = torch.zeros(1, 1, 4), torch.zeros(1, 1, 4, 5), torch.zeros(1, 5)
    with pytest.raises(ValueError, match="^fold: expected at least 1, got 0"):
        carry_chunks(S.to(DEVICE), E.to(DEVICE), A.to(DEVICE), None, 4, False, fold=0)


@pytest.mark.parametrize(("split", "message"), [(3, "power of two"), (16, "at most 8")])
def test_carry_chunks_refuses_a_bad_split(split: int, message: str) -> None:
    S, E, A = torch.zeros(1, 1, 4), torch.zeros(1, 1, 4, 5), torch.zeros(1, 5)
    with pytest.raises(ValueError, match=f"^split: expected .*{message}"):
        carry_chunks(S.to(DEVICE), E.to(DEVICE), A.to(DEVICE), None, 4, False, split=split)


def test_carry_blocks_grow_to_fit_the_grid(monkeypatch) -> None:
    # parallel blocks are indexed on grid axis 1 (at most 65535 on CUDA): a row of more
    # blocks than that takes larger ones (here a limit of 3: 37 chunks in blocks of 16)
    monkeypatch.setattr(triton_chunks, "_MAX_GRID_Y", 3)
    launches = []
    real = triton_chunks._carry_kernel_launcher

    class Recorder:
        def keyed(self, key, grid, tensors, build):
            launches.append(grid)
            real.keyed(key, grid, tensors, build)

    monkeypatch.setattr(triton_chunks, "_carry_kernel_launcher", Recorder())
    gen = torch.Generator().manual_seed(11)
    S = torch.rand(1, 2, 37, generator=gen) * 0.5
    E = torch.randn(1, 2, 37, 3, generator=gen)
    A = -torch.rand(2, 3, generator=gen)
    want, want_last = _carry_reference(S, E, A, False)
    E_dev, last = E.to(DEVICE), torch.empty(1, 2, 3, device=DEVICE)
    carry_chunks(S.to(DEVICE), E_dev, A.to(DEVICE), last, 2, False, parallel_from=2)
    assert max(grid[1] for grid in launches) <= 3
    torch.testing.assert_close(E_dev.cpu(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.cpu(), want_last, rtol=1e-5, atol=1e-5)
