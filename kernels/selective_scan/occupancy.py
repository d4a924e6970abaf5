"""How many programs of a compiled kernel a GPU runs at once.

Launches whose programs each walk a long stretch of positions in turn (the "serial"
passes) take about as long for a last wave of a few programs as for a full one, so their
planner sizes the work to whole waves (serial_planning.whole_wave_chunk). A wave is what
every SM keeps resident: the compiled kernel's registers, warps and shared memory against
the SM's. The arithmetic is CUDA's occupancy rule with one conservative step: a warp's
registers (allocated 256 at a time) must fit one of the SM's four scheduler partitions,
each a quarter of its register file, so the count never exceeds what the hardware keeps
(overshooting a wave by one program is what this is for avoiding).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

_PARTITIONS = 4  # scheduler partitions an SM (sm_70 on), each a quarter of its registers
_REGISTER_UNIT = 256  # registers are allocated to a warp in units of this many
# resident programs (thread blocks) an SM at most, by compute capability
_MAX_PROGRAMS = {(7, 5): 16, (8, 6): 16, (8, 7): 16, (8, 9): 24}
_DEFAULT_MAX_PROGRAMS = 32  # sm_70, sm_80, sm_90
# a thread holds at most 255 registers: a partition then still keeps 2 warps, an SM 8
_FEWEST_WARPS_PER_SM = 8


def programs_per_sm(n_regs: int, num_warps: int, shared_bytes: int = 0, *,
                    regs_per_sm: int = 65536, threads_per_sm: int = 2048,
                    shared_per_sm: int = 0, max_programs: int = _DEFAULT_MAX_PROGRAMS) -> int:
    """Programs of `num_warps` warps at `n_regs` registers a thread and `shared_bytes` of
    shared memory that one SM keeps resident (0 if none fits). shared_per_sm 0: no limit
    known (kernels using none)."""
    per_warp = -(-max(n_regs, 1) * 32 // _REGISTER_UNIT) * _REGISTER_UNIT
    warps = _PARTITIONS * (regs_per_sm // _PARTITIONS // per_warp)
    warps = min(warps, threads_per_sm // 32)
    programs = min(warps // num_warps, max_programs)
    if shared_bytes and shared_per_sm:
        programs = min(programs, shared_per_sm // shared_bytes)
    return max(programs, 0)


def device_slots(compiled: Any, props: Any) -> int | None:
    """Programs of `compiled` (a Triton CompiledKernel whose handles are loaded) that the
    device of `props` (torch.cuda.get_device_properties) runs at once; None where the
    kernel or the properties do not say."""
    n_regs = getattr(compiled, "n_regs", None)
    metadata = getattr(compiled, "metadata", None)
    if not n_regs or metadata is None:
        return None
    capability = (props.major, props.minor)
    per_sm = programs_per_sm(
        n_regs, metadata.num_warps, getattr(metadata, "shared", 0),
        regs_per_sm=getattr(props, "regs_per_multiprocessor", 65536),
        threads_per_sm=getattr(props, "max_threads_per_multi_processor", 2048),
        shared_per_sm=getattr(props, "shared_memory_per_multiprocessor", 0),
        max_programs=_MAX_PROGRAMS.get(capability, _DEFAULT_MAX_PROGRAMS))
    return per_sm * props.multi_processor_count or None


def may_exceed_one_wave(programs: int, num_warps: int, device: torch.device) -> bool:
    """Whether `programs` of `num_warps` warps could need more than one wave on `device`
    (a CUDA device): false where every SM keeps its share whatever the kernel's registers
    (at most 255: 8 warps an SM; kernels of little shared memory), so that callers skip
    asking the compiled kernel's occupancy."""
    return programs > _sm_count(device.index) * max(1, _FEWEST_WARPS_PER_SM // num_warps)


@functools.lru_cache(maxsize=64)  # one call a launch on short rows: host time counts
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
