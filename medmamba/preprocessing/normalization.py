"""Per-channel intensity normalisation as planned (ChannelNormalization).

- ct: clip to the dataset's foreground [p0.5, p99.5], then (x - mean) / std with the
  dataset's foreground mean/std (one transform for every case).
- zscore: (x - mean) / std of this image; with ``use_nonzero_mask`` the statistics come
  from the nonzero region only and voxels outside it are set to 0.
- none: unchanged.

Channels are written into one preallocated array, in place where numpy allows: a
BraTS-sized case is 70 MB a copy, and inference pays this on every case.
"""

from __future__ import annotations

import numpy as np

from medmamba.planning.plans import ChannelNormalization, NormScheme

EPSILON = 1e-8


def normalize_channel(image: np.ndarray, plan: ChannelNormalization,
                      mask: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Normalise one channel (float32 out); ``mask`` is the nonzero mask of the case.
    Writes into ``out`` (float32, ``image``'s shape) when given, and returns it; statistics
    are taken before anything is written, so ``out`` may be ``image`` itself."""
    image = image.astype(np.float32, copy=False)
    if out is None:
        out = np.empty(image.shape, dtype=np.float32)
    elif out.dtype != np.float32 or out.shape != image.shape:
        raise ValueError(f"out must be float32 of shape {image.shape}, got {out.dtype} {out.shape}")
    if plan.scheme is NormScheme.NONE:
        out[...] = image
    elif plan.scheme is NormScheme.CT:
        np.clip(image, plan.clip_low, plan.clip_high, out=out)
        out -= plan.mean
        out /= max(plan.std, EPSILON)
    elif plan.use_nonzero_mask and mask is not None and mask.any():
        values = image[mask]  # a copy: out may be image
        out[...] = 0
        out[mask] = (values - values.mean()) / max(float(values.std()), EPSILON)
    else:
        mean, std = image.mean(), max(float(image.std()), EPSILON)
        np.subtract(image, mean, out=out)
        out /= std
    return out


def normalize(images: np.ndarray, plans: tuple[ChannelNormalization, ...],
              mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise every channel of ``images`` (C, *spatial) into a new float32 array."""
    if images.shape[0] != len(plans):
        raise ValueError(f"images have {images.shape[0]} channels, the plan {len(plans)}")
    out = np.empty(images.shape, dtype=np.float32)
    for channel, plan in enumerate(plans):
        normalize_channel(images[channel], plan, mask, out[channel])
    return out
