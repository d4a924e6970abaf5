"""The GPU-only scripts still import and parse their arguments on a CPU machine.

CI never runs them for real (no GPU), so an import that rotted (a helper renamed or
removed in medmamba) would otherwise be found only on the device, at the cost of a call.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
GPU_ONLY = ["bench_networks", "measure_memory", "bench_window_forward", "bench_selective_scan",
            "profile_gpu_step", "kernel_sass_stats", "profile_host_overhead", "ncu_source_table",
            "bench_serial_threshold", "bench_bc_layout", "study_serial_backward",
            "study_split_backward", "study_split_backward_sass", "bench_mamba_layout",
            "bench_replay_ab"]


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
    sys.path.insert(0, str(SCRIPTS))
    try:
        from study_serial_backward import loop_sizes
    finally:
        sys.path.remove(str(SCRIPTS))
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
    sys.path.insert(0, str(SCRIPTS))
    try:
        import study_split_backward as study
    finally:
        sys.path.remove(str(SCRIPTS))
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
