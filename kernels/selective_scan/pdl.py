"""Programmatic dependent launch (PDL): a kernel of ours may be launched while the one
before it in the stream is still finishing, and waits for it on the GPU.

A scan is a chain of launches (aggregates, carries, output or gradients), each reading
what the one before wrote. Launched plainly, each starts only once its predecessor has
finished and the launch has gone through the GPU's front end; with PDL (sm_90 and newer)
its programs are placed on the SMs as the predecessor's last ones run, and wait there.

Every kernel taking `PDL` waits for its predecessor (`griddepcontrol.wait`: the previous
grid complete, its writes visible) before its first memory access, whatever that
predecessor is (ours or torch's), then lets its own successor launch. So the order of
memory accesses is the plain launch's; only the launch latency is hidden.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

try:  # triton >= 3.4 on CUDA; the kernels take PDL=False (the default) without it
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    _HAS_GDC = True
except ImportError:  # pragma: no cover - depends on the triton build
    _HAS_GDC = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def _await_predecessor(PDL: tl.constexpr):
    """First statement of a kernel: with PDL, wait for the previous grid in the stream,
    then let the next one launch (its own wait keeps it behind this grid)."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


def pdl_options(t: torch.Tensor) -> dict:
    """Launch keywords for a kernel on `t`'s device: PDL where the GPU has it (compute
    capability 9 or more), none elsewhere (older GPUs, the interpreter's CPU tensors).
    A function of the device only, so launch keys that hold the device hold it too."""
    if not (_HAS_GDC and t.is_cuda) or triton.knobs.runtime.interpret:
        return {}
    return _PDL if _has_pdl(t.device.index) else {}


_PDL = {"PDL": True, "launch_pdl": True}


@functools.lru_cache(maxsize=None)
def _has_pdl(device_index: int | None) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9
