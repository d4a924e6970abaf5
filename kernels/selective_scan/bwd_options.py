"""The backward host function's options (triton_bwd.selective_scan_bwd_triton): their
values, the rules "auto" follows, and their checks. Host-side only."""

from __future__ import annotations

import torch

from .serial_planning import serial_applies
from .triton_chunks_carried import walk_pays

BOUNDARIES = ("auto", "serial", "tile", "carried")
ADJOINTS = ("auto", "groups", "shifted")
MAINS = ("auto", "serial", "tile")


def auto_boundary(sequences: int, length: int, per_group: int, dtype: torch.dtype,
                  n_chunks: int) -> str:
    """"serial" by the forward's rule (serial_planning.serial_applies; sequences: batch *
    dim), else "carried" for many rows of few chunks (one launch against two, where the
    walk's latency hides: triton_chunks_carried.walk_pays, measured in sessions 41-42),
    else "tile".
    "serial" measured with bench_selective_scan.py --bwd-variants (session 16):
    row 1 3.55 -> 3.05 ms fp32, row 6 (48 channels) 10.21 -> 10.35 fp32 but 9.72 -> 9.40
    bf16; the lengths from 2048 on: with the forward's (session 23). fp32 groups that are
    not whole warps stay on "tile" (session 16; not measured again since session 25)."""
    fp32_part_warps = dtype == torch.float32 and per_group % 32 != 0
    if serial_applies(sequences, length, per_group) and not fp32_part_warps:
        return "serial"
    return "carried" if walk_pays(sequences, n_chunks, True, dtype.itemsize) else "tile"


def auto_main(sequences: int, length: int, per_group: int, dtype: torch.dtype) -> str:
    """The main kernel "auto" takes: "tile" for every shape, "serial" being 1.1-1.9x slower
    on every bench row (session 31: kernels README, "A serial main kernel for the
    backward: measured slower"); the arguments are those a rule would read."""
    return "tile"


def resolve_options(dtype: torch.dtype, sequences: int, length: int, per_group: int,
                    boundary: str, ahead: int | None, cache_ahead: bool | None, adjoint: str,
                    unmasked: bool | None, main: str) -> tuple[int, bool, str, bool, str]:
    """(ahead, cache_ahead, adjoint, unmasked, main) with their defaults filled in ("auto"
    boundaries are left to the caller, who knows whether states were kept); a bad value is
    a ValueError naming the option."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary: expected one of {BOUNDARIES}, got {boundary!r}")
    if ahead is None:
        ahead = 2 if dtype.itemsize == 4 else 0
    if ahead not in (0, 1, 2):
        raise ValueError(f"ahead: expected 0, 1, 2 or None, got {ahead!r}")
    if cache_ahead is None:  # as measured: kernels README, "Boundary states cached ahead"
        cache_ahead = ahead < 2
    if not isinstance(cache_ahead, bool):
        raise ValueError(f"cache_ahead: expected True, False or None, got {cache_ahead!r}")
    if adjoint not in ADJOINTS:
        raise ValueError(f"adjoint: expected one of {ADJOINTS}, got {adjoint!r}")
    if adjoint == "auto":
        adjoint = "groups"
    if unmasked is None:
        unmasked = dtype.itemsize == 4
    if main not in MAINS:
        raise ValueError(f"main: expected one of {MAINS}, got {main!r}")
    if main == "auto":
        main = auto_main(sequences, length, per_group, dtype)
    return ahead, cache_ahead, adjoint, unmasked, main
