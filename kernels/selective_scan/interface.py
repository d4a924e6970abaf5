"""Public entry of the selective scan: checks, normalisation, dispatch, torch.library op.

Layers (STYLE.md): `selective_scan` checks every argument (errors name the argument and
the expected vs got shape/dtype/device) and normalises -> the custom op
`medmamba::selective_scan_fwd` (autograd registered; backward is the op
`medmamba::selective_scan_bwd`) -> host functions of the chosen backend -> kernels.

Host-function contract (shared by chunked.py and triton_fwd.py / triton_bwd.py):

    selective_scan_fwd_<impl>(u, delta, A, B, C, D, z, delta_bias,
                              delta_softplus: bool, reverse: bool) -> (out, last_state)
    selective_scan_bwd_<impl>(dout, u, delta, A, B, C, D, z, delta_bias,
                              delta_softplus: bool, reverse: bool)
        -> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)

with <impl> = chunked (torch) or triton. Guarantees on the inputs, x = u.dtype in
{float32, bfloat16, float16}: u, delta, z and dout are (batch, dim, L) of dtype x, any
strides; A (dim, N) float32; B and C (batch, G, N, L), always 4-D, the same G with
dim % G == 0, dtype x or float32, any strides; D and delta_bias (dim,) float32; absent
optional inputs are None; all on one device; L >= 1; autocast is off. Channel d reads
group d // (dim // G). The host functions return out (batch, dim, L) of dtype x and
last_state (batch, dim, N) float32 (h at t = L-1, or t = 0 when reverse); the backward
returns one gradient per input with that input's shape and dtype (None for absent
optional inputs); returned tensors should be contiguous (the op makes them so, at the
cost of a copy, because its fake kernels promise contiguous outputs); the backward
recomputes from the inputs and gets no gradient for last_state. One exception to
"recomputes": training calls ask the Triton forward to keep the states at the backward's
64-position chunk boundaries (`keep_states=True`: it then returns them as a third value,
or None) where its "serial" variant produces them anyway, 4 N bytes a channel every 64
positions (half of a bf16 u at N = 16), held until the backward, which then skips its
forward aggregate pass. Eager calls that do not ask for last_state pass the Triton forward
`return_last_state=False` (None in its place; one allocation fewer in a replay). Host
functions never modify their inputs.

Eager calls on the Triton backend skip the op's Python dispatch (tens of microseconds, more
than the GPU time of short rows): `_EagerTritonScan` runs the same host functions under
plain autograd, and inference calls them directly. torch.compile and tensor subclasses
(fake tensors) always take the op. A no-grad call repeating a public signature whose
forward is replayed skips the checks too (inference_shortcut.py).
"""

from __future__ import annotations

import difflib
import enum
import functools
import importlib
import importlib.util
from collections.abc import Callable
from typing import Optional

import torch

from .checks import check_and_normalise
from .chunked import selective_scan_bwd_chunked, selective_scan_fwd_chunked
from .inference_shortcut import InferenceShortcuts
from .reference import selective_scan_reference

# Public inference signatures learnt to run their replay directly (inference_shortcut.py)
_SHORTCUTS = InferenceShortcuts()
# float64 is accepted by the torch and reference backends only, for gradcheck.
_FLOAT64_BACKENDS = ("torch", "reference")


class Backend(str, enum.Enum):
    """Which implementation runs the scan."""

    AUTO = "auto"  # CUDA tensors -> TRITON, anything else -> TORCH
    TORCH = "torch"  # vectorised chunked PyTorch (chunked.py), any device
    TRITON = "triton"  # Triton kernels; CPU tensors only in Triton's interpreter mode
    REFERENCE = "reference"  # sequential per-step loop (reference.py): tests only, slow

    @classmethod
    def parse(cls, value: Backend | str) -> Backend:
        """Backend from a string, suggesting the nearest valid value on a typo."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        valid = [member.value for member in cls]
        near = difflib.get_close_matches(str(value).lower(), valid, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"backend: expected one of {valid}, got {value!r}{hint}")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (missing package, wrong device)."""


HostFunctions = tuple[Callable[..., tuple], Callable[..., tuple]]


def _triton_interpreter_on() -> bool:
    import triton.knobs  # only reached when the Triton backend was asked for

    return bool(triton.knobs.runtime.interpret)


def _host_functions(backend: str, device: torch.device) -> HostFunctions:
    if backend == Backend.TORCH.value:
        return selective_scan_fwd_chunked, selective_scan_bwd_chunked
    _require_triton(device)
    return _triton_host_functions()


@functools.lru_cache(maxsize=None)
def _triton_host_functions() -> HostFunctions:
    # Imported lazily so that CPU-only users never need triton to import the package.
    fwd = importlib.import_module(f"{__package__}.triton_fwd")
    bwd = importlib.import_module(f"{__package__}.triton_bwd")
    return fwd.selective_scan_fwd_triton, bwd.selective_scan_bwd_triton


def _require_triton(device: torch.device) -> None:
    if importlib.util.find_spec("triton") is None:
        raise BackendUnavailableError(
            "backend='triton' needs the triton package, which is not installed; "
            "install it (pip install triton) or pass backend='torch'"
        )
    if device.type != "cuda" and not _triton_interpreter_on():
        raise BackendUnavailableError(
            f"backend='triton' got tensors on {device}, but Triton runs them only on CUDA "
            "or in its interpreter mode (set TRITON_INTERPRET=1 before importing triton); "
            "pass backend='torch' for the vectorised PyTorch path"
        )


def _resolve(backend: Backend, device: torch.device) -> Backend:
    if backend is Backend.AUTO:
        return Backend.TRITON if device.type == "cuda" else Backend.TORCH
    return backend


def _without_autocast(fn: Callable[..., tuple], device_type: str, *args, **kwargs) -> tuple:
    # The scan runs on its input dtypes with an fp32 state whatever autocast says; entering
    # the context costs microseconds, so only when autocast is on.
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return fn(*args, **kwargs)
    return fn(*args, **kwargs)


# ---- torch.library custom ops --------------------------------------------------------


@torch.library.custom_op("medmamba::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    reverse: bool,
    backend: str,
    keep_states: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, last_state, kept states): with keep_states (a training call) and the Triton
    backend, the states the backward would otherwise compute again (triton_fwd's
    `backward_states`); an empty tensor where there are none."""
    fwd, _ = _host_functions(backend, u.device)
    states = None
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    if keep_states and backend == Backend.TRITON.value:
        out, last_state, states = _without_autocast(
            functools.partial(fwd, keep_states=True), u.device.type, *args)
    else:
        out, last_state = _without_autocast(fwd, u.device.type, *args)
    # The fake kernels promise contiguous outputs (inductor asserts strides).
    return (out.contiguous(), last_state.contiguous(),
            states if states is not None else _no_states(u))


def _no_states(u: torch.Tensor) -> torch.Tensor:
    return u.new_empty(0, dtype=torch.float32)


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, backend,
      keep_states=False):
    out = u.new_empty(u.shape)
    last_state = u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)
    states = None
    if keep_states and backend == Backend.TRITON.value:
        fwd_module = importlib.import_module(f"{__package__}.triton_fwd")
        states = fwd_module.backward_states(u, A, B)
    return out, last_state, states if states is not None else _no_states(u)


@torch.library.custom_op("medmamba::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(
    dout: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    reverse: bool,
    backend: str,
    states: Optional[torch.Tensor] = None,
) -> list[torch.Tensor]:
    """Gradients of all eight inputs; an absent optional input gets an empty tensor
    (custom ops cannot return None). states: the forward's kept states (empty: none)."""
    _, bwd = _host_functions(backend, u.device)
    if states is not None and states.numel():
        bwd = functools.partial(bwd, states=states)
    grads = _without_autocast(bwd, u.device.type, dout, u, delta, A, B, C, D, z, delta_bias,
                              delta_softplus, reverse)
    return _unaliased([u.new_empty(0) if g is None else g.contiguous() for g in grads])


def _unaliased(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Outputs of a custom op must not share memory. The host functions' gradients are
    allocations of their own (since session 40 the Triton backward's dA, dD, ddelta_bias,
    dB and dC too); a guard for any host function that returns views of one buffer."""
    seen = set()
    result = []
    for t in tensors:
        storage = t.untyped_storage().data_ptr()
        if t.numel() and storage in seen:
            t = t.clone()
        seen.add(storage)
        result.append(t)
    return result


@_scan_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, backend,
      states=None):
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return [u.new_empty(0) if x is None else x.new_empty(x.shape) for x in inputs]


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, backend, _keep = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.flags = (delta_softplus, reverse, backend)
    # last_state is documented as gradient-free; the kept states are the backward's input
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)  # their gradients stay None, not zeros (backward ignores them)


def _backward(ctx, dout, _dlast_state, _dstates):
    if dout is None:  # no gradient reached out (grads are not materialised as zeros)
        return (None,) * 12
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    grads = _scan_bwd_op(dout, u, delta, A, B, C, D, z, delta_bias, *ctx.flags, states)
    present = (u, delta, A, B, C, D, z, delta_bias)
    grads = [None if x is None else g for g, x in zip(grads, present)]
    return (*grads, None, None, None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerTritonScan(torch.autograd.Function):
    """The op's forward and backward for eager Triton calls, without torch.library's
    Python dispatch: that costs tens of microseconds a call, more than the GPU time of the
    short rows. torch.compile and tensor subclasses (fake tensors) still go through the op,
    which runs the same host functions."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                return_last_state):
        fwd, _ = _triton_host_functions()
        # the states at the backward's chunk boundaries, where the forward computes them
        # anyway (fp32, 4 N bytes a channel every 64 positions): one pass fewer backward;
        # last_state None unless asked for (its buffer then joins the replay's scratch)
        out, last_state, states = _without_autocast(
            fwd, u.device.type, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
            reverse, keep_states=True, return_last_state=return_last_state)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.flags = (delta_softplus, reverse)
        if last_state is not None:
            ctx.mark_non_differentiable(last_state)
        # last_state's gradient is unused: left None, not a (batch, dim, N) tensor of zeros
        # allocated and filled on the engine's thread every backward
        ctx.set_materialize_grads(False)
        return out, last_state

    @staticmethod
    def backward(ctx, dout, _dlast_state):
        if dout is None:  # no gradient reached out (grads are not materialised as zeros)
            return (None,) * 11
        _, bwd = _triton_host_functions()
        *inputs, states = ctx.saved_tensors
        grads = _without_autocast(bwd, dout.device.type, dout, *inputs, *ctx.flags,
                                  states=states, gradients_share_storage=True)
        return (*grads, None, None, None)


# ---- public function -----------------------------------------------------------------


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
    return_last_state: bool = False,
    backend: Backend | str = Backend.AUTO,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with mamba_ssm `selective_scan_fn` semantics, plus `reverse`.

    Per batch b, channel d (group g = d // (dim // G)) and state n, in fp32::

        dt_t = softplus?(delta[b,d,t] + delta_bias[d])
        h_t  = exp(dt_t * A[d,n]) * h_{t-1} + dt_t * B[b,g,n,t] * u[b,d,t]
        out  = (sum_n C[b,g,n,t] * h_t + D[d] * u[b,d,t]) * silu(z[b,d,t])

    With ``reverse=True`` the scan runs from the end: h_t depends on t..L-1 (the same
    as flipping every sequence input, scanning forward and flipping back, without copies).

    Args:
        u, delta, z: (batch, dim, L), float32/bfloat16/float16; delta and z share u's
            dtype (under autocast they are cast to it).
        A: (dim, N), real; computed in float32.
        B, C: (batch, N, L) or grouped (batch, G, N, L) with dim divisible by G, both with
            the same G; u's dtype or float32.
        D, delta_bias: (dim,); computed in float32.
        return_last_state: also return the final state (batch, dim, N), float32 (h at
            t = L-1, at t = 0 when reverse). It carries no gradient.
        backend: "auto" (CUDA -> "triton", otherwise "torch"), "torch", "triton" or
            "reference" (the slow sequential truth).

    Returns:
        out (batch, dim, L) in u's dtype, or (out, last_state).

    Raises:
        TypeError / ValueError: an argument has the wrong type, dtype, shape or device.
        BackendUnavailableError: the requested backend cannot run here.
    """
    given = (u, delta, A, B, C, D, z, delta_bias)
    flags = (delta_softplus, reverse, return_last_state, backend)
    inference = not torch.is_grad_enabled()
    if inference and not torch.compiler.is_compiling():
        known = _SHORTCUTS.run(given, flags)  # a repeated call: its replay, nothing else
        if known is not None:
            return known if return_last_state else known[0]
    chosen = Backend.parse(backend)
    u, delta, A, B, C, D, z, delta_bias = check_and_normalise(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
    )
    chosen = _resolve(chosen, u.device)
    if u.dtype == torch.float64 and chosen.value not in _FLOAT64_BACKENDS:
        raise TypeError(
            f"u: float64 runs only with backend 'torch' or 'reference' (for gradcheck); "
            f"backend {chosen.value!r} expects float32, bfloat16 or float16"
        )
    if chosen is Backend.REFERENCE:
        out, last_state = selective_scan_reference(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, return_last_state=True
        )
        last_state = last_state.detach()
    else:
        if chosen is Backend.TRITON and not torch.compiler.is_compiling():
            # Fail here, before any graph or autograd work. Not while compiling: the
            # package and interpreter lookups would break the caller's graph, and the op
            # checks again when it runs.
            _require_triton(u.device)
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        training = torch.is_grad_enabled() and any(x is not None and x.requires_grad
                                                   for x in inputs)
        if (chosen is Backend.TRITON and type(u) is torch.Tensor
                and not torch.compiler.is_compiling()):
            if training:
                out, last_state = _EagerTritonScan.apply(*inputs, delta_softplus, reverse,
                                                         return_last_state)
            else:  # inference: no graph to record
                fwd, _ = _triton_host_functions()
                options = {"return_last_state": return_last_state}
                out, last_state = _without_autocast(fwd, u.device.type, *inputs,
                                                    delta_softplus, reverse, **options)
                if inference:
                    _SHORTCUTS.learn(fwd, given, flags, inputs, (delta_softplus, reverse),
                                     options)
        else:
            out, last_state, _ = _scan_fwd_op(
                u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, chosen.value,
                training,
            )
    return (out, last_state) if return_last_state else out
