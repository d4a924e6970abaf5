"""Host functions replayed per signature: a call's allocations and launches, recorded once.

A short scan is host-bound: a forward of (2, 256, 4096) takes ~45 us of GPU time and,
on the H200 machine's host, ~105 us of host time, of which ~60 us is Python (plans,
launch keys, argument tuples) and allocations, not launches (session 38's
`profile_host_overhead.py`). Yet the host functions decide everything from their
arguments' shapes, strides, dtypes, alignment and flags, never from values. So
`replayed(fn)` runs `fn` normally the first time it sees a signature, records its second
call (every allocation, every launch: the compiled kernel, grid, constexprs and each
argument as a constant or an address relative to one of the call's tensors or
allocations), and from the third on makes the same allocations and launches directly,
returning the same structure of tensors.

A recording is kept only where the call did nothing else on the device: `fn`'s torch ops
are watched (a TorchDispatchMode) and may only allocate (empty, or zeros before any launch
uses the buffer) or take views; every launch must have gone through a CachedLaunch's
launch function (launch.py), not Triton's runner or interpreter. Otherwise (a torch
reduction, a copy, TRITON_INTERPRET=1, a launch hook installed) the signature always runs
`fn`. Replays also give way to `fn` while a launch hook is installed (a profiler).

The signature: each tensor argument's shape, strides, dtype, device and 16-byte alignment,
every other argument's type and value (None, bool, int, float or str; anything else is
not replayed), and the current CUDA device. The replay makes every allocation up front
and keeps it to the end, where `fn` may have freed scratch earlier (a little more peak
memory, scratch only). Scratch comes from one buffer a call; a host function may also
let callers take results that share storage (`replayed(shared=...)`: the backward's
parameters' gradients, one allocation for three), which replay_results.Replay makes.
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .replay_results import Replay

_MAX_SIGNATURES = 512
_RECORD_AT = 2  # the sighting of a signature that is recorded (the first compiles)
_UNSEEN = object()  # `records` has no verdict on a signature yet

_ALLOCATIONS = {torch.ops.aten.empty, torch.ops.aten.empty_like, torch.ops.aten.empty_strided,
                torch.ops.aten.new_empty, torch.ops.aten.new_empty_strided}
_ZERO_ALLOCATIONS = {torch.ops.aten.zeros, torch.ops.aten.zeros_like,
                     torch.ops.aten.new_zeros}
_VIEWS = {torch.ops.aten.view, torch.ops.aten._unsafe_view, torch.ops.aten.as_strided,
          torch.ops.aten.unsqueeze, torch.ops.aten.squeeze, torch.ops.aten.select,
          torch.ops.aten.slice, torch.ops.aten.split, torch.ops.aten.split_with_sizes,
          torch.ops.aten.unbind, torch.ops.aten.t, torch.ops.aten.transpose,
          torch.ops.aten.expand, torch.ops.aten.permute, torch.ops.aten.detach,
          torch.ops.aten.alias, torch.ops.aten._reshape_alias, torch.ops.aten.narrow,
          torch.ops.aten.diagonal}

_RECORDER: ContextVar[_Recorder | None] = ContextVar("medmamba_scan_recorder", default=None)


def note_launch(launch: Callable, args: tuple, addresses: list, tail: list) -> None:
    """Called by CachedLaunch after each launch: `launch` is the runner it used, `args`
    the arguments (tensors among them), `addresses` the same with tensors as addresses,
    `tail` the constexprs passed after them. A no-op unless a call is being recorded."""
    recorder = _RECORDER.get()
    if recorder is not None:
        recorder.launched(launch, args, addresses, tail)


def note_untracked_launch(why: str) -> None:
    """Called for a launch a replay could not repeat (Triton's interpreter)."""
    recorder = _RECORDER.get()
    if recorder is not None:
        recorder.fail(why)


def _extent(t: torch.Tensor) -> int:
    """Bytes from t's first element to one past its last."""
    if t.numel() == 0:
        return 0
    return (sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1) * t.element_size()


@dataclass
class _Allocation:
    address: int
    nbytes: int
    shape: tuple
    stride: tuple
    dtype: torch.dtype
    zeroed: bool = False
    launched: bool = False  # a launch has used it (it may not be zeroed afterwards)


class _Recorder:
    """What one call of a host function allocated and launched, addresses resolved
    against its tensor arguments and its own allocations as the launches happen (a
    freed allocation's memory may be handed out again later in the same call)."""

    def __init__(self, inputs: list[torch.Tensor]) -> None:
        self.inputs = [(t.data_ptr(), _extent(t)) for t in inputs]
        self.allocations: list[_Allocation] = []
        self.launches: list[tuple] = []
        self.failure: str | None = None

    def fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why

    def allocated(self, t: torch.Tensor, zeroed: bool) -> None:
        self.allocations.append(_Allocation(t.data_ptr(), _extent(t), tuple(t.shape),
                                            tuple(t.stride()), t.dtype, zeroed))

    def zeroed(self, t: torch.Tensor) -> None:
        for alloc in reversed(self.allocations):
            if alloc.address == t.data_ptr() and alloc.nbytes == _extent(t):
                if not alloc.launched:
                    alloc.zeroed = True
                    return
        self.fail("a tensor zeroed that is not a fresh allocation")

    def resolve(self, address: int) -> tuple[int, int] | None:
        """(base, offset): base < 0 is input ~base, otherwise that allocation."""
        exact = [i for i, (start, _) in enumerate(self.inputs) if start == address]
        if len(exact) == 1:
            return ~exact[0], 0
        if exact:
            return None  # two arguments at one address: which one a replay means is unknown
        for j in range(len(self.allocations) - 1, -1, -1):
            alloc = self.allocations[j]
            if alloc.address <= address < alloc.address + max(alloc.nbytes, 1):
                alloc.launched = True
                return j, address - alloc.address
        inside = [i for i, (start, size) in enumerate(self.inputs)
                  if start <= address < start + size]
        return (~inside[0], address - self.inputs[inside[0]][0]) if len(inside) == 1 else None

    def launched(self, launch: Callable, args: tuple, addresses: list, tail: list) -> None:
        raw = getattr(launch, "raw", None)
        if raw is None:
            self.fail("a launch through Triton's runner")
            return
        patches = []
        for position, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                where = self.resolve(addresses[position])
                if where is None:
                    self.fail(f"launch argument {position}: address of no single argument "
                              "or allocation")
                    return
                patches.append((position, *where))
        # `launch` holds its compiled kernel (whose module `raw`'s handle lives in) alive
        self.launches.append((raw, list(addresses), tuple(tail), tuple(patches), launch))


class _Watch(TorchDispatchMode):
    """Lets a recorded call allocate and take views; anything else fails the recording."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in _ALLOCATIONS or packet in _ZERO_ALLOCATIONS:
            self.recorder.allocated(out, zeroed=packet in _ZERO_ALLOCATIONS)
        elif func is torch.ops.aten.zero_.default or (
                func is torch.ops.aten.fill_.Scalar and args[1] == 0):
            self.recorder.zeroed(args[0])
        elif packet not in _VIEWS:
            self.recorder.fail(f"{func} ran on the device")
        return out


def _signature(args: tuple, kwargs: dict) -> tuple[tuple, list, list] | None:
    """(key, tensor arguments in order, their addresses), None where an argument is of a
    kind not keyed. One flat key: hashing nested tuples took longer than building them."""
    key = []
    tensors = []
    addresses = []
    for value in (*args, *kwargs.values()):
        kind = type(value)
        if kind is torch.Tensor or isinstance(value, torch.Tensor):
            address = value.data_ptr()
            key += (value.shape, value.stride(), value.dtype, value.get_device(), address & 15)
            tensors.append(value)
            addresses.append(address)
        elif value is None or kind is bool or kind is int or kind is float or kind is str:
            key += (kind, value)
        else:
            return None
    key += kwargs
    return tuple(key), tensors, addresses


def replayed(fn: Callable | None = None, *,
             shared: tuple[str, tuple[tuple[int, ...], ...]] | None = None) -> Callable:
    """`fn` (a host function: allocations and CachedLaunch launches only, decided by its
    arguments' signature) replayed from its third call of a signature on; see the module
    docstring. `.records` holds each signature's replay or None (not replayable), and
    `.unreplayable` why not; `.forget()` drops them; `.enabled = False` runs `fn` every
    time. `.alias(name, *args, **kwargs)` lets a caller reach the replay of the call with
    these arguments by a key of its own, `.by_alias(name)` (the caller's key must cover
    everything this signature does: see inference_shortcut.py).
    `shared=(keyword, groups)`: replays of calls passing `keyword=True` return the
    results at each group's positions as views of one allocation where they can
    (replay_results.Replay); `@replayed(shared=...)` as a decorator with arguments."""
    if fn is None:
        return functools.partial(replayed, shared=shared)
    from . import launch

    seen: dict[tuple, int] = {}
    records: dict[tuple, Replay | None] = {}
    unreplayable: dict[tuple, str] = {}  # benches print why a signature runs fn
    aliases: dict[Any, Replay | None] = {}
    runtime = launch.knobs_runtime()  # where Triton keeps its launch hooks

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signature = _signature(args, kwargs) if wrapper.enabled else None
        if signature is None or not signature[1]:
            return fn(*args, **kwargs)
        key, tensors, addresses = signature
        device = launch.current_device(tensors[0])
        if device is None:  # off the GPU: Triton's interpreter, nothing to replay
            return fn(*args, **kwargs)
        key = (key, device)
        replay = records.get(key)
        if replay is not None and not launch.launch_hooks_installed(runtime):
            return replay(tensors, addresses, tensors[0].device)
        if key in records:  # not replayable, or a hook is installed
            return fn(*args, **kwargs)
        count = seen.get(key, 0) + 1
        if count < _RECORD_AT:
            if len(seen) >= _MAX_SIGNATURES:
                seen.clear()
            seen[key] = count
            return fn(*args, **kwargs)
        seen.pop(key, None)
        groups = shared[1] if shared is not None and kwargs.get(shared[0]) is True else ()
        result, replay, why = _record(fn, args, kwargs, tensors, groups)
        if len(records) >= _MAX_SIGNATURES:
            records.clear()
            unreplayable.clear()
            aliases.clear()
        records[key] = replay
        if why is not None:
            unreplayable[key] = why
        return result

    def alias(name: Any, *args, **kwargs) -> None:
        """Remember `name` for the signature of these arguments once its replay, or its
        verdict of unreplayable, exists; until then nothing."""
        signature = _signature(args, kwargs) if wrapper.enabled else None
        if signature is None or not signature[1]:
            return
        device = launch.current_device(signature[1][0])
        replay = records.get((signature[0], device), _UNSEEN)  # one look-up: no race
        if device is not None and replay is not _UNSEEN:
            if len(aliases) >= _MAX_SIGNATURES:
                aliases.clear()
            aliases[name] = replay

    def by_alias(name: Any) -> Replay | None:
        """The replay known by `name`, None where there is none (unknown, unreplayable,
        replays off, or a launch hook installed)."""
        if not wrapper.enabled or launch.launch_hooks_installed(runtime):
            return None
        return aliases.get(name)

    wrapper.records = records
    wrapper.unreplayable = unreplayable
    wrapper.aliases = aliases
    wrapper.alias = alias
    wrapper.by_alias = by_alias
    wrapper.enabled = True  # benches turn it off to measure the host functions themselves
    wrapper.forget = lambda: (seen.clear(), records.clear(), unreplayable.clear(),
                              aliases.clear())
    return wrapper


def _record(fn: Callable, args: tuple, kwargs: dict, tensors: list[torch.Tensor],
            shared: tuple[tuple[int, ...], ...] = ()
            ) -> tuple[Any, Replay | None, str | None]:
    """(fn's result, its replay, None) or (fn's result, None, why it cannot be replayed);
    `shared`: Replay's."""
    recorder = _Recorder(tensors)
    token = _RECORDER.set(recorder)
    try:
        with _Watch(recorder):
            result = fn(*args, **kwargs)
    finally:
        _RECORDER.reset(token)
    if recorder.failure is not None:
        return result, None, recorder.failure
    try:
        return result, Replay(recorder, result, tensors, shared), None
    except ValueError as error:
        return result, None, str(error)
