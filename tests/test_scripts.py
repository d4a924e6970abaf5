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
            "profile_gpu_step", "kernel_sass_stats", "profile_host_overhead"]


@pytest.mark.slow
@pytest.mark.parametrize("script", GPU_ONLY)
def test_gpu_script_imports_and_shows_its_usage(script: str) -> None:
    result = subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()
