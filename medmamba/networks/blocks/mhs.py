"""Multi-head scan (MHS-VM, generalised to 2D and 3D grids).

Tokens are projected into H lower-dimensional subspaces (heads); each head scans its own
route through the grid (row-major, column-major, slice-major, snake, ...). All heads go
through one kernel call: the route of a head is a gather of its channels, the heads are
the kernel's B/C groups. A scan-route attention (selective-kernel style: pooled
descriptor -> per-head, per-channel softmax) weighs the routes; the weighted sum is
projected back. Route permutations are computed once per (spatial shape, device) and
kept in a per-module cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medmamba.networks.blocks.mamba import EXPAND, ChannelMajorLinear, ScanBranch, dt_rank_for


@dataclass(frozen=True)
class Route:
    """A visiting order of a grid: ``order`` permutes the axes (the last is fastest),
    ``snake`` reverses every other line (boustrophedon, continuous in every dimension),
    ``reverse`` walks the whole route backwards."""

    order: tuple[int, ...]
    snake: bool = False
    reverse: bool = False

    @property
    def name(self) -> str:
        fastest = len(self.order) - 1 - self.order[-1]
        base = ("row", "column", "slice")[fastest] + "-major"
        return ("snake-" if self.snake else "") + base + ("-reversed" if self.reverse else "")


def default_routes(spatial_dims: int, n_heads: int) -> tuple[Route, ...]:
    """Routes for ``n_heads`` heads: each axis fastest in turn, then their snakes, then all
    of those reversed (cycled if more heads are asked for)."""
    axes = tuple(range(spatial_dims))
    plain = [Route(axes[:k] + axes[k + 1 :] + (k,)) for k in reversed(axes)]
    base = plain + [Route(r.order, snake=True) for r in plain]
    every = base + [Route(r.order, r.snake, reverse=True) for r in base]
    return tuple(every[i % len(every)] for i in range(n_heads))


def route_permutation(shape: tuple[int, ...], route: Route) -> torch.Tensor:
    """``perm[i]`` = row-major flat index of the i-th token the route visits."""
    n = len(shape)
    idx = torch.arange(math.prod(shape)).view(shape).permute(route.order)
    if route.snake:
        # From the innermost pair outwards: where the index along axis k is odd, walk all
        # faster axes backwards; the line (plane...) then starts where the last one ended.
        for k in range(n - 2, -1, -1):
            odd = (torch.arange(idx.shape[k]) % 2 == 1).view([-1 if i == k else 1 for i in range(n)])
            idx = torch.where(odd, idx.flip(list(range(k + 1, n))), idx)
    perm = idx.reshape(-1)
    return perm.flip(0) if route.reverse else perm


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return inverse


class MultiHeadScan(nn.Module):
    """The MHS mixer on channels-last tokens ``(batch, L, d_model)`` of a grid ``shape``."""

    def __init__(
        self,
        d_model: int,
        spatial_dims: int,
        n_heads: int = 4,
        ssm: bool = True,
        expand: int = EXPAND,
        routes: tuple[Route, ...] | None = None,
    ) -> None:
        super().__init__()
        self.routes = routes if routes is not None else default_routes(spatial_dims, n_heads)
        if len(self.routes) != n_heads:
            raise ValueError(f"routes: expected one route per head ({n_heads}), got {len(self.routes)}")
        self.n_heads = n_heads
        self.d_head = math.ceil(expand * d_model / n_heads)
        d_inner = self.d_head * n_heads
        self.in_proj = ChannelMajorLinear(d_model, 2 * d_inner, bias=False)
        self.scan = ScanBranch(d_inner, dt_rank_for(self.d_head), ssm=ssm, groups=n_heads)
        hidden = max(self.d_head // 4, 8)
        self.route_attention = nn.Sequential(
            nn.Linear(self.d_head, hidden), nn.GELU(), nn.Linear(hidden, n_heads * self.d_head)
        )
        self.out_norm = nn.LayerNorm(self.d_head)
        self.out_proj = nn.Linear(self.d_head, d_model, bias=False)
        self._route_cache: dict[tuple[tuple[int, ...], torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def permutations(self, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm, inverse), each (n_heads, L), cached per shape and device."""
        key = (tuple(shape), torch.device(device))
        if key not in self._route_cache:
            perms = torch.stack([route_permutation(shape, r) for r in self.routes])
            inverse = torch.stack([inverse_permutation(p) for p in perms])
            self._route_cache[key] = (perms.to(device), inverse.to(device))
        return self._route_cache[key]

    def forward(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        batch, length, _ = x.shape
        h, d = self.n_heads, self.d_head
        perm, inverse = self.permutations(shape, x.device)
        u, z = self.in_proj(x.transpose(1, 2)).chunk(2, dim=1)
        index = perm.view(1, h, 1, length).expand(batch, h, d, length)
        routed = u.reshape(batch, h, d, length).gather(3, index)
        y = self.scan(routed.view(batch, h * d, length), None).view(batch, h, d, length)
        y = y.gather(3, inverse.view(1, h, 1, length).expand(batch, h, d, length))
        y = y * F.silu(z.reshape(batch, h, d, length))
        # Scan-route attention: one softmax over the heads per channel, from the pooled sum.
        descriptor = y.sum(1).mean(-1)
        weights = self.route_attention(descriptor).view(batch, h, d).softmax(dim=1)
        fused = torch.einsum("bhdl,bhd->bld", y, weights.to(y.dtype))
        return self.out_proj(self.out_norm(fused))


class MHSLayer(nn.Module):
    """Pre-norm residual multi-head scan over a grid ``(batch, C, *spatial)``."""

    def __init__(self, channels: int, spatial_dims: int, n_heads: int = 4, ssm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mhs = MultiHeadScan(channels, spatial_dims, n_heads=n_heads, ssm=ssm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        out = self.mhs(self.norm(tokens), tuple(x.shape[2:]))
        return x + out.transpose(1, 2).reshape(x.shape)
