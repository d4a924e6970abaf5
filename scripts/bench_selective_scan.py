"""Check and time the Triton selective scan on a GPU against the mamba_ssm anchor table.

Run from the repository root on a CUDA machine (the package need not be installed):

    python scripts/bench_selective_scan.py            # checks, copy bandwidth, 6 rows x 2 dtypes
    python scripts/bench_selective_scan.py --quick    # rows 1, 4, 6 only, shorter timing
    python scripts/bench_selective_scan.py --only 1 --dtype bf16 --profile   # one config, for ncu
    python scripts/bench_selective_scan.py --fwd-variants   # forward variants + host overhead
    python scripts/bench_selective_scan.py --bwd-variants   # backward chunk / warps / maxnreg / channel-block configs
    python scripts/bench_selective_scan.py --quick --layout network   # z, dout strided as the layer passes them
    python scripts/bench_selective_scan.py --host     # GPU time alone (CUDA graph) vs host time a call

Timings are `triton.testing.do_bench` medians (ms) of the host functions, z-gated,
softplus, delta_bias, D, N=16 (DESIGN.md section 7). The byte floor is the bytes of the
inputs read once plus the outputs written once, at the copy bandwidth measured here.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# (batch, dim, L): mamba_ssm 2.3.2 ms for fp32 fwd, fp32 fwd+bwd, bf16 fwd, bf16 fwd+bwd
ANCHORS = {
    (2, 64, 262144): (3.03, 9.36, 2.55, 8.31),
    (2, 128, 32768): (0.422, 1.30, 0.338, 1.18),
    (2, 256, 4096): (0.128, 0.413, 0.054, 0.480),
    (2, 512, 512): (0.030, 0.350, 0.025, 0.348),
    (8, 128, 16384): (0.715, 2.31, 0.372, 1.79),
    (1, 48, 2097152): (22.9, 68.4, 20.2, 64.2),
}
N_STATE = 16
DEVICE = "cuda"


def _import_kernels():
    """Import medmamba_kernels whether or not it is installed (kernels/ is its source)."""
    if importlib.util.find_spec("medmamba_kernels") is None:
        spec = importlib.util.spec_from_file_location(
            "medmamba_kernels", REPO / "kernels" / "__init__.py",
            submodule_search_locations=[str(REPO / "kernels")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["medmamba_kernels"] = module
        spec.loader.exec_module(module)
    from medmamba_kernels.selective_scan.reference import selective_scan_reference
    from medmamba_kernels.selective_scan.triton_bwd import selective_scan_bwd_triton
    from medmamba_kernels.selective_scan.triton_fwd import selective_scan_fwd_triton

    return selective_scan_reference, selective_scan_fwd_triton, selective_scan_bwd_triton


reference, fwd, bwd = _import_kernels()


def make_inputs(batch, dim, length, dtype, groups=1, seed=0, n_state=N_STATE):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    dev = DEVICE

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, device=dev, generator=g) * scale).to(dt)

    return dict(
        u=rnd(batch, dim, length),
        delta=rnd(batch, dim, length, scale=0.5),
        A=-torch.exp(torch.rand(dim, n_state, device=dev, generator=g) * 2.0),
        B=rnd(batch, groups, n_state, length),
        C=rnd(batch, groups, n_state, length),
        D=rnd(dim, dt=torch.float32),
        z=rnd(batch, dim, length),
        delta_bias=rnd(dim, scale=0.5, dt=torch.float32) - 1.0,
        delta_softplus=True,
        reverse=False,
    )


def network_layout(x: dict, dout: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """z and dout strided as the Mamba layer hands them to the scan: z a channel slice of
    the token-major (batch, L, 2 * dim) in_proj output, dout the transposed gradient of the
    token-major out_proj input (both with a stride of dim or 2 * dim along L)."""
    batch, dim, length = x["z"].shape
    xz = torch.empty(batch, length, 2 * dim, device=x["z"].device, dtype=x["z"].dtype)
    z = xz[..., dim:].transpose(1, 2)
    z.copy_(x["z"])
    dout_tokens = torch.empty(batch, length, dim, device=dout.device, dtype=dout.dtype)
    strided_dout = dout_tokens.transpose(1, 2)
    strided_dout.copy_(dout)
    return {**x, "z": z}, strided_dout


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(batch, dim, length, dtype, groups=1, reverse=False, noncontig=False, seed=1):
    x = make_inputs(batch, dim, length, dtype, groups, seed)
    x["reverse"] = reverse
    if noncontig:
        for k in ("u", "delta", "z"):
            x[k] = torch.cat([x[k], x[k]], dim=-1)[..., :length]  # stride(1) = 2L
    out, last = fwd(**x)
    dout = torch.randn_like(out)
    grads = bwd(dout, **x)
    ref_in = {k: (v.double().requires_grad_() if torch.is_tensor(v) else v) for k, v in x.items()}
    ref_out, ref_last = reference(**ref_in, return_last_state=True)
    ref_out.backward(dout.double())
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    errs = {"out": rel(out, ref_out), "last": rel(last, ref_last)}
    errs.update({n: rel(gr, ref_in[n].grad) for n, gr in zip(names, grads)})
    finite = all(torch.isfinite(t).all().item() for t in (out, last, *grads))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    ok = finite and max(errs.values()) < tol
    desc = f"B{batch}-D{dim}-L{length}-G{groups}-{str(dtype)[6:]}{'-rev' if reverse else ''}"
    desc += "-noncontig" if noncontig else ""
    worst = max(errs, key=errs.get)
    print(f"check {desc:<34} {'ok  ' if ok else 'FAIL'} worst {worst}={errs[worst]:.1e}")
    return ok


def check_chunking(batch, dim, length, dtype):
    """Same result with a much smaller chunk: carries at scale (no sequential reference)."""
    x = make_inputs(batch, dim, length, dtype, seed=2)
    out1, last1 = fwd(**x)
    out2, last2 = fwd(**x, chunk=32)
    dout = torch.randn_like(out1)
    g1 = bwd(dout, **x)
    g2 = bwd(dout, **x, chunk=32)
    errs = [rel(out1, out2), rel(last1, last2)] + [rel(a, b) for a, b in zip(g1, g2)]
    ok = max(errs) < (1e-4 if dtype == torch.float32 else 2e-2)
    print(f"check default chunk vs 32 B{batch}-D{dim}-L{length} {'ok  ' if ok else 'FAIL'} "
          f"worst {max(errs):.1e}")
    return ok


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


def bench_row(shape, dtype, bw, quick, layout="contiguous"):
    from triton.testing import do_bench

    x = make_inputs(*shape, dtype)
    out, _ = fwd(**x)
    dout = torch.randn_like(out)
    if layout == "network":
        x, dout = network_layout(x, dout)
    rep = 30 if quick else 100

    def run_fwd():
        fwd(**x)

    def run_fwd_bwd():
        fwd(**x)
        bwd(dout, **x)

    t_f = do_bench(run_fwd, warmup=10, rep=rep, return_mode="median")
    t_fb = do_bench(run_fwd_bwd, warmup=10, rep=rep, return_mode="median")
    fl_f, fl_fb = floors(*shape, dtype, bw)
    a = ANCHORS[shape]
    a_f, a_fb = (a[0], a[1]) if dtype == torch.float32 else (a[2], a[3])
    return t_f, t_fb, 100 * fl_f / t_f, 100 * fl_fb / t_fb, a_f / t_f, a_fb / t_fb


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
    from triton.testing import do_bench

    from medmamba_kernels.selective_scan import interface

    # (column, host-function keywords). "reload" and "rows" at longer chunks: session 15's
    # log (scripts/results/kernel_h200_2026-11-30_s15/fwd_variants.log); "serial" with
    # register caps, 2 positions a load, chunks of 128 and 1024: session 16's
    # (kernel_h200_2026-11-30_s16/fwd_variants_call6.log, _call8_caps.log). Here "serial"
    # at its default chunks (at most 256 since session 17), at 1024 (row 6's former
    # default) and with 16 channels a program ("d16": 48 = 3 x 16, no idle lanes on row 6)
    variants = (("chunked", {}), ("rows", {}), ("deferred", {}), ("serial", {}),
                ("serial c1024", {"variant": "serial", "chunk": 1024}),
                ("serial d16", {"variant": "serial", "channel_block": 16}),
                ("auto", {}))
    ok = True
    print(f"{'batch, dim, L':<18}{'dtype':<6}" + "".join(f"{v:>14}" for v, _ in variants)
          + f"{'max err':>11}{'op f+b':>9}{'eager f+b':>11}{'op fwd':>9}{'eager fwd':>11}")
    for dt in dtypes:
        for shape in shapes:
            x = make_inputs(*shape, dt)
            ref_out, ref_last = fwd(**x, variant="chunked")
            times = []
            err = 0.0
            for v, kw in variants:
                kw = kw or {"variant": v}
                out, last = fwd(**x, **kw)
                err = max(err, rel(out, ref_out), rel(last, ref_last))
                times.append(do_bench(lambda kw=kw: fwd(**x, **kw), warmup=10, rep=50,
                                      return_mode="median"))
            args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
            leaves = [a.detach().requires_grad_() for a in args]
            dout = torch.randn_like(ref_out)

            def op_fb():
                out, _ = interface._scan_fwd_op(*leaves, True, False, "triton")
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
            del x, leaves, args, dout
    print("variant checks (max err vs chunked):", "all ok" if ok else "SOME FAILED")
    return ok


def compare_host(dtypes, shapes):
    """Where a row's time goes: do_bench's median (the table's method), the same calls
    replayed from a CUDA graph (GPU time without host gaps), and the host's time to issue
    one call (launches queued, no synchronisation). A row whose host time reaches its
    do_bench time is host-bound: faster kernels cannot show there."""
    import time

    from triton.testing import do_bench, do_bench_cudagraph

    def host_ms(fn, calls=50):
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        torch.cuda.synchronize()
        return elapsed / calls * 1e3

    print(f"{'batch, dim, L':<18}{'dtype':<6}{'fwd':>9}{'graph':>9}{'host':>9}"
          f"{'f+b':>9}{'graph':>9}{'host':>9}   (ms)")
    for dt in dtypes:
        for shape in shapes:
            x = make_inputs(*shape, dt)
            out, _ = fwd(**x)
            dout = torch.randn_like(out)

            def run_fwd():
                fwd(**x)

            def run_fwd_bwd():
                fwd(**x)
                bwd(dout, **x)

            cols = []
            for fn in (run_fwd, run_fwd_bwd):
                cols += [do_bench(fn, warmup=10, rep=50, return_mode="median"),
                         do_bench_cudagraph(fn, rep=50, return_mode="median"), host_ms(fn)]
            print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}" + "".join(f"{c:>9.3f}" for c in cols),
                  flush=True)
            del x, out, dout


# Backward configs (chunk, num_warps, maxnreg, channel_block, boundary) for --bwd-variants;
# the first is the default on every bench row and the reference for the error column.
# "boundary": how the states at chunk boundaries are found (triton_bwd.py): "serial" (one
# channel a thread) or "tile" (the (N, CHUNK) tile kernel, the default until session 16).
# Session 13's sweep of chunks, warps, register caps and channel blocks (scripts/results/
# kernel_h200_2026-11-30c/bwd_variants.log) found none better than chunk 64 on one warp
# across the rows (a few within 5% either way on some); session 17's on row 5 (8, 128,
# 16384), where bf16 f+b stood level with mamba_ssm, neither (kernel_h200_2026-12-01_s17/
# bwd_variants_row5_call8.log: the default 1.50 ms bf16, the others 1.55-2.54).
BWD_CONFIGS = [(64, 1, None, None, "auto"), (64, 1, None, None, "serial"),
               (64, 1, None, None, "tile"), (32, 1, None, None, "auto"),
               (128, 1, None, None, "auto"), (128, 2, None, None, "auto"),
               (64, 2, None, None, "auto"), (64, 1, 168, None, "auto"),
               (64, 1, None, 64, "auto"), (64, 1, None, 32, "auto")]


def compare_bwd_variants(dtypes, shapes):
    """Backward launch configs side by side (same inputs, same run), bwd only."""
    from triton.testing import do_bench

    names = [f"{chunk}/w{warps}/{maxnreg or '-'}/{block or '-'}/{where}"
             for chunk, warps, maxnreg, block, where in BWD_CONFIGS]
    print(f"{'batch, dim, L':<18}{'dtype':<6}" + "".join(f"{n:>20}" for n in names)
          + f"{'max err':>10}")
    for dt in dtypes:
        for shape in shapes:
            x = make_inputs(*shape, dt)
            out, _ = fwd(**x)
            dout = torch.randn_like(out)
            times, err, ref = [], 0.0, None
            for chunk, warps, maxnreg, block, where in BWD_CONFIGS:
                kw = dict(chunk=chunk, num_warps=warps, maxnreg=maxnreg, channel_block=block,
                          boundary=where)
                grads = bwd(dout, **x, **kw)
                if ref is None:
                    ref = grads
                else:
                    err = max([err] + [rel(a, b) for a, b in zip(grads, ref)
                                       if a is not None])
                times.append(do_bench(lambda kw=kw: bwd(dout, **x, **kw), warmup=5, rep=30,
                                      return_mode="median"))
            print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}"
                  + "".join(f"{t:>20.3f}" for t in times) + f"{err:>10.1e}", flush=True)
            del x, out, dout, ref


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="rows 1, 4, 6 and shorter timing")
    p.add_argument("--only", type=int, default=None, help="time one row (1-6) only, no checks")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    p.add_argument("--layout", choices=["contiguous", "network"], default="contiguous",
                   help="network: z and dout strided as the Mamba layer passes them")
    p.add_argument("--sweep", action="store_true",
                   help="time chunk / num_warps variants on the long rows, fwd and bwd apart")
    p.add_argument("--profile", action="store_true",
                   help="with --only: run fwd and bwd a few times untimed (for ncu)")
    p.add_argument("--variant", default="auto",
                   help="forward variant of --profile runs (triton_fwd.VARIANTS)")
    p.add_argument("--fwd-variants", action="store_true",
                   help="time the forward variants (chunked, deferred, auto) side by side, "
                        "and the public call against the torch.library op path (host overhead)")
    p.add_argument("--bwd-variants", action="store_true",
                   help="time the backward launch configs (BWD_CONFIGS: chunk/warps/maxnreg/channel block) side "
                        "by side, bwd only")
    p.add_argument("--host", action="store_true",
                   help="do_bench vs CUDA-graph replay vs host time a call (host-bound rows)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"triton {triton.__version__}")
    shapes = list(ANCHORS)
    dtypes = {"fp32": [torch.float32], "bf16": [torch.bfloat16], None:
              [torch.float32, torch.bfloat16]}[args.dtype]
    if args.only is not None:
        shapes = [shapes[args.only - 1]]
        if args.profile:
            for dt in dtypes:
                x = make_inputs(*shapes[0], dt)
                out, _ = fwd(**x, variant=args.variant)
                dout = torch.randn_like(out)
                for _ in range(3):
                    fwd(**x, variant=args.variant)
                    bwd(dout, **x)
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
        compare_bwd_variants(dtypes, shapes)
        return 0
    if args.host:
        compare_host(dtypes, shapes)
        return 0

    ok = True
    if args.only is None:
        for dt in (torch.float32, torch.bfloat16):
            ok &= check(2, 64, 1000, dt)
            ok &= check(2, 64, 1000, dt, reverse=True)
            ok &= check(1, 8, 3001, dt, groups=2, noncontig=True)
        ok &= check(2, 4, 7, torch.float32)
        ok &= check(1, 70_000, 3, torch.float32)  # batch * dim > 65,535
        ok &= check_chunking(2, 64, 262144, torch.float32)
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write); z and dout {args.layout}")
    header = (f"{'batch, dim, L':<18}{'dtype':<6}{'fwd ms':>9}{'%floor':>8}{'x mamba':>9}"
              f"{'f+b ms':>9}{'%floor':>8}{'x mamba':>9}")
    lines = []
    for dt in dtypes:
        for shape in shapes:
            r = bench_row(shape, dt, bw, args.quick, args.layout)
            lines.append(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}{r[0]:>9.3f}{r[2]:>7.0f}%"
                         f"{r[4]:>8.1f}x{r[1]:>9.3f}{r[3]:>7.0f}%{r[5]:>8.1f}x")
            print(lines[-1], flush=True)
    print()
    print(header)
    print("\n".join(lines))
    print("checks:", "all ok" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
