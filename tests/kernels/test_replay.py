"""Per-signature replay of the Triton host functions (kernels/selective_scan/replay.py).

On the CPU, against stand-in kernels that log each launch as the compiled kernel's launch
function receives it (grid, kernel, then every argument, tensors as addresses): a replayed
call must make the same launches as a recorded one, each argument the same constant or
the same place in the same tensor (an input, an output, or the call's own scratch), and
return tensors of the same shapes, strides and dtypes, newly allocated. Whatever a replay
could not repeat (a torch op that computes, an interpreted launch, two arguments at one
address) keeps the signature on the host function; so do launch hooks, and so does any
change of shape, stride, dtype, alignment or flag.
"""

from __future__ import annotations

import pytest
import torch

from medmamba_kernels.selective_scan import launch as launch_module
from medmamba_kernels.selective_scan import triton_bwd, triton_fwd
from medmamba_kernels.selective_scan.launch import CachedLaunch
from medmamba_kernels.selective_scan.replay import replayed
from replay_launch_log import assert_replay_repeats_recording
from stand_in_launches import StandInJit

N_STATE = 16


def _inputs(batch, dim, length, dtype=torch.float32, groups=1, optional=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(dt)

    return dict(u=rnd(batch, dim, length), delta=rnd(batch, dim, length),
                A=-torch.rand(dim, N_STATE, generator=g),
                B=rnd(batch, groups, N_STATE, length), C=rnd(batch, groups, N_STATE, length),
                D=rnd(dim, dt=torch.float32) if optional else None,
                z=rnd(batch, dim, length) if optional else None,
                delta_bias=rnd(dim, dt=torch.float32) if optional else None,
                delta_softplus=True, reverse=False)


FORWARDS = [  # (batch, dim, L, dtype, keyword arguments): each variant and path
    (2, 64, 4096, torch.float32, {}),                      # "serial", several chunks
    (2, 64, 4096, torch.float32, {"keep_states": True}),    # ... keeping the states
    (2, 64, 4096, torch.bfloat16, {"keep_states": True}),
    (1, 32, 1000, torch.float32, {}),                       # "deferred"
    (2, 64, 300, torch.bfloat16, {}),                       # "rows", one chunk
    (2, 16, 3000, torch.bfloat16, {}),                      # "chunked"
    (2, 8, 40, torch.float32, {"variant": "reload"}),
    (2, 64, 4096, torch.bfloat16, {"return_last_state": False}),  # last_state as scratch
    (2, 64, 300, torch.bfloat16, {"return_last_state": False}),
]


@pytest.mark.parametrize("case", FORWARDS, ids=lambda c: f"{c[:4]}{c[4]}")
def test_a_replayed_forward_makes_the_recorded_launches_on_its_own_tensors(
        launches, case) -> None:
    batch, dim, length, dtype, options = case

    def make_args(seed):
        return (), {**_inputs(batch, dim, length, dtype, seed=seed), **options}

    recorded = assert_replay_repeats_recording(triton_fwd.selective_scan_fwd_triton,
                                                launches, make_args)
    assert recorded


BACKWARDS = [  # (batch, dim, L, dtype, groups, optional inputs, keyword arguments)
    (2, 64, 4096, torch.float32, 1, True, {"states": True}),   # kept states
    (2, 64, 4096, torch.bfloat16, 1, True, {}),
    (2, 64, 1000, torch.float32, 2, False, {}),                 # several channel blocks
    (1, 32, 700, torch.float32, 1, True, {"boundary": "tile"}),
    (2, 64, 4096, torch.float32, 1, True, {"main": "serial"}),
    (2, 8, 50, torch.bfloat16, 1, True, {}),                    # one chunk
    (2, 64, 4096, torch.float32, 1, True,                      # gradients as views
     {"states": True, "gradients_share_storage": True}),
    (2, 64, 1000, torch.float32, 2, False, {"gradients_share_storage": True}),
]


@pytest.mark.parametrize("case", BACKWARDS, ids=lambda c: f"{c[:6]}{c[6]}")
def test_a_replayed_backward_makes_the_recorded_launches_on_its_own_tensors(
        launches, case) -> None:
    batch, dim, length, dtype, groups, optional, options = case

    def make_args(seed):
        x = _inputs(batch, dim, length, dtype, groups, optional, seed=seed)
        kwargs = dict(options)
        if kwargs.get("states"):
            kwargs["states"] = triton_fwd.backward_states(x["u"], x["A"], x["B"])
        flags = (x.pop("delta_softplus"), x.pop("reverse"))
        return (torch.randn_like(x["u"]), *x.values(), *flags), kwargs

    assert_replay_repeats_recording(triton_bwd.selective_scan_bwd_triton, launches,
                                     make_args)


def test_a_replayed_backward_returns_its_own_gradients_with_the_inputs_shapes(
        launches) -> None:
    # several channel blocks: dB and dC summed over blocks; every gradient an allocation
    x = _inputs(2, 64, 1000, groups=2)
    dout = torch.randn_like(x["u"])
    backward = triton_bwd.selective_scan_bwd_triton
    results = [backward(dout, **x) for _ in range(3)]
    assert next(iter(backward.records.values())) is not None
    wanted = [(x[k].shape, x[k].dtype) for k in ("u", "delta", "A", "B", "C", "D", "z",
                                                  "delta_bias")]
    for grads in results:
        assert [(g.shape, g.dtype) for g in grads] == wanted
        assert len({g.data_ptr() for g in grads}) == len(grads)
    assert not {g.data_ptr() for g in results[1]} & {g.data_ptr() for g in results[2]}


@pytest.mark.parametrize("length", [4096, 300])  # "serial" (scratch already), "rows"
def test_a_forward_not_asked_for_last_state_carves_it_from_the_scratch(
        launches, length) -> None:
    fwd = triton_fwd.selective_scan_fwd_triton
    x = _inputs(2, 64, length, torch.bfloat16)
    replays = {}
    for wanted in (True, False):
        fwd.forget()
        results = [fwd(**x, return_last_state=wanted) for _ in range(3)]
        (replays[wanted],) = fwd.records.values()
        assert all((r[1] is not None) == wanted for r in results)
    state_bytes = 2 * 64 * N_STATE * 4
    assert len(replays[False].allocations) == len(replays[True].allocations) - 1
    assert replays[False].scratch_bytes >= replays[True].scratch_bytes + state_bytes


@pytest.mark.parametrize(("dtype", "bc_dtype"), [(torch.bfloat16, torch.bfloat16),
                                                  (torch.bfloat16, torch.float32)])
def test_replayed_parameters_gradients_share_storage_where_asked(
        launches, dtype, bc_dtype) -> None:
    # dA, dD, ddelta_bias (fp32) in one buffer; the activations' gradients apart, so that
    # the engine can sum another gradient into one of them in place
    x = _inputs(2, 64, 1000, dtype)
    x["B"], x["C"] = x["B"].to(bc_dtype), x["C"].to(bc_dtype)
    dout = torch.randn_like(x["u"])
    backward = triton_bwd.selective_scan_bwd_triton
    results = [backward(dout, **x, gradients_share_storage=True) for _ in range(3)]
    separate = [backward(dout, **x) for _ in range(3)]
    for grads in results[:2] + separate:  # recorded calls, and replays not asked to share
        assert len({g.untyped_storage().data_ptr() for g in grads}) == 8
    du, ddelta, dA, dB, dC, dD, dz, dbias = results[2]
    wanted = [(x[k].shape, x[k].dtype) for k in ("u", "delta", "A", "B", "C", "D", "z",
                                                  "delta_bias")]
    assert [(g.shape, g.dtype) for g in results[2]] == wanted
    assert all(g.is_contiguous() and g.data_ptr() % 16 == 0 for g in results[2])
    spans = sorted((g.data_ptr(), g.data_ptr() + g.numel() * g.element_size())
                   for g in results[2])
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))  # disjoint
    storage = {k: g.untyped_storage().data_ptr() for k, g in zip("u delta A B C D z bias"
                                                                  .split(), results[2])}
    assert len({storage[k] for k in ("u", "delta", "B", "C", "z", "A")}) == 6
    assert storage["A"] == storage["D"] == storage["bias"]
    assert sorted(len(r.carves) for r in backward.records.values()) == [0, 1]


def test_replays_launch_on_the_stream_current_at_each_call(launches, monkeypatch) -> None:
    # the stream is looked up once a replayed call, not once at recording
    fwd = triton_fwd.selective_scan_fwd_triton
    x = _inputs(2, 64, 4096)
    for _ in range(3):
        fwd(**x)
    streams = iter([7001, 7002])
    for stream in (7001, 7002):
        monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream",
                            lambda device: next(streams), raising=False)
        del launches[:]
        fwd(**x)
        runs = [entry for entry in launches if entry[0] == "run"]
        assert len(runs) >= 2 and {entry[3] for entry in runs} == {stream}


def test_a_forward_into_a_given_output_returns_that_output(launches) -> None:
    x = _inputs(2, 64, 4096)
    outs = [torch.full_like(x["u"], float("nan")) for _ in range(3)]
    results = [triton_fwd.selective_scan_fwd_triton(**x, out=out) for out in outs]
    assert next(iter(triton_fwd.selective_scan_fwd_triton.records.values())) is not None
    assert all(result[0] is out for result, out in zip(results, outs))


@pytest.mark.parametrize("change", ["length", "dtype", "stride", "misaligned", "flag"])
def test_any_change_of_signature_is_recorded_apart(launches, monkeypatch, change) -> None:
    fwd = triton_fwd.selective_scan_fwd_triton
    x = _inputs(2, 64, 4096)
    for _ in range(3):
        fwd(**x)
    if change == "length":
        y = _inputs(2, 64, 4095)
    elif change == "dtype":
        y = _inputs(2, 64, 4096, torch.bfloat16)
    elif change == "stride":
        y = {**x, "u": x["u"].transpose(1, 2).contiguous().transpose(1, 2)}
    elif change == "misaligned":
        y = {**x, "u": torch.randn(x["u"].numel() + 1)[1:].view(x["u"].shape)}
    else:
        y = {**x, "reverse": True}
    planned = []
    real_plan = triton_fwd.plan_launch
    monkeypatch.setattr(triton_fwd, "plan_launch",
                        lambda *a, **k: planned.append(1) or real_plan(*a, **k))
    fwd(**x)
    assert not planned  # the recorded signature: replayed, no plan
    fwd(**y)
    assert planned  # the host function ran: no replay of another signature's launches
    assert len(fwd.records) == 1  # seen once: not recorded


def test_launch_hooks_take_the_host_function(launches, monkeypatch) -> None:
    fwd = triton_fwd.selective_scan_fwd_triton
    x = _inputs(2, 64, 4096)
    for _ in range(3):
        fwd(**x)
    called = []
    monkeypatch.setattr(launch_module, "launch_hooks_installed",
                        lambda runtime=None: called.append(1) or True)
    fwd(**x)
    assert called  # the host function's launches went through the hooked runner


def _toy_kernel(x_ptr, n, BLOCK):  # noqa: N803 (Triton's style)
    """Parameters of a stand-in kernel."""


def _toy(log: list, computes: bool):
    launcher = CachedLaunch(StandInJit(_toy_kernel, log))

    @replayed
    def host(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        launcher.keyed(("toy", x.numel()), (4,), (x, y, out), lambda: ((x.numel(),),
                                                                      {"BLOCK": 16}))
        if computes:
            out.add_(1)
        return out

    return host


def test_a_host_function_that_computes_with_torch_is_not_replayed(launches) -> None:
    host = _toy(launches, computes=True)
    for _ in range(4):
        host(torch.zeros(64), torch.zeros(64))
    assert list(host.records.values()) == [None]
    assert [why.split(" ran ")[1] for why in host.unreplayable.values()] == ["on the device"]
    assert "aten.add_" in next(iter(host.unreplayable.values()))


def test_two_arguments_at_one_address_are_not_replayed(launches) -> None:
    host = _toy(launches, computes=False)
    x = torch.zeros(64)
    for _ in range(3):
        host(x, x)
    assert list(host.records.values()) == [None]
    assert list(host.unreplayable.values()) == [
        "launch argument 0: address of no single argument or allocation"]
    host2 = _toy(launches, computes=False)
    for _ in range(3):
        host2(torch.zeros(64), torch.zeros(64))
    replay = next(iter(host2.records.values()))
    assert replay is not None and not host2.unreplayable
    start = len(launches)
    y = torch.zeros(64)
    out = host2(y, y)  # recorded apart, replayed on one tensor twice: both addresses y's
    assert launches[start][4][:3] == [y.data_ptr(), y.data_ptr(), out.data_ptr()]


def test_interpreted_launches_are_never_recorded(monkeypatch) -> None:
    log: list = []

    class Interpreted(StandInJit):
        def __getitem__(self, grid):
            return lambda *args, **kwargs: log.append("interpreted")

    launcher = CachedLaunch(Interpreted(_toy_kernel, log))

    @replayed
    def host(x):
        launcher.keyed(("toy",), (1,), (x,), lambda: ((x.numel(),), {"BLOCK": 16}))

    monkeypatch.setattr(launch_module, "current_device", lambda tensor: 0)
    for _ in range(4):
        host(torch.zeros(8))
    assert log == ["interpreted"] * 4 and list(host.records.values()) == [None]
    assert len(host.unreplayable) == 1


def test_off_the_gpu_nothing_is_recorded() -> None:
    calls = []

    @replayed
    def host(x):
        calls.append(1)

    for _ in range(4):
        host(torch.zeros(8))
    assert len(calls) == 4 and not host.records


def test_launches_at_offsets_into_arguments_and_allocations_keep_their_offsets(
        launches) -> None:
    launcher = CachedLaunch(StandInJit(_toy_kernel, launches))

    @replayed
    def host(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(2, 64)
        launcher.keyed(("toy",), (2,), (x[16:], out[1]), lambda: ((48,), {"BLOCK": 16}))
        return out[1, 8:]

    for _ in range(3):
        x = torch.zeros(64)
        start = len(launches)
        result = host(x)
        (entry,) = launches[start:]
        addresses = entry[4] if entry[0] == "run" else [t.data_ptr() for t in entry[3][:2]]
        assert addresses[:2] == [x.data_ptr() + 64, result.data_ptr() - 32]
        assert result.shape == (56,) and result.storage_offset() == 72
    assert next(iter(host.records.values())) is not None


@pytest.mark.parametrize("fill", ["zeros", "zero_", "fill_", "fill_ 1", "zero_ late"])
def test_zeroed_scratch_is_zeroed_again_only_before_its_first_launch(launches, fill) -> None:
    launcher = CachedLaunch(StandInJit(_toy_kernel, launches))

    @replayed
    def host(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(64) if fill == "zeros" else torch.empty(64)
        if fill in ("zero_", "fill_", "fill_ 1"):
            out.zero_() if fill == "zero_" else out.fill_(1.0 if fill == "fill_ 1" else 0.0)
        launcher.keyed(("toy",), (1,), (x, out), lambda: ((64,), {"BLOCK": 16}))
        if fill == "zero_ late":  # after a launch wrote it: a replay could not repeat this
            out.zero_()
        return out

    results = [host(torch.zeros(64)) for _ in range(3)]
    replay = next(iter(host.records.values()))
    if fill in ("fill_ 1", "zero_ late"):
        assert replay is None
    else:
        assert replay is not None and replay.allocations[0][3]  # made with zeros
        assert torch.equal(results[-1], torch.zeros(64))
