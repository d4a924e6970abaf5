"""Exploration timings of the "serial" variant of the Triton selective scan (the options
of scripts/bench_selective_scan.py that compare its plans):

    --serial-options "serial" plans side by side (forward, backward boundary states)
    --serial-passes  each "serial" pass alone by plan option (GPU time)
    --train-chunks   a training call by the backward's chunk and register cap
"""

from __future__ import annotations

import torch

from bench_scan_variants import _named_configs, _scan_args
from scan_bench_common import bwd, make_inputs, rel


def _row_problem(shape, dtype) -> tuple:
    """(inputs dict, the same as _scan_args' tuple, an empty out, an empty fp32 last
    state, a random dout) of one bench row."""
    x = make_inputs(*shape, dtype)
    args = _scan_args(x)
    u, A = args[0], args[2]
    last = torch.empty(*u.shape[:2], A.shape[1], device=u.device)
    return x, args, torch.empty_like(u), last, torch.randn_like(u)


# (label, serial_plan keywords): channels a thread (block_d over num_warps warps) and
# positions a load (ti). Session 19 (scripts/results/kernel_h200_2026-12-01_s19): two
# channels a thread (B/C loads shared by both) lost on every row, as did B/C read as tiles
# of TI positions and a read-ahead of the next block's dt/u/z (both since removed).
# Session 20 (kernel_h200_2026-12-01_s20): each state's B/C over a block as one 16-byte
# load (a block's steps one state at a time) 1.5x slower; a read-ahead of the next block
# again (0.5-1.4% faster, and it faulted again, on the adjoint of (8, 128, 16384) fp32);
# z read with dt and u at a block's start instead of at its end: no change
# chunks that even out the output pass's waves of 12 programs an SM on 132 SMs (session 28):
# row 1 224, row 5 112, row 6 240
SERIAL_CONFIGS = (("default", {}), ("chunk 224", {"chunk": 224}), ("chunk 112", {"chunk": 112}),
                  ("chunk 240", {"chunk": 240}), ("chunk 192", {"chunk": 192}))


def compare_serial_options(dtypes, shapes, configs=SERIAL_CONFIGS, bwd_chunk=64):
    """The "serial" kernel's plans side by side, in ms (same inputs, same run): the forward
    (aggregate, carry, output) and the backward's boundary states at the backward's chunk
    (aggregate, adjoint aggregate, carry). Each forward is checked against the first."""
    from triton.testing import do_bench

    from medmamba_kernels.selective_scan import triton_fwd_serial as serial

    names = [label for label, _ in configs]
    print(f"{'batch, dim, L':<18}{'dtype':<6}" + "".join(f"{'fwd ' + n:>13}" for n in names)
          + "".join(f"{'bnd ' + n:>13}" for n in names) + f"{'max err':>10}")
    for dt in dtypes:
        for shape in shapes:
            x, (u, delta, A, B, C, D, z, bias), out, last, dout = _row_problem(shape, dt)
            fwd_t, bnd_t, err, ref = [], [], 0.0, None
            for _, kw in configs:
                def run_fwd(kw=kw):
                    serial.serial_forward(u, delta, A, B, C, D, z, bias, True, False, out,
                                          last, **kw)

                plan = serial.serial_plan(*u.shape[:2], B.shape[1], u.shape[2], dt,
                                          chunk=bwd_chunk,
                                          **{k: v for k, v in kw.items() if k != "chunk"})

                def run_bnd(plan=plan):
                    serial.serial_boundary_states(u, delta, z, dout, A, B, C, bias, True,
                                                  False, plan)

                run_fwd()
                if ref is None:
                    ref = out.clone()
                err = max(err, rel(out, ref))
                fwd_t.append(do_bench(run_fwd, warmup=5, rep=30, return_mode="median"))
                bnd_t.append(do_bench(run_bnd, warmup=5, rep=30, return_mode="median"))
            print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}"
                  + "".join(f"{t:>13.3f}" for t in fwd_t + bnd_t) + f"{err:>10.1e}",
                  flush=True)
            del x, u, delta, A, B, C, D, z, bias, out, dout, ref


# labels -> serial_plan keywords of --serial-passes (--pass-configs picks some)
SERIAL_PASS_CONFIGS = {"default": {}, "ti 2": {"ti": 2, "vec": 2}, "ti 4": {"ti": 4},
                       "whole": {"vec": 64}, "bc 1": {"bc": 1}, "bc 2": {"bc": 2},
                       "bc 4": {"bc": 4}, "bc 8": {"bc": 8}, "chunk 168": {"chunk": 168},
                       "chunk 176": {"chunk": 176}, "chunk 224": {"chunk": 224},
                       "chunk 336": {"chunk": 336}, "chunk 672": {"chunk": 672},
                       "reg 152": {"maxnreg": 152}, "reg 144": {"maxnreg": 144},
                       "reg 136": {"maxnreg": 136}, "reg 128": {"maxnreg": 128},
                       "reg 152 chunk 224": {"maxnreg": 152, "chunk": 224},
                       "whole bc 2": {"vec": 64, "bc": 2}, "chunk 32": {"chunk": 32},
                       "chunk 16": {"chunk": 16}}


def compare_serial_passes(dtypes, shapes, labels=("default", "ti 4", "whole"), sub_chunk=64):
    """GPU time (CUDA-graph replay, ms) of each "serial" pass by plan options (`labels` of
    SERIAL_PASS_CONFIGS):
    the forward aggregate ("agg"), the output pass without ("inf") and with ("out") the
    backward's states kept (an inference and a training forward, at the forward's chunk),
    and the backward's adjoint aggregate ("adj", chunks of `sub_chunk`). Same inputs for
    every config; states are zeros (timing only). "whole": each lane loads a block's
    positions at once (before session 25's `vec`)."""
    from triton.testing import do_bench_cudagraph

    from medmamba_kernels.selective_scan import triton_fwd_serial as serial

    configs = _named_configs(SERIAL_PASS_CONFIGS, labels, "--pass-configs")
    passes = ("agg", "inf", "out", "adj")
    print(f"{'batch, dim, L':<18}{'dtype':<6}" + "".join(
        f"{f'{p} {c}':>14}" for p in passes for c, _ in configs))
    for dt in dtypes:
        for shape in shapes:
            x, (u, delta, A, B, C, D, z, bias), out, _, dout = _row_problem(shape, dt)
            batch, dim, length = u.shape
            zeros = dict(device=u.device, dtype=torch.float32)
            sub = torch.zeros(batch, dim, -(-length // sub_chunk), A.shape[1], **zeros)
            times = {}
            for label, kw in configs:
                kw = dict(kw)
                maxnreg = kw.pop("maxnreg", None)  # the output passes' register cap
                plan = serial.serial_plan(batch, dim, 1, length, dt, **kw)
                # the training forward's plan (kept states take B/C 1 position a load)
                out_plan = serial.serial_plan(batch, dim, 1, length, dt, keeps_states=True,
                                              **kw)
                adj_plan = serial.serial_plan(batch, dim, 1, length, dt,
                                              **{**kw, "chunk": sub_chunk})
                H = torch.zeros(batch, dim, plan.n_chunks, A.shape[1], **zeros)
                S = torch.zeros(batch, dim, plan.n_chunks, **zeros)
                Q = torch.zeros(batch, dim, adj_plan.n_chunks, A.shape[1], **zeros)
                S_adj = torch.zeros(batch, dim, adj_plan.n_chunks, **zeros)
                calls = {
                    "agg": lambda: serial._launch(plan, u, delta, None, A, B, C, None, bias,
                                                  H, S, H, True, False, aggregate=True),
                    "inf": lambda: serial._launch(plan, u, delta, z, A, B, C, D, bias, H, H,
                                                  out, True, False, aggregate=False,
                                                  maxnreg=maxnreg),
                    "out": lambda: serial._launch(out_plan, u, delta, z, A, B, C, D, bias, H,
                                                  H, out, True, False, aggregate=False,
                                                  maxnreg=maxnreg, sub_states=sub,
                                                  sub_chunk=sub_chunk),
                    "adj": lambda: serial._launch(adj_plan, dout, delta, z, A, C, C, None,
                                                  bias, Q, S_adj, Q, True, True,
                                                  aggregate=True, adjoint=True,
                                                  store_sums=True),
                }
                for name, call in calls.items():
                    times[name, label] = do_bench_cudagraph(call, rep=30,
                                                            return_mode="median")
            print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}" + "".join(
                f"{times[p, c]:>14.3f}" for p in passes for c, _ in configs),
                flush=True)
            del x, u, delta, A, B, C, D, z, bias, dout, out, sub


# (label, backward chunk, main kernel's register cap) for --train-chunks
TRAIN_CHUNK_CONFIGS = [("64", 64, None), ("32", 32, None), ("32 r168", 32, 168),
                       ("32 r152", 32, 152), ("16 r128", 16, 128)]


def compare_train_chunks(dtypes, shapes, configs=TRAIN_CHUNK_CONFIGS):
    """A training call at other backward chunks, in ms (same inputs, same run): the
    "serial" forward keeping the states at the backward's chunk, then the backward from
    them ("bwd": the backward alone given the states; "f+b": both, do_bench medians).
    Each config's gradients are checked against the first's."""
    from triton.testing import do_bench

    from medmamba_kernels.selective_scan import triton_fwd_serial as serial

    names = [label for label, _, _ in configs]
    print(f"{'batch, dim, L':<18}{'dtype':<6}" + "".join(f"{'bwd ' + n:>12}" for n in names)
          + "".join(f"{'f+b ' + n:>12}" for n in names) + f"{'max err':>10}")
    for dt in dtypes:
        for shape in shapes:
            x, (u, delta, A, B, C, D, z, bias), out, last, dout = _row_problem(shape, dt)
            batch, dim, length = u.shape
            t_b, t_fb, err, ref = [], [], 0.0, None
            for _, chunk, maxnreg in configs:
                states = torch.empty(batch, dim, -(-length // chunk), A.shape[1],
                                     device=u.device)

                def run_fwd(chunk=chunk, states=states):
                    serial.serial_forward(u, delta, A, B, C, D, z, bias, True, False, out,
                                          last, sub_states=states, sub_chunk=chunk)

                def run_bwd(chunk=chunk, states=states, maxnreg=maxnreg):
                    return bwd(dout, **x, chunk=chunk, states=states, maxnreg=maxnreg)

                run_fwd()
                grads = run_bwd()
                if ref is None:
                    ref = grads
                else:
                    err = max([err] + [rel(a, b) for a, b in zip(grads, ref) if a is not None])
                t_b.append(do_bench(run_bwd, warmup=5, rep=30, return_mode="median"))
                t_fb.append(do_bench(lambda f=run_fwd, b=run_bwd: (f(), b()), warmup=5,
                                     rep=30, return_mode="median"))
            print(f"{str(shape)[1:-1]:<18}{str(dt)[6:]:<6}"
                  + "".join(f"{t:>12.3f}" for t in t_b + t_fb) + f"{err:>10.1e}", flush=True)
            del x, u, delta, A, B, C, D, z, bias, out, dout, ref
