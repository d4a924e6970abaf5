"""The eager Triton path of `selective_scan` (no torch.library dispatch) against the op.

Both run the same host functions, so results must agree exactly: outputs, last state and
every gradient, for inference and training calls, with and without autocast.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scan_cases import GRAD_NAMES, ScanCase

pytest.importorskip("triton")

from medmamba_kernels import selective_scan  # noqa: E402
from medmamba_kernels.selective_scan import interface  # noqa: E402
from test_triton import _fast_interpreter, _four_d  # noqa: E402, F401  (fixture)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
CASE = ScanCase(2, 3, 40, 4, groups=1, has_D=True, has_z=True, has_bias=True, softplus=True,
                reverse=True)


def _op(x: dict, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    args = [x[k] for k in GRAD_NAMES]
    out, last, _ = interface._scan_fwd_op(*args, True, True, "triton", training)
    return out, last


# without last_state the host function is told so (its buffer a scratch of the call)
@pytest.mark.parametrize("with_last", [True, False])
def test_inference_matches_op(with_last: bool) -> None:
    x = _four_d(CASE.inputs(DEVICE))
    with torch.no_grad():
        got = selective_scan(**x, delta_softplus=True, reverse=True,
                             return_last_state=with_last, backend="triton")
        want, want_last = _op(x)
    if with_last:
        out, last = got
        assert torch.equal(last, want_last)
    else:
        assert isinstance(got, torch.Tensor)  # out alone, not a pair
        out = got
    assert torch.equal(out, want)


@pytest.mark.parametrize(("autocast", "with_last"), [(False, True), (True, True),
                                                     (False, False)])
def test_gradients_match_op(autocast: bool, with_last: bool) -> None:
    x = _four_d(CASE.inputs(DEVICE))
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    dout = torch.randn(x["u"].shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    with torch.autocast(DEVICE, enabled=autocast):
        got = selective_scan(**leaves, delta_softplus=True, reverse=True,
                             return_last_state=with_last, backend="triton")
    out, last = got if with_last else (got, None)
    assert last is None or not last.requires_grad
    grads = torch.autograd.grad(out, list(leaves.values()), dout)
    ref_leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    want, _ = _op(ref_leaves, training=True)
    want_grads = torch.autograd.grad(want, list(ref_leaves.values()), dout)
    assert torch.equal(out, want)
    for name, g, w in zip(leaves, grads, want_grads):
        assert torch.equal(g, w), name


class _DropsGradient(torch.autograd.Function):
    """Passes its input on; its backward gives the input no gradient (None)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


class _ZeroFills(TorchDispatchMode):
    """The shapes of the tensors that ops fill with zeros while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        zeroing = packet in (torch.ops.aten.zeros, torch.ops.aten.new_zeros,
                             torch.ops.aten.zeros_like, torch.ops.aten.zero_) or (
            packet is torch.ops.aten.fill_ and args[1] == 0)
        if zeroing and isinstance(out, torch.Tensor):
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("backend", ["triton", "torch"])  # the eager Function, the op
def test_a_backward_fills_no_zero_gradient_for_the_last_state(backend: str) -> None:
    x = _four_d(CASE.inputs(DEVICE))
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    out = selective_scan(**leaves, delta_softplus=True, reverse=True, backend=backend)
    with _ZeroFills() as fills:
        out.backward(torch.ones_like(out))
    last_state_shape = (CASE.batch, CASE.dim, CASE.nstate)
    assert last_state_shape not in fills.shapes
    assert all(leaves[k].grad is not None for k in leaves)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_no_gradient_reaching_the_output_gives_no_gradients(backend: str) -> None:
    x = _four_d(CASE.inputs(DEVICE))
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    out = selective_scan(**leaves, delta_softplus=True, backend=backend)
    loss = _DropsGradient.apply(out).sum() + leaves["u"].sum()
    loss.backward()
    assert torch.equal(leaves["u"].grad, torch.ones_like(x["u"]))
    assert all(leaves[k].grad is None for k in leaves if k != "u")
