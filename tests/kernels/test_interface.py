"""Public interface: argument checks, backend choice, custom op under torch.compile and
autocast, layouts and sizes the grid does not cover."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import medmamba_kernels
from medmamba_kernels import Backend, BackendUnavailableError, selective_scan
from medmamba_kernels.selective_scan import interface
from scan_cases import ScanCase


def _inputs(**kw) -> dict:
    return ScanCase(2, 4, 9, 3, has_D=True, has_z=True, has_bias=True, **kw).inputs()


BAD_ARGUMENTS = {
    "u-ndim": ("u", lambda x: x["u"][0], ValueError),
    "u-dtype": ("u", lambda x: x["u"].to(torch.int32), TypeError),
    "u-complex": ("u", lambda x: torch.complex(x["u"], x["u"]), TypeError),
    "u-type": ("u", lambda x: x["u"].numpy(), TypeError),
    "delta-shape": ("delta", lambda x: x["delta"][..., :-1], ValueError),
    "delta-dtype": ("delta", lambda x: x["delta"].half(), TypeError),
    "A-shape": ("A", lambda x: x["A"][:-1], ValueError),
    "A-complex": ("A", lambda x: torch.complex(x["A"], x["A"]), TypeError),
    "B-shape": ("B", lambda x: x["B"][:, :-1], ValueError),
    "B-groups": ("B", lambda x: x["B"][:, None].expand(-1, 3, -1, -1), ValueError),
    "B-ndim": ("B", lambda x: x["B"][0], ValueError),
    "B-dtype": ("B", lambda x: x["B"].double(), TypeError),
    "C-shape": ("C", lambda x: x["C"][..., :-1], ValueError),
    "C-groups-differ": ("C", lambda x: x["C"][:, None].expand(-1, 2, -1, -1), ValueError),
    "D-shape": ("D", lambda x: x["D"][:-1], ValueError),
    "z-shape": ("z", lambda x: x["z"][:1], ValueError),
    "delta_bias-shape": ("delta_bias", lambda x: x["delta_bias"][None], ValueError),
    "delta_bias-device": ("delta_bias", lambda x: x["delta_bias"].to("meta"), ValueError),
}


@pytest.mark.parametrize("key", list(BAD_ARGUMENTS))
def test_bad_argument_named_in_error(key: str) -> None:
    name, corrupt, error = BAD_ARGUMENTS[key]
    x = _inputs()
    x[name] = corrupt(x)
    with pytest.raises(error, match=f"^{name}: expected"):
        selective_scan(**x, backend="torch")


def test_bad_flags_and_backend() -> None:
    x = _inputs()
    with pytest.raises(TypeError, match="^reverse: expected a bool"):
        selective_scan(**x, reverse=1)
    with pytest.raises(ValueError, match="did you mean 'triton'"):
        selective_scan(**x, backend="trition")
    assert Backend.parse("TORCH") is Backend.TORCH


def test_triton_without_package_is_an_error_with_hint(monkeypatch) -> None:
    real = interface.importlib.util.find_spec
    monkeypatch.setattr(interface.importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else real(name, *a))
    with pytest.raises(BackendUnavailableError, match="pip install triton.*backend='torch'"):
        selective_scan(**_inputs(), backend="triton")


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.setattr(interface, "_triton_interpreter_on", lambda: False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1.*backend='torch'"):
        selective_scan(**_inputs(), backend="triton")


def test_auto_on_cpu_is_torch_and_float64_only_there() -> None:
    assert interface._resolve(Backend.AUTO, torch.device("cpu")) is Backend.TORCH
    x = _inputs()
    torch.testing.assert_close(selective_scan(**x), selective_scan(**x, backend="torch"))
    x64 = {k: v.double() for k, v in x.items()}
    with pytest.raises(TypeError, match="^u: float64"):
        selective_scan(**x64, backend="triton")


def test_package_import_does_not_import_triton() -> None:
    code = "import sys, medmamba_kernels; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert medmamba_kernels.selective_scan is selective_scan


def test_last_state_carries_no_gradient() -> None:
    x = {k: v.requires_grad_() for k, v in _inputs().items()}
    out, last = selective_scan(**x, return_last_state=True, backend="torch")
    assert out.requires_grad and not last.requires_grad
    assert last.shape == (2, 4, 3) and last.dtype == torch.float32


def test_non_contiguous_inputs() -> None:
    x = _inputs(groups=2)
    strided = {
        k: None if v is None else v.transpose(-1, -2).contiguous().transpose(-1, -2)
        if v.dim() >= 2 else v
        for k, v in x.items()
    }
    strided["u"] = torch.randn(2, 4, 18)[..., ::2].copy_(x["u"])
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    torch.testing.assert_close(selective_scan(**strided, backend="torch"),
                               selective_scan(**x, backend="reference"))


def test_many_channels() -> None:
    """batch*dim beyond 65,535 (a CUDA grid limit) on the torch path."""
    x = ScanCase(2, 33000, 3, 1, has_D=True).inputs()
    torch.testing.assert_close(selective_scan(**x, backend="torch"),
                               selective_scan(**x, backend="reference"))


class _TinyMamba(torch.nn.Module):
    def __init__(self, dim: int = 4, nstate: int = 3, backend: str = "torch") -> None:
        super().__init__()
        self.backend = backend
        self.proj = torch.nn.Linear(dim, 3 * dim + 2 * nstate)
        self.A_log = torch.nn.Parameter(torch.randn(dim, nstate) * 0.3)
        self.D = torch.nn.Parameter(torch.ones(dim))
        self.dim, self.nstate = dim, nstate

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, L, dim)
        d, n = self.dim, self.nstate
        u, delta, z, B, C = self.proj(x).transpose(1, 2).split([d, d, d, n, n], dim=1)
        return selective_scan(u, delta, -torch.exp(self.A_log), B, C, self.D, z,
                              delta_softplus=True, reverse=True, backend=self.backend)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_fullgraph_with_backward(backend: str) -> None:
    """One graph for either backend: on a GPU the networks' scans are Triton's, and a
    break there splits every compiled network around its Mamba layers."""
    torch.manual_seed(0)
    model = _TinyMamba(backend=backend)
    x = torch.randn(2, 11, 4)
    eager = model(x)
    (grad_eager,) = torch.autograd.grad(eager.sum(), model.A_log)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.sum(), model.A_log)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad, grad_eager)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backward_op_outputs_share_no_memory(backend: str) -> None:
    # the Triton backward sums dA, dD and ddelta_bias (and dB, dC of several channel
    # blocks) in one tensor; a custom op's outputs must not alias one another
    torch.manual_seed(0)
    b, d, n, length = 2, 4, 3, 40
    u, delta, z, dout = (torch.randn(b, d, length) for _ in range(4))
    B, C = torch.randn(b, 1, n, length), torch.randn(b, 1, n, length)
    A, D, bias = -torch.rand(d, n) - 0.5, torch.randn(d), torch.randn(d)
    grads = torch.ops.medmamba.selective_scan_bwd(dout, u, delta, A, B, C, D, z, bias,
                                                  True, False, backend)
    storages = [g.untyped_storage().data_ptr() for g in grads]
    assert len(set(storages)) == len(grads)
    want = torch.ops.medmamba.selective_scan_bwd(dout, u, delta, A, B, C, D, z, bias,
                                                 True, False, "torch")
    for got, expected in zip(grads, want):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_torch_compile_does_not_recompile_on_repeated_calls() -> None:
    """The eager path remembers checked argument metadata; a compiled graph must not guard
    on that memory, or every new shape would compile the caller's whole frame twice."""
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    model = _TinyMamba()
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counter)
    for length in (13, 13, 13, 17, 17):  # shapes no other test has checked
        compiled(torch.randn(2, length, 4))
    # one graph for L=13, one (dynamic) for L=17; a guard on the memory adds more
    assert counter.frame_count <= 2, counter.frame_count


@pytest.mark.slow
def test_torch_compile_inductor_inference() -> None:
    """Inductor keeps the op in its graph (C++ codegen for the rest: slow on 2 cores, so
    inference only; the backward graph is covered with aot_eager above)."""
    torch.manual_seed(0)
    model = _TinyMamba()
    x = torch.randn(2, 11, 4)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(x)
        out = torch.compile(model, fullgraph=True, backend="inductor")(x)
    torch.testing.assert_close(out, eager)


def test_fake_tensor_shapes() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = ScanCase(2, 4, 9, 3, groups=2).inputs()
        out, last = selective_scan(**x, return_last_state=True, backend="torch")
    assert out.shape == (2, 4, 9) and last.shape == (2, 4, 3) and last.dtype == torch.float32


def test_autocast_bf16_runs_on_input_dtype_and_stays_finite() -> None:
    torch.manual_seed(0)
    model = _TinyMamba()
    x = torch.randn(2, 300, 4) * 3
    want = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x)
        # mixed dtypes as autocast makes them: delta in fp32 beside bf16 u
        mixed = _inputs(dtype=torch.bfloat16)
        mixed["delta"] = mixed["delta"].float()
        mixed_out = selective_scan(**mixed, backend="torch")
    assert got.dtype == torch.bfloat16 and mixed_out.dtype == torch.bfloat16
    assert torch.isfinite(got).all() and torch.isfinite(mixed_out).all()
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()
