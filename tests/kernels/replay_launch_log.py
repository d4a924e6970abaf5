"""Launch logs of the replay tests (test_replay.py): each launch's addresses named by the
tensor they point into, and the check that a replayed call repeats its recorded one."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

STREAM = 7  # the stream the stand-in launches report


def tensors_in(structure) -> list[torch.Tensor]:
    if isinstance(structure, (tuple, list)):
        return [t for item in structure for t in tensors_in(item)]
    return [structure] if isinstance(structure, torch.Tensor) else []


def _extent(t: torch.Tensor) -> int:
    """Bytes from t's first element to one past its last (outputs may be views of one
    buffer: its storage is not theirs alone)."""
    return (sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1) * t.element_size()


def canonical_launches(entries: list, inputs: list, outputs: list) -> list:
    """Each launch with every address named by the tensor it points into: ("in", i, byte
    offset), ("out", j, offset) or ("scratch", k, offset), k counted from the call's first
    launch; other values as they are."""
    regions = [("in", i, t) for i, t in enumerate(inputs)]
    regions += [("out", j, t) for j, t in enumerate(outputs)]
    scratch: dict[int, int] = {}
    canonical = []
    for kind, name, grid, stream, addresses in entries:
        assert kind == "run" and stream == STREAM
        named = []
        for a in addresses:
            place = next(((role, i, a - t.data_ptr()) for role, i, t in regions
                          if t.numel() and 0 <= a - t.data_ptr() < _extent(t)), None)
            if place is None and isinstance(a, int) and a > 2**32:  # an address of scratch
                place = ("scratch", scratch.setdefault(a, len(scratch)), 0)
            named.append(place if place is not None else a)
        canonical.append((name, grid, named))
    return canonical


def assert_same_launches(replayed_launches: list, recorded: list) -> None:
    """Equal, but for scratch: a replay keeps each scratch buffer to the end, where the
    recorded call may have freed one and been handed its memory again, so one recorded
    scratch address may stand for several of the replay's, never the other way round."""
    assert len(replayed_launches) == len(recorded)
    scratch_of: dict[int, int] = {}
    for (name, grid, args), (name0, grid0, args0) in zip(replayed_launches, recorded):
        assert (name, grid, len(args)) == (name0, grid0, len(args0))
        for arg, arg0 in zip(args, args0):
            if isinstance(arg, tuple) and arg[0] == "scratch":
                assert isinstance(arg0, tuple) and arg0[0] == "scratch"
                assert scratch_of.setdefault(arg[1], arg0[1]) == arg0[1]
            else:
                assert arg == arg0


class _KeepAllocations(TorchDispatchMode):
    """Holds every tensor the call allocates until the end, as a replay does: else the
    host function's scratch, freed, could be handed out again for an output allocated
    later (the backward's sums), and an address of scratch would read as the output's."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.kept += tensors_in(out)
        return out


def calls_on_fresh_arguments(fn, log: list, make_args, n: int = 3) -> list:
    """n calls of fn on fresh arguments: for each, (launches, inputs, outputs, result)."""
    calls = []
    for seed in range(n):
        args, kwargs = make_args(seed)
        start = len(log)
        with _KeepAllocations():
            result = fn(*args, **kwargs)
        inputs = tensors_in(list(args) + list(kwargs.values()))
        calls.append((log[start:], inputs, tensors_in(result), result))
    return calls


def assert_replay_repeats_recording(fn, log, make_args) -> list:
    (_, _, _, _), recorded, replayed_call = calls_on_fresh_arguments(fn, log, make_args)
    assert len(fn.records) == 1 and next(iter(fn.records.values())) is not None
    assert [e[0] for e in recorded[0]] == ["run"] * len(recorded[0])
    assert_same_launches(canonical_launches(*replayed_call[:3]), canonical_launches(*recorded[:3]))
    for old, new in zip(recorded[2], replayed_call[2]):
        assert (new.shape, new.stride(), new.dtype) == (old.shape, old.stride(), old.dtype)
    old_storages = {t.untyped_storage().data_ptr() for t in recorded[2]}
    assert not {t.untyped_storage().data_ptr() for t in replayed_call[2]} & old_storages
    return recorded[0]
