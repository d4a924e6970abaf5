"""Triton forward of the selective scan, parallel over the sequence in chunks.

Three launches (maths in README.md, "Triton kernels"): chunk aggregates and the carry
scan over chunks (triton_common.py) give the true state entering every chunk; then
`_fwd_output_kernel` rescans each chunk from that state and writes the output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import (
    _affine_combine,
    _carry_kernel,
    seq_kernel,
    _decompose_pid,
    _load_dt,
    chunk_boundary_states,
    plan_launch,
)


@triton.jit
def _fwd_output_kernel(
    u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, H_ptr, out_ptr,
    dim, groups, length, n_chunks, n_cblk, n_bgd, per_group, channel_block,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    N, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_D: tl.constexpr, REVERSE: tl.constexpr, MULTI_CHUNK: tl.constexpr,
):
    """One chunk of one (batch, group), looping over a block of its channels.

    out is contiguous (batch, dim, L). With several chunks, H[b, d, c] is the state
    leaving chunk c; with one chunk, H is the last state (batch, dim, N), written here.
    """
    c, b, g, cblk = _decompose_pid(tl.program_id(0), n_bgd, n_cblk, groups)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    offs_l = c * CHUNK + tl.arange(0, CHUNK)
    mask_l = offs_l < length
    mask_nl = mask_n[:, None] & mask_l[None, :]
    Bt = tl.load(B_ptr + b * s_Bb + g * s_Bg + offs_n[:, None] * s_Bn
                 + offs_l[None, :] * s_Bl, mask=mask_nl, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + b * s_Cb + g * s_Cg + offs_n[:, None] * s_Cn
                 + offs_l[None, :] * s_Cl, mask=mask_nl, other=0.0).to(tl.float32)
    # the state entering this chunk leaves the previous chunk in scan order
    if REVERSE:
        has_prev = c + 1 < n_chunks
        c_prev = tl.minimum(c + 1, n_chunks - 1)
    else:
        has_prev = c > 0
        c_prev = tl.maximum(c - 1, 0)
    d0 = g * per_group + cblk * channel_block
    d_end = tl.minimum(d0 + channel_block, (g + 1) * per_group)
    for d in range(d0, d_end):
        dt = _load_dt(delta_ptr + b * s_db + d * s_dd, bias_ptr, d, offs_l, mask_l, s_dl,
                      HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + b * s_ub + d * s_ud + offs_l * s_ul, mask=mask_l,
                    other=0.0).to(tl.float32)
        A2 = tl.load(A_ptr + d * N + offs_n, mask=mask_n, other=0.0) * 1.4426950408889634
        row = b * dim + d
        if MULTI_CHUNK:
            h0 = tl.load(H_ptr + (row * n_chunks + c_prev) * N + offs_n, mask=mask_n,
                         other=0.0)
            h0 = tl.where(has_prev, h0, 0.0)
        else:
            h0 = tl.zeros([NP], dtype=tl.float32)
        decay = tl.exp2(A2[:, None] * dt[None, :])
        drive = Bt * (dt * u)[None, :]
        acum, hs = tl.associative_scan((decay, drive), axis=1, combine_fn=_affine_combine,
                                       reverse=REVERSE)
        h = acum * h0[:, None] + hs
        if not MULTI_CHUNK:
            if REVERSE:
                at_end = offs_l == 0
            else:
                at_end = offs_l == length - 1
            tl.store(H_ptr + row * N + offs_n, tl.sum(tl.where(at_end[None, :], h, 0.0), axis=1),
                     mask=mask_n)
        y = tl.sum(Ct * h, axis=0)
        if HAS_D:
            y += tl.load(D_ptr + d) * u
        if HAS_Z:
            zz = tl.load(z_ptr + b * s_zb + d * s_zd + offs_l * s_zl, mask=mask_l,
                         other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + row * length + offs_l, y.to(out_ptr.dtype.element_ty), mask=mask_l)


def _seq_plan(batch, dim, groups, length, itemsize, chunk=None, block_d=None, tt=None,
              target_programs=None):
    """(chunk, n_chunks, block_d, n_cblk, tt) for the sequential-in-chunk kernels."""
    per_group = dim // groups
    if tt is None:
        tt = max(1, 16 // itemsize)  # one 16-byte vector per thread and tile row
    if block_d is None:
        block_d = min(32, triton.next_power_of_2(per_group))
    block_d = triton.next_power_of_2(max(1, block_d))
    n_cblk = triton.cdiv(per_group, block_d)
    if chunk is None:
        target = target_programs or SEQ_TARGET_PROGRAMS
        want = max(1, target // (batch * groups * n_cblk))
        chunk = triton.next_power_of_2(triton.cdiv(length, want))
        chunk = max(SEQ_MIN_CHUNK, min(SEQ_MAX_CHUNK, chunk))
    chunk = triton.cdiv(chunk, tt) * tt
    if chunk >= length:  # one chunk: no carries
        chunk = triton.cdiv(length, tt) * tt
    n_chunks = triton.cdiv(length, chunk)
    if n_chunks * batch * groups * n_cblk >= 2**31:
        raise ValueError("selective scan too large for one launch; use a larger chunk")
    return chunk, n_chunks, block_d, n_cblk, tt


# Defaults measured on an H100 (.coord/kernel_notes.md).
SEQ_TARGET_PROGRAMS = 4096
SEQ_MIN_CHUNK = 32
SEQ_MAX_CHUNK = 2048


def seq_launch(kernel_args, *, u, delta, z, dout, A, B, C, D, delta_bias, H, out, last,
               S, E, Q, batch, dim, groups, length, plan, delta_softplus, reverse, output,
               do_fwd, do_bwd, multi, store_last, num_warps):
    """Launch the generated sequential kernel (triton_common.seq_kernel)."""
    chunk, n_chunks, block_d, n_cblk, tt = plan
    n_state = A.shape[1]
    kern = seq_kernel(n_state, tt)
    dummy = kernel_args
    zz = z if z is not None else delta
    oo = dout if dout is not None else delta
    uu = u if u is not None else delta
    kern[(n_chunks * batch * groups * n_cblk,)](
        uu, delta, zz, oo, A, B, C, D if D is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        H if H is not None else dummy, out if out is not None else dummy,
        last if last is not None else dummy, S if S is not None else dummy,
        E if E is not None else dummy, Q if Q is not None else dummy,
        dim, groups, length, n_chunks, n_cblk, batch * groups * n_cblk, dim // groups,
        *uu.stride(), *delta.stride(), *zz.stride(), *oo.stride(),
        *B.stride(), *C.stride(),
        BLOCK_D=block_d, CHUNK=chunk, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, HAS_Z=z is not None, HAS_D=D is not None, REVERSE=reverse,
        OUTPUT=output, DO_FWD=do_fwd, DO_BWD=do_bwd, MULTI_CHUNK=multi,
        STORE_LAST=store_last, num_warps=num_warps,
    )


def _fwd_seq(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out,
             chunk, channel_block, carry_block, num_warps, tt):
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    plan = _seq_plan(batch, dim, groups, length, u.element_size(), chunk, channel_block, tt)
    chunk, n_chunks, block_d, n_cblk, tt = plan
    if num_warps is None:
        num_warps = max(1, block_d // 32)
    last_state = torch.empty(batch, dim, n_state, device=u.device, dtype=torch.float32)
    multi = n_chunks > 1
    common = dict(u=u, delta=delta, z=z, A=A, B=B, C=C, D=D, delta_bias=delta_bias,
                  batch=batch, dim=dim, groups=groups, length=length, plan=plan,
                  delta_softplus=delta_softplus, reverse=reverse, num_warps=num_warps)
    H = None
    if multi:
        S = torch.empty(batch, dim, n_chunks, device=u.device, dtype=torch.float32)
        H = torch.empty(batch, dim, n_chunks, n_state, device=u.device, dtype=torch.float32)
        seq_launch(S, dout=None, H=None, out=None, last=None, S=S, E=H, Q=None,
                   output=False, do_fwd=True, do_bwd=False, multi=True, store_last=False,
                   **common)
        if carry_block is None:
            carry_block = min(512, max(16, triton.next_power_of_2(n_chunks)))
        _carry_kernel[(batch * dim,)](
            S, H, A, last_state, dim, n_chunks,
            N=n_state, NP=triton.next_power_of_2(n_state), BLOCK=carry_block,
            REVERSE=reverse, STORE_LAST=True, num_warps=8,
        )
    seq_launch(last_state, dout=None, H=H, out=out, last=last_state, S=None, E=None,
               Q=None, output=True, do_fwd=False, do_bwd=False, multi=multi,
               store_last=not multi, **common)
    return out, last_state


def selective_scan_fwd_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    reverse: bool,
    *,
    out: torch.Tensor | None = None,
    chunk: int | None = None,
    channel_block: int | None = None,
    carry_block: int | None = None,
    num_warps: int | None = None,
    tt: int | None = None,
    impl: str = "seq",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward host function (contract: .coord/kernel_contract.md, interface.py).

    `out`, if given, is a contiguous (batch, dim, L) tensor of u's dtype that receives the
    output (tests pass a NaN-filled one). `chunk`, `channel_block`, `carry_block` and
    `num_warps` override the launch plan (tests use small ones); defaults suit the GPU.
    A sequence of one chunk needs no carries: one launch does everything.
    Returns (out, last_state fp32 (batch, dim, N)).
    """
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    A = A.contiguous()
    if out is None:
        out = torch.empty(batch, dim, length, device=u.device, dtype=u.dtype)
    elif out.shape != u.shape or out.dtype != u.dtype or not out.is_contiguous():
        raise ValueError(
            f"out must be a contiguous {tuple(u.shape)} {u.dtype} tensor, got "
            f"{tuple(out.shape)} {out.dtype} contiguous={out.is_contiguous()}"
        )
    if impl == "seq":
        return _fwd_seq(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, out,
                        chunk, channel_block, carry_block, num_warps, tt)
    plan = plan_launch(batch, dim, groups, length, chunk, channel_block, carry_block,
                       num_warps, n_state)
    last_state = torch.empty(batch, dim, n_state, device=u.device, dtype=torch.float32)
    multi = plan.n_chunks > 1
    if multi:
        H, _ = chunk_boundary_states(
            u, delta, None, None, A, B, C, delta_bias, delta_softplus, reverse, plan,
            forward=True, adjoint=False, last_state=last_state,
        )
    else:
        H = last_state
    zz = z if z is not None else u
    dummy = last_state
    _fwd_output_kernel[(plan.programs(batch, groups),)](
        u, delta, zz, A, B, C, D if D is not None else dummy,
        delta_bias if delta_bias is not None else dummy, H, out,
        dim, groups, length, plan.n_chunks, plan.n_channel_blocks,
        batch * groups * plan.n_channel_blocks, dim // groups, plan.channel_block,
        *u.stride(), *delta.stride(), *zz.stride(), *B.stride(), *C.stride(),
        N=n_state, NP=triton.next_power_of_2(n_state), CHUNK=plan.chunk,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_Z=z is not None,
        HAS_D=D is not None, REVERSE=reverse, MULTI_CHUNK=multi, num_warps=plan.num_warps,
    )
    return out, last_state
