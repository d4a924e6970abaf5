"""Triton launches without Triton's per-call argument binding, for repeated calls.

`kernel[grid](*args, **kwargs)` costs the host about 30-40 us on the H200 machine for our
kernels of ~45 arguments (an empty kernel of 45 arguments: 29-41 us, of 5: 14 us); the
compiled kernel's own runner takes 12 us for the same launch (scripts/
profile_host_overhead.py, session 17). Rows of short sequences are host-bound (bench
`--host`): a forward of (2, 256, 4096) runs 3 launches in 0.056 ms of GPU time. So the
first call of a given specialisation goes through Triton (which compiles or finds the
kernel) and keeps the compiled kernel; later calls with the same key launch it directly:
through the compiled kernel's launch function with the current stream (8-10 us for an
empty kernel of 45 arguments, session 21), not its runner (11-15 us: it looks the device
and stream up again and builds launch metadata for Triton's launch hooks, which it calls
even when none is installed). Where a hook is installed (a profiler), the runner again.

The key holds everything Triton specialises on: every non-tensor argument by type and
value (so an int's value, hence its ==1 and divisibility-by-16 properties and its width),
every tensor by dtype and 16-byte alignment, the keyword arguments (constexprs and launch
options), and the current CUDA device (Triton's caches are per current device, and a
compiled kernel is loaded and launched on the device current when it was first launched;
like Triton's, the key ignores which device a tensor is on). The launch function gets
each tensor as its address, read once for key and launch: given a tensor, it calls
data_ptr() and asks the driver about the pointer again (~2.3 us a launch of 11 tensors on
the H200 machine, session 21's `profile_host_overhead.py`: 10.4 against 8.1 us). So a
cached launch does not check that the tensors are on the GPU: the callers' inputs are
checked to share one device (interface.py), and the first call of a key went through
Triton's checks.
Triton settings changed at run time (its `knobs`, e.g. debug) are not in the key. Under
TRITON_INTERPRET=1 nothing is compiled: every call goes through Triton.

Every launch is also reported to replay.py (`note_launch`), which records the launches of
a host function's call when asked to; the launch function's parts a recording needs sit
on the runner as `raw`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Hashable

import torch

from .occupancy import device_slots
from .replay import note_launch, note_untracked_launch

_MAX_ENTRIES = 512  # a training run sees few shapes; a long-lived server may see many


def _key_and_addresses(args: tuple) -> tuple[tuple, list]:
    """(the key of the positional arguments, the arguments with every tensor replaced by
    its address). One loop: about half the host time of keying through a helper per
    tensor (6 against 10 us for 10 tensors and 30 ints on this project's CPU machine)."""
    key = []
    addresses = []
    for arg in args:
        kind = type(arg)
        if kind is int:  # sizes and strides: most arguments
            key.append(arg)
            addresses.append(arg)
        elif kind is torch.Tensor or isinstance(arg, torch.Tensor):
            address = arg.data_ptr()
            key.append((arg.dtype, address % 16 == 0))
            addresses.append(address)
        else:  # bools and floats apart from ints of the same value
            key.append((kind, arg))
            addresses.append(arg)
    return tuple(key), addresses


class CachedLaunch:
    """`CachedLaunch(jit_fn)[grid](*args, **kwargs)`: as `jit_fn[grid](...)`, faster when
    repeated. grid: a tuple of up to 3 ints. Positional arguments are the kernel's leading
    parameters, the first a tensor; keywords are the rest (constexprs) and launch options
    (num_warps, ...)."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn
        params = inspect.signature(fn.fn if hasattr(fn, "fn") else fn).parameters.values()
        self._names = [p.name for p in params]
        self._defaults = {p.name: p.default for p in params
                          if p.default is not inspect.Parameter.empty}
        # key -> (the compiled kernel's runner, the keyword parameters in signature order)
        self._runners: dict[tuple, tuple[Callable[..., None], list]] = {}
        # `keyed`'s: (caller's key, grid, device, dtypes) -> (runner, tail, scalars)
        self._keyed: dict[tuple, tuple[Callable[..., None], list, tuple]] = {}
        # `resident_programs`'s: (caller's key, device, dtypes) -> programs or None
        self._resident: dict[tuple, int | None] = {}

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        return lambda *args, **kwargs: self._launch(grid, args, kwargs)

    def keyed(self, key: Hashable, grid: tuple[int, ...], tensors: tuple,
              build: Callable[[], tuple[tuple, dict]]) -> None:
        """`self[grid](*tensors, *scalars, **kwargs)` with `(scalars, kwargs) = build()`,
        for callers that know what decides the launch: `key` must determine the grid,
        `scalars` and `kwargs` (the caller's shapes, strides, flags and plan), the tensors'
        dtypes and 16-byte alignment are added to it here. A repeated key skips `build`
        and the per-argument key of `__getitem__` (7 against ~14 us a launch of our
        kernels on this project's CPU machine, `scripts/profile_host_cpu.py`); tensors
        not all 16-byte aligned take `__getitem__`'s path."""
        addresses = [t.data_ptr() for t in tensors]
        if any(a & 15 for a in addresses):
            scalars, kwargs = build()
            self._launch(grid, (*tensors, *scalars), kwargs)
            return
        device = current_device(tensors[0])
        full_key = (key, grid, device, tuple([t.dtype for t in tensors]))
        cached = self._keyed.get(full_key)
        if cached is None:
            scalars, kwargs = build()
            entry = self._launch(grid, (*tensors, *scalars), kwargs)
            if entry is not None:
                if len(self._keyed) >= _MAX_ENTRIES:
                    self._keyed.clear()
                self._keyed[full_key] = (*entry, scalars)
            return
        runner, tail, scalars = cached
        addresses.extend(scalars)
        args = (*tensors, *scalars)
        runner(args, addresses, tail)
        note_launch(runner, args, addresses, tail)

    def resident_programs(self, key: Hashable, grid: tuple[int, ...], tensors: tuple,
                          build: Callable[[], tuple[tuple, dict]]) -> int | None:
        """How many programs of the launch `keyed(key, grid, tensors, build)` the device
        runs at once (occupancy.device_slots), its kernel compiled, not launched; cached
        per key. None off the GPU (CPU tensors, the interpreter) or where this Triton
        does not report the compiled kernel's registers."""
        if not tensors[0].is_cuda:
            return None
        device = torch.cuda.current_device()
        full_key = (key, device, tuple([t.dtype for t in tensors]))
        if full_key not in self._resident:
            if len(self._resident) >= _MAX_ENTRIES:
                self._resident.clear()
            scalars, kwargs = build()
            self._resident[full_key] = _compiled_slots(self._fn, grid, (*tensors, *scalars),
                                                       kwargs, device)
        return self._resident[full_key]

    def _launch(self, grid: tuple[int, ...], args: tuple,
                kwargs: dict) -> tuple[Callable[..., None], list] | None:
        """Launch; return the (runner, trailing constexprs) it used, None where Triton's
        own path ran it interpreted."""
        device = current_device(args[0])
        arg_key, addresses = _key_and_addresses(args)
        key = (grid, device, arg_key, tuple(kwargs.items()), tuple(map(type, kwargs.values())))
        cached = self._runners.get(key)
        if cached is not None:
            runner, tail = cached
            runner(args, addresses, tail)
            note_launch(runner, args, addresses, tail)
            return cached
        compiled = self._fn[grid](*args, **kwargs)
        if not hasattr(compiled, "function"):
            note_untracked_launch("an interpreted launch")
            return None  # interpreted (no compiled kernel): Triton's path every time
        if len(self._runners) >= _MAX_ENTRIES:
            self._runners.clear()
            self._keyed.clear()
        full_grid = (tuple(grid) + (1, 1))[:3]
        # the key holds the keyword values: their order for the runner is fixed with it
        tail = [kwargs[n] if n in kwargs else self._defaults[n]
                for n in self._names[len(args):]]
        cached = self._runners[key] = (_runner(compiled, full_grid, device), tail)
        # this launch went through Triton: a recording needs the launch function's form
        note_launch(cached[0], args, addresses, tail)
        return cached


def _compiled_slots(fn: Any, grid: tuple[int, ...], args: tuple, kwargs: dict,
                    device: int) -> int | None:
    """occupancy.device_slots of `fn` compiled for these arguments (Triton's `warmup`:
    compiled or found in its cache, not launched; its handles loaded for the registers)."""
    warmup = getattr(fn, "warmup", None)
    if warmup is None:
        return None
    compiled = warmup(*args, grid=grid, **kwargs)
    init = getattr(compiled, "_init_handles", None)
    if init is None:
        return None
    init()
    return device_slots(compiled, torch.cuda.get_device_properties(device))


def current_device(tensor: torch.Tensor) -> int | None:
    """The current CUDA device for a launch on `tensor`, None off the GPU."""
    return torch.cuda.current_device() if tensor.is_cuda else None


def knobs_runtime() -> Any:
    """Triton's runtime knobs (where launch hooks live), None where triton has no `knobs`."""
    try:
        from triton import knobs
    except ImportError:
        return None
    return knobs.runtime


def launch_hooks_installed(runtime: Any = None) -> bool:
    """Whether Triton calls launch hooks (a profiler's): launches then take its runner.
    `runtime`: Triton's runtime knobs, looked up once by the caller (`knobs_runtime`)."""
    # triton >= 3.5 keeps hook chains (empty when unused); earlier ones None; without
    # `knobs` (older still) assume hooks, which keeps Triton's own runner. `runtime`
    # looked up once by the caller: the import alone took ~0.8 us a launch
    if runtime is None:
        runtime = knobs_runtime()
        if runtime is None:
            return True
    return _is_set(runtime.launch_enter_hook) or _is_set(runtime.launch_exit_hook)


def _is_set(hook: Any) -> bool:
    return hook is not None and bool(getattr(hook, "calls", True))


# triton 3.6's CudaLauncher.__call__ parameters (then *args): its C launch function can be
# called directly with the same arguments and the four it inserts (`_direct_launch`)
_TRITON_36_CALL = ("self", "gridX", "gridY", "gridZ", "stream", "function")


def _direct_launch(run: Any, packed: Any) -> tuple[Callable, tuple]:
    """(what to call, the arguments between the kernel handle and the kernel's own):
    triton 3.6's C launch function behind `run` with (cooperative grid, PDL, no global
    scratch, no profile scratch, metadata, no launch metadata, no hooks), which is what
    `run` passes it when the kernel needs no scratch, without `run`'s Python (~1 us a
    launch); else `run` itself with (metadata, no launch metadata, no hooks)."""
    through_run = (run, (packed, None, None, None))
    code = getattr(getattr(type(run), "__call__", None), "__code__", None)
    c_launch = getattr(run, "launch", None)
    if code is None or not callable(c_launch):  # a stand-in, or not a compiled launcher
        return through_run
    import triton

    if (not getattr(triton, "__version__", "").startswith("3.6.")
            or code.co_varnames[:code.co_argcount] != _TRITON_36_CALL
            or not code.co_flags & inspect.CO_VARARGS
            or getattr(run, "global_scratch_size", None) != 0
            or getattr(run, "profile_scratch_size", None) != 0):
        return through_run
    return c_launch, (run.launch_cooperative_grid, run.launch_pdl, None, None, packed,
                      None, None, None)


def _runner(compiled: Any, grid: tuple[int, int, int], device: int | None) -> Callable:
    """A launch of `compiled` on `grid`, called with (the arguments, the same with tensors
    as addresses, the trailing constexprs): its launch function with the addresses and the
    stream current on `device` at each call; its own runner with the tensors where the
    launch function is not exposed (CPU stand-ins, other Triton versions) or a launch hook
    is installed (hooks may look at the tensors)."""
    runner = compiled[grid]
    run = getattr(compiled, "run", None)
    packed = getattr(compiled, "packed_metadata", None)
    runtime = knobs_runtime()
    if device is None or not callable(run) or packed is None or runtime is None:
        return lambda args, addresses, tail: runner(*args, *tail)
    function = compiled.function
    current_stream = torch._C._cuda_getCurrentRawStream
    call, between = _direct_launch(run, packed)

    def launch(args: tuple, addresses: list, tail: list) -> None:
        if launch_hooks_installed(runtime):
            runner(*args, *tail)
            return
        call(grid[0], grid[1], grid[2], current_stream(device), function, *between,
             *addresses, *tail)

    # what replay.py repeats without the tensors: the launch function, grid, kernel, the
    # arguments before the kernel's own, and the device whose current stream it runs on
    launch.raw = (call, grid, function, between, device)
    return launch
