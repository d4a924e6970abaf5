"""Where the backward's main kernel (triton_bwd.py) writes dB and dC, and their sum.

B and C are shared by a group's channels, so their gradients are sums over channels; the
kernel sums a program's channel block in registers and writes one partial sum a block.
Host-side only.
"""

from __future__ import annotations

import torch


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


def sum_state_grads(
    dB_part: torch.Tensor, dC_part: torch.Tensor, dC_shift: int,
    B_dtype: torch.dtype, C_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dB, dC from `state_grad_buffers`' tensors after the kernel: with a shift, dB_part
    is the (2, n_cblk, ...) buffer of both, summed over its channel blocks."""
    if not dC_shift:
        return dB_part, dC_part
    sums = dB_part.sum(1)
    if B_dtype != C_dtype:
        return sums[0].to(B_dtype), sums[1].to(C_dtype)
    return sums.to(B_dtype).unbind(0)
