"""Offline study: is a backward whose two scans never meet accurate in fp32? (No GPU.)

The backward's main kernel (`triton_bwd._bwd_kernel`) holds the forward states h and the
adjoint g of a chunk at once, because ddelta and dA need, at every position t and state n,
w_t = g_t a_t h_(t-1) (a_t = exp(A dt_t)). That live set (255 registers, 2 warps a
scheduler) is what bounds the kernel (kernels README, "What bounds ..."). Summing the
recurrences h_s = a_s h_(s-1) + v_s and g_s = a_(s+1) g_(s+1) + C_s dy_s over a chunk
ending at e telescopes to

    w_t = a_(e+1) g_(e+1) h_e + sum_(s = t..e) (C_s dy_s h_s - g_s v_s)

so sum_n A_n w_t (ddelta's term) is a per-chunk constant plus a reverse cumulative sum of
P_s - Q_s with P_s = dy_s sum_n A_n C_s h_s (the forward scan's alone) and Q_s = dt_s u_s
sum_n A_n g_s B_s (the adjoint's alone), and dA_n = sum_t dt_t w_t splits the same way
with the chunk's inclusive cumulative dt. The boundary term q0 h_e uses the states the
kernel already reads (q0 = a_(e+1) g_(e+1) entering from the far end, h_e the state
leaving the chunk). A backward could then run one scan, keep a (K,) vector, and run the
other, or split into two kernels with half the live tiles each.

This script measures the rounding of that form against the direct one, both in fp32 from
the same fp32 states, against float64 throughout, in the regimes that could cancel
(decays near 1: long memory, large h and g):

    python scripts/study_split_backward.py [--length 4096] [--chunk 64]
"""

from __future__ import annotations

import argparse

import torch


def _states(u, dt, A, B, C, dy):
    """h (forward) and g (adjoint) of one sequence per channel, by the recurrences.
    u, dt, dy: (D, L); A: (D, N); B, C: (N, L). Returns a, h, g as (D, N, L)."""
    a = torch.exp(A[:, :, None] * dt[:, None, :])
    v = B[None] * (dt * u)[:, None, :]
    h = torch.zeros_like(a)
    g = torch.zeros_like(a)
    length = u.shape[1]
    state = torch.zeros_like(a[..., 0])
    for t in range(length):
        state = a[..., t] * state + v[..., t]
        h[..., t] = state
    adj = torch.zeros_like(state)
    for t in range(length - 1, -1, -1):
        nxt = a[..., t + 1] if t + 1 < length else torch.zeros_like(state)
        adj = nxt * adj + C[None, :, t] * dy[:, None, t]
        g[..., t] = adj
    return a, v, h, g


def direct_terms(A, dt, a, h, g):
    """(sum_n A_n w_t, dA) from w_t = g_t a_t h_(t-1), as the kernel forms them."""
    h_prev = torch.nn.functional.pad(h[..., :-1], (1, 0))
    w = g * a * h_prev
    return (A[:, :, None] * w).sum(1), (w * dt[:, None, :]).sum(-1)


def split_terms(A, dt, dy, B, C, a, v, h, g, chunk: int):
    """The same two from the telescoped form, chunk by chunk (see the module's docstring)."""
    dim, n_state, length = h.shape
    T = torch.empty(dim, length, dtype=h.dtype)
    dA = torch.zeros(dim, n_state, dtype=h.dtype)
    for c0 in range(0, length, chunk):
        e = min(c0 + chunk, length) - 1
        sl = slice(c0, e + 1)
        q0 = a[..., e + 1] * g[..., e + 1] if e + 1 < length else torch.zeros_like(h[..., e])
        bnd = q0 * h[..., e]  # (D, N)
        fwd_part = C[None, :, sl] * dy[:, None, sl] * h[..., sl]  # the forward scan's
        adj_part = g[..., sl] * v[..., sl]  # the adjoint's
        P = (A[:, :, None] * fwd_part).sum(1)
        Q = (A[:, :, None] * adj_part).sum(1)
        rev = torch.flip(torch.cumsum(torch.flip(P - Q, (-1,)), -1), (-1,))
        T[:, sl] = (A * bnd).sum(1)[:, None] + rev
        cum = torch.cumsum(dt[:, sl], -1)
        dA += bnd * cum[:, -1:] + (cum[:, None, :] * (fwd_part - adj_part)).sum(-1)
    return T, dA


def _rel(x, ref) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def study(length: int, chunk: int, dt_scale: float, a_scale: float, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    dim, n_state = 8, 16
    u = torch.randn(dim, length, generator=gen, dtype=torch.float64)
    dt = torch.rand(dim, length, generator=gen, dtype=torch.float64) * dt_scale
    A = -torch.rand(dim, n_state, generator=gen, dtype=torch.float64) * a_scale
    B = torch.randn(n_state, length, generator=gen, dtype=torch.float64)
    C = torch.randn(n_state, length, generator=gen, dtype=torch.float64)
    dy = torch.randn(dim, length, generator=gen, dtype=torch.float64)
    a64, _, h64, g64 = _states(u, dt, A, B, C, dy)
    truth = direct_terms(A, dt, a64, h64, g64)
    u, dt, A, B, C, dy = (x.float() for x in (u, dt, A, B, C, dy))
    a, v, h, g = _states(u, dt, A, B, C, dy)
    direct = direct_terms(A, dt, a, h, g)
    split = split_terms(A, dt, dy, B, C, a, v, h, g, chunk)
    return (_rel(direct[0], truth[0]), _rel(split[0], truth[0]),
            _rel(direct[1], truth[1]), _rel(split[1], truth[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=64)
    args = p.parse_args()
    print(f"L = {args.length}, chunk {args.chunk}; max error / max |truth|, fp32 against float64")
    print(f"{'regime':<34}{'ddt term direct':>16}{'split':>10}{'dA direct':>12}{'split':>10}")
    regimes = [("typical (dt < 0.1, |A| < 1)", 0.1, 1.0),
               ("long memory (dt < 1e-3, |A| < 0.1)", 1e-3, 0.1),
               ("very long (dt < 1e-4, |A| < 0.01)", 1e-4, 0.01),
               ("short memory (dt < 1, |A| < 8)", 1.0, 8.0)]
    for label, dt_scale, a_scale in regimes:
        errs = study(args.length, args.chunk, dt_scale, a_scale)
        print(f"{label:<34}" + "".join(f"{e:>{w}.1e}" for e, w in zip(errs, (16, 10, 12, 10))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
