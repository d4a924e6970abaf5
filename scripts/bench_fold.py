"""The "chunked" forward with its chunk aggregates folded in the output kernel against the
carry launch, on sequences of at most triton_fwd.FOLD_MAX_CHUNKS chunks (GPU machine):

    python scripts/bench_fold.py

Per shape and dtype: do_bench ms (host-bound where small) and CUDA-graph replay ms (GPU
time alone) of both, and their largest relative difference.
"""

from __future__ import annotations

import torch

from scan_bench_common import fwd, make_inputs, rel

SHAPES = [(2, 256, 4096), (2, 512, 2048), (8, 512, 4096), (16, 768, 4096), (4, 256, 1024)]


def graph_ms(fn, replays: int = 50) -> float:
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def main() -> None:
    from triton.testing import do_bench

    print(f"{'batch, dim, L':<18}{'dtype':<10}{'fold ms':>9}{'carry ms':>10}"
          f"{'fold GPU':>10}{'carry GPU':>11}{'max err':>9}")
    for dtype in (torch.bfloat16, torch.float32):
        for shape in SHAPES:
            x = make_inputs(*shape, dtype)
            runs = [lambda f=f: fwd(**x, variant="chunked", fold=f) for f in (True, False)]
            (o1, l1), (o2, l2) = runs[0](), runs[1]()
            err = max(rel(o1, o2), rel(l1, l2))
            bench = [do_bench(r, warmup=10, rep=50, return_mode="median") for r in runs]
            gpu = [graph_ms(r) for r in runs]
            print(f"{str(shape)[1:-1]:<18}{str(dtype)[6:]:<10}{bench[0]:>9.3f}{bench[1]:>10.3f}"
                  f"{gpu[0]:>10.3f}{gpu[1]:>11.3f}{err:>9.1e}", flush=True)
            del x, o1, o2


if __name__ == "__main__":
    main()
