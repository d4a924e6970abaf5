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
cost of a copy, because its fake kernels promise contiguous outputs), recomputes from the inputs (the forward saves nothing big), and gets
no gradient for last_state. Host functions never modify their inputs.
"""

from __future__ import annotations

import difflib
import enum
import importlib
import importlib.util
from collections.abc import Callable
from typing import Optional

import torch

from .chunked import selective_scan_bwd_chunked, selective_scan_fwd_chunked
from .reference import selective_scan_reference

_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
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


# --------------------------------------------------------------------------------------
# torch.library custom ops
# --------------------------------------------------------------------------------------


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
) -> tuple[torch.Tensor, torch.Tensor]:
    fwd, _ = _host_functions(backend, u.device)
    # The op runs on its input dtypes with an fp32 state whatever autocast says.
    with torch.autocast(u.device.type, enabled=False):
        out, last_state = fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    # The fake kernels promise contiguous outputs (inductor asserts strides).
    return out.contiguous(), last_state.contiguous()


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, backend):
    out = u.new_empty(u.shape)
    last_state = u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)
    return out, last_state


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
) -> list[torch.Tensor]:
    """Gradients of all eight inputs; an absent optional input gets an empty tensor
    (custom ops cannot return None)."""
    _, bwd = _host_functions(backend, u.device)
    with torch.autocast(u.device.type, enabled=False):
        grads = bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    return [u.new_empty(0) if g is None else g.contiguous() for g in grads]


@_scan_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, backend):
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return [u.new_empty(0) if x is None else x.new_empty(x.shape) for x in inputs]


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.flags = (delta_softplus, reverse, backend)
    ctx.mark_non_differentiable(output[1])  # last_state: documented as gradient-free


def _backward(ctx, dout, _dlast_state):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    grads = _scan_bwd_op(dout, u, delta, A, B, C, D, z, delta_bias, *ctx.flags)
    present = (u, delta, A, B, C, D, z, delta_bias)
    grads = [None if x is None else g for g, x in zip(grads, present)]
    return (*grads, None, None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# public function
# --------------------------------------------------------------------------------------


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
    chosen = Backend.parse(backend)
    u, delta, A, B, C, D, z, delta_bias = _checked(
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
        if chosen is Backend.TRITON:
            _require_triton(u.device)  # fail here, before any graph or autograd work
        out, last_state = _scan_fwd_op(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, chosen.value
        )
    return (out, last_state) if return_last_state else out


# --------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------


def _describe(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"


def _tensor(name: str, x: object, optional: bool = False) -> None:
    if x is None and optional:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"{name}: expected a real floating-point tensor, got {_describe(x)}")


def _shape(name: str, x: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(x.shape) != expected:
        raise ValueError(f"{name}: expected shape {meaning} = {expected}, got {tuple(x.shape)}")


def _checked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    """Validate, then normalise: B, C -> 4-D; A, D, delta_bias -> fp32; dtypes aligned.

    Casts and reshapes are ordinary differentiable ops, so gradients reach the caller's
    tensors in their own shapes and dtypes.
    """
    for name, x, optional in (
        ("u", u, False), ("delta", delta, False), ("A", A, False), ("B", B, False),
        ("C", C, False), ("D", D, True), ("z", z, True), ("delta_bias", delta_bias, True),
    ):
        _tensor(name, x, optional)
    for name, flag in (("delta_softplus", delta_softplus), ("reverse", reverse)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected a bool, got {type(flag).__name__}")

    if u.dim() != 3:
        raise ValueError(f"u: expected 3 dimensions (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if min(batch, dim, length) < 1:
        raise ValueError(f"u: expected batch, dim and L >= 1, got shape {tuple(u.shape)}")
    if u.dtype not in (*_INPUT_DTYPES, torch.float64):
        raise TypeError(f"u: expected dtype float32, bfloat16 or float16, got {u.dtype}")
    device = u.device
    for name, x in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if x is not None and x.device != device:
            raise ValueError(f"{name}: expected device {device} (u's device), got {x.device}")

    _shape("delta", delta, (batch, dim, length), "(batch, dim, L)")
    if z is not None:
        _shape("z", z, (batch, dim, length), "(batch, dim, L)")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A: expected shape (dim, N) = ({dim}, N), got {tuple(A.shape)}")
    nstate = A.shape[1]
    if nstate < 1:
        raise ValueError(f"A: expected N >= 1 states, got shape {tuple(A.shape)}")
    for name, x in (("B", B), ("C", C)):
        if x.dim() == 3:
            _shape(name, x, (batch, nstate, length), "(batch, N, L)")
        elif x.dim() == 4:
            groups = x.shape[1]
            if groups < 1 or dim % groups:
                raise ValueError(
                    f"{name}: expected groups G dividing dim={dim} in (batch, G, N, L), "
                    f"got shape {tuple(x.shape)}"
                )
            _shape(name, x, (batch, groups, nstate, length), "(batch, G, N, L)")
        else:
            raise ValueError(
                f"{name}: expected (batch, N, L) or (batch, G, N, L), got shape {tuple(x.shape)}"
            )
    B4 = B if B.dim() == 4 else B.unsqueeze(1)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    if C4.shape[1] != B4.shape[1]:
        raise ValueError(
            f"C: expected the same number of groups as B ({B4.shape[1]}), got {C4.shape[1]} "
            f"(shape {tuple(C.shape)})"
        )
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None:
            _shape(name, x, (dim,), "(dim,)")

    # Dtypes: delta and z must share u's dtype, B and C u's dtype or fp32 (as mamba_ssm);
    # under autocast the mixed dtypes autocast produces are aligned to u's instead.
    autocast = torch.is_autocast_enabled(device.type)
    x = u.dtype
    state = torch.float64 if x == torch.float64 else torch.float32

    def aligned(name: str, t: torch.Tensor | None, allowed: tuple[torch.dtype, ...]):
        if t is None or t.dtype in allowed:
            return t
        if autocast:
            return t.to(x)
        names = " or ".join(str(a) for a in dict.fromkeys(allowed))
        raise TypeError(f"{name}: expected dtype {names} (u is {x}), got {t.dtype}")

    delta = aligned("delta", delta, (x,))
    z = aligned("z", z, (x,))
    B4 = aligned("B", B4, (x, state))
    C4 = aligned("C", C4, (x, state))
    A = A.to(state)
    D = None if D is None else D.to(state)
    delta_bias = None if delta_bias is None else delta_bias.to(state)
    return u, delta, A, B4, C4, D, z, delta_bias
