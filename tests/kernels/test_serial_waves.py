"""Whole waves for the "serial" forward: the occupancy arithmetic (occupancy.py), the
chunk rule (serial_planning.whole_wave_chunk), the compiled kernel's occupancy as the cached
launch reports it, and the kernel at chunks that are multiples of 16 but not powers of two
(the chunks the rule picks) against the reference."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from medmamba_kernels.selective_scan import (launch, occupancy, serial_planning,
                                             triton_fwd_serial)
from medmamba_kernels.selective_scan.launch import CachedLaunch
from medmamba_kernels.selective_scan.reference import selective_scan_reference
from scan_cases import TOLERANCE, ScanCase, relative_error
from test_triton import _four_d

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
H200 = SimpleNamespace(major=9, minor=0, multi_processor_count=132,
                       regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                       shared_memory_per_multiprocessor=233472)


@pytest.mark.parametrize(("n_regs", "warps", "shared", "want"), [
    (168, 1, 0, 12),  # the serial output pass as triton 3.6 compiles it (measured: 12)
    (96, 1, 0, 20),  # 3072 registers a warp: 5 a scheduler partition, not 21 an SM
    (128, 1, 0, 16), (255, 1, 0, 8), (256, 1, 0, 8),
    (32, 1, 0, 32),  # the programs' limit, before the threads' (64 warps)
    (32, 4, 0, 16),  # the threads' limit: 64 warps
    (128, 4, 0, 4), (64, 2, 0, 16),
    (40, 1, 64 * 1024, 3),  # shared memory: 228 KiB an SM
])
def test_programs_per_sm(n_regs: int, warps: int, shared: int, want: int) -> None:
    assert occupancy.programs_per_sm(n_regs, warps, shared,
                                     shared_per_sm=H200.shared_memory_per_multiprocessor) == want


def test_programs_per_sm_by_compute_capability() -> None:
    ada = SimpleNamespace(**{**vars(H200), "major": 8, "minor": 9,
                             "max_threads_per_multi_processor": 1536})
    compiled = SimpleNamespace(n_regs=32, metadata=SimpleNamespace(num_warps=1, shared=0))
    assert occupancy.device_slots(compiled, ada) == 132 * 24
    assert occupancy.device_slots(compiled, H200) == 132 * 32


def test_device_slots_of_a_compiled_kernel() -> None:
    compiled = SimpleNamespace(n_regs=168, metadata=SimpleNamespace(num_warps=1, shared=0))
    assert occupancy.device_slots(compiled, H200) == 1584
    unloaded = SimpleNamespace(n_regs=None, metadata=compiled.metadata)
    assert occupancy.device_slots(unloaded, H200) is None
    assert occupancy.device_slots(SimpleNamespace(n_regs=168), H200) is None


def test_occupancy_is_asked_only_where_more_than_one_wave_is_possible(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(occupancy, "_sm_count", lambda index: 132)
    gpu = torch.device("cuda", 0)
    # any kernel keeps 8 one-warp programs an SM: bench row 3's 1024 fit one wave
    assert not occupancy.may_exceed_one_wave(1024, 1, gpu)
    assert not occupancy.may_exceed_one_wave(1056, 1, gpu)
    assert occupancy.may_exceed_one_wave(1057, 1, gpu)
    assert not occupancy.may_exceed_one_wave(264, 4, gpu)  # 2 programs of 4 warps an SM
    assert occupancy.may_exceed_one_wave(265, 4, gpu)


@pytest.mark.parametrize(("length", "rows", "chunk", "want"), [
    (262144, 4, 256, 672),  # bench row 1: 2.59 waves -> one (1564 programs)
    (32768, 8, 64, 176),  # row 2
    (16384, 32, 128, 336),  # row 5
    (2097152, 2, 256, 256),  # row 6: 10.3 waves stay
    (4096, 16, 64, 64),  # row 3: under one wave already
    (20000, 1, 8, 8),  # one wave would take chunks of 16: under the shortest, unchanged
    (4096, 1000, 1024, 1024),  # one chunk a row would be the whole sequence: unchanged
])
def test_whole_wave_chunk_of_the_bench_rows(length: int, rows: int, chunk: int,
                                            want: int) -> None:
    assert serial_planning.whole_wave_chunk(length, rows, chunk, 1584) == want


def test_whole_wave_chunk_fits_one_wave_or_keeps_the_chunk() -> None:
    slots = 1584
    for length in (2048, 3000, 16384, 100_000, 262144, 1_000_003):
        for rows in (1, 2, 4, 8, 33, 512, 2000):
            for chunk in (64, 128, 256):
                got = serial_planning.whole_wave_chunk(length, rows, chunk, slots)
                programs = -(-length // chunk) * rows
                if not slots < programs <= 4 * slots:
                    assert got == chunk, (length, rows, chunk)
                elif got != chunk:
                    assert got % 16 == 0 and 64 <= got < length
                    assert -(-length // got) * rows <= slots, (length, rows, chunk, got)
                    # the shortest such chunk: 16 positions less leave more than a wave
                    shorter = got - 16
                    assert shorter < 64 or -(-length // shorter) * rows > slots


@pytest.mark.parametrize(("chunk", "default", "want"), [
    (672, 256, 3),  # row 1: aggregates at 224
    (336, 128, 3),  # at 112 (168 would break the 16-position vectors)
    (176, 64, 1),  # 176 = 11 x 16 has no divisor in [64, 64]
    (1008, 256, 7),  # 144
    (256, 256, 1), (128, 256, 1),
])
def test_aggregate_split(chunk: int, default: int, want: int) -> None:
    assert serial_planning.aggregate_split(chunk, default, 2**25 - 1) == 1  # row 5's size
    split = serial_planning.aggregate_split(chunk, default, 2**25)
    assert split == want
    assert chunk % split == 0 and (chunk // split) % 16 == 0
    assert split == 1 or 64 <= chunk // split <= default


def test_serial_plan_takes_the_whole_wave_chunk_only_by_default() -> None:
    plan = serial_planning.serial_plan(2, 64, 1, 262144, torch.bfloat16, slots=1584)
    assert (plan.chunk, plan.n_chunks, plan.ti) == (672, 391, 8)
    assert plan.pass_chunks(aggregate=True) == (224, 1171)  # 262144 / 224 = 1170.3
    assert plan.pass_chunks(aggregate=False) == (672, 391)
    assert plan.carry_block == 512
    row5 = serial_planning.serial_plan(8, 128, 1, 16384, torch.float32, slots=1584)
    assert (row5.chunk, row5.agg_split) == (336, 1)  # 2**24 elements: aggregates unsplit
    assert serial_planning.serial_plan(2, 64, 1, 262144, torch.bfloat16).chunk == 256
    given = serial_planning.serial_plan(2, 64, 1, 262144, torch.bfloat16, chunk=128,
                                        slots=1584)
    assert given.chunk == 128


def test_resident_programs_off_the_gpu_is_none() -> None:
    built = []
    launcher = CachedLaunch(lambda x_ptr, n: None)
    got = launcher.resident_programs(("k",), (1,), (torch.zeros(4),),
                                     lambda: built.append(1) or ((4,), {}))
    assert got is None and not built


def test_compiled_slots_reads_the_compiled_kernels_registers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Compiled:
        metadata = SimpleNamespace(num_warps=1, shared=0)
        n_regs = None

        def _init_handles(self):  # Triton loads the binary, then knows its registers
            self.n_regs = 168

    class Jit:
        def warmup(self, *args, grid, **kwargs):
            calls.append((args, grid, kwargs))
            return Compiled()

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H200)
    assert launch._compiled_slots(Jit(), (7,), ("t", 3), {"BLOCK": 2}, 0) == 1584
    assert calls == [(("t", 3), (7,), {"BLOCK": 2})]
    assert launch._compiled_slots(object(), (7,), (), {}, 0) is None  # no warmup: unknown


def _check_serial_forward(case: ScanCase, **forward_options) -> None:
    """serial_forward of `case` (outputs written into NaNs) against the reference: out,
    the last state, and the states kept at sub-chunks of 64 against the backward's own."""
    inputs = case.inputs(DEVICE)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    want, want_last = selective_scan_reference(**inputs, **flags, return_last_state=True)
    x = _four_d(inputs)
    out = torch.full_like(x["u"], float("nan"))
    last = torch.full((case.batch, case.dim, case.nstate), float("nan"), device=DEVICE)
    kept = torch.full((case.batch, case.dim, -(-case.length // 64), case.nstate),
                      float("nan"), device=DEVICE)
    drives = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"])
    triton_fwd_serial.serial_forward(*drives, case.softplus, case.reverse, out, last,
                                     sub_states=kept, **forward_options)
    tol = TOLERANCE[case.dtype]
    assert relative_error(out, want) <= tol and relative_error(last, want_last) <= tol
    plan = serial_planning.serial_plan(case.batch, case.dim, x["B"].shape[1], case.length,
                                       case.dtype, chunk=64)
    states, _ = triton_fwd_serial.serial_boundary_states(
        x["u"], x["delta"], x["z"], None, x["A"], x["B"], x["C"], x["delta_bias"],
        case.softplus, case.reverse, plan)
    assert relative_error(kept, states) <= TOLERANCE[torch.float32]


# chunks the rule picks: multiples of 16, not powers of two, sub-chunks of 64 across them
WAVE_CASES = [
    (ScanCase(1, 3, 343, 16, has_D=True, has_z=True, has_bias=True, softplus=True), 48),
    (ScanCase(2, 4, 300, 4, dtype=torch.bfloat16, groups=2, has_z=True, softplus=True,
              reverse=True), 80),
    (ScanCase(1, 2, 1100, 16, has_D=True, softplus=True), 176),
]


@pytest.mark.parametrize(("case", "chunk"), WAVE_CASES,
                         ids=[f"{c.id}-c{k}" for c, k in WAVE_CASES])
def test_serial_forward_at_chunks_of_whole_waves(case: ScanCase, chunk: int) -> None:
    _check_serial_forward(case, chunk=chunk)


# (case, slots): plans the rule makes for a GPU of `slots` resident programs, given to the
# kernels on any device: L = 960 at 5 slots takes chunks of 192, aggregates of 64; L = 890
# the same, its 14 aggregates a last group of 2 where the carry folds 3 into one
SPLIT_CASES = [
    (ScanCase(1, 2, 960, 16, has_D=True, has_z=True, has_bias=True, softplus=True), 5),
    (ScanCase(1, 2, 960, 4, has_z=True, softplus=True, reverse=True), 5),
    (ScanCase(1, 2, 890, 16, has_D=True, has_z=True, softplus=True), 5),
    (ScanCase(1, 2, 890, 4, has_bias=True, softplus=True, reverse=True), 5),
    (ScanCase(2, 4, 950, 16, dtype=torch.bfloat16, groups=2, has_D=True, softplus=True), 20),
]


@pytest.fixture
def _split_at_any_size(monkeypatch: pytest.MonkeyPatch):
    """Small cases stand for scans of 2**25 elements, where aggregates split (the plans
    are cached: cleared before and after)."""
    monkeypatch.setattr(serial_planning, "_SPLIT_MIN_ELEMENTS", 1)
    serial_planning.serial_plan.cache_clear()
    yield
    serial_planning.serial_plan.cache_clear()


@pytest.mark.usefixtures("_split_at_any_size")
@pytest.mark.parametrize(("case", "slots"), SPLIT_CASES,
                         ids=[f"{c.id}-s{k}" for c, k in SPLIT_CASES])
def test_serial_forward_with_aggregates_at_shorter_chunks(
        case: ScanCase, slots: int, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = serial_planning.serial_plan(case.batch, case.dim, max(case.groups, 1),
                                       case.length, case.dtype, slots=slots)
    assert plan.agg_split == 3 and plan.pass_chunks(aggregate=True)[0] == 64
    monkeypatch.setattr(triton_fwd_serial, "serial_plan",
                        lambda *a, **k: serial_planning.serial_plan(*a, **{**k, "slots": slots}))
    _check_serial_forward(case)


@pytest.mark.skipif(DEVICE == "cpu", reason="occupancy of a compiled kernel: a GPU")
def test_default_forward_runs_in_whole_waves_on_the_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # (2, 128, 16384): chunks of 64 leave 2048 programs, more than one wave on a GPU of
    # fewer than 171 SMs at 12 programs an SM; the default plan fills one wave instead
    case = ScanCase(2, 128, 16384, 16, dtype=torch.bfloat16, has_D=True, has_z=True,
                    has_bias=True, softplus=True)
    inputs = case.inputs(DEVICE)
    plans = []
    real_launch = triton_fwd_serial._launch
    monkeypatch.setattr(triton_fwd_serial, "_launch",
                        lambda plan, *a, **k: plans.append(plan) or real_launch(plan, *a, **k))
    flags = {"delta_softplus": True, "reverse": False}
    want = selective_scan_reference(**inputs, **flags)
    x = _four_d(inputs)
    out, last = torch.empty_like(x["u"]), torch.empty(2, 128, 16, device=DEVICE)
    triton_fwd_serial.serial_forward(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"],
                                     x["z"], x["delta_bias"], True, False, out, last)
    slots = triton_fwd_serial._serial_kernel_launcher.resident_programs(
        *triton_fwd_serial._launch_spec(plans[-1], x["u"], x["delta"], x["z"], x["A"],
                                        x["B"], x["C"], x["D"], x["delta_bias"], last, last,
                                        out, True, False, aggregate=False))
    default = serial_planning.serial_plan(2, 128, 1, 16384, torch.bfloat16)
    assert slots and plans[-1].chunk == serial_planning.whole_wave_chunk(
        16384, 2 * default.n_dblk, default.chunk, slots)
    assert plans[-1].n_chunks * 2 * default.n_dblk <= slots
    assert relative_error(out, want) <= TOLERANCE[torch.bfloat16]
