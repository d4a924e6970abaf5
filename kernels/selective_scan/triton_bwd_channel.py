"""What the backward's main kernel (triton_bwd.py) reads for each channel of its block.

Helpers of `_bwd_kernel`, apart so that the kernel's module stays readable: with
PREFETCH it calls them one channel ahead of the channel it computes.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import _COMPILED


@triton.jit
def _channel_vectors(d, b, offs_l, mask_l, offs_next, mask_next, delta_ptr, u_ptr,
                     dout_ptr, z_ptr, s_db, s_dd, s_dl, s_ub, s_ud, s_ul, s_ob, s_od, s_ol,
                     s_zb, s_zd, s_zl, LOAD_Z: tl.constexpr, LOAD_NEXT: tl.constexpr):
    """Channel d's raw dt at the chunk's positions and (LOAD_NEXT) at their successors in
    scan order (else dt again), u, dout and z (u in z's place unless LOAD_Z), fp32, 0
    where masked."""
    delta_row = delta_ptr + b * s_db + d * s_dd
    dt_raw = tl.load(delta_row + offs_l * s_dl, mask=mask_l, other=0.0).to(tl.float32)
    if LOAD_NEXT:
        dt_next = tl.load(delta_row + offs_next * s_dl, mask=mask_next,
                          other=0.0).to(tl.float32)
    else:
        dt_next = dt_raw
    u = tl.load(u_ptr + b * s_ub + d * s_ud + offs_l * s_ul, mask=mask_l,
                other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + b * s_ob + d * s_od + offs_l * s_ol, mask=mask_l,
                   other=0.0).to(tl.float32)
    if LOAD_Z:
        zz = _load_z(z_ptr, b, d, offs_l, mask_l, s_zb, s_zd, s_zl)
    else:
        zz = u
    return dt_raw, dt_next, u, dout, zz


@triton.jit
def _channel_A(d, offs_n, mask_n, A_ptr, N):
    return tl.load(A_ptr + d * N + offs_n, mask=mask_n, other=0.0)


@triton.jit
def _channel_boundaries(d, b, dim, n_chunks, c_prev, c_next, offs_n, mask_h0, mask_q0,
                        H_ptr, Q_ptr, N, MULTI_CHUNK: tl.constexpr):
    """Channel d's forward state entering the chunk and adjoint entering it from the far
    end, 0 where masked (the callers' masks hold whether a neighbour chunk exists: a
    select after the load would wait for it at once); 0 with one chunk."""
    h0 = 0.0
    q0 = 0.0
    if MULTI_CHUNK:
        row = b * dim + d
        h0 = tl.load(H_ptr + (row * n_chunks + c_prev) * N + offs_n, mask=mask_h0, other=0.0)
        q0 = tl.load(Q_ptr + (row * n_chunks + c_next) * N + offs_n, mask=mask_q0, other=0.0)
    return h0, q0


@triton.jit
def _load_z(z_ptr, b, d, offs_l, mask_l, s_zb, s_zd, s_zl):
    return tl.load(z_ptr + b * s_zb + d * s_zd + offs_l * s_zl, mask=mask_l,
                   other=0.0).to(tl.float32)


@triton.jit
def _cache_boundaries(d, b, dim, n_chunks, c_prev, c_next, offs_n, H_ptr, Q_ptr, N):
    """Ask L1 for channel d's boundary states (`prefetch.global.L1`): no register held
    and no wait, where reading them a channel ahead (AHEAD 2) spills in 2-byte inputs.
    The request is inline PTX: a hint with nothing to compute, left out where interpreted."""
    if _COMPILED:
        row = b * dim + d
        n = tl.minimum(offs_n, N - 1)  # every address inside the tensors
        _prefetch_l1(H_ptr + (row * n_chunks + c_prev) * N + n)
        _prefetch_l1(Q_ptr + (row * n_chunks + c_next) * N + n)


@triton.jit
def _prefetch_l1(ptrs):
    tl.inline_asm_elementwise("prefetch.global.L1 [$1];\n mov.u32 $0, 0;", "=r,l", [ptrs],
                              dtype=tl.int32, is_pure=False, pack=1)
