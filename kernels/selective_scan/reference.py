"""Sequential fp32 selective scan: the truth every faster path is tested against.

One Python step per time step, so it is slow; only tests and benchmarks call it. It
imports nothing but torch and is differentiable through ordinary autograd, which gives
the reference gradients. The maths is in README.md beside this file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(
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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan by a per-step loop, in fp32, with mamba_ssm's semantics.

    Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L) or
    (batch, G, N, L); D, delta_bias (dim,). Returns out in u's dtype and, when asked,
    the last state (batch, dim, N) in fp32 (h at t = L-1, or at t = 0 when reverse).
    Arguments are not checked: the public `selective_scan` does that.
    """
    dtype_in = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    A = A.float()
    batch, dim, length = u.shape
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    # Channel d reads group d // (dim // G): expand groups to channels.
    B = B.repeat_interleave(dim // B.shape[1], dim=1)  # (batch, dim, N, L)
    C = C.repeat_interleave(dim // C.shape[1], dim=1)
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta[:, :, None, :] * A[None, :, :, None])  # (batch, dim, N, L)
    drive = (delta * u)[:, :, None, :] * B  # (batch, dim, N, L)

    h = u.new_zeros(batch, dim, A.shape[1])
    ys: list[torch.Tensor] = [u.new_empty(0)] * length
    steps = range(length - 1, -1, -1) if reverse else range(length)
    # unbind once: indexing per step would make autograd allocate a full-size zero
    # gradient for every step (quadratic in L).
    decays, drives, Cs = decay.unbind(-1), drive.unbind(-1), C.unbind(-1)
    for t in steps:
        h = decays[t] * h + drives[t]
        ys[t] = (h * Cs[t]).sum(-1)
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out
