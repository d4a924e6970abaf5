"""Triton selective scan vs the sequential reference: forward, last state, every gradient.

Without a GPU these run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET),
with small chunks so that one sequence spans several chunks and carries are exercised.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from scan_cases import (GRAD_NAMES, TOLERANCE, ScanCase, assert_close_all, relative_error,
                        run_with_grads)

triton = pytest.importorskip("triton")

from medmamba_kernels import selective_scan  # noqa: E402
from medmamba_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402
from medmamba_kernels.selective_scan import triton_bwd  # noqa: E402
from medmamba_kernels.selective_scan.triton_bwd import selective_scan_bwd_triton  # noqa: E402
from medmamba_kernels.selective_scan.triton_common import plan_launch  # noqa: E402
from medmamba_kernels.selective_scan.triton_fwd import selective_scan_fwd_triton  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"


@pytest.fixture(scope="module", autouse=True)
def _fast_interpreter():
    """Speed up Triton's interpreter for this module (semantics unchanged).

    Its generic associative scan calls the combine function once per element, and every
    call of a @triton.jit helper re-patches triton.language. Replaced here by a log-step
    scan over whole arrays and one patch per kernel launch; restored afterwards.
    """
    if not INTERPRETED:
        yield
        return
    from triton.runtime import interpreter as interp

    if not all(hasattr(interp, n) for n in ("ScanOps", "GridExecutor", "InterpretedFunction",
                                            "_patch_lang")):
        yield  # another Triton version: run at its own speed
        return
    import triton.language as tl

    saved = (interp.ScanOps.generic_scan, interp.GridExecutor.__call__,
             interp.InterpretedFunction.__call__)
    patched: set[tuple[int, ...]] = set()

    def generic_scan(self, inputs):
        acc = [np.array(x.handle.data, copy=True) for x in inputs]
        ndim = acc[0].ndim
        axis = self.axis % ndim
        n = acc[0].shape[axis]
        pos = np.arange(n).reshape([-1 if i == axis else 1 for i in range(ndim)])
        offset = 1
        while offset < n:  # Hillis-Steele: combine(element t - offset, element t)
            earlier = [np.roll(a, offset, axis=axis) for a in acc]
            args = [self.to_tensor(x, inputs[i].dtype) for i, x in enumerate(earlier)]
            args += [self.to_tensor(x, inputs[i].dtype) for i, x in enumerate(acc)]
            with np.errstate(all="ignore"):
                ret = self.combine_fn.fn(*args)
            ret = ret if isinstance(ret, tuple) else (ret,)
            acc = [np.where(pos >= offset, r.handle.data, a) for r, a in zip(ret, acc)]
            offset *= 2
        return [self.to_tensor(np.ascontiguousarray(a), inputs[i].dtype)
                for i, a in enumerate(acc)]

    def grid_call(self, *args, **kwargs):
        patched.clear()
        return saved[1](self, *args, **kwargs)

    def device_call(self, *args, **kwargs):
        key = tuple(sorted(id(v) for v in self.fn.__globals__.values()
                           if v is tl or v is tl.core))
        if key not in patched:
            interp._patch_lang(self.fn)
            patched.add(key)
        try:
            return self.rewrite()(*args, **kwargs)
        except Exception as e:
            raise interp.InterpreterError(repr(e)) from e

    interp.ScanOps.generic_scan = generic_scan
    interp.GridExecutor.__call__ = grid_call
    interp.InterpretedFunction.__call__ = device_call
    yield
    (interp.ScanOps.generic_scan, interp.GridExecutor.__call__,
     interp.InterpretedFunction.__call__) = saved


def _all(case: ScanCase) -> ScanCase:
    return ScanCase(**{**case.__dict__, "has_D": True, "has_z": True, "has_bias": True,
                       "softplus": True, "last_state": True})


# (case, plan overrides). Chunks are small so that L spans several of them; L = 1100 is
# not a multiple of the chunk; channel_block=1 splits a group over several programs.
CASES = [
    (_all(ScanCase(2, 3, 1, 1)), {}),
    (ScanCase(1, 3, 7, 4, last_state=True), {"chunk": 16}),
    (_all(ScanCase(2, 4, 64, 16, groups=2, reverse=True)), {"chunk": 16}),
    (ScanCase(1, 2, 64, 4, has_z=True, softplus=True), {"chunk": 16, "carry_block": 2}),
    (_all(ScanCase(2, 2, 343, 4)), {"chunk": 64, "channel_block": 1}),
    (_all(ScanCase(1, 2, 343, 16, reverse=True)), {}),  # default plan: one chunk
    (ScanCase(1, 4, 343, 16, groups=2, has_D=True, has_z=True, reverse=True,
              last_state=True), {"chunk": 32, "carry_block": 4}),
    (_all(ScanCase(1, 2, 1100, 16)), {"chunk": 256, "carry_block": 2}),
    (_all(ScanCase(1, 2, 1100, 4, reverse=True)), {"chunk": 128}),
    (_all(ScanCase(2, 4, 343, 16, dtype=torch.bfloat16, groups=2)), {"chunk": 64}),
    (_all(ScanCase(1, 2, 1100, 4, dtype=torch.bfloat16, reverse=True)), {"chunk": 256}),
    (ScanCase(1, 2, 64, 1, dtype=torch.bfloat16, softplus=True, last_state=True),
     {"chunk": 16}),
]


def _four_d(inputs: dict) -> dict:
    return {k: (v.unsqueeze(1) if k in ("B", "C") and v.dim() == 3 else v)
            for k, v in inputs.items()}


def _host_run(case: ScanCase, inputs: dict, plan: dict, dout_seed: int,
              boundary: str = "auto", **backward_options):
    """(out, last_state, grads) from the host functions, output written into NaNs;
    `boundary` and `backward_options` as the backward host function takes them."""
    x = _four_d(inputs)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    out = torch.full(x["u"].shape, float("nan"), dtype=x["u"].dtype, device=DEVICE)
    got_out, last = selective_scan_fwd_triton(**x, **flags, out=out, **plan)
    plan = {k: v for k, v in plan.items() if k != "variant"}  # forward-only keyword
    assert got_out.data_ptr() == out.data_ptr()
    gen = torch.Generator().manual_seed(dout_seed)
    dout = torch.randn(got_out.shape, generator=gen).to(got_out.dtype).to(DEVICE)
    grads = selective_scan_bwd_triton(dout, **x, **flags, **plan, boundary=boundary,
                                      **backward_options)
    named = {}
    for name, grad in zip(GRAD_NAMES, grads):
        if inputs[name] is None:
            assert grad is None, name
        else:
            assert grad.dtype == inputs[name].dtype, name
            named[name] = grad.reshape(inputs[name].shape)
    assert last.dtype == torch.float32 and last.shape == (case.batch, case.dim, case.nstate)
    return got_out, last, named


@pytest.mark.parametrize(("case", "plan"), CASES, ids=[c.id for c, _ in CASES])
def test_host_functions_match_reference(case: ScanCase, plan: dict) -> None:
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=7)
    got = _host_run(case, inputs, plan, dout_seed=7)
    assert_close_all(case, got, want)


def test_rows_variant_refuses_state_offsets_past_two_to_the_31() -> None:
    # the "rows" kernels form n * s_n in 32 bits; meta tensors: nothing is allocated
    from medmamba_kernels.selective_scan.triton_fwd_rows import rows_offsets_fit

    def state(stride_n: int) -> torch.Tensor:
        return torch.empty_strided((1, 1, 16, 8), (0, 0, stride_n, 1), device="meta")

    assert rows_offsets_fit(state(8), state(8))
    assert not rows_offsets_fit(state(8), state(2**28))
    u = torch.empty(1, 2, 8, device="meta")
    with pytest.raises(ValueError, match="variant 'rows'.*32 bits"):
        selective_scan_fwd_triton(u, u, torch.empty(2, 16, device="meta"), state(2**28),
                                  state(8), None, None, None, False, False, variant="rows")


def test_state_gradients_of_mixed_dtypes_over_channel_blocks() -> None:
    # several channel blocks sum dB and dC as partials in one buffer; B in fp32 and C in
    # u's bf16 are summed apart, each returned in its own dtype
    case = _all(ScanCase(2, 4, 100, 4, dtype=torch.bfloat16, groups=2))
    inputs = case.inputs(DEVICE)
    inputs["B"] = inputs["B"].float()
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=5)
    got = _host_run(case, inputs, {"chunk": 32, "channel_block": 1}, dout_seed=5)
    assert got[2]["B"].dtype == torch.float32 and got[2]["C"].dtype == torch.bfloat16
    assert_close_all(case, got, want)


@pytest.mark.parametrize("variant", ["auto", "serial", "rows"])
def test_repeated_calls_with_new_inputs_of_the_same_shapes(variant: str) -> None:
    # compiled, the second round launches the kernels the first one cached (launch.py),
    # with new tensors: both must match the reference. "auto" takes "deferred" here (fp32,
    # several chunks) and the backward's tile boundary states
    case = _all(ScanCase(1, 4, 200, 16, groups=2))
    inputs = case.inputs(DEVICE)
    plan = {"chunk": 32, **({} if variant == "auto" else {"variant": variant})}
    boundary = "serial" if variant == "serial" else "auto"
    for round_ in range(2):
        if round_:
            inputs = {**inputs, "u": inputs["u"] * -0.5}
        want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=4)
        got = _host_run(case, inputs, plan, dout_seed=4, boundary=boundary)
        assert_close_all(case, got, want)
    if not INTERPRETED:
        # the second round went through the keyed launches (CachedLaunch.keyed)
        from medmamba_kernels.selective_scan import (triton_chunks, triton_fwd_deferred,
                                                     triton_fwd_rows, triton_fwd_serial)

        launchers = {
            "auto": [triton_fwd_deferred._fwd_local_kernel_launcher,
                     triton_fwd_deferred._fwd_correct_kernel_launcher,
                     triton_chunks._chunk_aggregate_kernel_launcher],
            "serial": [triton_fwd_serial._serial_kernel_launcher],
            "rows": [triton_fwd_rows._aggregate_rows_kernel_launcher,
                     triton_fwd_rows._fwd_rows_kernel_launcher],
        }[variant]
        for launcher in [triton_bwd._bwd_kernel_launcher, *launchers]:
            assert launcher._keyed, f"no compiled kernel was cached by {launcher._fn}"


@pytest.mark.parametrize("serial", [False, True], ids=["auto", "serial"])
def test_non_contiguous_inputs(serial: bool) -> None:
    # "serial" is what "auto" runs on long sequences, where the Mamba layers pass z (and
    # dout) strided (they make B/C contiguous; other callers need not); its backward
    # boundary states too
    case = _all(ScanCase(2, 3, 100, 4, groups=1))
    inputs = case.inputs(DEVICE)
    strided = {}
    for k, v in inputs.items():
        if v is not None and v.dim() >= 3:
            # same values, last axis strided by 2 and batch/channel axes permuted in memory
            wide = torch.stack([v, v], dim=-1).transpose(0, 1).contiguous().transpose(0, 1)
            strided[k] = wide[..., 0]
            assert not strided[k].is_contiguous()
        else:
            strided[k] = v
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=3)
    plan = {"chunk": 32, **({"variant": "serial"} if serial else {})}
    got = _host_run(case, strided, plan, dout_seed=3, boundary="serial" if serial else "auto")
    assert_close_all(case, got, want)


@pytest.mark.parametrize("case", [
    _all(ScanCase(2, 4, 343, 16)),
    ScanCase(1, 2, 300, 4, dtype=torch.bfloat16, groups=2, has_z=True, softplus=True,
             reverse=True, last_state=True),
], ids=lambda c: c.id)
def test_public_function_with_triton_backend(case: ScanCase) -> None:
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=5)

    def triton_scan(**kwargs):
        return selective_scan(**kwargs, backend="triton")

    got = run_with_grads(triton_scan, inputs, case.flags(), dout_seed=5)
    assert_close_all(case, got, want)


def test_launch_plan_keeps_large_channel_counts_on_one_grid_axis() -> None:
    # batch * dim far beyond 65,535 (the limit of grid axes 1 and 2): every kernel is
    # launched on a 1-D grid of plan.programs() programs, limited only by 2**31 - 1.
    plan = plan_launch(batch=2, dim=70_000, groups=1, length=3, channel_block=1)
    assert plan.n_chunks == 1 and plan.n_channel_blocks == 70_000
    assert plan.programs(2, 1) == 140_000
    plan = plan_launch(batch=1, dim=48, groups=1, length=2_097_152)
    assert plan.programs(1, 1) == plan.n_chunks * plan.n_channel_blocks
    assert plan.n_chunks * plan.chunk >= 2_097_152


@pytest.mark.slow
def test_state_offsets_past_two_to_the_31() -> None:
    # B and C L-contiguous, L past 2**31 / 15: state 15's offset needs 64 bits (the tile
    # kernels "auto" takes for 2 channels). u and B are zero before a closing window, so
    # the state entering it is exactly 0: the window's output, last state and gradients
    # equal the reference's on the window alone (and the earlier positions add nothing
    # to dA, dD, ddelta_bias).
    if INTERPRETED:
        pytest.skip("about 22 GB of tensors: the GPU runs it")
    if torch.cuda.get_device_properties(DEVICE).total_memory < 40 * 2**30:
        pytest.skip("about 22 GB of tensors: needs a GPU of 40 GB or more")
    length, window = 150_000_000, 512
    case = ScanCase(1, 2, window, 16, dtype=torch.bfloat16, has_D=True, has_bias=True,
                    softplus=True, last_state=True)
    small = case.inputs(DEVICE)
    big = {}
    for name, value in small.items():
        if name in ("u", "delta", "B", "C"):
            big[name] = torch.zeros(*value.shape[:-1], length, dtype=value.dtype,
                                    device=DEVICE)
            big[name][..., -window:] = value
        else:
            big[name] = value
    want_out, want_last, want_grads = run_with_grads(selective_scan_reference, small,
                                                     case.flags(), dout_seed=2)
    flags = {"delta_softplus": True, "reverse": False}
    out, last = selective_scan_fwd_triton(**_four_d(big), **flags)
    dout = torch.zeros_like(out)
    dout[..., -window:] = torch.randn(want_out.shape, generator=torch.Generator().manual_seed(
        2)).to(out.dtype).to(DEVICE)
    grads = dict(zip(GRAD_NAMES, selective_scan_bwd_triton(dout, **_four_d(big), **flags)))
    errors = {"out": relative_error(out[..., -window:], want_out),
              "last_state": relative_error(last, want_last)}
    for name, want in want_grads.items():
        got = grads[name]
        if got.shape[-1] == length:
            got = got[..., -window:].reshape(want.shape)
        errors[f"d{name}"] = relative_error(got, want)
    assert all(e <= TOLERANCE[case.dtype] for e in errors.values()), errors


@pytest.mark.parametrize("override", [{"chunk": 24}, {"carry_block": 3}], ids=str)
def test_launch_plan_refuses_tile_sizes_that_are_not_powers_of_two(override: dict) -> None:
    (name,) = override
    with pytest.raises(ValueError, match=f"^{name}: expected a power of two"):
        plan_launch(batch=1, dim=4, groups=1, length=100, **override)


@pytest.mark.slow
def test_many_channels_small_length() -> None:
    # batch * dim > 65,535 end to end (tiny L, N = 1, one channel per program group block)
    case = ScanCase(1, 65_600, 3, 1, has_D=True, last_state=True)
    if INTERPRETED:
        pytest.skip("65,600 channels take minutes in the interpreter; the GPU bench runs it")
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=1)
    got = _host_run(case, inputs, {}, dout_seed=1)
    assert_close_all(case, got, want)
