"""Repeated inference calls of the public selective_scan run their replay directly
(kernels/selective_scan/inference_shortcut.py).

On the CPU with stand-in kernels (conftest's `launches`): the Triton forward host
function runs as on a GPU, its launches logged. From the third no-grad call of a public
signature on, the checks and the host function are skipped, and the launches are those
the recorded call made, on the new call's tensors. Anything the signature does not
cover takes the long way: another shape, stride, dtype, device or alignment, a flag, the
backend, grad mode, a tensor subclass, a normalisation that casts, replays turned off.
"""

from __future__ import annotations

import pytest
import torch

from medmamba_kernels.selective_scan import interface
from medmamba_kernels.selective_scan import launch as launch_module
from medmamba_kernels.selective_scan import triton_fwd
from replay_launch_log import assert_same_launches, calls_on_fresh_arguments, canonical_launches

N_STATE = 4


@pytest.fixture
def checks(launches, monkeypatch) -> list:
    """The Triton backend allowed on CPU tensors; a log of the calls that were checked
    (the long way), the launch log beside it."""
    checked: list = []
    real = interface.check_and_normalise

    def counted(*args):
        checked.append(args)
        return real(*args)

    monkeypatch.setattr(interface, "_require_triton", lambda device: None)
    monkeypatch.setattr(interface, "check_and_normalise", counted)
    monkeypatch.setattr(interface, "_SHORTCUTS", interface.InferenceShortcuts())
    return checked


def _inputs(seed: int, dtype=torch.float32, grouped: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch, dim, length = 2, 8, 40
    bc_shape = (batch, 2, N_STATE, length) if grouped else (batch, N_STATE, length)
    x = {name: torch.randn(*shape, generator=g).to(dtype) for name, shape in (
        ("u", (batch, dim, length)), ("delta", (batch, dim, length)), ("B", bc_shape),
        ("C", bc_shape), ("z", (batch, dim, length)))}
    x.update(A=-torch.rand(dim, N_STATE, generator=g), D=torch.randn(dim, generator=g),
             delta_bias=torch.randn(dim, generator=g))
    return x


def _infer(**kwargs):
    with torch.no_grad():
        return interface.selective_scan(**kwargs, delta_softplus=True, backend="triton")


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("last_state", [False, True])
def test_repeated_inference_calls_run_the_recorded_launches_unchecked(
        checks, launches, grouped, last_state) -> None:
    def make_args(seed):
        return (), {**_inputs(seed, grouped=grouped), "return_last_state": last_state}

    calls = calls_on_fresh_arguments(_infer, launches, make_args, n=4)
    assert len(checks) == 2  # the first sighting runs, the second records; then shortcuts
    (_, _, _, first), recorded, shortcut, again = calls
    assert recorded[0] and all(entry[0] == "run" for entry in recorded[0])
    for call in (shortcut, again):
        assert_same_launches(canonical_launches(*call[:3]), canonical_launches(*recorded[:3]))
        got = call[3] if last_state else (call[3],)
        want = first if last_state else (first,)
        assert [(t.shape, t.stride(), t.dtype) for t in got] == [
            (t.shape, t.stride(), t.dtype) for t in want]


def _changed(x: dict, what: str) -> dict:
    x = dict(x)
    if what == "stride":
        x["u"] = torch.cat([x["u"], x["u"]], dim=-1)[..., : x["u"].shape[-1]]
    elif what == "shape":
        x = _inputs(9)
        x["u"], x["delta"], x["z"] = (t[:1] for t in (x["u"], x["delta"], x["z"]))
        x["B"], x["C"] = x["B"][:1], x["C"][:1]
    elif what == "alignment":
        x["z"] = torch.randn(x["z"].numel() + 1)[1:].view_as(x["z"])
    elif what == "absent D":
        x["D"] = None
    elif what == "reverse":
        x["reverse"] = True
    elif what == "dtype":
        x.update({k: x[k].bfloat16() for k in ("u", "delta", "z", "B", "C")})
    elif what == "B stride":
        x["B"] = torch.cat([x["B"], x["B"]], dim=-1)[..., : x["B"].shape[-1]]
    elif what == "Parameter u":
        x["u"] = torch.nn.Parameter(x["u"], requires_grad=False)
    elif what == "subclass z":
        x["z"] = x["z"].as_subclass(_Marked)
    return x


class _Marked(torch.Tensor):
    """A tensor subclass (its torch function runs): never shortcut."""


@pytest.mark.parametrize("what", ["stride", "shape", "alignment", "absent D", "reverse",
                                  "dtype", "B stride", "Parameter u", "subclass z"])
def test_a_call_the_signature_does_not_cover_is_checked(checks, launches, what) -> None:
    for seed in range(3):
        _infer(**_inputs(seed))
    assert len(checks) == 2
    _infer(**_changed(_inputs(5), what))
    assert len(checks) == 3


def test_flags_of_another_type_and_other_backends_are_checked(checks, launches) -> None:
    for seed in range(3):
        _infer(**_inputs(seed))
    with pytest.raises(TypeError, match="reverse: expected a bool, got int"):
        _infer(**_inputs(3), reverse=0)
    assert len(checks) == 3
    with torch.no_grad():
        interface.selective_scan(**_inputs(4), delta_softplus=True, backend="torch")
    assert len(checks) == 4


def test_grad_mode_and_replays_off_take_the_long_way(checks, launches) -> None:
    for seed in range(3):
        _infer(**_inputs(seed))
    assert len(checks) == 2
    interface.selective_scan(**_inputs(3), delta_softplus=True, backend="triton")
    assert len(checks) == 3  # grad mode on: not an inference call, even without leaves
    triton_fwd.selective_scan_fwd_triton.enabled = False
    try:
        _infer(**_inputs(4))
    finally:
        triton_fwd.selective_scan_fwd_triton.enabled = True
    assert len(checks) == 4
    _infer(**_inputs(5))
    assert len(checks) == 4


def test_a_launch_hook_takes_the_long_way(checks, launches, monkeypatch) -> None:
    for seed in range(3):
        _infer(**_inputs(seed))
    monkeypatch.setattr(launch_module, "launch_hooks_installed", lambda runtime=None: True)
    _infer(**_inputs(3))
    assert len(checks) == 3


def test_a_normalisation_that_casts_is_never_shortcut(checks, launches) -> None:
    # D in bf16 is cast to fp32 by the normalisation: the host function sees another tensor
    for seed in range(4):
        _infer(**{**_inputs(seed), "D": torch.randn(8).bfloat16()})
    assert len(checks) == 4


def test_parameters_as_a_layer_passes_them_are_shortcut(checks, launches) -> None:
    # the Mamba block passes D=self.D.float() and delta_bias=self.dt_bias.float(): the
    # fp32 Parameters themselves
    def parameters(seed: int) -> dict:
        x = _inputs(seed)
        for name in ("D", "delta_bias"):
            x[name] = torch.nn.Parameter(x[name]).float()
        return x

    for seed in range(4):
        _infer(**parameters(seed))
    assert type(parameters(0)["D"]) is torch.nn.Parameter
    assert len(checks) == 2


def test_another_current_device_takes_the_long_way(checks, launches, monkeypatch) -> None:
    for seed in range(3):
        _infer(**_inputs(seed))
    monkeypatch.setattr(launch_module, "current_device", lambda tensor: 1)
    _infer(**_inputs(3))
    assert len(checks) == 3


def test_other_backends_never_read_the_tensors(checks, launches) -> None:
    # vmap's batched tensors have no storage (data_ptr raises): the torch backend must
    # run them whatever the shortcut has learnt
    for seed in range(3):
        _infer(**_inputs(seed))
    x = {k: v[:1] if k in ("u", "delta", "B", "C") else v
         for k, v in _inputs(3).items() if k in ("u", "delta", "A", "B", "C")}

    def one(u: torch.Tensor) -> torch.Tensor:
        return interface.selective_scan(**{**x, "u": u[None]}, delta_softplus=True,
                                        backend="torch")[0]

    with torch.no_grad():
        batched = torch.func.vmap(one)(x["u"].expand(3, -1, -1))
        alone = interface.selective_scan(**x, delta_softplus=True, backend="torch")
    assert torch.allclose(batched[1], alone[0], rtol=1e-5, atol=1e-6)


def test_a_host_function_without_replays_is_never_learnt(checks, launches,
                                                        monkeypatch) -> None:
    outputs = (torch.zeros(2, 8, 40), torch.zeros(2, 8, N_STATE))
    monkeypatch.setattr(interface, "_triton_host_functions",
                        lambda: (lambda *args, **options: outputs, None))
    for seed in range(4):
        assert _infer(**_inputs(seed)) is outputs[0]
    assert len(checks) == 4
