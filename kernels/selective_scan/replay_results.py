"""How a recorded host-function call's result is described and built again (replay.py).

A result spec is a nested tuple: ("tuple", specs) element by element, ("value", v) for
anything not a tensor, ("input", i) for the call's i-th tensor argument, ("allocation", j)
for a whole allocation of the call, ("view", j, shape, stride, offset) for a view of one.
"""

from __future__ import annotations

from typing import Any

import torch


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
