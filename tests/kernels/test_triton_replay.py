"""Replayed host functions (replay.py) on the GPU: from the third call of a signature on,
the forward and backward make their recorded allocations and launches directly, and give
bit for bit what the host functions compute themselves. The production paths (inference
forward, training forward keeping states, backward from them) must be replayable. Under
Triton's interpreter nothing is compiled, so nothing is replayed: GPU only."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from medmamba_kernels import selective_scan  # noqa: E402
from medmamba_kernels.selective_scan import triton_bwd, triton_fwd  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="replays need compiled kernels: the GPU runs these")

FWD = triton_fwd.selective_scan_fwd_triton
BWD = triton_bwd.selective_scan_bwd_triton

# (batch, dim, L, dtype, groups, optional inputs, reverse): "serial" of several chunks,
# "deferred", "rows", "chunked", one chunk, grouped, reversed, without D/z/bias
CASES = [
    (2, 64, 4096, torch.float32, 1, True, False),
    (2, 64, 4096, torch.bfloat16, 1, True, True),
    (1, 32, 1000, torch.float32, 2, False, False),
    (2, 64, 300, torch.bfloat16, 1, True, False),
    (2, 16, 3000, torch.bfloat16, 2, True, True),
    (1, 8, 50, torch.float32, 1, True, False),
]


def _inputs(batch, dim, length, dtype, groups, optional, reverse, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(dt)

    return dict(u=rnd(batch, dim, length), delta=rnd(batch, dim, length, scale=0.5),
                A=-torch.exp(rnd(dim, 16, scale=0.5, dt=torch.float32)),
                B=rnd(batch, groups, 16, length), C=rnd(batch, groups, 16, length),
                D=rnd(dim, dt=torch.float32) if optional else None,
                z=rnd(batch, dim, length) if optional else None,
                delta_bias=rnd(dim, scale=0.3, dt=torch.float32) if optional else None,
                delta_softplus=True, reverse=reverse)


def _assert_identical(got, want) -> None:
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if w is not None:
            assert g.shape == w.shape and g.dtype == w.dtype and g.stride() == w.stride()
            assert torch.equal(g, w)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_replayed_forward_and_backward_give_what_the_host_functions_give(case) -> None:
    x = _inputs(*case)
    dout = torch.randn_like(x["u"])
    FWD.enabled = BWD.enabled = False
    try:
        want_fwd = FWD(**x)
        want_train = FWD(**x, keep_states=True)
        want_bwd = BWD(dout, **x, states=want_train[2])
    finally:
        FWD.enabled = BWD.enabled = True
    for _ in range(3):
        got_fwd = FWD(**x)
        got_train = FWD(**x, keep_states=True)
        got_bwd = BWD(dout, **x, states=got_train[2])
    assert len(FWD.records) == 2 and None not in FWD.records.values()
    assert len(BWD.records) == 1 and None not in BWD.records.values()
    _assert_identical(got_fwd, want_fwd)
    _assert_identical(got_train, want_train)
    _assert_identical(got_bwd, want_bwd)


def _storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if t is not None}


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3]],
                         ids=lambda c: "-".join(map(str, c)))
def test_replayed_gradients_that_share_storage_are_the_same(case) -> None:
    x = _inputs(*case)
    dout = torch.randn_like(x["u"])
    FWD.enabled = BWD.enabled = False
    try:
        states = FWD(**x, keep_states=True)[2]
        want = BWD(dout, **x, states=states)
    finally:
        FWD.enabled = BWD.enabled = True
    for _ in range(3):
        got = BWD(dout, **x, states=states, gradients_share_storage=True)
    assert None not in BWD.records.values()
    _assert_identical(got, want)
    du, ddelta, dA, dB, dC, dD, dz, dbias = got
    activations = [g for g in (du, ddelta, dB, dC, dz) if g is not None]
    assert len(_storages(activations)) == len(activations)  # each apart
    assert len(_storages([dA, dD, dbias])) == 1
    assert all(g.data_ptr() % 16 == 0 for g in got if g is not None)


def test_training_steps_through_the_public_function_are_replayed() -> None:
    x = _inputs(2, 64, 4096, torch.bfloat16, 1, True, False)
    flags = {k: x.pop(k) for k in ("delta_softplus", "reverse")}
    leaves = {k: v.detach().requires_grad_() for k, v in x.items()}
    grads = []
    for _ in range(4):
        out = selective_scan(**leaves, **flags)
        out.float().square().sum().backward()
        grads.append([leaves[k].grad.clone() for k in leaves])
        shared = _storages([leaves[k].grad for k in ("A", "D", "delta_bias")])
        for v in leaves.values():
            v.grad = None
    assert None not in FWD.records.values() and None not in BWD.records.values()
    assert len(shared) == 1  # the replayed backward's parameters' gradients: one buffer
    for later in grads[1:]:
        _assert_identical(later, grads[0])


@pytest.mark.parametrize("last_state", [False, True])
@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: "-".join(map(str, c)))
def test_repeated_public_inference_calls_take_the_shortcut_bit_for_bit(
        case, last_state, monkeypatch) -> None:
    # inference_shortcut.py: from the third no-grad call on, the public signature runs the
    # forward's replay directly (the checks not called), on each call's own tensors (fresh
    # copies each call), B and C given 3-D (unsqueezed views on the long way)
    from medmamba_kernels.selective_scan import interface

    checked = []
    real = interface.check_and_normalise
    monkeypatch.setattr(interface, "check_and_normalise",
                        lambda *args: checked.append(1) or real(*args))
    x = _inputs(*case)
    if x["B"].shape[1] == 1:
        x["B"], x["C"] = x["B"][:, 0], x["C"][:, 0]
    with torch.no_grad():
        calls = [selective_scan(**{k: v.clone() if torch.is_tensor(v) else v
                                   for k, v in x.items()}, return_last_state=last_state)
                 for _ in range(4)]
    assert len(checked) == 2 and FWD.aliases and None not in FWD.aliases.values()
    for later in calls[1:]:
        _assert_identical(later if last_state else (later,),
                          calls[0] if last_state else (calls[0],))
