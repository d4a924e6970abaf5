"""The sequential reference itself: a hand-computed case, groups, dtypes."""

from __future__ import annotations

import math

import torch

from medmamba_kernels import selective_scan_reference
from scan_cases import ScanCase


def test_hand_computed_single_channel() -> None:
    u, dt, a, b, c, d, z = [1.0, 2.0, -1.0], [0.5, 0.1, 1.0], -2.0, [1.0, 3.0, 2.0], [2.0, -1.0, 0.5], 0.7, [0.3, -1.2, 2.0]
    h, want = 0.0, []
    for t in range(3):
        h = math.exp(dt[t] * a) * h + dt[t] * b[t] * u[t]
        y = c[t] * h + d * u[t]
        want.append(y * z[t] / (1 + math.exp(-z[t])))
    out, last = selective_scan_reference(
        torch.tensor([[u]]), torch.tensor([[dt]]), torch.tensor([[a]]), torch.tensor([[b]]),
        torch.tensor([[c]]), D=torch.tensor([d]), z=torch.tensor([[z]]), return_last_state=True,
    )
    torch.testing.assert_close(out, torch.tensor([[want]]))
    torch.testing.assert_close(last, torch.tensor([[[h]]]))


def test_groups_equal_per_group_calls() -> None:
    x = ScanCase(2, 6, 20, 3, groups=3, has_D=True, has_z=True).inputs()
    full = selective_scan_reference(**x)
    for g in range(3):
        rows = slice(2 * g, 2 * g + 2)
        part = selective_scan_reference(
            x["u"][:, rows], x["delta"][:, rows], x["A"][rows], x["B"][:, g], x["C"][:, g],
            D=x["D"][rows], z=x["z"][:, rows],
        )
        torch.testing.assert_close(full[:, rows], part)


def test_output_in_input_dtype_state_in_fp32() -> None:
    x = ScanCase(1, 2, 5, 2, dtype=torch.bfloat16).inputs()
    out, last = selective_scan_reference(**x, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
