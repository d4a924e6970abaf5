"""The GPU-only scripts still import and parse their arguments on a CPU machine.

CI never runs them for real (no GPU), so an import that rotted (a helper renamed or
removed in medmamba) would otherwise be found only on the device, at the cost of a call.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
GPU_ONLY = ["bench_networks", "measure_memory", "bench_window_forward", "bench_selective_scan",
            "profile_gpu_step", "kernel_sass_stats", "profile_host_overhead", "ncu_source_table",
            "bench_serial_threshold", "bench_bc_layout", "study_serial_backward",
            "study_split_backward", "study_split_backward_sass", "bench_mamba_layout",
            "bench_replay_ab", "mamba_reference", "bench_arith_bound",
            "study_channel_sums_sass"]


def _script(name: str):
    """The module scripts/<name>.py, imported without leaving scripts/ on sys.path."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.mark.slow
@pytest.mark.parametrize("script", GPU_ONLY)
def test_gpu_script_imports_and_shows_its_usage(script: str) -> None:
    result = subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


@pytest.mark.slow
def test_measure_memory_verifies_the_committed_models_with_the_keys_verify_reads() -> None:
    # --verify-only hands plans/<family>.json's model to verify(), which reads these keys
    code = ("import json, measure_memory as m; print(json.dumps([m.committed_model(f) for f in "
            "('umamba_bot', 'plainconv_unet')]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=SCRIPTS)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    bot, plain = json.loads(result.stdout.splitlines()[-1])
    for model in (bot, plain):
        assert model["overhead_bytes"] > 0 and model["activation_bytes"] > 0
        assert model["stage_weights"] and model["source"].startswith("measured")
    assert bot["ssm_from_stage"] == -1 and bot["token_bytes"] > 0
    assert plain["ssm_from_stage"] is None


def test_ncu_source_table_ranks_instructions_and_opcodes(tmp_path: Path) -> None:
    # the layout of `ncu --page source --csv --print-source sass`: a kernel-name line,
    # then one row per SASS instruction
    rows = [
        '"Kernel Name","_k",',
        '"Address","Source","Warp Stall Sampling (All Samples)","stall_long_sb",'
        '"stall_long_sb (Not Issued)","stall_wait"',
        '"0x10","      LDG.E.128 R40, desc[UR28][R30.64]","2","0","0","2"',
        '"0x20","      FADD R29, R40, R35","90","85","80","5"',
        '"0x30","  @P1   FADD R3, R2, R1","8","0","0","8"',
    ]
    csv_path = tmp_path / "src.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    result = subprocess.run([sys.executable, str(SCRIPTS / "ncu_source_table.py"),
                             str(csv_path), "--top", "2"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "" and lines[1] == "3 instructions, 100 samples"
    assert "90.0%" in lines[2] and "FADD R29" in lines[2] and "long_sb=85" in lines[2]
    assert "(Not Issued)" not in result.stdout and len(lines[2:4]) == 2
    summary = lines[lines.index("samples by opcode:") + 1:]
    assert summary[0].split() == ["98.0%", "FADD"] and summary[1].split() == ["2.0%", "LDG"]


def test_study_serial_backward_counts_loop_bodies_but_not_the_trap_loop() -> None:
    loop_sizes = _script("study_serial_backward").loop_sizes
    sass = "\n".join([
        "        /*0000*/                   MOV R1, c[0x0][0x28] ;",
        ".L_x_0:",
        "        /*0010*/                   FFMA R2, R3, R4, R5 ;",
        "        /*0020*/                   FMUL R2, R2, R2 ;",
        "        /*0030*/               @P0 BRA `(.L_x_0) ;",
        "        /*0040*/                   EXIT ;",
        ".L_x_1:",
        "        /*0050*/                   BRA `(.L_x_1);",
    ])
    assert loop_sizes(sass) == [3]


def test_study_split_backward_forms_the_backward_coupling_exactly_in_float64() -> None:
    # the telescoped form (study_split_backward.split_terms) against w = g a h_prev, both
    # in float64 from the same states: any slip in the identity's algebra is O(1) here
    study = _script("study_split_backward")
    import torch

    gen = torch.Generator().manual_seed(3)
    dim, n_state, length, chunk = 3, 4, 150, 16  # a partial last chunk
    u, dy = (torch.randn(dim, length, generator=gen, dtype=torch.float64) for _ in range(2))
    dt = torch.rand(dim, length, generator=gen, dtype=torch.float64) * 0.3
    A = -torch.rand(dim, n_state, generator=gen, dtype=torch.float64) * 2
    B, C = (torch.randn(n_state, length, generator=gen, dtype=torch.float64) for _ in range(2))
    a, v, h, g = study._states(u, dt, A, B, C, dy)
    direct = study.direct_terms(A, dt, a, h, g)
    split = study.split_terms(A, dt, dy, B, C, a, v, h, g, chunk)
    for got, want in zip(split, direct):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def _mamba_reference():
    return _script("mamba_reference")


def _fake_sdist(tmp_path: Path, leave_out: str = "") -> Path:
    """A tarball laid out as mamba_ssm's sdist: the CUDA sources, the Python files the
    reference imports, and files it must not unpack."""
    import tarfile

    ref = _mamba_reference()
    tree = tmp_path / "tree" / ref.SDIST
    wanted = [ref.CUDA_DIR + s for s in ref.SOURCES] + [ref.CUDA_DIR + "static_switch.h"]
    for inside in [*wanted, *ref.PYTHON_FILES, "mamba_ssm/__init__.py", "setup.py",
                   "csrc/other/kernel.cu"]:
        if inside != leave_out:
            (tree / inside).parent.mkdir(parents=True, exist_ok=True)
            (tree / inside).write_text(f"// {inside}\n")
    archive = tmp_path / "sdist.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=ref.SDIST)
    return archive


def test_mamba_reference_unpacks_only_the_selective_scan_and_replaces_the_folder(
        tmp_path: Path) -> None:
    ref = _mamba_reference()
    target = tmp_path / "mamba_ssm"
    (target / "stale").mkdir(parents=True)
    ref.unpack(_fake_sdist(tmp_path), target)
    unpacked = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    expected = sorted([ref.CUDA_DIR + s for s in ref.SOURCES]
                      + [ref.CUDA_DIR + "static_switch.h", *ref.PYTHON_FILES])
    assert unpacked == expected
    assert (target / ref.CUDA_DIR / "selective_scan.cpp").read_text().startswith("// csrc/")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mamba_ssm")] == []


def test_mamba_reference_names_what_the_sdist_lacks_and_leaves_no_folder(
        tmp_path: Path) -> None:
    ref = _mamba_reference()
    missing = ref.CUDA_DIR + "selective_scan_bwd_bf16_real.cu"
    with pytest.raises(ValueError, match="missing .*selective_scan_bwd_bf16_real.cu"):
        ref.unpack(_fake_sdist(tmp_path, leave_out=missing), tmp_path / "mamba_ssm")
    assert not (tmp_path / "mamba_ssm").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mamba_ssm")] == []


def test_mamba_reference_imports_the_scan_without_the_package_init(tmp_path: Path,
                                                                  monkeypatch) -> None:
    # mamba_ssm's __init__ imports its model zoo; the reference must not run it
    ref = _mamba_reference()
    package = tmp_path / "mamba_ssm"
    (package / "ops").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the package init ran')\n")
    (package / "ops" / "selective_scan_interface.py").write_text(
        "import selective_scan_cuda\n"
        "def selective_scan_fn(*args):\n    return selective_scan_cuda.fwd(*args)\n")
    import types

    extension = types.ModuleType("selective_scan_cuda")
    extension.fwd = lambda *args: ("fwd", args)
    for name in [n for n in sys.modules if n == "mamba_ssm" or n.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", extension)
    try:
        fn = ref.selective_scan_fn(tmp_path)
        assert fn(1, 2) == ("fwd", (1, 2))
    finally:
        for name in [n for n in sys.modules if n == "mamba_ssm" or n.startswith("mamba_ssm.")]:
            del sys.modules[name]


def test_bench_checks_hold_results_to_the_float64_reference_by_dtype(capsys) -> None:
    # the bench's checks (ours and mamba_ssm's) share reference_run and verdict: a result
    # equal to the truth passes, one off by more than the dtype's tolerance or not finite
    # fails, and the printed line names the worst result
    bench = _script("bench_selective_scan")
    import torch

    gen = torch.Generator().manual_seed(4)
    batch, dim, n_state, length = 1, 3, 4, 9
    x = {name: torch.randn(*shape, generator=gen) for name, shape in (
        ("u", (batch, dim, length)), ("delta", (batch, dim, length)),
        ("B", (batch, n_state, length)), ("C", (batch, n_state, length)),
        ("D", (dim,)), ("z", (batch, dim, length)), ("delta_bias", (dim,)))}
    x["A"] = -torch.rand(dim, n_state, generator=gen)
    x.update(delta_softplus=True, reverse=False)
    dout = torch.randn(batch, dim, length, generator=gen)
    truth = bench.reference_run(x, dout)
    assert set(truth) == {"out", "last", "u", "delta", "A", "B", "C", "D", "z", "delta_bias"}
    assert all(t.dtype == torch.float64 for k, t in truth.items() if k != "last")
    results = {k: v.float() for k, v in truth.items()}
    assert bench.verdict("exact", torch.float32, results, truth)
    off = dict(results)
    off["B"] = results["B"] * (1 + 5e-3)  # within bf16's tolerance, not fp32's
    assert not bench.verdict("off", torch.float32, off, truth)
    assert bench.verdict("off", torch.bfloat16, off, truth)
    poisoned = {**results, "z": results["z"].clone().fill_(float("nan"))}
    assert not bench.verdict("nan", torch.bfloat16, poisoned, truth)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("check exact") and " ok " in lines[0]
    assert lines[1].startswith("check off") and "FAIL worst B=5.0e-03" in lines[1]


def test_bench_rows_alternate_ours_and_mamba_ssm_and_keep_the_medians(monkeypatch) -> None:
    # do_bench stood in for: each call returns the next of a list of times, logging which
    # call it timed; rounds must alternate ours and theirs and report per-column medians
    bench = _script("bench_selective_scan")
    import torch

    triton_testing = pytest.importorskip("triton.testing")
    timed: list = []
    times = iter([1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0, 5.0, 50.0, 6.0, 60.0])

    def fake_do_bench(fn, **kwargs):
        timed.append(fn())
        return next(times)

    monkeypatch.setattr(triton_testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(bench, "public_row_calls",
                        lambda shape, dtype, reverse: (lambda: "ours f", lambda: "ours fb", []))
    monkeypatch.setattr(bench, "mamba_calls", lambda fn, shape, dtype, api: (
        lambda: "theirs f", lambda: "theirs fb", None))
    shape = next(iter(bench.ANCHORS))
    row = bench.bench_row(shape, torch.float32, 1e12, True, api="public", mamba=object(),
                          rounds=3)
    assert timed == ["ours f", "ours fb", "theirs f", "theirs fb"] * 3
    assert (row[0], row[1]) == (3.0, 30.0)  # medians of 1, 3, 5 and 10, 30, 50
    assert (row[6], row[8]) == (4.0, 40.0) and row[7] == 4.0 / 3.0


def test_bench_refuses_fewer_than_one_round(monkeypatch, capsys) -> None:
    bench = _script("bench_selective_scan")
    monkeypatch.setattr(sys, "argv", ["bench_selective_scan.py", "--rounds", "0"])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err


def test_study_channel_sums_counts_opcodes_without_predicates_or_modifiers() -> None:
    opcode_counts = _script("study_channel_sums_sass").opcode_counts
    body = ["        /*0010*/                   SHFL.BFLY PT, R2, R3, 0x10, 0x1f ;",
            "        /*0020*/               @P0 FADD R2, R2, R3 ;",
            "        /*0030*/                   FADD R4, R2, R5 ;"]
    assert opcode_counts(body) == {"SHFL": 1, "FADD": 2}
