"""Vectorised PyTorch selective scan: the CPU path, forward and hand-written backward.

The host functions follow the contract in interface.py's docstring:
inputs arrive checked and normalised (B, C 4-D; A, D, delta_bias fp32). Everything is
computed in fp32 in a time-major layout, (L, batch, G, dim/G, N), so that every slice
along time is one contiguous slab and the scan works on whole slabs.

The linear recurrence h_t = a_t * h_{t-1} + v_t is solved by a chunked scan with chunks
of two, applied recursively (odd-even reduction, README.md "Chunked formulation"):

1. chunk-local: combine each pair into one step (product of decays, end state of the pair);
2. carry: scan the half-length sequence of pair ends (the same function, recursively);
3. fix-up: the first step of every pair gets the carried state of the previous pair.

The three stages are the ones the Triton kernels run with longer chunks. The work is
about 3 passes over the state tensor in total, there is no Python loop over time steps
(log2(L) recursion levels), the state is updated in place, and only products of decays
are formed (never exp of a positive sum), so nothing overflows for A < 0. Rows are
processed in blocks of at most `_BLOCK_ELEMENTS` state elements to bound memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Elements of one fp32 state-sized buffer per block (32 MiB); about eight such buffers live
# at once in the backward, so a call peaks near 300 MiB whatever the problem size.
_BLOCK_ELEMENTS = 1 << 23


class _Buffers:
    """Reusable state-dtype scratch, so blocks do not page-fault on fresh large allocations."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self._device = device
        self._dtype = dtype
        self._flat: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        numel = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel:
            flat = torch.empty(numel, dtype=self._dtype, device=self._device)
            self._flat[name] = flat
        return flat[:numel].view(shape)


def _linear_scan_(a: torch.Tensor, v: torch.Tensor, reverse: bool, scratch: torch.Tensor) -> None:
    """In place over dim 0: v[t] <- a[t] * v[t-1] + v[t] (v[t+1] when reverse), zero start.

    a, v: (L, R) views (any strides along dim 0, unit stride along R); a is only read;
    scratch: contiguous (>= L // 2, R), receives the pair decays of every level.
    """
    length = v.shape[0]
    if length == 1:
        return
    if length % 2:
        # Peel off the step that comes last in scan order; it only needs its predecessor.
        if reverse:
            _linear_scan_(a[1:], v[1:], True, scratch)
            v[0].addcmul_(a[0], v[1])
        else:
            _linear_scan_(a[:-1], v[:-1], False, scratch)
            v[-1].addcmul_(a[-1], v[-2])
        return
    half = length // 2
    a2, v2 = a.unflatten(0, (half, 2)), v.unflatten(0, (half, 2))
    first, second = (1, 0) if reverse else (0, 1)  # order within a pair, in scan order
    a_p, a_q, v_p, v_q = a2[:, first], a2[:, second], v2[:, first], v2[:, second]
    # Stage 1 (chunk-local): a pair acts as one step with decay a_q*a_p and drive a_q*v_p+v_q.
    pair_decay = torch.mul(a_q, a_p, out=scratch[:half])
    v_q.addcmul_(a_q, v_p)
    # Stage 2 (carry): v_q becomes the true state at the end of every pair.
    _linear_scan_(pair_decay, v_q, reverse, scratch[half:])
    # Stage 3 (fix-up): the first step of a pair starts from the previous pair's end state.
    if reverse:
        v_p[:-1].addcmul_(a_p[:-1], v_q[1:])
    else:
        v_p[1:].addcmul_(a_p[1:], v_q[:-1])


def _adjoint_scan_(a: torch.Tensor, w: torch.Tensor, reverse: bool, scratch: torch.Tensor) -> None:
    """In place over dim 0: w becomes g, the gradient w.r.t. the states h.

    g_t = w_t + a_{t+1} g_{t+1} for a forward model (g_t = w_t + a_{t-1} g_{t-1} when
    reverse): the scan in the opposite direction with decays shifted by one step, done on
    views so no shifted copy of a is made.
    """
    if w.shape[0] == 1:
        return
    if reverse:
        w[1].addcmul_(a[0], w[0])
        _linear_scan_(a[:-1], w[1:], False, scratch)
    else:
        w[-2].addcmul_(a[-1], w[-1])
        _linear_scan_(a[1:], w[:-1], True, scratch)


def _blocks(batch: int, groups: int, per_group: int, row_elements: int):
    """(b0, b1, d0, d1) ranges so each block holds about _BLOCK_ELEMENTS state elements."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, row_elements))
    if groups * per_group <= rows:
        nd, nb = per_group, max(1, min(batch, rows // (groups * per_group)))
    else:
        nd, nb = max(1, rows // groups), 1
    for b0 in range(0, batch, nb):
        for d0 in range(0, per_group, nd):
            yield b0, min(batch, b0 + nb), d0, min(per_group, d0 + nd)


class _Problem:
    """Shapes, grouped views and per-block time-major fp32 copies of the inputs."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool) -> None:
        self.batch, self.dim, self.length = u.shape
        self.groups, self.nstate = B.shape[1], B.shape[2]
        self.per_group = self.dim // self.groups
        grouped = (self.batch, self.groups, self.per_group, self.length)
        self.u = u.unflatten(1, grouped[1:3])
        self.delta = delta.unflatten(1, grouped[1:3])
        self.z = None if z is None else z.unflatten(1, grouped[1:3])
        self.A = A.view(self.groups, self.per_group, self.nstate)
        self.D = None if D is None else D.view(self.groups, self.per_group)
        self.bias = None if delta_bias is None else delta_bias.view(self.groups, self.per_group)
        self.softplus = delta_softplus
        # fp32 state; float64 inputs (gradcheck) keep float64 throughout.
        self.acc = torch.float64 if u.dtype == torch.float64 else torch.float32
        self.buffers = _Buffers(u.device, self.acc)

    def blocks(self):
        return _blocks(self.batch, self.groups, self.per_group, self.length * self.nstate)

    def time_major(self, name: str, x: torch.Tensor, b0: int, b1: int, d0: int, d1: int):
        """x (batch, G, dim/G, L) block -> contiguous fp32 (L, nb, G, nd), one copy."""
        part = x[b0:b1, :, d0:d1].permute(3, 0, 1, 2)
        return self.buffers.take(name, tuple(part.shape)).copy_(part)

    def time_major_bc(self, name: str, x: torch.Tensor, b0: int, b1: int):
        """B or C block (nb, G, N, L) -> contiguous fp32 (L, nb, G, 1, N)."""
        part = x[b0:b1].permute(3, 0, 1, 2)
        return self.buffers.take(name, tuple(part.shape)).copy_(part).unsqueeze(3)

    def step_sizes(self, b0, b1, d0, d1):
        """(raw, dt): delta (+ bias) before softplus, and the step size dt, time-major."""
        raw = self.time_major("raw", self.delta, b0, b1, d0, d1)
        if self.bias is not None:
            raw += self.bias[:, d0:d1]
        if not self.softplus:
            return raw, raw
        return raw, F.softplus(raw)

    def states(self, dt, u_t, B_t, d0, d1, reverse: bool):
        """(a, dtu, h): decays exp(dt*A), dt*u, and the states h (built in place of the
        drives dt*u*B, which are not kept)."""
        shape = (*dt.shape, self.nstate)
        a = self.buffers.take("a", shape)
        torch.mul(dt.unsqueeze(-1), self.A[:, d0:d1], out=a).exp_()
        dtu = self.buffers.take("dtu", tuple(dt.shape))
        torch.mul(dt, u_t, out=dtu)
        h = self.buffers.take("h", shape)
        torch.mul(dtu.unsqueeze(-1), B_t, out=h)
        rows = h.numel() // self.length
        scratch = self.buffers.take("scratch", (self.length, rows))
        _linear_scan_(a.view(self.length, rows), h.view(self.length, rows), reverse, scratch)
        return a, dtu, h

    def contract_c(self, h, C_t, d0, d1, u_t):
        """y = sum_n C h (+ D u), time-major (L, nb, G, nd)."""
        prod = self.buffers.take("prod", tuple(h.shape))
        y = torch.mul(h, C_t, out=prod).sum(-1)
        if self.D is not None:
            y.addcmul_(u_t, self.D[:, d0:d1])
        return y


def _to_batch_major(x_t: torch.Tensor) -> torch.Tensor:
    """(L, nb, G, nd) time-major -> (nb, G, nd, L) view."""
    return x_t.permute(1, 2, 3, 0)


def selective_scan_fwd_chunked(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, reverse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward host function (contract in interface.py): returns (out, last_state)."""
    p = _Problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    last_state = torch.empty(p.batch, p.dim, p.nstate, dtype=p.acc, device=u.device)
    out4 = out.view(p.batch, p.groups, p.per_group, p.length)
    last4 = last_state.view(p.batch, p.groups, p.per_group, p.nstate)
    for b0, b1, d0, d1 in p.blocks():
        _, dt = p.step_sizes(b0, b1, d0, d1)
        u_t = p.time_major("u", p.u, b0, b1, d0, d1)
        _, _, h = p.states(dt, u_t, p.time_major_bc("B", B, b0, b1), d0, d1, reverse)
        last4[b0:b1, :, d0:d1] = h[0 if reverse else -1]
        y = p.contract_c(h, p.time_major_bc("C", C, b0, b1), d0, d1, u_t)
        if p.z is not None:
            y *= F.silu(p.time_major("z", p.z, b0, b1, d0, d1))
        out4[b0:b1, :, d0:d1] = _to_batch_major(y)
    return out, last_state


def selective_scan_bwd_chunked(
    dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, reverse: bool
) -> tuple:
    """Backward host function (contract in interface.py): recomputes the states from the
    inputs and returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None for absent ones."""
    p = _Problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    grouped = (p.batch, p.groups, p.per_group, p.length)
    du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    ddelta = torch.empty(delta.shape, dtype=delta.dtype, device=u.device)
    dz = None if z is None else torch.empty(z.shape, dtype=z.dtype, device=u.device)
    dA = torch.zeros(p.groups, p.per_group, p.nstate, dtype=p.acc, device=u.device)
    dD = None if D is None else torch.zeros(p.groups, p.per_group, dtype=p.acc, device=u.device)
    dbias = None if delta_bias is None else torch.zeros_like(dA[..., 0])
    dB = torch.zeros(B.shape, dtype=p.acc, device=u.device)
    dC = torch.zeros(C.shape, dtype=p.acc, device=u.device)
    dout4 = dout.unflatten(1, grouped[1:3])
    for b0, b1, d0, d1 in p.blocks():
        raw, dt = p.step_sizes(b0, b1, d0, d1)
        u_t = p.time_major("u", p.u, b0, b1, d0, d1)
        B_t = p.time_major_bc("B", B, b0, b1)
        a, dtu, h = p.states(dt, u_t, B_t, d0, d1, reverse)
        C_t = p.time_major_bc("C", C, b0, b1)
        dy = p.time_major("dy", dout4, b0, b1, d0, d1)
        if p.z is not None:
            z_t = p.time_major("z", p.z, b0, b1, d0, d1)
            y = p.contract_c(h, C_t, d0, d1, u_t)
            sig = torch.sigmoid(z_t)
            dz_t = dy * y * sig * (1 + z_t * (1 - sig))
            dz.unflatten(1, grouped[1:3])[b0:b1, :, d0:d1] = _to_batch_major(dz_t)
            dy *= z_t * sig
        if p.D is not None:
            dD[:, d0:d1] += (dy * u_t).sum((0, 1))
        prod = p.buffers.take("prod", tuple(h.shape))
        dC[b0:b1] += _to_batch_major(torch.mul(h, dy.unsqueeze(-1), out=prod).sum(3))
        # g (gradient w.r.t. the states) by the adjoint scan of C * dy.
        g = p.buffers.take("g", tuple(h.shape))
        torch.mul(C_t, dy.unsqueeze(-1), out=g)
        rows = g.numel() // p.length
        scratch = p.buffers.take("scratch", (p.length, rows))
        _adjoint_scan_(a.view(p.length, rows), g.view(p.length, rows), reverse, scratch)
        # a_t * h_prev = h_t - v_t, so dL/d(dt*A) = g * (h - v) needs no shifted copy of h.
        h.sub_(torch.mul(dtu.unsqueeze(-1), B_t, out=prod)).mul_(g)
        g_b = torch.mul(g, B_t, out=prod).sum(-1)
        du_t = g_b * dt
        if p.D is not None:
            du_t.addcmul_(dy, p.D[:, d0:d1])
        dB[b0:b1] += _to_batch_major(torch.mul(g, dtu.unsqueeze(-1), out=prod).sum(3))
        ddt = g_b.mul_(u_t)
        ddt += torch.mul(h, p.A[:, d0:d1], out=prod).sum(-1)
        dA[:, d0:d1] += torch.mul(h, dt.unsqueeze(-1), out=prod).sum((0, 1))
        if p.softplus:
            ddt *= torch.sigmoid(raw)
        if dbias is not None:
            dbias[:, d0:d1] += ddt.sum((0, 1))
        du.unflatten(1, grouped[1:3])[b0:b1, :, d0:d1] = _to_batch_major(du_t)
        ddelta.unflatten(1, grouped[1:3])[b0:b1, :, d0:d1] = _to_batch_major(ddt)
    return (
        du,
        ddelta,
        dA.view(A.shape),
        dB.to(B.dtype),
        dC.to(C.dtype),
        None if dD is None else dD.view(D.shape),
        dz,
        None if dbias is None else dbias.view(delta_bias.shape),
    )
