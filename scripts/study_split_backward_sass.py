"""Offline study: registers and SASS of the backward split into two kernels (no GPU).

`scripts/study_split_backward.py` shows that the backward's coupling of the forward
states h and the adjoint g can be written from each scan alone plus the chunk's boundary
states. These two sketches are the main kernel (`triton_bwd._bwd_kernel`) cut along that
line, with the same helpers, layout and channel-vector read-ahead, z, D, delta_bias and
softplus, at bench row 1's plan (chunks of 64, one warp, whole chunks): the first half
scans h and writes dz, dC, P_s = dy_s sum_n A_n C_s h_s and its part of dA; the second
scans g and writes du, ddelta (reading P) and dB. Not kernels of the package (no masks,
no reverse-order or partial-chunk care, dA's partial layout simplified): they exist to be
compiled for sm_90 with Triton's bundled tools and counted against the single kernel,
also under register caps that would let an SM keep 12 (168) or 16 (128) warps:

    python scripts/study_split_backward_sass.py
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_sass_stats as kss  # noqa: E402

kss._import_kernels()
from medmamba_kernels.selective_scan.triton_bwd_channel import (  # noqa: E402
    _channel_A, _channel_boundaries, _channel_vectors)
from medmamba_kernels.selective_scan.triton_common import (  # noqa: E402
    _chunk_tile, _channel_range, _previous_chunk, _scan_edge_columns, _softplus)
from medmamba_kernels.selective_scan.triton_tile_scans import (  # noqa: E402
    _adjoint_scan_by_groups, _group_size, _scan_tile)


@triton.jit
def _vectors(d, b, offs_l, delta_ptr, u_ptr, dout_ptr, z_ptr, dim, length):
    """The main kernel's channel vectors (`_channel_vectors`) of contiguous (batch, dim, L)
    inputs over a whole chunk: (dt, u, dout, z)."""
    whole = tl.full(offs_l.shape, 1, tl.int1)
    dt, _, u, dout, zz = _channel_vectors(d, b, offs_l, whole, offs_l, whole, delta_ptr, u_ptr,
                                          dout_ptr, z_ptr, dim * length, length, 1,
                                          dim * length, length, 1, dim * length, length, 1,
                                          dim * length, length, 1, True, False)
    return dt, u, dout, zz


@triton.jit
def _program_tiles(B_ptr, C_ptr, n_bgd, n_cblk, groups, length, N, NP: tl.constexpr,
                   CHUNK: tl.constexpr):
    """A program's chunk and its B/C tiles (whole chunks, B and C contiguous)."""
    c, b, g, cblk, offs_n, _, offs_l, _, _ = _chunk_tile(n_bgd, n_cblk, groups, length, N,
                                                          NP, CHUNK)
    tile = (b * NP + offs_n[:, None]) * length + offs_l[None, :]
    Bt = tl.load(B_ptr + tile).to(tl.float32)
    Ct = tl.load(C_ptr + tile).to(tl.float32)
    return c, b, g, cblk, offs_n, offs_l, tile, Bt, Ct


@triton.jit
def _fwd_half(dout_ptr, u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, H_ptr,
              P_ptr, dz_ptr, dC_ptr, part_ptr, dim, groups, length, n_chunks, n_cblk, n_bgd,
              per_group, channel_block,
              N, NP: tl.constexpr, CHUNK: tl.constexpr, REVERSE: tl.constexpr):
    c, b, g, cblk, offs_n, offs_l, tile, Bt, Ct = _program_tiles(
        B_ptr, C_ptr, n_bgd, n_cblk, groups, length, N, NP, CHUNK)
    K: tl.constexpr = _group_size(B_ptr.dtype.element_ty, CHUNK)
    has_prev, c_prev = _previous_chunk(c, n_chunks, REVERSE)
    mask_h0 = offs_n < tl.where(has_prev, N, 0)
    h0_col, q0_col = _scan_edge_columns(CHUNK, REVERSE)
    dC_acc = tl.zeros([NP, CHUNK], dtype=tl.float32)
    d0, d_end = _channel_range(g, cblk, per_group, channel_block)
    n_dt, n_u, n_do, n_z = _vectors(d0, b, offs_l, delta_ptr, u_ptr, dout_ptr, z_ptr, dim,
                                    length)
    for d in range(d0, d_end):
        dt_raw, u, dout, zz = n_dt, n_u, n_do, n_z
        A = _channel_A(d, offs_n, offs_n < N, A_ptr, N)
        h0, _ = _channel_boundaries(d, b, dim, n_chunks, c_prev, c_prev, offs_n, mask_h0,
                                    mask_h0, H_ptr, H_ptr, N, True)
        d_ahead = tl.minimum(d + 1, d_end - 1)
        n_dt, n_u, n_do, n_z = _vectors(d_ahead, b, offs_l, delta_ptr, u_ptr, dout_ptr, z_ptr,
                                        dim, length)
        D = tl.load(D_ptr + d)
        dt = _softplus(dt_raw + tl.load(bias_ptr + d))
        A2 = A * 1.4426950408889634
        row = b * dim + d
        x = dt * u
        drive = Bt * x[None, :]
        decay = tl.exp2(A2[:, None] * dt[None, :])
        h = _scan_tile(decay, drive + tl.where(h0_col[None, :], decay * h0[:, None], 0.0),
                       NP, CHUNK, REVERSE, K)
        sz = tl.sigmoid(zz)
        ch = Ct * h
        y = tl.sum(ch, axis=0) + D * u
        dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
        tl.store(dz_ptr + row * length + offs_l, dz.to(dz_ptr.dtype.element_ty))
        dy = dout * zz * sz
        dC_acc += h * dy[None, :]
        P = dy * tl.sum(ch * A[:, None], axis=0)
        tl.store(P_ptr + row * length + offs_l, P)
        cum = tl.cumsum(dt, axis=0, reverse=REVERSE)
        dA1 = tl.sum(ch * (dy * cum)[None, :], axis=1)
        tl.store(part_ptr + (b * n_chunks + c) * dim * N + d * N + offs_n, dA1)
    tl.store(dC_ptr + tile, dC_acc.to(dC_ptr.dtype.element_ty))


@triton.jit
def _adj_half(dout_ptr, u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, H_ptr,
              Q_ptr, P_ptr, du_ptr, ddelta_ptr, dB_ptr, part_ptr, dim, groups, length,
              n_chunks, n_cblk, n_bgd, per_group, channel_block,
              N, NP: tl.constexpr, CHUNK: tl.constexpr, REVERSE: tl.constexpr):
    c, b, g, cblk, offs_n, offs_l, tile, Bt, Ct = _program_tiles(
        B_ptr, C_ptr, n_bgd, n_cblk, groups, length, N, NP, CHUNK)
    K: tl.constexpr = _group_size(B_ptr.dtype.element_ty, CHUNK)
    has_next, c_next = _previous_chunk(c, n_chunks, not REVERSE)
    mask_q0 = offs_n < tl.where(has_next, N, 0)
    h0_col, q0_col = _scan_edge_columns(CHUNK, REVERSE)
    dB_acc = tl.zeros([NP, CHUNK], dtype=tl.float32)
    d0, d_end = _channel_range(g, cblk, per_group, channel_block)
    n_dt, n_u, n_do, n_z = _vectors(d0, b, offs_l, delta_ptr, u_ptr, dout_ptr, z_ptr, dim,
                                    length)
    n_P = tl.load(P_ptr + (b * dim + d0) * length + offs_l)
    for d in range(d0, d_end):
        dt_raw, u, dout, zz, P = n_dt, n_u, n_do, n_z, n_P
        A = _channel_A(d, offs_n, offs_n < N, A_ptr, N)
        # the state leaving chunk c and the adjoint entering it from the far end
        he, q0 = _channel_boundaries(d, b, dim, n_chunks, c, c_next, offs_n, offs_n < N,
                                     mask_q0, H_ptr, Q_ptr, N, True)
        d_ahead = tl.minimum(d + 1, d_end - 1)
        n_dt, n_u, n_do, n_z = _vectors(d_ahead, b, offs_l, delta_ptr, u_ptr, dout_ptr, z_ptr,
                                        dim, length)
        n_P = tl.load(P_ptr + (b * dim + d_ahead) * length + offs_l)
        D = tl.load(D_ptr + d)
        dt_pre = dt_raw + tl.load(bias_ptr + d)
        dt = _softplus(dt_pre)
        A2 = A * 1.4426950408889634
        row = b * dim + d
        x = dt * u
        sz = tl.sigmoid(zz)
        dy = dout * zz * sz
        cdy = Ct * dy[None, :] + tl.where(q0_col[None, :], q0[:, None], 0.0)
        gadj = _adjoint_scan_by_groups(tl.exp2(A2[:, None] * dt[None, :]), cdy, NP, CHUNK,
                                       REVERSE, K)
        dB_acc += gadj * x[None, :]
        gBt = gadj * Bt
        gB = tl.sum(gBt, axis=0)
        Q = x * tl.sum(gBt * A[:, None], axis=0)
        bnd = q0 * he
        T = tl.sum(A * bnd, axis=0) + tl.cumsum(P - Q, axis=0, reverse=not REVERSE)
        ddt = (gB * u + T) * tl.sigmoid(dt_pre)
        du = gB * dt + D * dy
        tl.store(du_ptr + row * length + offs_l, du.to(du_ptr.dtype.element_ty))
        tl.store(ddelta_ptr + row * length + offs_l, ddt.to(ddelta_ptr.dtype.element_ty))
        cum = tl.cumsum(dt, axis=0, reverse=REVERSE)
        dA2 = tl.sum(gBt * (x * cum)[None, :], axis=1)  # g v cum, v = B x
        part = part_ptr + (b * n_chunks + c) * dim * (N + 2)
        tl.store(part + d * N + offs_n, bnd * tl.sum(dt, axis=0) - dA2)
        tl.store(part + dim * N + d, tl.sum(dy * u, axis=0))
        tl.store(part + dim * (N + 1) + d, tl.sum(ddt, axis=0))
    tl.store(dB_ptr + tile, dB_acc.to(dB_ptr.dtype.element_ty))


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    print(f"{'kernel':<24}{'dtype':<10}{'cap':>5}{'REG':>5}{'STACK':>7}{'total':>7}"
          f"{'SHFL':>6}{'MUFU':>6}{'LDL':>5}{'STL':>5}")
    L, D = 262144, 64
    base = dict(dim=D, groups=1, length=L, n_chunks=L // 64, n_cblk=1, n_bgd=2, per_group=D,
                channel_block=D, N=16, NP=16, CHUNK=64, REVERSE=False)
    io = ("dout_ptr", "u_ptr", "delta_ptr", "z_ptr", "B_ptr", "C_ptr", "dz_ptr", "dC_ptr",
          "dB_ptr", "du_ptr", "ddelta_ptr")
    single = kss._import_kernels()[3]._bwd_kernel  # triton_bwd's, the default
    for dtype in (torch.float32, torch.bfloat16):
        for name, fn in (("h half (dz, dC, P)", _fwd_half), ("g half (du, ddt, dB)", _adj_half)):
            for cap in (None, 168, 128):
                full = kss.kernel_arguments(fn, dtype, base, io)
                _row(name, dtype, cap, kss.stats(kss.compile_sm90(fn, full, 1, cap))[0])
        values = {**kss._row1_args(64, backward=True), "EVEN_L": dtype.itemsize == 4,
                  "PREFETCH": True, "AHEAD": 2 if dtype.itemsize == 4 else 0,
                  "CACHE_AHEAD": dtype.itemsize < 4}  # the host's defaults
        full = kss.kernel_arguments(single, dtype, values)
        for cap in (None, 168):
            _row("single kernel (today)", dtype, cap,
                 kss.stats(kss.compile_sm90(single, full, 1, cap))[0])
    return 0


def _row(name: str, dtype: torch.dtype, cap: int | None, s: dict) -> None:
    print(f"{name:<24}{str(dtype)[6:]:<10}{str(cap or '-'):>5}{s['REG']:>5}{s['STACK']:>7}"
          f"{s['total']:>7}{s['SHFL']:>6}{s['MUFU']:>6}{s['LDL']:>5}{s['STL']:>5}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
