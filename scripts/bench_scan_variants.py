"""Exploration timings of the Triton selective scan (the options of
scripts/bench_selective_scan.py that compare kernel variants and launch configs):

    --sweep          chunk / num_warps variants, fwd and bwd apart
    --fwd-variants   forward variants side by side, and the public call's host overhead
    --bwd-variants   backward configs (BWD_CONFIGS) side by side
    --host           do_bench vs CUDA-graph replay vs host time a call
    --short-rows     one-chunk forwards of short sequences by variant and warps

The "serial" variant's comparisons (--serial-options, --serial-passes, --train-chunks)
live in bench_serial_variants.py.
"""

from __future__ import annotations

import torch

from scan_bench_common import (ANCHORS, bench_and_graph_ms, bwd, fwd, host_ms, make_inputs,
                               rel, row_calls)


def _scan_args(x: dict) -> tuple:
    """(u, delta, A, B, C, D, z, delta_bias) of make_inputs' dict, for the host functions
    that take them positionally."""
    return tuple(x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))


def _named_configs(table, labels, option: str) -> list:
    """(label, keywords) of `table` (pairs or a dict) for `labels`, in their order; an
    unknown label stops the bench with the known ones."""
    known = dict(table)
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise SystemExit(f"{option}: expected labels among {list(known)}, got {unknown}")
    return [(label, known[label]) for label in labels]


def sweep(dtypes, rows=(1, 5, 6, 3, 4)):
    from triton.testing import do_bench

    variants = [(32, 1), (64, 1), (64, 2), (128, 1), (128, 2), (256, 2)]
    small = [(512, 2), (512, 4), (512, 8), (256, 1), (256, 2), (128, 1), (128, 2), (64, 2),
             (64, 1), (32, 1)]
    for dt in dtypes:
        for row in rows:
            shape = list(ANCHORS)[row - 1]
            x = make_inputs(*shape, dt)
            out, _ = fwd(**x)
            dout = torch.randn_like(out)
            for chunk, warps in (variants if row in (1, 5, 6) else small):
                kw = dict(chunk=chunk, num_warps=warps)
                t_f = do_bench(lambda: fwd(**x, **kw), warmup=5, rep=30, return_mode="median")
                t_b = do_bench(lambda: bwd(dout, **x, **kw), warmup=5, rep=30,
                               return_mode="median")
                print(f"sweep row {row} {str(dt)[6:]:<9} chunk {chunk:>4} warps {warps:>2}  "
                      f"fwd {t_f:8.3f} ms  bwd {t_b:8.3f} ms", flush=True)
            del x, out, dout


def compare_fwd_variants(dtypes, shapes):
    """Forward variants side by side, in ms (same inputs, same run; "auto" is the default's pick),
    and the host overhead of the public call: eager path vs the torch.library op (the path
    every call took before). True if every variant matches "chunked" within the dtype's
    tolerance."""
    from triton.testing import do_bench, do_bench_cudagraph

    from medmamba_kernels.selective_scan import interface

    # (column, host-function keywords). "reload" and "rows" at longer chunks: session 15's
    # log (scripts/results/kernel_h200_2026-11-30_s15/fwd_variants.log); "serial" with
    # register caps, 2 positions a load, chunks of 128 and 1024, 16 channels a program:
    # sessions 16-17 (kernel_h200_2026-11-30_s16/fwd_variants_call6.log, _call8_caps.log);
    # "chained" (one launch, chunks joined by look-back; tried and dropped): session 22
    # (kernel_h200_2026-12-01_s22/fwd_chained_call1.log). Each row's second line: the same
    # calls replayed from a CUDA graph, i.e. their GPU time without host gaps.
    variants = (("chunked", {}), ("rows", {}), ("deferred", {}), ("serial", {}),
                ("auto", {}))
    ok = True
    print(f"{'batch, dim, L':<18}{'dtype':<6}" + "".join(f"{v:>14}" for v, _ in variants)
          + f"{'max err':>11}{'op f+b':>9}{'eager f+b':>11}{'op fwd':>9}{'eager fwd':>11}")
    for dt in dtypes:
        for shape in shapes:
            x = make_inputs(*shape, dt)
            ref_out, ref_last = fwd(**x, variant="chunked")
            times, graph = [], []
            err = 0.0
            for v, kw in variants:
                kw = kw or {"variant": v}
                out, last = fwd(**x, **kw)
                err = max(err, rel(out, ref_out), rel(last, ref_last))
                times.append(do_bench(lambda kw=kw: fwd(**x, **kw), warmup=10, rep=50,
                                      return_mode="median"))
                graph.append(do_bench_cudagraph(lambda kw=kw: fwd(**x, **kw), rep=50,
                                                return_mode="median"))
            leaves = [a.detach().requires_grad_() for a in _scan_args(x)]
            dout = torch.randn_like(ref_out)

            def op_fb():
                out = interface._scan_fwd_op(*leaves, True, False, "triton", True)[0]
                out.backward(dout)

            def eager_fb():
                interface.selective_scan(*leaves, delta_softplus=True,
                                         backend="triton").backward(dout)

            def op_f():
                interface._scan_fwd_op(*args, True, False, "triton")

            def eager_f():
                interface.selective_scan(*args, delta_softplus=True, backend="triton")

            host = [do_bench(f, warmup=10, rep=50, return_mode="median")
                    for f in (op_fb, eager_fb, op_f, eager_f)]
            ok &= err < (1e-4 if dt == torch.float32 else 2e-2)
            print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}"
                  + "".join(f"{t:>14.3f}" for t in times) + f"{err:>11.1e}"
                  + f"{host[0]:>9.3f}{host[1]:>11.3f}{host[2]:>9.3f}{host[3]:>11.3f}",
                  flush=True)
            print(f"{'  CUDA graph':<24}" + "".join(f"{t:>14.3f}" for t in graph), flush=True)
            del x, leaves, args, dout
    print("variant checks (max err vs chunked):", "all ok" if ok else "SOME FAILED")
    return ok


def compare_host(dtypes, shapes):
    """Where a row's time goes: do_bench's median (the table's method), the same calls
    replayed from a CUDA graph (GPU time without host gaps), and the host's time to issue
    one call (launches queued, no synchronisation). A row whose host time reaches its
    do_bench time is host-bound: faster kernels cannot show there."""
    print(f"{'batch, dim, L':<18}{'dtype':<6}{'fwd':>9}{'graph':>9}{'host':>9}"
          f"{'f+b':>9}{'graph':>9}{'host':>9}   (ms)")
    for dt in dtypes:
        for shape in shapes:
            run_fwd, run_fwd_bwd = row_calls(shape, dt)
            cols = []
            for fn in (run_fwd, run_fwd_bwd):
                cols += bench_and_graph_ms(fn) + [host_ms(fn)]
            print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}" + "".join(f"{c:>9.3f}" for c in cols),
                  flush=True)
            del run_fwd, run_fwd_bwd


# Backward configs (chunk, num_warps, maxnreg, channel_block, boundary) for --bwd-variants;
# the first is the default on every bench row and the reference for the error column.
# "boundary": how the states at chunk boundaries are found (triton_bwd.py): "serial" (one
# channel a thread) or "tile" (the (N, CHUNK) tile kernel, the default until session 16).
# Session 13's sweep of chunks, warps, register caps and channel blocks (scripts/results/
# kernel_h200_2026-11-30c/bwd_variants.log) found none better than chunk 64 on one warp
# across the rows (a few within 5% either way on some); session 17's on row 5 (8, 128,
# 16384), where bf16 f+b stood level with mamba_ssm, neither (kernel_h200_2026-12-01_s17/
# bwd_variants_row5_call8.log: the default 1.50 ms bf16, the others 1.55-2.54).
# (label, selective_scan_bwd_triton keywords); the first is the reference of "max err"
BWD_CONFIGS = [
    ("default", {}),
    ("serial bnd", dict(boundary="serial")),
    ("tile bnd", dict(boundary="tile")),
    ("chunk 32", dict(chunk=32)),
    ("chunk 128", dict(chunk=128)),
    ("128, 2 warps", dict(chunk=128, num_warps=2)),
    ("2 warps", dict(num_warps=2)),
    ("maxnreg 168", dict(maxnreg=168)),
    ("maxnreg 224", dict(maxnreg=224)),  # 9 warps an SM (255: 8)
    ("maxnreg 200", dict(maxnreg=200)),  # 10
    ("block 64", dict(channel_block=64)),
    ("block 32", dict(channel_block=32)),
    ("no prefetch", dict(prefetch=False)),
    ("A ahead", dict(ahead=1)),
    ("vectors ahead", dict(ahead=0)),
    ("no cache ahead", dict(cache_ahead=False)),  # bf16's default caches since session 37
    ("cache ahead", dict(cache_ahead=True)),
    ("adj groups", dict(adjoint="groups")),
    ("adj shifted", dict(adjoint="shifted")),
    ("adj g ahead1", dict(adjoint="groups", ahead=1)),
    ("adj g ahead2", dict(adjoint="groups", ahead=2)),
    ("adj g no pf", dict(adjoint="groups", prefetch=False)),
    ("masked", dict(unmasked=False)),
    ("unmasked", dict(unmasked=True)),
    ("serial main", dict(main="serial")),
    ("serial ti1", dict(main="serial", serial_options={"ti": 1})),
    ("serial r168", dict(main="serial", maxnreg=168)),
    ("serial ti1 r168", dict(main="serial", serial_options={"ti": 1}, maxnreg=168)),
    ("serial bc ahead", dict(main="serial", serial_options={"bc_ahead": True})),
    ("serial c16", dict(main="serial", chunk=16)),
    ("serial c32", dict(main="serial", chunk=32)),
    ("serial c16 ti1", dict(main="serial", chunk=16, serial_options={"ti": 1})),
    ("serial p528", dict(main="serial", serial_options={"programs": 528})),
    ("serial c16 p528", dict(main="serial", chunk=16, serial_options={"programs": 528})),
]


def compare_bwd_variants(dtypes, shapes, labels=None):
    """Backward launch configs side by side (same inputs, same run), bwd only: every one
    in BWD_CONFIGS, or the default and those named in `labels`."""
    from triton.testing import do_bench

    default = BWD_CONFIGS[0]
    configs = BWD_CONFIGS if labels is None else [default] + _named_configs(
        BWD_CONFIGS, [label for label in labels if label != default[0]], "--bwd-configs")
    print(f"{'batch, dim, L':<18}{'dtype':<6}" + "".join(f"{n:>14}" for n, _ in configs)
          + f"{'max err':>10}")
    for dt in dtypes:
        for shape in shapes:
            x = make_inputs(*shape, dt)
            out, _ = fwd(**x)
            dout = torch.randn_like(out)
            times, err, ref = [], 0.0, None
            for _, kw in configs:
                grads = bwd(dout, **x, **kw)
                if ref is None:
                    ref = grads
                else:
                    err = max([err] + [rel(a, b) for a, b in zip(grads, ref)
                                       if a is not None])
                times.append(do_bench(lambda kw=kw: bwd(dout, **x, **kw), warmup=5, rep=30,
                                      return_mode="median"))
            print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}"
                  + "".join(f"{t:>14.3f}" for t in times) + f"{err:>10.1e}", flush=True)
            del x, out, dout, ref


# (label, carry_chunks keywords) for --carry: programs a row (`split`, each with its part
# of the states) and warps a program; blocks and modes as the launch plans pick them.
# Session 18 compared blocks (512 / 256 / 128) and modes (in turn / parallel):
# scripts/results/kernel_h200_2026-12-01_s18/carry_call5.log.
CARRY_CONFIGS = [
    ("default", {}),
    ("4 warps", dict(num_warps=4)),
    ("split 2", dict(split=2)),
    ("split 4", dict(split=4)),
    ("split 4, 4 w", dict(split=4, num_warps=4)),
    ("split 8, 4 w", dict(split=8, num_warps=4)),
    ("split 8, 2 w", dict(split=8, num_warps=2)),
    ("split 16, 2 w", dict(split=16, num_warps=2)),
    # Longer blocks (fewer walked in turn) were slower or level in session 36
    # (kernel_h200_2026-12-03_s36/carry_call1.log, e.g. row 1's backward 43.5 us at 512,
    # 60.6 at 1024, 53.2 at 2048). Rows of 2-15 blocks scanned in parallel instead:
    ("par 2", dict(parallel_from=2)),
    ("par 4", dict(parallel_from=4)),
    ("par 2, pb 128", dict(parallel_from=2, parallel_block=128)),
    ("par 2, pb 64", dict(parallel_from=2, parallel_block=64)),
]


def compare_carry(shapes, configs=CARRY_CONFIGS):
    """The carry over chunks alone (triton_chunks.carry_chunks), in us, by config: the
    forward's (chunks of 256, H alone; "fwd 3x": three times as many chunks, as where the
    aggregates take a third of the output pass's chunk), the backward's with kept states
    (chunks of 64, Q alone, against the scan) and without (H and Q). A config's
    `carry_block` replaces the default block (a power of two, at most 512)."""
    from triton.testing import do_bench

    from medmamba_kernels.selective_scan.triton_chunks import carry_chunks

    print(f"{'batch, dim, L':<18}{'pass':<10}{'chunks':>8}"
          + "".join(f"{label:>15}" for label, _ in configs))
    for batch, dim, length in shapes:
        for name, nc, with_h, with_q in (("forward", -(-length // 256), True, False),
                                         ("fwd 3x", -(-length // 256) * 3, True, False),
                                         ("bwd kept", -(-length // 64), False, True),
                                         ("bwd H+Q", -(-length // 64), True, True)):
            default_block = min(512, max(16, 1 << (nc - 1).bit_length()))
            # each timed call carries E in place again: chunk decays of exp(-10) or less
            # keep the states finite over the repetitions (the work does not depend on them)
            S = torch.rand(batch, dim, nc, device="cuda") * 0.1 + 0.05
            E = torch.randn(batch, dim, nc, 16, device="cuda")
            Q = torch.randn_like(E) if with_q else None
            A = -200.0 - torch.rand(dim, 16, device="cuda")
            last = torch.empty(batch, dim, 16, device="cuda")
            times = []
            for _, kw in configs:
                kw = dict(kw)
                block = kw.pop("carry_block", default_block)
                if with_h:
                    run = lambda kw=kw, block=block: carry_chunks(S, E, A, last, block, False,
                                                                  Q, **kw)
                else:  # the adjoint alone, flowing against the scan
                    run = lambda kw=kw, block=block: carry_chunks(S, Q, A, None, block, True,
                                                                  **kw)
                times.append(do_bench(run, warmup=5, rep=30, return_mode="median") * 1e3)
            assert torch.isfinite(E).all() and (Q is None or torch.isfinite(Q).all()), (
                "carried states overflowed: timings unreliable")
            print(f"{str((batch, dim, length))[1:-1]:<18}{name:<10}{nc:>8}"
                  + "".join(f"{t:>15.1f}" for t in times), flush=True)


# One-chunk forwards of short sequences (the Mamba U-Nets' deepest stages): few
# positions, many sequences (session 34: triton_fwd.TILE_MAX_LENGTH and
# triton_fwd_rows.ONE_WARP_MIN_SEQUENCES were set from these)
SHORT_SHAPES = [(2, 1024, 64), (8, 256, 64), (2, 384, 100), (2, 768, 128), (4, 512, 128),
                (16, 256, 200), (4, 512, 256), (8, 512, 256), (4, 384, 343), (2, 768, 384),
                (2, 256, 512), (2, 512, 512)]


def compare_short_rows(dtypes, shapes=SHORT_SHAPES):
    """GPU time (CUDA-graph replay) / do_bench of one-chunk forwards, us: "rows" on the
    plan's warps (the default until session 34) and on one warp, the tile kernel
    ("chunked"), and "auto"; the best of two rounds. A trailing ! marks an output more
    than 2% (relative L2) away from "auto"'s."""
    from triton.testing import do_bench, do_bench_cudagraph

    from medmamba_kernels.selective_scan.triton_common import plan_launch

    labels = ("rows, plan", "rows, 1 warp", "tile", "auto")
    print(f"{'batch, dim, L':<18}{'dtype':<6}" + "".join(f"{c:>16}" for c in labels)
          + "   (us: graph / do_bench)")
    for dt in dtypes:
        for shape in shapes:
            x = make_inputs(*shape, dt)
            plan = plan_launch(shape[0], shape[1], 1, shape[2], None, None, None, None, 16)
            configs = (dict(variant="rows", num_warps=plan.num_warps),
                       dict(variant="rows", num_warps=1), dict(variant="chunked"), {})
            want = fwd(**x)[0].float()
            cols = []
            for kw in configs:
                def run(kw=kw):
                    return fwd(**x, **kw)

                err = rel(run()[0], want)
                best = [min(t) for t in zip(*[
                    (do_bench_cudagraph(run, rep=30, return_mode="median"),
                     do_bench(run, warmup=5, rep=30, return_mode="median")) for _ in range(2)])]
                cols.append(f"{best[0] * 1e3:6.1f}/{best[1] * 1e3:5.1f}{'!' if err > 2e-2 else ' '}")
            print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}" + "".join(f"{c:>16}" for c in cols),
                  flush=True)
