"""Offline study: what a sum over channels costs a position, by layout (no GPU).

The backward's dB and dC sum, at every position and state, over a group's channels. The
main kernel (`triton_bwd._bwd_kernel`) loops over channels inside a program, so those sums
stay in registers. It pays instead for scans across lanes, which hold positions. A
backward with one channel a thread, holding its 16 states and walking its positions in
order, has no scan across lanes, and its sums over states stay in the thread (the
arithmetic of `bench_arith_bound.py`'s backward pass, 13.3 instructions a state element).
But its dB and dC become sums across lanes at every position. This script compiles, for
sm_90 with Triton's bundled tools, a loop that forms a (16 states, 32 channels) tile a
position and stores its sum over channels. It prints the loop's instructions a position
in two layouts: one channel a thread (the tile built as states x channels from
broadcasts) and Triton's default for a loaded tile.

    python scripts/study_channel_sums_sass.py
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_sass_stats  # noqa: E402
from study_serial_backward import loop_bodies  # noqa: E402


@triton.jit
def _channel_sums(x_ptr, out_ptr, n_steps, STATES: tl.constexpr, CHANNELS: tl.constexpr,
                  ONE_CHANNEL_A_THREAD: tl.constexpr):
    states = tl.arange(0, STATES)
    channels = tl.arange(0, CHANNELS)
    if ONE_CHANNEL_A_THREAD:  # states x channels from broadcasts: a thread's column
        h = tl.load(x_ptr + states)[:, None] * tl.load(x_ptr + STATES + channels)[None, :]
    else:  # a loaded tile: Triton's default layout, 16-byte vectors along channels
        h = tl.load(x_ptr + states[:, None] * CHANNELS + channels[None, :])
    for t in range(n_steps):
        h = h * 0.999 + 0.5  # a state element's update (one FFMA)
        tl.store(out_ptr + t * STATES + states, tl.sum(h, 1))


def opcode_counts(body: list[str]) -> collections.Counter:
    """SASS opcodes of a loop body's lines (kernel_sass_stats.opcode_counts)."""
    return kernel_sass_stats.opcode_counts("\n".join(body))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=16)
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("study_channel_sums_sass.py: compiles for sm_90; unset TRITON_INTERPRET",
              file=sys.stderr)
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    print(f"a position's sum over 32 channels of {args.states} states (one warp), sm_90:")
    for one_channel in (True, False):
        values = {"x_ptr": torch.float32, "out_ptr": torch.float32, "n_steps": 1001,
                  "STATES": args.states, "CHANNELS": 32, "ONE_CHANNEL_A_THREAD": one_channel}
        compiled = kernel_sass_stats.compile_sm90(_channel_sums, values, num_warps=1)
        _, sass = kernel_sass_stats.stats(compiled)
        body = max(loop_bodies(sass), key=len)
        counts = opcode_counts(body)
        layout = "one channel a thread" if one_channel else "Triton's loaded tile"
        print(f"  {layout:<22} {len(body):4d} instructions a position "
              f"({len(body) / args.states:.1f} a state element): "
              + ", ".join(f"{op} {n}" for op, n in counts.most_common(5)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
