"""The cached Triton launch (kernels/selective_scan/launch.py), against a stand-in kernel:
a repeated call skips Triton's binding only where Triton would reuse the same compiled
kernel; any change Triton specialises on goes back through Triton."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from medmamba_kernels.selective_scan.launch import CachedLaunch


def _signature(x_ptr, y_ptr, n, stride, BLOCK, FLAG=False):  # noqa: N803 (Triton's style)
    """Parameters of the stand-in kernel."""


class _Compiled:
    function = "handle"  # a compiled kernel has one; the interpreter returns None

    def __init__(self, log: list) -> None:
        self._log = log

    def __getitem__(self, grid):
        return lambda *args: self._log.append(("runner", grid, args))


class _StandInJit:
    """Records `fn[grid](...)` calls as Triton's JIT function would receive them."""

    def __init__(self, compiles: bool = True) -> None:
        self.fn = _signature
        self.log: list = []
        self._compiles = compiles

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            return _Compiled(self.log) if self._compiles else None
        return call


def _tensors(dtype=torch.float32, n=64):
    return torch.zeros(n, dtype=dtype), torch.zeros(n, dtype=dtype)


def test_repeated_call_runs_the_compiled_kernel_with_every_parameter() -> None:
    jit = _StandInJit()
    launch = CachedLaunch(jit)
    x, y = _tensors()
    launch[(8,)](x, y, 64, 1, BLOCK=16, num_warps=2)
    x2, y2 = _tensors()  # new tensors, same dtype and alignment
    launch[(8,)](x2, y2, 64, 1, BLOCK=16, num_warps=2)
    assert [entry[0] for entry in jit.log] == ["triton", "runner"]
    _, grid, args = jit.log[1]
    # the runner gets a 3-d grid and the constexprs in order, defaults filled in; launch
    # options (num_warps) are compiled in, not passed
    assert grid == (8, 1, 1) and args == (x2, y2, 64, 1, 16, False)


@pytest.mark.parametrize("change", ["int value", "misaligned", "dtype", "bool for int",
                                    "constexpr", "launch option", "grid"])
def test_a_change_triton_specialises_on_goes_back_through_triton(change: str) -> None:
    jit = _StandInJit()
    launch = CachedLaunch(jit)
    x, y = _tensors()
    base = dict(args=(x, y, 64, 16), kwargs={"BLOCK": 16, "FLAG": 1}, grid=(8,))
    launch[base["grid"]](*base["args"], **base["kwargs"])
    call = {k: v for k, v in base.items()}
    if change == "int value":
        call["args"] = (x, y, 64, 17)  # 17: not divisible by 16
    elif change == "misaligned":
        call["args"] = (x[1:], y, 64, 16)  # 4 bytes past a 16-byte boundary
    elif change == "dtype":
        call["args"] = (*_tensors(torch.bfloat16), 64, 16)
    elif change == "bool for int":
        call["kwargs"] = {"BLOCK": 16, "FLAG": True}
    elif change == "constexpr":
        call["kwargs"] = {"BLOCK": 32, "FLAG": 1}
    elif change == "launch option":
        call["kwargs"] = {**base["kwargs"], "num_warps": 4}
    else:
        call["grid"] = (9,)
    launch[call["grid"]](*call["args"], **call["kwargs"])
    assert [entry[0] for entry in jit.log] == ["triton", "triton"]


def test_interpreted_kernels_always_go_through_triton() -> None:
    jit = _StandInJit(compiles=False)
    launch = CachedLaunch(jit)
    x, y = _tensors()
    for _ in range(3):
        launch[(4,)](x, y, 64, 1, BLOCK=16)
    assert [entry[0] for entry in jit.log] == ["triton"] * 3


class _Build:
    """`CachedLaunch.keyed`'s build: counts its calls, returns fixed scalars and options."""

    def __init__(self, scalars=(64, 1), options=None) -> None:
        self.calls = 0
        self.scalars = scalars
        self.options = options if options is not None else {"BLOCK": 16, "num_warps": 2}

    def __call__(self):
        self.calls += 1
        return self.scalars, self.options


def test_a_repeated_key_skips_the_build_and_runs_the_kernel_on_the_new_tensors() -> None:
    jit = _StandInJit()
    launch = CachedLaunch(jit)
    build = _Build()
    launch.keyed(("shape", 64), (8,), _tensors(), build)
    x2, y2 = _tensors()
    launch.keyed(("shape", 64), (8,), (x2, y2), build)
    assert build.calls == 1
    assert [entry[0] for entry in jit.log] == ["triton", "runner"]
    # the first call went through Triton with the built arguments; the repeat gets the
    # new tensors, the first call's scalars and the constexprs in order, defaults filled in
    assert jit.log[0][2:] == ((*jit.log[0][2][:2], 64, 1), {"BLOCK": 16, "num_warps": 2})
    assert jit.log[1][1:] == ((8, 1, 1), (x2, y2, 64, 1, 16, False))


@pytest.mark.parametrize("change", ["key", "grid", "dtype"])
def test_keyed_launches_build_again_where_the_key_grid_or_a_dtype_changes(
        change: str) -> None:
    jit = _StandInJit()
    launch = CachedLaunch(jit)
    launch.keyed(("shape", 64), (8,), _tensors(), _Build())
    key, grid, tensors = ("shape", 64), (8,), _tensors()
    if change == "key":
        key = ("shape", 65)
    elif change == "grid":
        grid = (9,)
    else:
        tensors = _tensors(torch.bfloat16)
    build = _Build(scalars=(65, 1))
    launch.keyed(key, grid, tensors, build)
    assert build.calls == 1
    assert [entry[0] for entry in jit.log] == ["triton", "triton"]


def test_keyed_launches_of_misaligned_tensors_key_every_argument() -> None:
    # Triton specialises each pointer on its 16-byte alignment: such calls take
    # `__getitem__`'s key of every argument, which holds each tensor's alignment
    jit = _StandInJit()
    launch = CachedLaunch(jit)
    x, y = _tensors()
    build = _Build()
    for _ in range(2):
        launch.keyed(("shape", 64), (8,), (x[1:], y), build)
    launch.keyed(("shape", 64), (8,), (x, y[1:]), build)
    assert build.calls == 3
    assert [entry[0] for entry in jit.log] == ["triton", "runner", "triton"]


def test_keyed_launches_of_interpreted_kernels_always_go_through_triton() -> None:
    jit = _StandInJit(compiles=False)
    launch = CachedLaunch(jit)
    build = _Build()
    for _ in range(3):
        launch.keyed(("shape", 64), (4,), _tensors(), build)
    assert build.calls == 3
    assert [entry[0] for entry in jit.log] == ["triton"] * 3


class _CompiledWithLaunchFunction(_Compiled):
    """A compiled kernel as triton 3.4-3.9 expose it: launch function and packed metadata."""

    packed_metadata = ("packed",)

    def run(self, *args):
        self._log.append(("run", args))


class _Hooks:
    def __init__(self, calls: list) -> None:
        self.calls = calls


@pytest.mark.parametrize("hook", [False, True])
def test_runner_on_a_gpu_calls_the_launch_function_unless_a_hook_is_installed(
        monkeypatch, hook: bool) -> None:
    from triton import knobs

    from medmamba_kernels.selective_scan import launch as launch_module

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1000 + device,
                        raising=False)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", _Hooks([print] if hook else []))
    log: list = []
    runner = launch_module._runner(_CompiledWithLaunchFunction(log), (8, 2, 1), 3)
    runner(("x", 64), [4096, 64], [16])  # arguments, the same as addresses, constexprs
    if hook:  # the runner calls Triton's hooks, which may look at the tensors
        assert log == [("runner", (8, 2, 1), ("x", 64, 16))]
    else:  # grid, the stream current on device 3, the kernel, its metadata, no hooks
        assert log == [("run", (8, 2, 1, 1003, "handle", ("packed",), None, None, None, 4096,
                                64, 16))]


def test_runner_on_the_cpu_or_without_a_launch_function_is_tritons() -> None:
    from medmamba_kernels.selective_scan import launch as launch_module

    for compiled, device in ((_CompiledWithLaunchFunction([]), None), (_Compiled([]), 0)):
        runner = launch_module._runner(compiled, (4, 1, 1), device)
        runner(("x",), [4096], [])
        assert compiled._log == [("runner", (4, 1, 1), ("x",))]


def test_tensors_are_keyed_by_dtype_and_alignment_and_launched_as_addresses() -> None:
    from medmamba_kernels.selective_scan.launch import _key_and_addresses

    x, y = _tensors()
    key, addresses = _key_and_addresses((x, torch.nn.Parameter(y), 64, True, 0.5))
    assert addresses == [x.data_ptr(), y.data_ptr(), 64, True, 0.5]
    assert key == ((torch.float32, True), (torch.float32, True), 64, (bool, True),
                   (float, 0.5))
    assert _key_and_addresses((x[1:],))[0] == ((torch.float32, False),)


def test_a_triton_without_knobs_counts_as_hooked(monkeypatch) -> None:
    # launch hooks cannot be ruled out: Triton's own runner keeps calling them
    import sys

    import triton

    from medmamba_kernels.selective_scan import launch as launch_module

    monkeypatch.delattr(triton, "knobs", raising=False)
    monkeypatch.setitem(sys.modules, "triton.knobs", None)
    assert launch_module.launch_hooks_installed()


class _Launcher36:
    """Shaped as triton 3.6's CudaLauncher: `__call__` inserts the cooperative-grid and
    PDL flags and the two scratch buffers before the metadata, then calls `launch`."""

    def __init__(self, log: list, scratch: int = 0, profile_scratch: int = 0) -> None:
        self.log = log
        self.global_scratch_size = scratch
        self.profile_scratch_size = profile_scratch
        self.launch_cooperative_grid = False
        self.launch_pdl = True

    def launch(self, *args):
        self.log.append(args)

    def __call__(self, gridX, gridY, gridZ, stream, function, *args):  # noqa: N803
        scratch = "scratch" if self.global_scratch_size else None
        self.launch(gridX, gridY, gridZ, stream, function, self.launch_cooperative_grid,
                    self.launch_pdl, scratch, None, *args)


class _LauncherOtherCall(_Launcher36):
    """A 3.6 launcher whose `__call__` takes its arguments otherwise (a patched Triton)."""

    def __call__(self, gridX, gridY, gridZ, stream, function, metadata, *args):  # noqa: N803
        super().__call__(gridX, gridY, gridZ, stream, function, metadata, *args)


@pytest.mark.parametrize(("version", "launcher", "direct"), [
    ("3.6.0", _Launcher36, True), ("3.6.1", _Launcher36, True),
    # the same __call__ may pass its launch function other arguments
    ("3.5.1", _Launcher36, False),
    # global scratch: the launcher allocates it
    ("3.6.0", functools.partial(_Launcher36, scratch=64), False),
    ("3.6.0", functools.partial(_Launcher36, profile_scratch=64), False),  # the same
    ("3.6.0", _LauncherOtherCall, False),  # another __call__: not known to pass through
])
def test_triton_36_launch_functions_are_called_as_the_launcher_would(
        monkeypatch, version: str, launcher: Callable, direct: bool) -> None:
    import triton

    from medmamba_kernels.selective_scan import launch as launch_module

    monkeypatch.setattr(triton, "__version__", version)
    log: list = []
    run = launcher(log)
    call, between = launch_module._direct_launch(run, ("packed",))
    assert (call == run.launch) is direct and (call is run) is not direct
    call(8, 1, 1, 1003, "handle", *between, 4096, 64, 16)
    run(8, 1, 1, 1003, "handle", ("packed",), None, None, None, 4096, 64, 16)
    assert log[0] == log[1]  # the launch function gets what the launcher would give it
