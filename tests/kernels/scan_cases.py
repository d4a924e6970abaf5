"""Shared cases, inputs and tolerances for the selective-scan tests (reference -> chunked
-> Triton). Each case gets fresh random inputs seeded by its id."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

# Error measure: max |got - want| / max(max |want|, 1e-6), per tensor, one table per dtype.
# bf16 inputs are rounded the same for both sides; the slack covers the bf16 rounding of
# outputs and gradients (2**-8 relative) and fp32 summation order.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@dataclass(frozen=True)
class ScanCase:
    batch: int
    dim: int
    length: int
    nstate: int
    dtype: torch.dtype = torch.float32
    groups: int = 0  # 0: B, C given 3-D; G >= 1: 4-D with G groups
    has_D: bool = False
    has_z: bool = False
    has_bias: bool = False
    softplus: bool = False
    reverse: bool = False
    last_state: bool = False

    @property
    def id(self) -> str:
        dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        flags = [
            f"G{self.groups}" if self.groups else "",
            "Dskip" if self.has_D else "",
            "z" if self.has_z else "",
            "bias" if self.has_bias else "",
            "softplus" if self.softplus else "",
            "rev" if self.reverse else "",
            "last" if self.last_state else "",
        ]
        head = f"B{self.batch}-D{self.dim}-L{self.length}-N{self.nstate}-{dtype}"
        return "-".join([head, *[f for f in flags if f]])

    def inputs(self, device: str = "cpu") -> dict[str, torch.Tensor | None]:
        """Fresh inputs, seeded by the case id; A < 0 and step sizes in a Mamba-like range."""
        gen = torch.Generator().manual_seed(zlib.crc32(self.id.encode()))

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen)

        b, d, n, length = self.batch, self.dim, self.nstate, self.length
        bc_shape = (b, self.groups, n, length) if self.groups else (b, n, length)
        # Without softplus the step size delta + delta_bias must stay positive (as after
        # softplus), or exp(dt * A) grows and long sequences overflow for both sides.
        if self.softplus:
            delta = randn(b, d, length) * 0.5 - 1.0
            bias = randn(d) * 0.3
        else:
            delta = torch.rand(b, d, length, generator=gen) * 0.3 + 0.01
            bias = torch.rand(d, generator=gen) * 0.1
        tensors = {
            "u": randn(b, d, length).to(self.dtype),
            "delta": delta.to(self.dtype),
            "A": -torch.exp(randn(d, n) * 0.5),
            "B": randn(*bc_shape).to(self.dtype),
            "C": randn(*bc_shape).to(self.dtype),
            "D": randn(d) if self.has_D else None,
            "z": randn(b, d, length).to(self.dtype) if self.has_z else None,
            "delta_bias": bias if self.has_bias else None,
        }
        return {k: None if v is None else v.to(device) for k, v in tensors.items()}

    def flags(self) -> dict[str, bool]:
        return {
            "delta_softplus": self.softplus,
            "reverse": self.reverse,
            "return_last_state": self.last_state,
        }


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.float()
    scale = max(want.abs().max().item(), 1e-6)
    return (got.float() - want).abs().max().item() / scale


def run_with_grads(fn, inputs: dict, flags: dict, dout_seed: int):
    """(out, last_state or None, {name: grad}) of fn(**inputs, **flags) for a seeded dout."""
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
    result = fn(**leaves, **flags)
    out, last = result if flags.get("return_last_state") else (result, None)
    gen = torch.Generator().manual_seed(dout_seed)
    dout = torch.randn(out.shape, generator=gen).to(out.dtype).to(out.device)
    present = [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad(out, [leaves[k] for k in present], dout)
    return out.detach(), last, dict(zip(present, grads))


def assert_close_all(case: ScanCase, got, want) -> None:
    """Compare out, last state and every gradient; report every tensor's error at once."""
    tol = TOLERANCE[case.dtype]
    errors = {"out": relative_error(got[0], want[0])}
    if case.last_state:
        errors["last_state"] = relative_error(got[1], want[1])
        assert got[1].dtype == torch.float32
    for name in want[2]:
        g, w = got[2][name], want[2][name]
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape, g.dtype)
        errors[f"d{name}"] = relative_error(g, w)
    for name, tensor in [("out", got[0]), *[(f"d{k}", v) for k, v in got[2].items()]]:
        assert torch.isfinite(tensor).all(), f"{case.id}: {name} has non-finite values"
    bad = {k: f"{v:.2e}" for k, v in errors.items() if not v <= tol}
    assert not bad, f"{case.id}: relative errors above {tol:g}: {bad}"
