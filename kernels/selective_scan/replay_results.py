"""A recorded host-function call made again (replay.py records it): its allocations,
its launches, and how its returned structure is described and built.

A result spec is a nested tuple: ("tuple", specs) element by element, ("value", v) for
anything not a tensor, ("input", i) for the call's i-th tensor argument, ("allocation", j)
for a whole allocation of the call, ("view", j, shape, stride, offset) for a view of one.
"""

from __future__ import annotations

import math
from typing import Any

import torch

_ALIGN = 256  # bytes: where each allocation carved from a shared buffer starts


def returned_allocations(spec: tuple) -> set[int]:
    """The recorded allocations a result spec returns (whole or as a view)."""
    if spec[0] == "tuple":
        return set().union(*(returned_allocations(s) for s in spec[1]))
    return {spec[1]} if spec[0] in ("allocation", "view") else set()


def renumbered(spec: tuple, where: list) -> tuple:
    """`spec` with recorded allocation indices replaced by own-allocation indices."""
    if spec[0] == "tuple":
        return ("tuple", tuple(renumbered(s, where) for s in spec[1]))
    if spec[0] in ("allocation", "view"):
        return (spec[0], where[spec[1]][1], *spec[2:])
    return spec


def result_spec(result: Any, allocations: list, inputs: list[torch.Tensor]) -> Any:
    """How to build `result` again: tensors by where they lie (an input, a whole
    allocation, or a view of one), tuples element by element, other values as they are.
    Raises ValueError where a tensor lies elsewhere."""
    if isinstance(result, tuple):
        return ("tuple", tuple(result_spec(r, allocations, inputs) for r in result))
    if not isinstance(result, torch.Tensor):
        return ("value", result)
    for i, t in enumerate(inputs):
        if result is t:
            return ("input", i)
    address = result.data_ptr()
    for j in range(len(allocations) - 1, -1, -1):
        alloc = allocations[j]
        if alloc.address <= address < alloc.address + max(alloc.nbytes, 1):
            if result.dtype != alloc.dtype:
                break
            whole = (address == alloc.address and tuple(result.shape) == alloc.shape
                     and tuple(result.stride()) == alloc.stride)
            if whole:
                return ("allocation", j)
            offset = (address - alloc.address) // result.element_size()
            return ("view", j, tuple(result.shape), tuple(result.stride()), offset)
    raise ValueError("a returned tensor is neither an argument nor an allocation")


def build(spec: tuple, inputs: list, allocations: list) -> Any:
    """The result `spec` describes, from a call's tensor arguments and own allocations."""
    kind = spec[0]
    if kind == "tuple":
        return tuple(build(s, inputs, allocations) for s in spec[1])
    if kind == "value":
        return spec[1]
    if kind == "input":
        return inputs[spec[1]]
    if kind == "allocation":
        return allocations[spec[1]]
    _, j, shape, stride, offset = spec
    base = allocations[j]
    return base.as_strided(shape, stride, base.storage_offset() + offset)


def _carves(spec: tuple, allocations: list, shared: tuple[tuple[int, ...], ...]
            ) -> tuple[dict[int, tuple[int, int]], list[tuple[int, torch.dtype]]]:
    """(recorded allocation -> (shared buffer, element offset), each buffer's (elements,
    dtype)): per group of `shared` positions of a tuple result, the whole, contiguous, not
    zeroed allocations there, by dtype; two or more of one dtype share one buffer."""
    if not shared or spec[0] != "tuple":
        return {}, []
    at: dict[int, tuple[int, int]] = {}
    buffers: list[tuple[int, torch.dtype]] = []
    for group in shared:
        by_dtype: dict[torch.dtype, list[int]] = {}
        for position in group:
            entry = spec[1][position] if position < len(spec[1]) else ("value", None)
            if entry[0] != "allocation" or entry[1] in at:
                continue
            a = allocations[entry[1]]
            if not a.zeroed and a.stride == _contiguous_strides(a.shape):
                by_dtype.setdefault(a.dtype, []).append(entry[1])
        for dtype, members in by_dtype.items():
            if len(members) < 2:
                continue
            step = _ALIGN // dtype.itemsize
            elements = 0
            for j in members:
                at[j] = (len(buffers), elements)
                elements += -(-math.prod(allocations[j].shape) // step) * step
            buffers.append((elements, dtype))
    return at, buffers


class Replay:
    """A recorded call: allocations, launches, and how to build the returned structure.

    `recorder`: replay.py's record of the call. `shared`: groups of positions of a tuple
    result whose allocations may share a buffer (`_carves`): returned as views of it, one
    allocation where there were several."""

    def __init__(self, recorder: Any, result: Any, inputs: list[torch.Tensor],
                 shared: tuple[tuple[int, ...], ...] = ()) -> None:
        spec = result_spec(result, recorder.allocations, inputs)
        returned = returned_allocations(spec)
        carve_at, self.carves = _carves(spec, recorder.allocations, shared)
        # returned allocations are made as they were (or carved as `shared` says); the
        # rest (scratch, seen only by the kernels as addresses) are carved from one
        # buffer: an allocation costs 2-6 us of host time on the H200 machine
        self.allocations = []
        self.scratch_bytes = 0
        where = []  # per recorded allocation: ("own", index) or ("scratch", byte offset)
        for j, a in enumerate(recorder.allocations):
            if j in returned or a.zeroed:
                where.append(("own", len(self.allocations)))
                carve, offset = carve_at.get(j, (None, 0))
                self.allocations.append((carve, offset, a.shape, a.stride, a.dtype, a.zeroed,
                                         a.stride == _contiguous_strides(a.shape)))
            else:
                where.append(("scratch", self.scratch_bytes))
                self.scratch_bytes += -(-a.nbytes // _ALIGN) * _ALIGN
        n_inputs, n_own = len(inputs), len(self.allocations)
        # bases: the inputs' addresses, the own allocations', then the scratch buffer's;
        # a patch: (argument position, base index, offset from it)
        def base(index: int, offset: int) -> tuple[int, int]:
            if index < 0:
                return ~index, offset
            kind, at = where[index]
            return (n_inputs + at, offset) if kind == "own" else (n_inputs + n_own, at + offset)

        self.launches = [(raw, addresses, tail,
                          tuple((pos, *base(index, offset)) for pos, index, offset in patches))
                         for raw, addresses, tail, patches, _ in recorder.launches]
        self.compiled = [entry[-1] for entry in recorder.launches]  # kept alive with it
        # every launch of a call is on the device current for it: one stream look-up
        devices = {raw[4] for raw, *_ in recorder.launches}
        self.device = devices.pop() if len(devices) == 1 else None
        self.result = renumbered(spec, where)
        # the common result, a flat tuple of whole allocations and Nones (absent
        # gradients): indices, no recursion
        flat = self.result[0] == "tuple" and all(
            r[0] == "allocation" or r == ("value", None) for r in self.result[1])
        self.flat_result = ([r[1] if r[0] == "allocation" else None for r in self.result[1]]
                            if flat else None)

    def __call__(self, inputs: list[torch.Tensor], addresses: list[int],
                 device: torch.device) -> Any:
        carved = [torch.empty(n, dtype=dtype, device=device) for n, dtype in self.carves]
        allocations = [
            carved[carve].as_strided(shape, stride, offset) if carve is not None
            else (torch.zeros if zeroed else torch.empty)(shape, dtype=dtype, device=device)
            if contiguous else _strided(shape, stride, dtype, device, zeroed)
            for carve, offset, shape, stride, dtype, zeroed, contiguous in self.allocations]
        bases = addresses + [t.data_ptr() for t in allocations]
        if self.scratch_bytes:
            scratch = torch.empty(self.scratch_bytes, dtype=torch.uint8, device=device)
            bases.append(scratch.data_ptr())
        stream = None if self.device is None else current_stream(self.device)
        for (call, grid, function, between, on_device), template, tail, patches in (
                self.launches):
            arguments = template.copy()
            for position, base, offset in patches:
                arguments[position] = bases[base] + offset
            on = current_stream(on_device) if stream is None else stream
            call(grid[0], grid[1], grid[2], on, function, *between, *arguments, *tail)
        if self.flat_result is not None:
            return tuple([None if j is None else allocations[j] for j in self.flat_result])
        return build(self.result, inputs, allocations)


def current_stream(device: int) -> int:
    """The raw current CUDA stream of `device` (looked up at each call: tests stand in
    for it)."""
    return torch._C._cuda_getCurrentRawStream(device)


def _contiguous_strides(shape: tuple) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _strided(shape, stride, dtype, device, zeroed) -> torch.Tensor:
    t = torch.empty_strided(shape, stride, dtype=dtype, device=device)
    return t.zero_() if zeroed else t
