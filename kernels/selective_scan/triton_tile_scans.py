"""Scans of (N, CHUNK) register tiles along their positions (axis 1), for the tile kernels.

h_t = a_t h_(t -+ 1) + b_t. Forwards `tl.associative_scan` does it; against the tile's
order triton 3.6 would flip the whole tile around a forward scan, so the scans here go by
groups: each thread composes the positions it holds in registers, the lanes scan only the
groups' maps, forwards, and read each group's entering value back with `tl.gather`.
Maths in README.md, "Triton kernels".
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import _affine_combine


@triton.constexpr_function
def _group_size(dtype, chunk):
    """Positions a thread holds of an (N, CHUNK) tile loaded from memory of `dtype` along
    positions: 16 bytes (triton lays such tiles out for 16-byte loads: 4 fp32, 8 bf16),
    at most the chunk. The scans by groups compose that many positions in registers."""
    return min(128 // dtype.primitive_bitwidth, chunk)


@triton.jit
def _groups(x, NP: tl.constexpr, CHUNK: tl.constexpr, K: tl.constexpr):
    """x (NP, CHUNK) as a tuple of K (NP, CHUNK // K) tiles, K = 4 or 8: the tile of the
    positions Kj + i is the i-th. Register renames wherever x's layout holds K
    consecutive positions a thread (`_group_size`)."""
    if K == 4:
        x0, x2, x1, x3 = _split_pairs(tl.reshape(x, (NP, CHUNK // 4, 2, 2)))
        return (x0, x1, x2, x3)
    else:
        even, odd = tl.split(tl.reshape(x, (NP, CHUNK // 8, 2, 2, 2)))
        x0, x4, x2, x6 = _split_pairs(even)
        x1, x5, x3, x7 = _split_pairs(odd)
        return (x0, x1, x2, x3, x4, x5, x6, x7)


@triton.jit
def _split_pairs(x):
    """(..., 2, 2) -> the four (...) tiles [0, 0], [1, 0], [0, 1], [1, 1]."""
    even, odd = tl.split(x)
    x00, x10 = tl.split(even)
    x01, x11 = tl.split(odd)
    return x00, x10, x01, x11


@triton.jit
def _from_groups(parts, NP: tl.constexpr, CHUNK: tl.constexpr, K: tl.constexpr):
    """The inverse of `_groups` (register renames where a group shares a thread)."""
    if K == 4:
        whole = tl.join(tl.join(parts[0], parts[2]), tl.join(parts[1], parts[3]))
    else:
        whole = tl.join(
            tl.join(tl.join(parts[0], parts[4]), tl.join(parts[2], parts[6])),
            tl.join(tl.join(parts[1], parts[5]), tl.join(parts[3], parts[7])))
    return tl.reshape(whole, (NP, CHUNK))


@triton.jit
def _scan_tile(a, b, NP: tl.constexpr, CHUNK: tl.constexpr, REVERSE: tl.constexpr,
               K: tl.constexpr = 4):
    """h_t = a_t h_(t -+ 1) + b_t along axis 1 of (NP, CHUNK) tiles, from h = 0 outside.

    Forward: tl.associative_scan. REVERSE: triton 3.6 lowers tl.associative_scan(reverse=
    True) through a flip of the whole tile, 544 warp shuffles on an (16, 64) fp32 tile on
    one warp against 64 forward (3.9: 160). Here each thread first composes its K
    (`_group_size`) consecutive positions in registers, the lanes then scan only those
    groups' maps (`_entering_groups`), and each position applies the map of what follows
    its group.
    """
    if not REVERSE or CHUNK < 4:
        _, h = tl.associative_scan((a, b), axis=1, combine_fn=_affine_combine,
                                   reverse=REVERSE)
    else:  # (an else, not an early return: the compiler would build this for CHUNK < 4)
        h = _reverse_scan_by_groups(a, b, NP, CHUNK, K)
    return h


@triton.jit
def _entering_groups(group_a, group_b, DOWN: tl.constexpr):
    """The value entering each group of positions from the groups before it in the flow
    (towards lower positions if DOWN), 0 at the start: the exclusive scan of the groups'
    affine maps (a, b) along axis 1.

    An inclusive scan forwards, read one group back with `tl.gather`; DOWN flips the groups
    with a gather first and reads the result back flipped. Each gather is one shuffle a
    value where a group sits on one lane, and triton 3.6 lowers an exclusive (pairs) scan
    reversed through flips of four values: offline SASS for sm_90 of the adjoint scan of
    a (16, 64) fp32 tile, 320 instructions and 80 shuffles against 456 and 176."""
    W: tl.constexpr = group_a.shape[1]
    j = tl.broadcast_to(tl.arange(0, W)[None, :], group_a.shape)
    if DOWN:
        flipped = W - 1 - j
        group_a = tl.gather(group_a, flipped, axis=1)
        group_b = tl.gather(group_b, flipped, axis=1)
        before = W - 2 - j  # group j + 1, flipped
        first = j == W - 1
    else:
        before = j - 1
        first = j == 0
    _, inclusive = tl.associative_scan((group_a, group_b), axis=1,
                                       combine_fn=_affine_combine)
    entering = tl.gather(inclusive, tl.maximum(before, 0), axis=1)
    return tl.where(first, 0.0, entering)


@triton.jit
def _reverse_scan_by_groups(a, b, NP: tl.constexpr, CHUNK: tl.constexpr, K: tl.constexpr):
    """`_scan_tile` with REVERSE, CHUNK >= 4: groups of K positions, or 4 in a shorter
    chunk."""
    G: tl.constexpr = K if CHUNK >= K else 4
    ap = _groups(a, NP, CHUNK, G)
    bp = _groups(b, NP, CHUNK, G)
    group_a = ap[G - 1]
    group_b = bp[G - 1]
    for i in tl.static_range(G - 2, -1, -1):
        group_a = group_a * ap[i]
        group_b = group_b * ap[i] + bp[i]
    h = ap[G - 1] * _entering_groups(group_a, group_b, True) + bp[G - 1]
    hs = (h,)
    for i in tl.static_range(G - 2, -1, -1):
        h = ap[i] * h + bp[i]
        hs = (h,) + hs
    return _from_groups(hs, NP, CHUNK, G)


@triton.jit
def _adjoint_scan_by_groups(d, c, NP: tl.constexpr, CHUNK: tl.constexpr,
                            REVERSE: tl.constexpr, K: tl.constexpr = 4):
    """The adjoint of the scan with decays d along axis 1 (CHUNK >= 4), from d as it is:
    g_t = d_s g_s + c_t with s the position after t in the forward scan's order (t + 1,
    or t - 1 under REVERSE), g = 0 past the end.

    Written with q = d g at a group's far end (the side g comes from), each group of K
    positions (`_group_size`; 4 in a shorter chunk) maps the q entering it to the q it
    passes on with its own decays only (e.g. forward, K = 4: q_j = d0 (c0 + d1 (c1 + d2
    (c2 + d3 (c3 + q_(j+1)))))), so the backward needs neither dt at shifted positions nor
    its softplus and load. The lanes scan the groups' maps as `_reverse_scan_by_groups`
    does, against the forward's order.
    """
    G: tl.constexpr = K if CHUNK >= K else 4
    # the groups in the order g flows through them: from position 0 upwards under REVERSE
    dp = _flow_order(_groups(d, NP, CHUNK, G), G, not REVERSE)
    cp = _flow_order(_groups(c, NP, CHUNK, G), G, not REVERSE)
    group_a = dp[0]
    group_b = cp[0] * dp[0]
    for i in tl.static_range(1, G):
        group_a = group_a * dp[i]
        group_b = (group_b + cp[i]) * dp[i]
    g = _entering_groups(group_a, group_b, not REVERSE) + cp[0]
    gs = (g,)
    for i in tl.static_range(1, G):
        g = dp[i - 1] * g + cp[i]
        gs = gs + (g,)
    gs = _flow_order(gs, G, not REVERSE)
    return _from_groups(gs, NP, CHUNK, G)


@triton.jit
def _flow_order(parts, G: tl.constexpr, DOWN: tl.constexpr):
    """A tuple of G groups, reversed if DOWN (its own inverse): register renames only."""
    if DOWN:
        flipped = (parts[G - 1],)
        for i in tl.static_range(G - 2, -1, -1):
            flipped = flipped + (parts[i],)
        return flipped
    else:
        return parts
