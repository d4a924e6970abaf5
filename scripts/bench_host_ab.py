"""Host time of the Triton host functions, two versions of the kernels package side by side.

    git archive REV kernels | tar -x -C .devdata/old        (here, before the device call)
    python scripts/bench_host_ab.py .devdata/old/kernels [--rows 3,4,2] [--rounds 15]
    python scripts/bench_host_ab.py .devdata/old/kernels --public   # public training calls
    python scripts/bench_host_ab.py .devdata/old/kernels --shapes "2,512,640;4,384,768"

On the GPU machine. Both packages are imported in one process (the earlier one under the
name `medmamba_kernels_old`), and each round times every (row, dtype, call, version) in
turn: the host microseconds to issue one call (launches queued, the GPU synchronised
before each batch of calls). The host is shared and noisy (session 32 read the same
call at 0.072 and 0.146 ms a few seconds apart), so it prints the minimum over rounds
(the call's own cost) and the median, in us, and the ratio of the minima. With
--public, the calls are the public `selective_scan`'s inference call (grad mode off) and
training call (`.backward(dout)` through the autograd engine, the leaves' .grad reset
first) and, for scale, a Function that only allocates what the scan's does
(profile_backward_thread's `_Floor`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import torch

from scan_bench_common import ANCHORS, make_inputs


def load_old(path: str):
    """(fwd, bwd) host functions of the kernels package at `path`, as medmamba_kernels_old."""
    link_dir = Path(tempfile.mkdtemp())
    (link_dir / "medmamba_kernels_old").symlink_to(Path(path).resolve())
    sys.path.insert(0, str(link_dir))
    fwd = importlib.import_module("medmamba_kernels_old.selective_scan.triton_fwd")
    bwd = importlib.import_module("medmamba_kernels_old.selective_scan.triton_bwd")
    return fwd.selective_scan_fwd_triton, bwd.selective_scan_bwd_triton


def load_old_public(path: str):
    """The public selective_scan of the kernels package at `path` (load_old first). Its
    torch.library ops are registered as medmamba_old::... (a name is registered once)."""
    real = torch.library.custom_op

    def renamed(name, *args, **kwargs):
        return real(name.replace("medmamba::", "medmamba_old::"), *args, **kwargs)

    torch.library.custom_op = renamed
    try:
        return importlib.import_module(
            "medmamba_kernels_old.selective_scan.interface").selective_scan
    finally:
        torch.library.custom_op = real


def public_calls(scan, leaves: dict, flags: dict, dout: torch.Tensor,
                 inference: bool = True) -> dict:
    """A public training call of `scan` (selective_scan or a stand-in Function's apply),
    and with `inference` an inference call (grad mode off) on the leaves' values."""
    values = {k: v.detach() for k, v in leaves.items()}

    def infer():
        with torch.no_grad():
            scan(**values, **flags)

    def run():
        for leaf in leaves.values():
            leaf.grad = None
        out = scan(**leaves, **flags)
        (out[0] if isinstance(out, tuple) else out).backward(dout)

    return {"infer": infer, "train": run} if inference else {"train": run}


def calls(fwd, bwd, x: dict, dout: torch.Tensor) -> dict:
    """The bench table's two calls (scan_bench_common.row_calls) on these host functions."""
    def run_fwd():
        fwd(**x)

    def run_fwd_bwd():
        _, _, states = fwd(**x, keep_states=True)
        bwd(dout, **x, states=states)

    return {"fwd": run_fwd, "f+b": run_fwd_bwd}


def host_us(fn, calls_a_batch: int = 20) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls_a_batch):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls_a_batch * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", help="the earlier kernels package (a copy of kernels/)")
    p.add_argument("--rows", default="3,4,2", help="bench rows (1-6), comma-separated")
    p.add_argument("--shapes", default=None,
                   help='other shapes instead of bench rows: "batch,dim,L;batch,dim,L"')
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--public", action="store_true",
                   help="the public call's inference and training calls, the engine's floor")
    args = p.parse_args()
    from medmamba_kernels.selective_scan.interface import selective_scan
    from medmamba_kernels.selective_scan.triton_bwd import selective_scan_bwd_triton
    from medmamba_kernels.selective_scan.triton_fwd import selective_scan_fwd_triton

    versions = {"old": load_old(args.old),
                "new": (selective_scan_fwd_triton, selective_scan_bwd_triton)}
    if args.public:
        from profile_backward_thread import _Floor

        def floor(**kwargs):  # the bench's inputs in the Function's order, B and C 4-D
            return _Floor.apply(*kwargs.values())

        versions = {"old": load_old_public(args.old), "new": selective_scan, "floor": floor}
    if args.shapes:
        rows = {text: tuple(int(v) for v in text.split(",")) for text in args.shapes.split(";")}
    else:
        rows = {int(r): list(ANCHORS)[int(r) - 1] for r in args.rows.split(",")}
    cases = {}
    for row, shape in rows.items():
        for dtype in (torch.float32, torch.bfloat16):
            x = make_inputs(*shape, dtype)
            dout = torch.randn_like(x["u"])
            for version, functions in versions.items():
                if args.public:
                    flags = {k: x[k] for k in ("delta_softplus", "reverse")}
                    leaves = {k: v.detach().requires_grad_() for k, v in x.items()
                              if k not in flags}
                    made = public_calls(functions, leaves, flags, dout,
                                        inference=version != "floor")
                else:
                    made = calls(*functions, x, dout)
                for name, fn in made.items():
                    for _ in range(3):  # compiles, caches the launches, records replays
                        fn()
                    cases[(row, str(dtype)[6:], name, version)] = (fn, [])
    for _ in range(args.rounds):
        for fn, times in cases.values():
            times.append(host_us(fn))
    width = max(5, *(len(str(row)) + 2 for row in rows))
    print(f"{'row':<{width}}{'dtype':<10}{'call':<6}{'old min':>9}{'new min':>9}{'new/old':>9}"
          f"{'old med':>9}{'new med':>9}   (host us a call, {args.rounds} rounds)")
    for (row, dtype, name, version), (_, times) in cases.items():
        if version != "new":
            continue
        old = sorted(cases[(row, dtype, name, "old")][1])
        new = sorted(times)
        floor = sorted(cases.get((row, dtype, name, "floor"), (None, []))[1])
        print(f"{row:<{width}}{dtype:<10}{name:<6}{old[0]:>9.1f}{new[0]:>9.1f}"
              f"{new[0] / old[0]:>9.2f}"
              f"{old[len(old) // 2]:>9.1f}{new[len(new) // 2]:>9.1f}"
              + (f"   floor min {floor[0]:.1f} med {floor[len(floor) // 2]:.1f}"
                 if floor else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
