from __future__ import annotations

import pytest
import torch

import medmamba_kernels
from medmamba.networks.blocks.mamba import ChannelMajorLinear, MambaLayer, dt_rank_for
from medmamba.networks.blocks.mhs import MHSLayer


@pytest.fixture
def scan_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record every call of the kernel (and still run it)."""
    real = medmamba_kernels.selective_scan
    calls: list[dict] = []

    def counting(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        calls.append({"shapes": [tuple(a.shape) for a in args], **kwargs})
        return real(*args, **kwargs)

    monkeypatch.setattr(medmamba_kernels, "selective_scan", counting)
    return calls


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 5)], ids=["2d", "3d"])
def test_layer_calls_the_kernel(scan_calls: list[dict], shape: tuple[int, ...]) -> None:
    layer = MambaLayer(8)
    x = torch.randn(2, 8, *shape)
    out = layer(x)
    assert out.shape == x.shape
    assert len(scan_calls) == 1
    call = scan_calls[0]
    length = x[0, 0].numel()
    assert call["shapes"][0] == (2, 16, length)  # u: (batch, expand * C, L)
    assert call["shapes"][2] == (16, 16)  # A: (dim, d_state)
    assert call["delta_softplus"] is True and call["reverse"] is False
    assert call["backend"] == "auto"


@pytest.fixture
def scan_strides(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Per kernel call: the strides along L of u, delta, B, C, z (if any) and, once the
    backward ran, of the output's gradient."""
    real = medmamba_kernels.selective_scan
    calls: list[list[int]] = []

    def recording(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        z = kwargs.get("z")
        strides = [t.stride(-1) for t in (*args[:2], *args[3:5], *([z] if z is not None else []))]
        calls.append(strides)
        out = real(*args, **kwargs)
        out.register_hook(lambda grad: strides.append(grad.stride(-1)))
        return out

    monkeypatch.setattr(medmamba_kernels, "selective_scan", recording)
    return calls


@pytest.mark.parametrize(
    "layer",
    [lambda: MambaLayer(16), lambda: MambaLayer(16, bidirectional=True), lambda: MHSLayer(16, 3)],
    ids=["mamba", "bidirectional", "mhs"],
)
def test_scan_inputs_and_output_gradient_are_contiguous_along_L(scan_strides, layer) -> None:
    """The kernel reads sequences fastest contiguous along L (a training call took up to
    ~20% longer with z, delta and the output gradient token-major): the layers hand them
    over channel-major, without copies."""
    x = torch.randn(2, 16, 3, 4, 5, requires_grad=True)
    layer()(x).square().sum().backward()
    assert scan_strides and all(strides == [1] * len(strides) for strides in scan_strides)
    assert all(len(strides) >= 5 for strides in scan_strides)  # the gradient's too


@pytest.mark.parametrize("bias", [False, True])
def test_channel_major_linear_is_a_linear_over_channels(bias: bool) -> None:
    torch.manual_seed(0)
    channel_major = ChannelMajorLinear(6, 10, bias=bias)
    plain = torch.nn.Linear(6, 10, bias=bias)
    plain.load_state_dict(channel_major.state_dict())
    tokens = torch.randn(3, 7, 6, requires_grad=True)
    got = channel_major(tokens.transpose(1, 2))
    assert got.shape == (3, 10, 7) and got.is_contiguous()
    want = plain(tokens).transpose(1, 2)
    torch.testing.assert_close(got, want)
    grad = torch.randn(3, 10, 7)
    got_grads = torch.autograd.grad(got, [tokens, *channel_major.parameters()], grad)
    want_grads = torch.autograd.grad(want, [tokens, *plain.parameters()], grad)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


def test_bidirectional_uses_the_reverse_flag(scan_calls: list[dict]) -> None:
    layer = MambaLayer(8, bidirectional=True)
    layer(torch.randn(1, 8, 4, 6))
    assert sorted(call["reverse"] for call in scan_calls) == [False, True]


def test_ssm_off_never_calls_the_kernel(scan_calls: list[dict]) -> None:
    MambaLayer(8, ssm=False)(torch.randn(1, 8, 4, 6))
    assert scan_calls == []


def test_reverse_branch_sees_the_future() -> None:
    """Causality: forward layer output at token t ignores tokens > t; reverse ignores < t."""
    torch.manual_seed(0)
    for bidirectional, expect_future in ((False, False), (True, True)):
        layer = MambaLayer(4, bidirectional=bidirectional)
        x = torch.randn(1, 4, 1, 10, requires_grad=True)
        layer(x)[0, :, 0, 3].sum().backward()
        future = x.grad[0, :, 0, 4:].abs().sum().item()
        assert (future > 0) is expect_future
        assert x.grad[0, :, 0, :4].abs().sum() > 0


def test_mamba_hyperparameters() -> None:
    layer = MambaLayer(40)
    branch = layer.mamba.branches[0]
    assert dt_rank_for(40) == 3 == branch.dt_rank
    assert branch.d_inner == 80 and branch.d_state == 16 and branch.conv1d.kernel_size == (4,)
    assert torch.allclose(-torch.exp(branch.A_log[0]), -torch.arange(1.0, 17.0))
    assert torch.all(branch.D == 1)


def test_state_stays_finite_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    layer = MambaLayer(16, bidirectional=True)
    # Activations of realistic magnitude deep in a network, incl. large outliers.
    x = torch.randn(2, 16, 6, 8, 10) * 20
    x[0, :, 0, 0, 0] = 500
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for key, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key


@pytest.mark.slow
@pytest.mark.parametrize("family", ["umamba_bot", "umamba_enc", "lightm_unet", "mhs_unet"])
def test_network_compiles_as_one_graph_on_the_triton_path(monkeypatch: pytest.MonkeyPatch, family: str) -> None:
    """On a GPU the scans take the Triton backend; a graph break there would split a
    compiled network around every Mamba layer (predict --compile, train --compile).
    Without a GPU the Triton path runs in its interpreter (tests/conftest.py)."""
    from medmamba.networks import build_network
    from network_specs import tiny_kwargs

    real = medmamba_kernels.selective_scan
    monkeypatch.setattr(medmamba_kernels, "selective_scan",
                        lambda *args, **kwargs: real(*args, **{**kwargs, "backend": "triton"}))
    torch.manual_seed(0)
    network = build_network(family, deep_supervision=False, **tiny_kwargs(3)).eval()
    x = torch.randn(1, 2, 4, 8, 8)
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(network)(x)
    assert explained.graph_break_count == 0, [r.reason.splitlines()[0] for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_repeated_inference_of_a_layer_takes_the_kernel_shortcut(dtype: torch.dtype) -> None:
    # the layer passes D and dt_bias as `.float()` of fp32 Parameters: the kernel's
    # inference shortcut (medmamba_kernels' inference_shortcut.py) must still take them
    from medmamba_kernels.selective_scan import triton_fwd

    host = triton_fwd.selective_scan_fwd_triton
    host.forget()
    torch.manual_seed(0)
    layer = MambaLayer(32).cuda().eval()
    x = torch.randn(2, 32, 6, 7, 8, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        outs = [layer(x.clone()) for _ in range(4)]
    assert host.aliases and None not in host.aliases.values()
    for later in outs[1:]:
        assert torch.equal(later, outs[0])
    host.forget()
