"""Triton backward variants ("v2", "v3"; "v1" is the default that test_triton.py covers)
against the sequential reference: every gradient, over multi-chunk cases in both scan
directions (the variants differ in how chunk-boundary states enter the scans)."""

from __future__ import annotations

import os

import pytest
import torch

from scan_cases import GRAD_NAMES, ScanCase, assert_close_all, run_with_grads

pytest.importorskip("triton")

from medmamba_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402
from medmamba_kernels.selective_scan.triton_bwd import selective_scan_bwd_triton  # noqa: E402
from medmamba_kernels.selective_scan.triton_fwd import selective_scan_fwd_triton  # noqa: E402
from test_triton import _all, _fast_interpreter, _four_d  # noqa: E402, F401  (fixture)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

CASES = [
    (_all(ScanCase(2, 3, 100, 4)), {"chunk": 16}),
    (_all(ScanCase(2, 4, 64, 16, groups=2, reverse=True)), {"chunk": 16}),
    (_all(ScanCase(1, 2, 343, 4)), {"chunk": 64, "channel_block": 1}),
    (ScanCase(1, 4, 343, 8, groups=2, has_D=True, has_z=True, reverse=True, last_state=True),
     {"chunk": 32}),
    (_all(ScanCase(1, 2, 70, 16)), {}),  # one chunk
    (_all(ScanCase(2, 4, 343, 16, dtype=torch.bfloat16, groups=2, reverse=True)), {"chunk": 64}),
]


@pytest.mark.parametrize("variant", ["v2", "v3"])
@pytest.mark.parametrize(("case", "plan"), CASES, ids=[c.id for c, _ in CASES])
def test_backward_variant_matches_reference(variant: str, case: ScanCase, plan: dict) -> None:
    inputs = case.inputs(DEVICE)
    want = run_with_grads(selective_scan_reference, inputs, case.flags(), dout_seed=11)
    x = _four_d(inputs)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    out, last = selective_scan_fwd_triton(**x, **flags, **plan)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(11)).to(out.dtype).to(DEVICE)
    grads = selective_scan_bwd_triton(dout, **x, **flags, variant=variant, **plan)
    named = {name: grad.reshape(inputs[name].shape)
             for name, grad in zip(GRAD_NAMES, grads) if inputs[name] is not None}
    assert_close_all(case, (out, last, named), want)


def test_unknown_backward_variant_is_refused() -> None:
    x = _four_d(ScanCase(1, 2, 8, 2).inputs(DEVICE))
    dout = torch.ones(x["u"].shape, device=DEVICE)
    with pytest.raises(ValueError, match="^variant: expected one of"):
        selective_scan_bwd_triton(dout, **x, delta_softplus=False, reverse=False, variant="v9")
