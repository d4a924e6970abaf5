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
are formed (never exp of a positive sum), so nothing overflows for A < 0. The work is
done in blocks of about `_BLOCK_ELEMENTS` state elements: whole sequences of several
channels, or, where one sequence holds more, spans of it with the state carried from span
to span (the backward takes the spans last to first, from entering states saved by a
forward sweep, and carries the adjoint back), so the scratch is bounded at any length.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# Elements of one fp32 state-sized buffer per block (6 MiB); about eight such buffers live
# at once in the backward, ~50 MiB whatever the problem size. Measured on the project's
# 2-core machine (session 38, fwd / fwd+bwd seconds against the 8M elements of before):
# (2, 256, 4096, N=16) 0.070 / 0.269 against 0.132 / 0.467, (2, 64, 32768) 0.195 / 0.790
# against 0.236 / 0.932, (2, 512, 512) 0.023 / 0.079 against 0.040 / 0.139; blocks of
# 0.5-4M elements were slower or level on one thread and on two.
_BLOCK_ELEMENTS = 3 << 19


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


def _blocks(batch: int, groups: int, per_group: int, length: int, nstate: int):
    """((b0, b1, d0, d1), span) so each block holds about _BLOCK_ELEMENTS state elements:
    whole sequences of several channels (span = length) where one channel's sequence fits,
    otherwise one channel of each group in spans of `span` positions (the state carried
    across them), so a block's scratch stays bounded however long the sequence."""
    row_elements = length * nstate
    rows = _BLOCK_ELEMENTS // row_elements
    span = length
    if groups * per_group <= rows:
        nd, nb = per_group, max(1, min(batch, rows // (groups * per_group)))
    elif groups <= rows:
        nd, nb = rows // groups, 1
    else:
        nd, nb = 1, 1
        span = max(1, _BLOCK_ELEMENTS // (groups * nstate))
    for b0 in range(0, batch, nb):
        for d0 in range(0, per_group, nd):
            yield (b0, min(batch, b0 + nb), d0, min(per_group, d0 + nd)), span


def _state_dot(x: torch.Tensor, bc_t: torch.Tensor) -> torch.Tensor:
    """sum_n x * B (or C) over the states, (t, nb, G, nd, N) x (t, nb, G, 1, N) ->
    (t, nb, G, nd): a batched product, which reads x once and writes no state-sized
    temporary (twice as fast as a product and a sum on the project's CPU machine)."""
    return torch.matmul(x, bc_t.transpose(-1, -2)).squeeze(-1)


def _spans(length: int, span: int, reverse: bool) -> list[tuple[int, int]]:
    """(t0, t1) position ranges of `span` positions covering the sequence, in scan order."""
    spans = [(t0, min(length, t0 + span)) for t0 in range(0, length, span)]
    return spans[::-1] if reverse else spans


class _Problem:
    """Shapes, grouped views and per-block time-major fp32 copies of the inputs.

    A block is (b0, b1, d0, d1) (batches, channels within each group) and a span (t0, t1)
    of positions; its time-major copies are (t1 - t0, nb, G, nd) and its state
    (t1 - t0, nb, G, nd, N)."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool,
                 reverse: bool) -> None:
        self.batch, self.dim, self.length = u.shape
        self.groups, self.nstate = B.shape[1], B.shape[2]
        self.per_group = self.dim // self.groups
        grouped = (self.batch, self.groups, self.per_group, self.length)
        self.u = u.unflatten(1, grouped[1:3])
        self.delta = delta.unflatten(1, grouped[1:3])
        self.z = None if z is None else z.unflatten(1, grouped[1:3])
        self.B, self.C = B, C
        self.A = A.view(self.groups, self.per_group, self.nstate)
        self.D = None if D is None else D.view(self.groups, self.per_group)
        self.bias = None if delta_bias is None else delta_bias.view(self.groups, self.per_group)
        self.softplus = delta_softplus
        self.reverse = reverse
        # a span's first and last position in scan order
        self.first, self.last = (-1, 0) if reverse else (0, -1)
        # fp32 state; float64 inputs (gradcheck) keep float64 throughout.
        self.acc = torch.float64 if u.dtype == torch.float64 else torch.float32
        self.buffers = _Buffers(u.device, self.acc)

    def blocks(self):
        return _blocks(self.batch, self.groups, self.per_group, self.length, self.nstate)

    @staticmethod
    def channels(block) -> slice:
        """The block's channels within each group, for the (G, dim/G) parameters."""
        return slice(block[2], block[3])

    def spans(self, span: int) -> list[tuple[int, int]]:
        return _spans(self.length, span, self.reverse)

    def time_major(self, name: str, x: torch.Tensor, block, span):
        """x (batch, G, dim/G, L) block -> contiguous fp32 (t1 - t0, nb, G, nd), one copy."""
        (b0, b1, d0, d1), (t0, t1) = block, span
        part = x[b0:b1, :, d0:d1, t0:t1].permute(3, 0, 1, 2)
        return self.buffers.take(name, tuple(part.shape)).copy_(part)

    def time_major_bc(self, name: str, x: torch.Tensor, block, span):
        """B or C block (nb, G, N, L) -> contiguous fp32 (t1 - t0, nb, G, 1, N)."""
        (b0, b1, _, _), (t0, t1) = block, span
        part = x[b0:b1, ..., t0:t1].permute(3, 0, 1, 2)
        return self.buffers.take(name, tuple(part.shape)).copy_(part).unsqueeze(3)

    def step_sizes(self, block, span):
        """(raw, dt): delta (+ bias) before softplus, and the step size dt, time-major."""
        raw = self.time_major("raw", self.delta, block, span)
        if self.bias is not None:
            raw += self.bias[:, self.channels(block)]
        if not self.softplus:
            return raw, raw
        return raw, F.softplus(raw)

    def states(self, dt, u_t, B_t, block, entering=None):
        """(a, dtu, h): decays exp(dt*A), dt*u, and the states h (built in place of the
        drives dt*u*B, which are not kept), from the state `entering` the span (None:
        zero, the sequence's start)."""
        shape = (*dt.shape, self.nstate)
        a = self.buffers.take("a", shape)
        torch.mul(dt.unsqueeze(-1), self.A[:, self.channels(block)], out=a).exp_()
        dtu = self.buffers.take("dtu", tuple(dt.shape))
        torch.mul(dt, u_t, out=dtu)
        h = self.buffers.take("h", shape)
        torch.mul(dtu.unsqueeze(-1), B_t, out=h)
        if entering is not None:
            h[self.first].addcmul_(a[self.first], entering)
        a2, h2, scratch = self.scan_views(a, h)
        _linear_scan_(a2, h2, self.reverse, scratch)
        return a, dtu, h

    def scan_views(self, a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(a, x, scratch) as the scans take them: (positions, rows) views of the decays
        and of the tensor scanned in place, and the scratch."""
        length = a.shape[0]
        rows = a.numel() // length
        scratch = self.buffers.take("scratch", (length, rows))
        return a.view(length, rows), x.view(length, rows), scratch

    def span_states(self, block, span, entering=None):
        """(raw, dt, u_t, B_t, a, dtu, h) of one span (`states`, from its inputs)."""
        raw, dt = self.step_sizes(block, span)
        u_t = self.time_major("u", self.u, block, span)
        B_t = self.time_major_bc("B", self.B, block, span)
        return (raw, dt, u_t, B_t, *self.states(dt, u_t, B_t, block, entering))

    def entering_states(self, block, spans) -> list:
        """The state entering each span (None for the first): a sweep over all but the
        last span, whose states the backward then computes again span by span."""
        entering = [None]
        for span in spans[:-1]:
            h = self.span_states(block, span, entering[-1])[-1]
            entering.append(h[self.last].clone())
        return entering

    def contract_c(self, h, C_t, block, u_t):
        """y = sum_n C h (+ D u), time-major (t1 - t0, nb, G, nd)."""
        y = _state_dot(h, C_t)
        if self.D is not None:
            y.addcmul_(u_t, self.D[:, self.channels(block)])
        return y


def _to_batch_major(x_t: torch.Tensor) -> torch.Tensor:
    """(L, nb, G, nd) time-major -> (nb, G, nd, L) view."""
    return x_t.permute(1, 2, 3, 0)


def selective_scan_fwd_chunked(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, reverse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward host function (contract in interface.py): returns (out, last_state)."""
    p = _Problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    last_state = torch.empty(p.batch, p.dim, p.nstate, dtype=p.acc, device=u.device)
    out4 = out.view(p.batch, p.groups, p.per_group, p.length)
    last4 = last_state.view(p.batch, p.groups, p.per_group, p.nstate)
    for block, span_length in p.blocks():
        (b0, b1, d0, d1), carried = block, None
        for span in p.spans(span_length):
            _, _, u_t, _, _, _, h = p.span_states(block, span, carried)
            # the next span overwrites h: its entering state is kept apart
            carried = p.buffers.take("carried", h.shape[1:]).copy_(h[p.last])
            y = p.contract_c(h, p.time_major_bc("C", C, block, span), block, u_t)
            if p.z is not None:
                y *= F.silu(p.time_major("z", p.z, block, span))
            out4[b0:b1, :, d0:d1, span[0]:span[1]] = _to_batch_major(y)
        last4[b0:b1, :, d0:d1] = carried
    return out, last_state


class _Gradients:
    """The backward's outputs, filled block by block and span by span."""

    def __init__(self, p: _Problem, u, delta, B, C, z) -> None:
        grouped = (p.batch, p.groups, p.per_group, p.length)
        self.du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
        self.ddelta = torch.empty(delta.shape, dtype=delta.dtype, device=u.device)
        self.dz = None if z is None else torch.empty(z.shape, dtype=z.dtype, device=u.device)
        self.du4 = self.du.unflatten(1, grouped[1:3])
        self.ddelta4 = self.ddelta.unflatten(1, grouped[1:3])
        self.dz4 = None if z is None else self.dz.unflatten(1, grouped[1:3])
        zeros = functools.partial(torch.zeros, dtype=p.acc, device=u.device)
        self.dA = zeros(p.groups, p.per_group, p.nstate)
        self.dD = None if p.D is None else zeros(p.groups, p.per_group)
        self.dbias = None if p.bias is None else zeros(p.groups, p.per_group)
        self.dB, self.dC = zeros(B.shape), zeros(C.shape)


def _span_gradients(p: _Problem, grads: _Gradients, dout4, block, span, entering, adjoint):
    """Add one span's share to `grads`; return the adjoint it passes on (a g at its first
    position in scan order: what enters the span before it through the decay)."""
    (b0, b1, d0, d1), (t0, t1) = block, span
    raw, dt, u_t, B_t, a, dtu, h = p.span_states(block, span, entering)
    C_t = p.time_major_bc("C", p.C, block, span)
    dy = p.time_major("dy", dout4, block, span)
    if p.z is not None:
        z_t = p.time_major("z", p.z, block, span)
        y = p.contract_c(h, C_t, block, u_t)
        sig = torch.sigmoid(z_t)
        dz_t = dy * y * sig * (1 + z_t * (1 - sig))
        grads.dz4[b0:b1, :, d0:d1, t0:t1] = _to_batch_major(dz_t)
        dy *= z_t * sig
    if p.D is not None:
        grads.dD[:, d0:d1] += (dy * u_t).sum((0, 1))
    prod = p.buffers.take("prod", tuple(h.shape))
    dC_t = torch.mul(h, dy.unsqueeze(-1), out=prod).sum(3)
    grads.dC[b0:b1, ..., t0:t1] += _to_batch_major(dC_t)
    # g (gradient w.r.t. the states) by the adjoint scan of C * dy, plus what enters from
    # the span after this one in scan order
    g = p.buffers.take("g", tuple(h.shape))
    torch.mul(C_t, dy.unsqueeze(-1), out=g)
    if adjoint is not None:
        g[p.last] += adjoint
    a2, g2, scratch = p.scan_views(a, g)
    _adjoint_scan_(a2, g2, p.reverse, scratch)
    passed = p.buffers.take("adjoint", g.shape[1:])
    torch.mul(a[p.first], g[p.first], out=passed)
    # a_t * h_prev = h_t - v_t, so dL/d(dt*A) = g * (h - v) needs no shifted copy of h.
    h.sub_(torch.mul(dtu.unsqueeze(-1), B_t, out=prod)).mul_(g)
    g_b = _state_dot(g, B_t)
    du_t = g_b * dt
    if p.D is not None:
        du_t.addcmul_(dy, p.D[:, d0:d1])
    dB_t = torch.mul(g, dtu.unsqueeze(-1), out=prod).sum(3)
    grads.dB[b0:b1, ..., t0:t1] += _to_batch_major(dB_t)
    ddt = g_b.mul_(u_t)
    ddt += torch.mul(h, p.A[:, d0:d1], out=prod).sum(-1)
    grads.dA[:, d0:d1] += torch.mul(h, dt.unsqueeze(-1), out=prod).sum((0, 1))
    if p.softplus:
        ddt *= torch.sigmoid(raw)
    if grads.dbias is not None:
        grads.dbias[:, d0:d1] += ddt.sum((0, 1))
    grads.du4[b0:b1, :, d0:d1, t0:t1] = _to_batch_major(du_t)
    grads.ddelta4[b0:b1, :, d0:d1, t0:t1] = _to_batch_major(ddt)
    return passed


def selective_scan_bwd_chunked(
    dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, reverse: bool
) -> tuple:
    """Backward host function (contract in interface.py): recomputes the states from the
    inputs and returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None for absent ones.
    A block of several spans takes them against scan order, each from its entering state
    (`_Problem.entering_states`) and the adjoint the span after it passed on."""
    p = _Problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    grads = _Gradients(p, u, delta, B, C, z)
    dout4 = dout.unflatten(1, (p.groups, p.per_group))
    for block, span_length in p.blocks():
        spans = p.spans(span_length)
        entering = p.entering_states(block, spans)
        adjoint = None
        for span, state in zip(spans[::-1], entering[::-1]):
            adjoint = _span_gradients(p, grads, dout4, block, span, state, adjoint)
    return (
        grads.du,
        grads.ddelta,
        grads.dA.view(A.shape),
        grads.dB.to(B.dtype),
        grads.dC.to(C.dtype),
        None if grads.dD is None else grads.dD.view(D.shape),
        grads.dz,
        None if grads.dbias is None else grads.dbias.view(delta_bias.shape),
    )
