"""Where the backward's main kernel (triton_bwd.py) writes dB and dC, and their sums;
the sums of its partial dA, dD and dbias.

B and C are shared by a group's channels, so their gradients are sums over channels; the
kernel sums a program's channel block in registers and writes one partial sum a block.
Both sums are one launch of triton_sums.py's kernel, into gradients allocated apart (no
views), so that the backward host function stays replayable (replay.py).
"""

from __future__ import annotations

import torch

from .triton_sums import Source, sum_sources


def state_grad_buffers(
    B: torch.Tensor, C: torch.Tensor, n_cblk: int, dev: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(dB_part, dC_part, dC_shift): where the kernel writes dB and dC. One channel block:
    the gradients themselves, in their shapes and dtypes, shift 0. Several: fp32 partial
    sums (2, n_cblk, batch, groups, N, L) in one buffer given as both, dC's half
    `dC_shift` elements on, which one sum reduces (no views: microseconds each)."""
    if n_cblk == 1:
        return (torch.empty(B.shape, device=dev, dtype=B.dtype),
                torch.empty(C.shape, device=dev, dtype=C.dtype), 0)
    both = torch.empty(2, n_cblk, *B.shape, device=dev, dtype=torch.float32)
    return both, both, n_cblk * B.numel()


def parameter_grad_sizes(a_shape: tuple[int, int], has_d: bool, has_bias: bool) -> list[int]:
    """The row of the main kernel's `part` (one a batch and chunk): dA's partial sums,
    then dD's and dbias's where those inputs are present."""
    dim, n_state = a_shape
    return [dim * n_state] + [dim] * (has_d + has_bias)


def sum_partial_grads(
    part: torch.Tensor, a_shape: tuple[int, int], has_d: bool, has_bias: bool,
    dB_part: torch.Tensor, dC_part: torch.Tensor, dC_shift: int, B: torch.Tensor,
    C: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor,
           torch.Tensor]:
    """(dA, dD, dbias, dB, dC) after the main kernel, each its own allocation (None for
    an absent D or bias): dA, dD, dbias in float32 from `part`'s rows; dB, dC from
    `state_grad_buffers`' tensors, with a shift the (2, n_cblk, ...) buffer of both summed
    over its channel blocks into B's and C's shapes and dtypes. One launch for all."""
    sizes = parameter_grad_sizes(a_shape, has_d, has_bias)
    params = [torch.empty(a_shape, device=part.device, dtype=torch.float32)]
    params += [torch.empty(size, device=part.device, dtype=torch.float32)
               for size in sizes[1:]]
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    sources: list[Source] = [(part, part.shape[0], part.shape[1],
                              [(g, at, size) for g, at, size in zip(params, offsets, sizes)])]
    if dC_shift:
        dB = torch.empty(B.shape, device=B.device, dtype=B.dtype)
        dC = torch.empty(C.shape, device=C.device, dtype=C.dtype)
        sources.append((dB_part, dB_part.shape[1], B.numel(),
                        [(dB, 0, B.numel()), (dC, dC_shift, C.numel())]))
    else:
        dB, dC = dB_part, dC_part
    sum_sources(sources)
    dA = params.pop(0)
    dD = params.pop(0) if has_d else None
    dbias = params.pop(0) if has_bias else None
    return dA, dD, dbias, dB, dC
