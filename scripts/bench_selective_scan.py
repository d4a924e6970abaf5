"""Check and time the Triton selective scan on a GPU against the mamba_ssm anchor table.

Run from the repository root on a CUDA machine (the package need not be installed):

    python scripts/bench_selective_scan.py            # checks, copy bandwidth, 6 rows x 2 dtypes
    python scripts/bench_selective_scan.py --quick    # rows 1, 4, 6 only, shorter timing
    python scripts/bench_selective_scan.py --only 1 --dtype bf16 --profile   # one config, for ncu
    python scripts/bench_selective_scan.py --fwd-variants   # forward variants + host overhead
    python scripts/bench_selective_scan.py --bwd-variants   # backward chunk / warps / maxnreg / channel-block configs
    python scripts/bench_selective_scan.py --quick --layout network   # z, dout strided (the layer until session 38)
    python scripts/bench_selective_scan.py --api public   # the public selective_scan, as the anchor
    python scripts/bench_selective_scan.py --host     # GPU time alone (CUDA graph) vs host time a call
    python scripts/bench_selective_scan.py --carry    # the carry over chunks alone, by config
    python scripts/bench_selective_scan.py --train-chunks   # training calls by backward chunk
    python scripts/bench_selective_scan.py --mamba .devdata/mamba_ssm   # + mamba_ssm, same run

Timings are `triton.testing.do_bench` medians (ms) of the host functions (with --api public:
of the public `selective_scan`, forward+backward through the autograd engine), z-gated,
softplus, delta_bias, D, N=16 (DESIGN.md section 7). The byte floor is the bytes of the
inputs read once plus the outputs written once, at the copy bandwidth measured here.
The exploration options (--sweep, --fwd-variants, --bwd-variants, --host, --carry,
--short-rows) live in bench_scan_variants.py, the "serial" variant's (--serial-options,
--serial-passes, --train-chunks) in bench_serial_variants.py; the anchors, inputs and
timing helpers in scan_bench_common.py.

With --mamba DIR (sources unpacked by scripts/mamba_reference.py), mamba_ssm's own CUDA
scan is checked and timed in the same process, the same way (with --api public its
`selective_scan_fn`, with the host functions its extension's fwd and bwd), and each row
adds its ms and our speed-up over it measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from bench_scan_variants import (BWD_CONFIGS, _named_configs, compare_bwd_variants,
                                 compare_carry, compare_fwd_variants, compare_host,
                                 compare_short_rows, sweep)
from bench_serial_variants import (compare_serial_options, compare_serial_passes,
                                   compare_train_chunks)
from scan_bench_common import (ANCHORS, N_STATE, bwd, fwd, make_inputs, public_row_calls,
                               reference, rel, row_calls, set_replays, training_inputs)


def tolerance(dtype: torch.dtype) -> float:
    """Largest relative error a check accepts against the float64 reference."""
    return 1e-4 if dtype == torch.float32 else 2e-2


def reference_run(x: dict, dout: torch.Tensor) -> dict:
    """The float64 reference on inputs x (tensors and flags by name): out, last state and
    each tensor input's gradient by name, the truth the checks compare against."""
    ref_in = {k: (v.detach().double().requires_grad_() if torch.is_tensor(v) else v)
              for k, v in x.items()}
    ref_out, ref_last = reference(**ref_in, return_last_state=True)
    ref_out.backward(dout.double())
    grads = {k: v.grad for k, v in ref_in.items() if torch.is_tensor(v)}
    return {"out": ref_out, "last": ref_last, **grads}


def verdict(desc: str, dtype: torch.dtype, results: dict, truth: dict) -> bool:
    """Print one check line (the worst relative error) and say whether every result is
    finite and within the dtype's tolerance of its truth."""
    errs = {k: rel(v, truth[k]) for k, v in results.items()}
    finite = all(torch.isfinite(t).all().item() for t in results.values())
    ok = finite and max(errs.values()) < tolerance(dtype)
    worst = max(errs, key=errs.get)
    print(f"check {desc:<34} {'ok  ' if ok else 'FAIL'} worst {worst}={errs[worst]:.1e}")
    return ok


def check(batch, dim, length, dtype, groups=1, reverse=False, noncontig=False, seed=1):
    x = make_inputs(batch, dim, length, dtype, groups, seed)
    x["reverse"] = reverse
    if noncontig:
        for k in ("u", "delta", "z"):
            x[k] = torch.cat([x[k], x[k]], dim=-1)[..., :length]  # stride(1) = 2L
    out, last = fwd(**x)
    dout = torch.randn_like(out)
    grads = bwd(dout, **x)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    results = {"out": out, "last": last, **dict(zip(names, grads))}
    desc = f"B{batch}-D{dim}-L{length}-G{groups}-{str(dtype)[6:]}{'-rev' if reverse else ''}"
    desc += "-noncontig" if noncontig else ""
    return verdict(desc, dtype, results, reference_run(x, dout))


def check_chunking(batch, dim, length, dtype):
    """Same result with a much smaller chunk: carries at scale (no sequential reference)."""
    x = make_inputs(batch, dim, length, dtype, seed=2)
    out1, last1 = fwd(**x)
    out2, last2 = fwd(**x, chunk=32)
    dout = torch.randn_like(out1)
    g1 = bwd(dout, **x)
    g2 = bwd(dout, **x, chunk=32)
    errs = [rel(out1, out2), rel(last1, last2)] + [rel(a, b) for a, b in zip(g1, g2)]
    ok = max(errs) < tolerance(dtype)
    print(f"check default chunk vs 32 B{batch}-D{dim}-L{length} {'ok  ' if ok else 'FAIL'} "
          f"worst {max(errs):.1e}")
    return ok


def check_mamba(selective_scan_fn) -> bool:
    """mamba_ssm's call against our sequential reference (is it called as we think?)."""
    ok = True
    for dtype in (torch.float32, torch.bfloat16):
        x = make_inputs(2, 64, 1000, dtype, seed=3)
        flags = {"delta_softplus": x.pop("delta_softplus")}
        x.pop("reverse")
        leaves = {k: v.detach().requires_grad_() for k, v in x.items()}
        dout = torch.randn_like(x["u"])
        out = selective_scan_fn(**leaves, **flags)
        out.backward(dout)
        results = {"out": out, **{k: leaf.grad for k, leaf in leaves.items()}}
        truth = reference_run({**x, **flags}, dout)
        ok &= verdict(f"mamba_ssm B2-D64-L1000-{str(dtype)[6:]}", dtype, results, truth)
    return ok


def mamba_calls(selective_scan_fn, shape, dtype, api):
    """(run_fwd, run_fwd_bwd, leaves) of mamba_ssm on a bench row: with api="public" its
    selective_scan_fn as public_row_calls times ours; else its extension's fwd and bwd,
    as row_calls times our host functions (the backward's inputs from its forward)."""
    import selective_scan_cuda

    if api == "public":  # mamba_ssm has no reverse (main() refuses it with --mamba)
        return public_row_calls(shape, dtype, scan=lambda reverse, **kwargs:
                                selective_scan_fn(**kwargs))
    x, _, flags, dout = training_inputs(shape, dtype)
    softplus = flags["delta_softplus"]
    inputs = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]

    def run_fwd_host():
        return selective_scan_cuda.fwd(*inputs, softplus)

    def run_fwd_bwd_host():
        out, states, _ = run_fwd_host()
        selective_scan_cuda.bwd(*inputs, dout, states, out, None, softplus, False)

    return run_fwd_host, run_fwd_bwd_host, None


def copy_bandwidth():
    from triton.testing import do_bench

    n = 1 << 28  # 1 GiB of fp32
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    del src, dst
    return 2 * n * 4 / (ms * 1e-3)  # bytes read + written per second


def floors(batch, dim, length, dtype, bw):
    """(fwd, fwd+bwd) byte floors in ms."""
    e = torch.finfo(dtype).bits // 8
    act = batch * dim * length * e  # one (batch, dim, L) tensor
    bc = batch * N_STATE * length * e  # one B or C (G=1)
    fwd_bytes = 3 * act + 2 * bc + act  # u, delta, z, B, C in; out
    bwd_bytes = 4 * act + 2 * bc + 3 * act + 2 * bc  # dout, u, delta, z, B, C in; du, ddelta, dz, dB, dC
    return fwd_bytes / bw * 1e3, (fwd_bytes + bwd_bytes) / bw * 1e3


def bench_row(shape, dtype, bw, quick, layout="contiguous", reverse=False, api="host",
              mamba=None, rounds=1):
    """(fwd ms, f+b ms, fwd %floor, f+b %floor, fwd x anchor, f+b x anchor), then with
    `mamba` (its selective_scan_fn) its fwd and f+b ms in this run and our speed-ups.
    Each call is timed `rounds` times, ours and mamba_ssm's alternated, and the medians
    kept: a host-bound cell moves with the host's speed, which drifts within a run."""
    from triton.testing import do_bench

    leaves = None
    if api == "public":
        run_fwd, run_fwd_bwd, leaves = public_row_calls(shape, dtype, reverse)
    else:
        run_fwd, run_fwd_bwd = row_calls(shape, dtype, layout, reverse)
    rep = 30 if quick else 100

    def times(run_fwd, run_fwd_bwd, leaves):
        return (do_bench(run_fwd, warmup=10, rep=rep, return_mode="median"),
                do_bench(run_fwd_bwd, warmup=10, rep=rep, grad_to_none=leaves,
                         return_mode="median"))

    theirs_calls = None if mamba is None else mamba_calls(mamba, shape, dtype, api)
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(times(run_fwd, run_fwd_bwd, leaves))
        if theirs_calls is not None:
            theirs.append(times(*theirs_calls))
    t_f, t_fb = _medians(ours)
    fl_f, fl_fb = floors(*shape, dtype, bw)
    a = ANCHORS[shape]
    a_f, a_fb = (a[0], a[1]) if dtype == torch.float32 else (a[2], a[3])
    row = (t_f, t_fb, 100 * fl_f / t_f, 100 * fl_fb / t_fb, a_f / t_f, a_fb / t_fb)
    if mamba is None:
        return row
    m_f, m_fb = _medians(theirs)
    return row + (m_f, m_f / t_f, m_fb, m_fb / t_fb)


def _medians(rounds: list[tuple]) -> tuple:
    """The median of each column of per-round timings."""
    return tuple(statistics.median(column) for column in zip(*rounds))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="rows 1, 4, 6 and shorter timing")
    p.add_argument("--only", type=int, default=None, help="time one row (1-6) only, no checks")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    p.add_argument("--layout", choices=["contiguous", "network", "network-copied"],
                   default="contiguous",
                   help="network: z and dout strided as the Mamba layer passed them until "
                        "session 38; network-copied: the same, copied to contiguous in "
                        "each call")
    p.add_argument("--api", choices=["host", "public"], default="host",
                   help="host: time the host functions; public: the public selective_scan, "
                        "an inference call and a training call with .backward() through "
                        "the autograd engine, as the anchor timed mamba_ssm's selective_scan_fn")
    p.add_argument("--no-replay", action="store_true",
                   help="run the host functions' Python every call (replay.py off)")
    p.add_argument("--reverse", action="store_true",
                   help="time scans from the end (reverse=True; x mamba: against its forward "
                        "scans, which have no reverse)")
    p.add_argument("--sweep", action="store_true",
                   help="time chunk / num_warps variants on the long rows, fwd and bwd apart")
    p.add_argument("--profile", action="store_true",
                   help="with --only: run fwd and bwd a few times untimed (for ncu)")
    p.add_argument("--variant", default="auto",
                   help="forward variant of --profile runs (triton_fwd.VARIANTS)")
    p.add_argument("--fwd-variants", action="store_true",
                   help="time the forward variants (chunked, deferred, auto) side by side, "
                        "and the public call against the torch.library op path (host overhead)")
    p.add_argument("--bwd-configs", default=None,
                   help="with --bwd-variants: the labels to time besides the default, "
                        "comma-separated (bench_scan_variants.BWD_CONFIGS); with --profile: "
                        "the one label whose backward config runs")
    p.add_argument("--bwd-variants", action="store_true",
                   help="time the backward launch configs (BWD_CONFIGS: chunk/warps/maxnreg/channel block) side "
                        "by side, bwd only")
    p.add_argument("--host", action="store_true",
                   help="do_bench vs CUDA-graph replay vs host time a call (host-bound rows)")
    p.add_argument("--carry", action="store_true",
                   help="the carry over chunks alone, by config (programs a row, warps)")
    p.add_argument("--serial-options", action="store_true",
                   help='the "serial" kernel\'s plans side by side (SERIAL_CONFIGS)')
    p.add_argument("--serial-passes", action="store_true",
                   help='each "serial" pass alone by plan (SERIAL_PASS_CONFIGS; GPU time)')
    p.add_argument("--pass-configs", default=None,
                   help="with --serial-passes: the labels of SERIAL_PASS_CONFIGS to time, "
                        "comma-separated (default: default, ti 4, whole)")
    p.add_argument("--short-rows", action="store_true",
                   help="one-chunk forwards of short sequences by variant and warps")
    p.add_argument("--train-chunks", action="store_true",
                   help="a training call (forward keeping states, backward) by backward chunk")
    p.add_argument("--rounds", type=int, default=1,
                   help="time every call this many times, ours and mamba_ssm's alternated, "
                        "and print the medians (host-bound rows drift within a run)")
    p.add_argument("--mamba", type=Path, default=None, metavar="DIR",
                   help="also check and time mamba_ssm's CUDA scan, built from the sources "
                        "that scripts/mamba_reference.py prepare unpacked into DIR")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"triton {triton.__version__}" + ("  (replays off)" if args.no_replay else ""))
    set_replays(not args.no_replay)
    shapes = list(ANCHORS)
    dtypes = {"fp32": [torch.float32], "bf16": [torch.bfloat16], None:
              [torch.float32, torch.bfloat16]}[args.dtype]
    if args.api == "public" and args.layout != "contiguous":
        p.error("--api public times contiguous inputs only")
    if args.mamba is not None and (args.reverse or args.layout != "contiguous"):
        p.error("--mamba times forward scans of contiguous inputs only (mamba_ssm has no "
                "reverse)")
    if args.only is not None:
        shapes = [shapes[args.only - 1]]
        if args.profile:
            # --bwd-configs LABEL: the backward's config (BWD_CONFIGS) of these runs
            bwd_kw = (_named_configs(BWD_CONFIGS, [args.bwd_configs], "--bwd-configs")[0][1]
                      if args.bwd_configs else {})
            for dt in dtypes:
                x = make_inputs(*shapes[0], dt)
                out, _ = fwd(**x, variant=args.variant)
                dout = torch.randn_like(out)
                for _ in range(3):
                    fwd(**x, variant=args.variant)
                    bwd(dout, **x, **bwd_kw)
            torch.cuda.synchronize()
            return 0
    elif args.quick:
        shapes = [shapes[0], shapes[3], shapes[5]]

    if args.sweep:
        sweep(dtypes, (args.only,) if args.only else (1, 5, 6, 3, 4))
        return 0
    if args.fwd_variants:
        return 0 if compare_fwd_variants(dtypes, shapes) else 1
    if args.bwd_variants:
        compare_bwd_variants(dtypes, shapes, None if args.bwd_configs is None
                             else args.bwd_configs.split(","))
        return 0
    if args.host:
        compare_host(dtypes, shapes)
        return 0
    if args.short_rows:
        compare_short_rows(dtypes)
        return 0
    if args.carry:
        compare_carry(shapes)
        return 0
    if args.serial_options:
        compare_serial_options(dtypes, [s for s in shapes if s[2] >= 16384])
        return 0
    if args.train_chunks:
        compare_train_chunks(dtypes, [s for s in shapes if s[2] >= 4096])
        return 0
    if args.serial_passes:
        labels = {} if args.pass_configs is None else {"labels": args.pass_configs.split(",")}
        compare_serial_passes(dtypes, [s for s in shapes if s[2] >= 4096], **labels)
        return 0

    ok = True
    mamba = None
    if args.mamba is not None:
        from mamba_reference import selective_scan_fn

        mamba = selective_scan_fn(args.mamba)
        ok &= check_mamba(mamba)
    if args.only is None:
        for dt in (torch.float32, torch.bfloat16):
            ok &= check(2, 64, 1000, dt)
            ok &= check(2, 64, 1000, dt, reverse=True)
            ok &= check(1, 8, 3001, dt, groups=2, noncontig=True)
        ok &= check(2, 4, 7, torch.float32)
        ok &= check(1, 70_000, 3, torch.float32)  # batch * dim > 65,535
        ok &= check_chunking(2, 64, 262144, torch.float32)
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write); {args.api} calls; "
          f"z and dout {args.layout}" + ("; reverse=True" if args.reverse else "")
          + (f"; medians of {args.rounds} rounds" if args.rounds > 1 else ""))
    header = (f"{'batch, dim, L':<18}{'dtype':<6}{'fwd ms':>9}{'%floor':>8}{'x mamba':>9}"
              f"{'f+b ms':>9}{'%floor':>8}{'x mamba':>9}")
    if mamba is not None:  # mamba_ssm in this run: its ms and our speed-up over it
        header += f"{'m fwd':>8}{'x run':>7}{'m f+b':>8}{'x run':>7}"
    lines = []
    for dt in dtypes:
        for shape in shapes:
            r = bench_row(shape, dt, bw, args.quick, args.layout, args.reverse, args.api,
                          mamba, args.rounds)
            lines.append(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}{r[0]:>9.3f}{r[2]:>7.0f}%"
                         f"{r[4]:>8.1f}x{r[1]:>9.3f}{r[3]:>7.0f}%{r[5]:>8.1f}x")
            if mamba is not None:
                lines[-1] += f"{r[6]:>8.3f}{r[7]:>6.1f}x{r[8]:>8.3f}{r[9]:>6.1f}x"
            print(lines[-1], flush=True)
    print()
    print(header)
    print("\n".join(lines))
    print("checks:", "all ok" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
