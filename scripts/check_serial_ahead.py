import os, sys, torch
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
sys.path.insert(0, "tests/kernels")
from scan_cases import TOLERANCE, ScanCase, relative_error
from test_triton import _all, _four_d
from test_triton_fwd_variants import BC_CASES, CASES
from medmamba_kernels.selective_scan import triton_fwd_serial
from medmamba_kernels.selective_scan.reference import selective_scan_reference
cases = BC_CASES + [c for c, _ in CASES]
bad = 0
for case in cases:
  for chunk in (32, 64):
    inputs = case.inputs(DEV)
    flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
    want, want_last = selective_scan_reference(**inputs, **flags, return_last_state=True)
    x = _four_d(inputs)
    out = torch.full(x["u"].shape, float("nan"), dtype=x["u"].dtype, device=DEV)
    last = torch.full(want_last.shape, float("nan"), device=DEV)
    triton_fwd_serial.serial_forward(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], **flags, out=out, last_state=last, chunk=chunk, ahead=True)
    e = max(relative_error(out, want), relative_error(last, want_last))
    ok = e <= TOLERANCE[case.dtype]
    bad += not ok
    print(case.id, chunk, f"{e:.1e}", "ok" if ok else "FAIL", flush=True)
print("bad", bad)
