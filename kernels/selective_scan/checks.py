"""Argument checks and normalisation of `selective_scan` (interface.py).

Errors name the argument and the expected vs got shape/dtype/device. Checked argument
metadata is remembered, so a repeated eager call (a training step) skips the checks; under
torch.compile they run at trace time instead.
"""

from __future__ import annotations

import torch

_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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


# Argument metadata (shapes, dtypes, devices, flag types, autocast) that passed the checks:
# a training run repeats a few, and the checks cost more host time than a short row's GPU
# work. Everything the checks look at is in the key, so a repeat cannot fail them.
_PASSED: set[tuple] = set()
_PASSED_MAX = 1024


def check_and_normalise(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    """Validate, then normalise: B, C -> 4-D; A, D, delta_bias -> fp32; dtypes aligned.

    Casts and reshapes are ordinary differentiable ops, so gradients reach the caller's
    tensors in their own shapes and dtypes.
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    # Under torch.compile the checks run once, at trace time, where the graph's guards
    # already pin what they read; a look-up in _PASSED would become a guard that the first
    # call then breaks. So no key there: validate, remember nothing.
    key = None if torch.compiler.is_compiling() else _metadata(tensors, delta_softplus, reverse)
    if key is None or key not in _PASSED:
        _validate(*tensors, delta_softplus, reverse)
        if key is not None:
            if len(_PASSED) >= _PASSED_MAX:
                _PASSED.clear()
            _PASSED.add(key)
    return _normalise(*tensors)


def _metadata(tensors, delta_softplus, reverse) -> tuple | None:
    """What _validate depends on, hashable; None if an argument is not a tensor."""
    parts: list = [type(delta_softplus), delta_softplus, type(reverse), reverse]
    for x in tensors:
        if x is None:
            parts.append(None)
        elif isinstance(x, torch.Tensor):
            parts.append((x.shape, x.dtype, x.device))
        else:
            return None
    u = tensors[0]
    if u is None:
        return None
    parts.append(torch.is_autocast_enabled(u.device.type))
    return tuple(parts)


def _normalise(u, delta, A, B, C, D, z, delta_bias):
    """B, C -> 4-D; delta, z, B, C aligned to u's dtype where they differ (only autocast's
    mixes pass _validate); A, D, delta_bias -> the state dtype. Each .to() only where
    needed: a no-op .to() still costs a dispatch, on every call."""
    x = u.dtype
    state = torch.float64 if x == torch.float64 else torch.float32
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    if delta.dtype != x:
        delta = delta.to(x)
    if z is not None and z.dtype != x:
        z = z.to(x)
    if B.dtype != x and B.dtype != state:
        B = B.to(x)
    if C.dtype != x and C.dtype != state:
        C = C.to(x)
    A = A if A.dtype == state else A.to(state)
    D = D if D is None or D.dtype == state else D.to(state)
    delta_bias = (delta_bias if delta_bias is None or delta_bias.dtype == state
                  else delta_bias.to(state))
    return u, delta, A, B, C, D, z, delta_bias


def _validate(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse) -> None:
    """Raise on the first bad argument (errors name it, expected vs got)."""
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
    # under autocast the mixed dtypes autocast produces are aligned to u's instead
    # (_normalise).
    if torch.is_autocast_enabled(device.type):
        return
    x = u.dtype
    state = torch.float64 if x == torch.float64 else torch.float32
    for name, t, allowed in (("delta", delta, (x,)), ("z", z, (x,)), ("B", B, (x, state)),
                             ("C", C, (x, state))):
        if t is not None and t.dtype not in allowed:
            names = " or ".join(str(a) for a in dict.fromkeys(allowed))
            raise TypeError(f"{name}: expected dtype {names} (u is {x}), got {t.dtype}")
