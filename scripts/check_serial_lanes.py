"""Trial check (session 27): the "serial" output pass with `lanes` against the reference
and against the default plan, on the GPU."""
import sys
import torch
sys.path.insert(0, "tests/kernels")
from scan_cases import ScanCase, relative_error, TOLERANCE  # noqa: E402
from test_triton import _all, _four_d  # noqa: E402
from medmamba_kernels.selective_scan import triton_fwd_serial  # noqa: E402
from medmamba_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402

dev = "cuda"
cases = [_all(ScanCase(1, 40, 77, 16, dtype=torch.bfloat16, last_state=True)),
         _all(ScanCase(2, 32, 100, 16, reverse=True, last_state=True)),
         ScanCase(1, 64, 99, 16, has_D=True, last_state=True),
         _all(ScanCase(2, 64, 301, 16, last_state=True)),
         _all(ScanCase(2, 64, 301, 16, dtype=torch.bfloat16, reverse=True, last_state=True)),
         _all(ScanCase(2, 16, 343, 16, groups=2, dtype=torch.bfloat16)),
         _all(ScanCase(1, 48, 500, 5, last_state=True))]
bad = 0
for case in cases:
    for kw in ({"bc": 1}, {"ti": 4}, {}):
        inputs = case.inputs(dev)
        flags = {"delta_softplus": case.softplus, "reverse": case.reverse}
        want, want_last = selective_scan_reference(**inputs, **flags, return_last_state=True)
        x = _four_d(inputs)
        for sub in (None, 64):
            out = torch.full(x["u"].shape, float("nan"), dtype=x["u"].dtype, device=dev)
            last = torch.full(want_last.shape, float("nan"), device=dev)
            states = None if sub is None else torch.full(
                (*x["u"].shape[:2], -(-x["u"].shape[2] // sub), case.nstate), float("nan"),
                device=dev)
            triton_fwd_serial.serial_forward(
                x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                **flags, out=out, last_state=last, chunk=64, lanes=True, sub_states=states,
                **kw)
            e = (relative_error(out, want), relative_error(last, want_last))
            ok = max(e) <= TOLERANCE[case.dtype]
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} {case.id} {kw} kept={sub} {e[0]:.1e} {e[1]:.1e}")
print("lanes checks:", "all ok" if not bad else f"{bad} bad")
