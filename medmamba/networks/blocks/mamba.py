"""Mamba layers on ``medmamba_kernels.selective_scan``; tokens are the flattened grid.

One ``Mamba`` mixer (mamba_ssm's ``Mamba`` block, without its fused CUDA path):
in_proj -> depthwise causal conv1d (d_conv 4) -> SiLU -> x_proj -> (dt, B, C) -> dt_proj ->
selective scan (d_state 16, expand 2, dt rank ceil(C/16), A_log S4D-real, D ones) gated by
silu(z) -> out_proj. ``bidirectional`` adds a second branch that scans backwards through
the kernel's ``reverse`` flag (its conv is anti-causal): no tensor is flipped.
``ssm=False`` replaces the scan by identity (the MambaOut ablation: a gated depthwise-conv
MLP remains). The state lives in fp32 inside the kernel; A, D and the dt bias stay fp32
parameters, so a layer is finite under bf16 autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

D_STATE = 16
D_CONV = 4
EXPAND = 2


def dt_rank_for(d_model: int) -> int:
    return math.ceil(d_model / 16)


def selective_scan(*args: torch.Tensor | None, **kwargs: object) -> torch.Tensor:
    """The kernel, looked up at call time (tests count calls by patching the module).

    Shape-only (meta) tensors, used to count MACs without computing, skip the kernel:
    its output has the shape and dtype of ``u``.
    """
    u = args[0]
    assert u is not None
    if u.device.type == "meta":
        return torch.empty_like(u)
    import medmamba_kernels

    return medmamba_kernels.selective_scan(*args, **kwargs)


def init_dt_bias(d_inner: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> torch.Tensor:
    """mamba_ssm's init: softplus(bias) is log-uniform in [dt_min, dt_max]."""
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


def s4d_real_a_log(d_inner: int, d_state: int) -> torch.Tensor:
    """S4D-real: A[:, n] = -(n + 1), stored as log(-A)."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)


class ChannelMajorLinear(nn.Linear):
    """``nn.Linear`` over the channel axis of channel-major tensors: (batch, in, L) ->
    a contiguous (batch, out, L). The scan reads its inputs and its output's gradient
    fastest contiguous along L (token-major ones cost a training call up to ~20%); the
    weights, their initialisation and checkpoints are those of ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A batched product: a 2-D weight times a 3-D x is folded into one token-major
        # matrix product, whose gradient w.r.t. x comes back token-major
        y = torch.matmul(self.weight.expand(x.shape[0], -1, -1), x)
        return y if self.bias is None else y + self.bias.unsqueeze(-1)


class ScanBranch(nn.Module):
    """One scan direction: depthwise conv1d, x_proj, dt_proj, A, D and the kernel call.

    Works on channels-first tokens ``(batch, d_inner, L)``; ``groups`` > 1 gives each
    group of channels its own (dt, B, C) projection (the multi-head scan's heads), passed
    to the kernel as grouped B and C of shape ``(batch, groups, N, L)``.
    """

    def __init__(
        self,
        d_inner: int,
        dt_rank: int,
        d_state: int = D_STATE,
        d_conv: int = D_CONV,
        reverse: bool = False,
        ssm: bool = True,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if d_inner % groups:
            raise ValueError(f"groups: expected a divisor of d_inner={d_inner}, got {groups}")
        self.d_inner, self.dt_rank, self.d_state, self.groups = d_inner, dt_rank, d_state, groups
        self.reverse, self.ssm, self.d_conv = reverse, ssm, d_conv
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        if not ssm:
            return
        d_group = d_inner // groups
        # x_proj and dt_proj per group, stored as batched weights (groups, out, in).
        bound = d_group**-0.5
        self.x_proj_weight = nn.Parameter(torch.empty(groups, dt_rank + 2 * d_state, d_group).uniform_(-bound, bound))
        std = dt_rank**-0.5
        self.dt_proj_weight = nn.Parameter(torch.empty(groups, d_group, dt_rank).uniform_(-std, std))
        self.dt_bias = nn.Parameter(init_dt_bias(d_inner))
        self.A_log = nn.Parameter(s4d_real_a_log(d_inner, d_state))
        self.D = nn.Parameter(torch.ones(d_inner))

    def conv(self, u: torch.Tensor) -> torch.Tensor:
        """Causal (forward) or anti-causal (reverse) depthwise conv, then SiLU."""
        length = u.shape[-1]
        out = self.conv1d(u)
        out = out[..., self.d_conv - 1 :] if self.reverse else out[..., :length]
        return F.silu(out)

    def forward(self, u: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """``u``, ``z``: (batch, d_inner, L) -> y * silu(z), same shape."""
        u = self.conv(u)
        if not self.ssm:
            return u if z is None else u * F.silu(z)
        batch, _, length = u.shape
        g, r, n = self.groups, self.dt_rank, self.d_state
        # Channel-major products, (groups, out, d_group) x (batch, groups, d_group, L) ->
        # (batch, groups, out, L): dt, B, C and delta come out contiguous along L
        # (ChannelMajorLinear says why).
        x_dbl = torch.matmul(self.x_proj_weight, u.view(batch, g, -1, length))
        dt, b, c = x_dbl.split([r, n, n], dim=2)
        delta = torch.matmul(self.dt_proj_weight, dt).reshape(batch, -1, length)
        if g == 1:
            b, c = b[:, 0], c[:, 0]
        return selective_scan(
            u,
            delta,
            -torch.exp(self.A_log.float()),
            b,
            c,
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_bias.float(),
            delta_softplus=True,
            reverse=self.reverse,
            backend="auto",
        )


class Mamba(nn.Module):
    """The Mamba mixer on channels-last tokens ``(batch, L, d_model)``."""

    def __init__(self, d_model: int, bidirectional: bool = False, ssm: bool = True, expand: int = EXPAND) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.in_proj = ChannelMajorLinear(d_model, 2 * d_inner, bias=False)
        directions = (False, True) if bidirectional else (False,)
        self.branches = nn.ModuleList(
            ScanBranch(d_inner, dt_rank_for(d_model), reverse=reverse, ssm=ssm) for reverse in directions
        )
        self.out_proj = ChannelMajorLinear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (batch, L, d_model) -> (batch, L, d_model), a transposed view of a
        channel-major result (``.transpose(1, 2)`` of it is contiguous)."""
        u, z = self.in_proj(x.transpose(1, 2)).chunk(2, dim=1)
        # The gate is linear in y, so each branch may gate on its own and the sum stays
        # (y_fwd + y_bwd) * silu(z).
        y = self.branches[0](u, z)
        for branch in self.branches[1:]:
            y = y + branch(u, z)
        return self.out_proj(y).transpose(1, 2)


class MambaLayer(nn.Module):
    """Pre-norm residual Mamba over a grid ``(batch, C, *spatial)``: x + Mamba(LN(x)).

    U-Mamba's layer has no residual; we keep the standard pre-norm residual of Mamba
    blocks, which also makes ``ssm="none"`` a gated conv MLP rather than a bottleneck.
    """

    def __init__(self, channels: int, bidirectional: bool = False, ssm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mamba = Mamba(channels, bidirectional=bidirectional, ssm=ssm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        out = self.mamba(self.norm(tokens))
        return x + out.transpose(1, 2).reshape(x.shape)
