"""Offline study: what a "serial" backward (one channel a thread) would cost in SASS.

Not a kernel of the package and not a complete gradient (no z, D, delta_bias or softplus;
dB/dC left as one partial sum per program): a sketch with the backward's full arithmetic
per state element, compiled for sm_90 with Triton's bundled tools (no GPU), to compare
its instructions per state element with the tile kernel's (`_bwd_kernel`, 1597 a
channel and chunk of 64 x 16 in fp32: 50 a lane and element, session 30).

A program holds BLOCK_D channels' N states as an (N, BLOCK_D) tile, as the forward's
"serial" kernel does, and owns one chunk. A forward sweep from the chunk's entering state
stores a checkpoint every TI positions (to global memory, L1/L2-resident); the backward
then takes the blocks last to first, recomputes each block's states from its checkpoint
into registers (a tuple of TI tiles), and walks them backwards with the adjoint g:

    python scripts/study_serial_backward.py       # TI = 4 and 8, fp32

Built in session 31 as kernels/selective_scan/triton_bwd_serial.py (42 instructions an
element with z, D, delta_bias, softplus and the partial sums; TI = 2, no spills in its
loops) it ran 1.8x slower than the tile kernel: this count of issue slots missed that 255
registers a thread leave 2 warps a scheduler to hide each block's loads (kernels README,
"A serial main kernel for the backward: measured slower").
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_sass_stats  # noqa: E402


@triton.jit
def _sketch(u_ptr, dt_ptr, dout_ptr, B_ptr, C_ptr, A_ptr, H_ptr, Q_ptr, K_ptr,
            du_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, length,
            CHUNK: tl.constexpr, TI: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = tl.arange(0, NP)
    offs_d = tl.arange(0, BLOCK_D)
    start = pid * CHUNK
    tile = offs_d[None, :] * NP + offs_n[:, None]
    A2 = tl.load(A_ptr + tile) * 1.4426950408889634
    h = tl.load(H_ptr + pid * NP * BLOCK_D + tile)
    checkpoints = K_ptr + pid * (CHUNK // TI) * NP * BLOCK_D + tile
    u_rows = u_ptr + offs_d * length
    dt_rows = dt_ptr + offs_d * length
    dout_rows = dout_ptr + offs_d * length
    for blk in range(0, CHUNK // TI):  # forward sweep: a checkpoint every TI positions
        tl.store(checkpoints + blk * NP * BLOCK_D, h)
        for i in tl.static_range(TI):
            t = start + blk * TI + i
            dt = tl.load(dt_rows + t)
            x = dt * tl.load(u_rows + t)
            h = tl.exp2(A2 * dt[None, :]) * h + tl.load(B_ptr + offs_n * length + t)[:, None] * x
    g = tl.load(Q_ptr + pid * NP * BLOCK_D + tile)
    dA = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    for j in range(0, CHUNK // TI):
        blk = CHUNK // TI - 1 - j
        h = tl.load(checkpoints + blk * NP * BLOCK_D)
        states = ()
        decays = ()
        for i in tl.static_range(TI):  # the block's states again, kept in registers
            t = start + blk * TI + i
            dt = tl.load(dt_rows + t)
            x = dt * tl.load(u_rows + t)
            a = tl.exp2(A2 * dt[None, :])
            h = a * h + tl.load(B_ptr + offs_n * length + t)[:, None] * x[None, :]
            states = states + (h,)
            decays = decays + (a,)
        for i in tl.static_range(TI - 1, -1, -1):  # and walked backwards
            t = start + blk * TI + i
            dt = tl.load(dt_rows + t)
            u = tl.load(u_rows + t)
            dy = tl.load(dout_rows + t)
            B = tl.load(B_ptr + offs_n * length + t)
            g = g + tl.load(C_ptr + offs_n * length + t)[:, None] * dy[None, :]
            before = states[i] - B[:, None] * (dt * u)[None, :]  # a_t h_(t-1)
            tl.store(dB_ptr + pid * NP * length + offs_n * length + t,
                     tl.sum(g * (dt * u)[None, :], axis=1))
            tl.store(dC_ptr + pid * NP * length + offs_n * length + t,
                     tl.sum(states[i] * dy[None, :], axis=1))
            g_before = g * before
            tl.store(ddt_ptr + offs_d * length + t,
                     tl.sum(g_before * A2 + g * B[:, None] * u[None, :], axis=0))
            tl.store(du_ptr + offs_d * length + t, tl.sum(g * B[:, None], axis=0) * dt)
            dA += g_before * dt[None, :]
            g = g * decays[i]
    tl.store(dA_ptr + pid * NP * BLOCK_D + tile, dA)


def loop_bodies(sass: str) -> list[list[str]]:
    """The instruction lines of each loop body (from a label to the branch back to it),
    leaving out the one-instruction trap loop after the kernel's exit."""
    lines = sass.splitlines()
    labels = {m.group(1): n for n, line in enumerate(lines)
              if (m := re.match(r"^(\.L_x_\d+):", line))}
    bodies = []
    for n, line in enumerate(lines):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), n) < n:
            body = lines[labels[m.group(1)]:n + 1]
            bodies.append([b for b in body if re.match(r"^\s+/\*[0-9a-f]+\*/", b)])
    return [body for body in bodies if len(body) > 1]


def loop_sizes(sass: str) -> list[int]:
    """Instructions of each loop body (loop_bodies)."""
    return [len(body) for body in loop_bodies(sass)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ti", default="4,8", help="positions a block, comma-separated")
    args = p.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    chunk, n_state, block_d = 64, 16, 32
    print(f"{'TI':>3}{'REG':>5}{'STACK':>6}{'BAR':>5}  loops (instructions)  a lane and element")
    for ti in map(int, args.ti.split(",")):
        values = {q.name: torch.float32 for q in _sketch.params if q.name.endswith("_ptr")}
        values.update(length=262144, CHUNK=chunk, TI=ti, NP=n_state, BLOCK_D=block_d)
        stats, sass = kernel_sass_stats.stats(kernel_sass_stats.compile_sm90(_sketch, values, 1))
        sweep, backward = loop_sizes(sass)
        per_lane = ti * n_state * block_d / 32  # state elements a lane per block
        print(f"{ti:>3}{stats['REG']:>5}{stats['STACK']:>6}{stats['BAR']:>5}  "
              f"sweep {sweep}, backward {backward}  "
              f"{sweep / per_lane:.1f} + {backward / per_lane:.1f} = "
              f"{(sweep + backward) / per_lane:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
