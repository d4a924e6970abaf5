"""Compile the Triton selective-scan kernels for sm_90 offline and count SASS.

No GPU needed (Triton's bundled ptxas, cuobjdump and nvdisasm):

    python scripts/kernel_sass_stats.py                 # every kernel and variant, fp32 and bf16
    python scripts/kernel_sass_stats.py --chunk 64 --dump /tmp/sass   # also write SASS/TTGIR

Prints per kernel: registers, stack (spill) bytes, shared memory, total instructions and
the counts that matter here (SHFL, MUFU, FFMA/FMUL/FADD, loads/stores, local memory).
The chunk kernels run one channel-chunk per loop trip: divide by CHUNK * N / (32 *
num_warps) for a per-element figure. Configuration as the GPU bench's rows (z, softplus,
delta_bias, D, N = 16); integer arguments equal to 1 are specialised as Triton does.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
# pointers to tensors of the input dtype; the others (A, D, bias, scratch) are fp32
_IO = ("u_ptr", "delta_ptr", "z_ptr", "dout_ptr", "B_ptr", "C_ptr", "out_ptr", "du_ptr",
       "ddelta_ptr", "dz_ptr")
KEYS = ("SHFL", "MUFU", "FFMA", "FMUL", "FADD", "FSEL", "LDG", "STG", "LDS", "STS", "BAR",
        "LDL", "STL")


def _import_kernels():
    if importlib.util.find_spec("medmamba_kernels") is None:
        spec = importlib.util.spec_from_file_location(
            "medmamba_kernels", REPO / "kernels" / "__init__.py",
            submodule_search_locations=[str(REPO / "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["medmamba_kernels"] = module
        spec.loader.exec_module(module)
    from medmamba_kernels.selective_scan import (
        triton_bwd,
        triton_bwd_serial,
        triton_chunks,
        triton_fwd,
        triton_fwd_deferred,
        triton_fwd_rows,
        triton_fwd_serial,
    )

    return (triton_chunks, triton_fwd, triton_fwd_deferred, triton_bwd, triton_fwd_rows,
            triton_fwd_serial, triton_bwd_serial)


def compile_sm90(fn, args: dict, num_warps: int, maxnreg: int | None = None):
    """triton.compile for sm_90 with the signature Triton's launcher would derive."""
    import triton
    from triton.backends.compiler import GPUTarget

    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = args[p.name]
        if p.is_constexpr:
            sig[p.name], consts[(i,)] = "constexpr", v
        elif isinstance(v, torch.dtype):
            sig[p.name], attrs[(i,)] = _PTR[v], [["tt.divisibility", 16]]
        elif v == 1:
            sig[p.name], consts[(i,)] = "constexpr", 1
        else:
            sig[p.name] = "i64" if abs(v) >= 2**31 else "i32"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps,
                                   **({} if maxnreg is None else {"maxnreg": maxnreg})})


def kernel_arguments(fn, dtype: torch.dtype, values: dict, io: tuple = _IO) -> dict:
    """Every parameter of `fn` for compile_sm90: pointers named in `io` to `dtype`, the
    other pointers to fp32, the rest from `values` or, for constexprs it leaves out,
    their defaults."""
    full = {}
    for param in fn.params:
        if param.name.endswith("_ptr"):
            full[param.name] = dtype if param.name in io else torch.float32
        elif param.name in values or not param.has_default:
            full[param.name] = values[param.name]
        else:  # a constexpr with a default the config leaves alone
            full[param.name] = param.default
    return full


def _tool(name: str, cubin: bytes, *flags: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([path, *flags, f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)


def opcode_counts(sass: str) -> collections.Counter:
    """SASS opcodes (without predicates or modifiers: SHFL.BFLY counts as SHFL) of
    nvdisasm's instruction lines."""
    return collections.Counter(re.findall(
        r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M))


def stats(kernel) -> tuple[dict, str]:
    cubin = kernel.asm["cubin"]
    res = _tool("cuobjdump", cubin, "--dump-resource-usage")
    sass = _tool("nvdisasm", cubin, "-c")
    ops = opcode_counts(sass)
    out = {k: int(re.search(rf"{k}:(\d+)", res).group(1)) for k in ("REG", "STACK", "SHARED")}
    out["total"] = sum(ops.values())
    out.update({k: ops.get(k, 0) for k in KEYS})
    return out, sass


def _row1_args(chunk: int, backward: bool) -> dict:
    """Kernel arguments for row 1 of DESIGN.md 7 (z, softplus, delta_bias, D, N = 16)."""
    L, D = 262144, 64
    return dict(dim=D, groups=1, length=L, n_chunks=L // chunk, n_cblk=1, n_bgd=2,
                per_group=D, channel_block=D, s_ub=D * L, s_ud=L, s_ul=1, s_db=D * L,
                s_dd=L, s_dl=1, s_zb=D * L, s_zd=L, s_zl=1, s_ob=D * L, s_od=L, s_ol=1,
                s_Bb=16 * L, s_Bg=16 * L, s_Bn=L, s_Bl=1, s_Cb=16 * L, s_Cg=16 * L, s_Cn=L,
                s_Cl=1, tile_pin=0, part_stride=D * 18, dC_shift=0, BC_IN_LOOP=False, N=16, NP=16, CHUNK=chunk, HAS_BIAS=True, SOFTPLUS=True, HAS_Z=True,
                HAS_D=True, REVERSE=False, DO_FWD=True, DO_BWD=backward, MULTI_CHUNK=True,
                PREFETCH=False)


def configs(chunk: int):
    """(label, module attribute path, args, num_warps) for every forward kernel."""
    base = _row1_args(chunk, backward=False)
    warps = max(1, chunk * 16 // 2048)
    yield "chunked: aggregate", ("triton_chunks", "_chunk_aggregate_kernel"), base, warps
    yield "chunked: output", ("triton_fwd", "_fwd_output_kernel"), base, warps
    yield "reload: output", ("triton_fwd", "_fwd_output_kernel"), {**base, "BC_IN_LOOP": True}, warps
    yield "rows: aggregate", ("triton_fwd_rows", "_aggregate_rows_kernel"), base, warps
    yield "rows: output", ("triton_fwd_rows", "_fwd_rows_kernel"), base, warps
    yield "deferred: local", ("triton_fwd_deferred", "_fwd_local_kernel"), base, warps
    yield "deferred: correct", ("triton_fwd_deferred", "_fwd_correct_kernel"), base, warps
    carry = {**base, "BLOCK": 512, "STORE_LAST": True, "WITH_Q": False, "STAGE": 0,
             "n_chunks": 2048, "n_blocks": 4}
    yield "carry (block 512, 8 warps)", ("triton_chunks", "_carry_kernel"), carry, 8
    yield "carry blocks from zero", ("triton_chunks", "_carry_kernel"), {**carry, "STAGE": 1}, 8
    yield "carry blocks' fix-up", ("triton_chunks", "_carry_kernel"), {**carry, "STAGE": 2}, 8
    yield "carry, H and Q (block 512)", ("triton_chunks", "_carry_kernel"), {
        **carry, "STORE_LAST": False, "WITH_Q": True}, 8
    # row 1's forward since session 36: 1171 aggregates folded 3 a chunk, split 4, 4 warps
    yield "carry, folded 3 (split 4)", ("triton_chunks", "_carry_kernel"), {
        **carry, "n_chunks": 1171, "n_blocks": 1, "SPLIT": 4, "FOLD": 3}, 4


def serial_configs(dtype: torch.dtype):
    """The "serial" kernel at its default plan for row 1 (chunk 256, 32 channels, 1 warp;
    serial_planning's positions a load: 16 bytes in the forward aggregate, 8 positions,
    loaded 4 at a time, in the output pass and the adjoint aggregate; B/C 2 positions a
    load in bf16 but in an output pass that keeps states)."""
    L, D = 262144, 64
    base = dict(dim=D, groups=1, length=L, n_chunks=L // 256, chunk_len=256, n_dblk=2,
                n_sub=L // 64, h_chunks=L // 256, h_step=1, per_group=D, s_ub=D * L, s_ud=L, s_ul=1, s_db=D * L, s_dd=L, s_dl=1,
                s_zb=D * L, s_zd=L, s_zl=1, s_Bb=16 * L, s_Bg=16 * L, s_Bn=L, s_Bl=1,
                s_Cb=16 * L, s_Cg=16 * L, s_Cn=L, s_Cl=1, s_An=2,  # A's stride stays a value
                N=16, NP=16, BLOCK_D=32, TI=8, VEC=4, EVEN_D=True, HAS_BIAS=True,
                SOFTPLUS=True, HAS_Z=True, HAS_D=True, REVERSE=False, MULTI_CHUNK=True,
                AGGREGATE=False, ADJOINT=False)
    kernel = ("triton_fwd_serial", "_serial_kernel")
    from medmamba_kernels.selective_scan import serial_planning

    plan = serial_planning.serial_plan(2, D, 1, L, dtype)

    def bc(aggregate: bool, adjoint: bool = False) -> dict:  # the plan's B/C tiles
        bc_ti, groups = plan.bc_launch(aggregate, adjoint, 16)
        return {"BC_TI": bc_ti, "G": groups}

    yield "serial: aggregate", kernel, {**base, **bc(True), "AGGREGATE": True,
                                        "TI": 16 // dtype.itemsize, "VEC": 64}, 1
    yield "serial: adjoint aggregate", kernel, {**base, **bc(True, True), "AGGREGATE": True,
                                                "ADJOINT": True, "VEC": 64}, 1
    yield "serial: output", kernel, {**base, **bc(False)}, 1
    yield "serial: output, kept states", kernel, {**base, "SUB_STATES": True}, 1
    for label, opts in (("2 channels a thread", {"BLOCK_D": 64, "n_dblk": 1}),
                        ("4 channels a thread", {"BLOCK_D": 128, "n_dblk": 1})):
        yield f"serial: aggregate, {label}", kernel, {**base, "AGGREGATE": True, **opts}, 1
        yield f"serial: output, {label}", kernel, {**base, **opts}, 1


def backward_configs(chunk: int, dtype: torch.dtype):
    """The backward kernels at the host function's default plan for row 1 (one warp)."""
    # row 1's chunks are whole: unmasked for 4-byte inputs (the host's `unmasked` default)
    base = {**_row1_args(chunk, backward=True), "EVEN_L": dtype.itemsize == 4}
    yield "bwd: aggregate (h and g)", ("triton_chunks", "_chunk_aggregate_kernel"), base, 1
    for reverse in (False, True):
        label = f"bwd{' reverse' if reverse else ''}"
        yield label, ("triton_bwd", "_bwd_kernel"), {**base, "REVERSE": reverse}, 1
    yield "bwd prefetch", ("triton_bwd", "_bwd_kernel"), {**base, "PREFETCH": True, "AHEAD": 2}, 1
    yield "bwd prefetch, A ahead", ("triton_bwd", "_bwd_kernel"), {**base, "PREFETCH": True, "AHEAD": 1}, 1
    yield "bwd prefetch, vectors ahead", ("triton_bwd", "_bwd_kernel"), {**base, "PREFETCH": True, "AHEAD": 0}, 1
    # 2-byte inputs' default since session 37: the boundary states asked for in L1 instead
    yield "bwd vectors ahead, cached", ("triton_bwd", "_bwd_kernel"), {
        **base, "PREFETCH": True, "AHEAD": 0, "CACHE_AHEAD": True}, 1
    # the adjoint from dt loaded shifted (adjoint="shifted": bf16's default scanning forwards)
    for ahead in (2, 0):
        yield f"bwd prefetch {ahead}, shifted", ("triton_bwd", "_bwd_kernel"), {
            **base, "PREFETCH": True, "AHEAD": ahead, "SHIFTED_DECAY": True}, 1
    # the "serial" main kernel: 32 channels a program, checkpoints every TI positions
    serial = {**base, "n_dblk": 2, "n_items": base["n_chunks"] * 4, "BLOCK_D": 32,
              "TI": 2, "EVEN_D": True}
    for reverse in (False, True):
        label = f"bwd serial{' reverse' if reverse else ''}"
        yield label, ("triton_bwd_serial", "_serial_bwd_kernel"), {
            **serial, "REVERSE": reverse}, 1
    yield "bwd serial B/C ahead", ("triton_bwd_serial", "_serial_bwd_kernel"), {
        **serial, "BC_AHEAD": True}, 1
    yield "bwd serial TI 1", ("triton_bwd_serial", "_serial_bwd_kernel"), {
        **serial, "TI": 1}, 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunk", type=int, default=128, help="forward chunk")
    p.add_argument("--bwd-chunk", type=int, default=64, help="backward chunk")
    p.add_argument("--dump", type=Path, default=None, help="write SASS and TTGIR here")
    p.add_argument("--only", default="", help="kernels whose label starts with this")
    p.add_argument("--maxnreg", type=int, default=None, help="cap registers a thread")
    p.add_argument("--reverse", action="store_true",
                   help="the forward kernels scanning from the end (reverse=True)")
    args = p.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    modules = dict(zip(("triton_chunks", "triton_fwd", "triton_fwd_deferred", "triton_bwd",
                        "triton_fwd_rows", "triton_fwd_serial", "triton_bwd_serial"),
                       _import_kernels()))
    print(f"{'kernel':<28}{'dtype':<6}{'REG':>5}{'STACK':>6}{'total':>7}"
          + "".join(f"{k:>6}" for k in KEYS))
    for dtype in (torch.float32, torch.bfloat16):
        for label, (mod, name), values, warps in [*configs(args.chunk),
                                                  *serial_configs(dtype),
                                                  *backward_configs(args.bwd_chunk, dtype)]:
            if not label.startswith(args.only):
                continue
            fn = getattr(modules[mod], name)
            full = kernel_arguments(fn, dtype, values)
            if args.reverse and "REVERSE" in full and not label.startswith("bwd"):
                full["REVERSE"] = True
            kernel = compile_sm90(fn, full, warps, args.maxnreg)
            s, sass = stats(kernel)
            print(f"{label:<28}{str(dtype)[6:]:<6}{s['REG']:>5}{s['STACK']:>6}{s['total']:>7}"
                  + "".join(f"{s[k]:>6}" for k in KEYS), flush=True)
            if args.dump is not None:
                args.dump.mkdir(parents=True, exist_ok=True)
                stem = re.sub(r'[^A-Za-z0-9_-]+', '_', f"{label}_{str(dtype)[6:]}")
                (args.dump / f"{stem}.sass").write_text(sass)
                (args.dump / f"{stem}.ttgir").write_text(kernel.asm["ttgir"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
