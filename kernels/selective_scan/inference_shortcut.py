"""Repeated eager inference calls of `selective_scan`, straight to their replay.

An inference call (grad mode off) on the Triton backend checks its arguments, normalises
them, dispatches and then calls the forward host function, whose replay (replay.py) is
found by the host function's own signature: two signatures a call, and on the H200
machine's host the public layers cost ~13-19 us of a short row's ~75 (session 44,
`profile_host_overhead.py --inference`). Once such a call has run with a normalisation of
views alone (B and C unsqueezed, nothing cast), its public signature names the replay
(`alias`): the next calls with that signature skip the checks, the normalisation and the
dispatch and run the replay directly.

The public signature covers what those layers decide from: each tensor argument's shape,
strides, dtype, device and 16-byte alignment (a Tensor or a Parameter, nothing else), the
flags (exactly bool), the backend asked for ("auto" or "triton") and the current CUDA
device. Whatever passed the checks once passes them again with the same signature, and
the host function sees the same signature as it did then (unsqueezing keeps the
addresses the replay patches). Grad mode on, torch.compile, other tensor subclasses, a
normalisation that casts and unreplayable signatures always take the long way.
"""

from __future__ import annotations

from typing import Any

import torch

from . import launch

# What a tensor argument may be: a Parameter (D, delta_bias of a layer, passed as
# `.float()` of an fp32 one: itself) behaves as a Tensor in every op (its torch function is
# disabled), other subclasses may not
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
_SHORTCUT_BACKENDS = ("auto", "triton")  # Backend members compare equal to their values


def _signature(tensors: tuple, flags: tuple) -> tuple[tuple, list, list] | None:
    """(key, the tensors, their addresses) of a public call, None where an argument is of
    a kind the shortcut does not take: a tensor subclass other than Parameter, a flag
    (delta_softplus, reverse, return_last_state) that is not exactly a bool."""
    for flag in flags[:3]:
        if type(flag) is not bool:
            return None
    key: list = [*flags]
    present, addresses = [], []
    for x in tensors:
        if x is None:
            key.append(None)
            continue
        if type(x) not in _TENSOR_TYPES:
            return None
        address = x.data_ptr()
        key += (x.shape, x.stride(), x.dtype, x.device, address & 15)
        present.append(x)
        addresses.append(address)
    return tuple(key), present, addresses


class InferenceShortcuts:
    """Public inference signatures -> the forward host function's replay (`run`),
    learnt from calls that went the long way (`learn`)."""

    def __init__(self) -> None:
        self._host: Any = None  # the replayed forward host function, once seen

    def run(self, tensors: tuple, flags: tuple) -> tuple | None:
        """(out, last_state) of a known inference call, run by its replay; None where
        the call must go the long way (unknown, not replayable, off the GPU)."""
        host, u = self._host, tensors[0]
        if (host is None or not host.aliases or type(u) is not torch.Tensor
                or flags[3] not in _SHORTCUT_BACKENDS):
            return None
        device = launch.current_device(u)
        try:
            found = None if device is None else _signature(tensors, flags)
        except RuntimeError:  # a tensor without storage (vmap, functionalisation)
            return None
        if found is None:
            return None
        key, present, addresses = found
        replay = host.by_alias((key, device))
        if replay is None:
            return None
        return replay(present, addresses, present[0].device)

    def learn(self, host: Any, tensors: tuple, flags: tuple, normalised: tuple,
              host_flags: tuple, host_options: dict | None = None) -> None:
        """After a long-way inference call: let `tensors` and `flags` (as the caller
        passed them) name the replay of `host` on `normalised` (what it was called with),
        `host_flags` and the keywords `host_options`, where the normalisation took views
        alone. A host function without replay aliases (not `replay.replayed`) is never
        learnt."""
        aliases = getattr(host, "aliases", None)
        if aliases is None:
            return
        for given, used in zip(tensors, normalised):
            if given is not None and (used.data_ptr() != given.data_ptr()
                                      or used.dtype != given.dtype):
                return  # a cast: the host function saw another tensor
        found = _signature(tensors, flags)
        if found is None:
            return
        key, present, _ = found
        self._host = host
        device = launch.current_device(present[0])
        # once aliased (to a replay, or to None: unreplayable) there is nothing to learn
        if device is not None and (key, device) not in aliases:
            host.alias((key, device), *normalised, *host_flags, **(host_options or {}))
