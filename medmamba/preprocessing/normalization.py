"""Per-channel intensity normalisation as planned (ChannelNormalization).

- ct: clip to the dataset's foreground [p0.5, p99.5], then (x - mean) / std with the
  dataset's foreground mean/std (one transform for every case).
- zscore: (x - mean) / std of this image; with ``use_nonzero_mask`` the statistics come
  from the nonzero region only and voxels outside it are set to 0.
- none: unchanged.
"""

from __future__ import annotations

import numpy as np

from medmamba.planning.plans import ChannelNormalization, NormScheme

EPSILON = 1e-8


def normalize_channel(image: np.ndarray, plan: ChannelNormalization,
                      mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise one channel (float32 out); ``mask`` is the nonzero mask of the case."""
    image = image.astype(np.float32, copy=False)
    if plan.scheme is NormScheme.NONE:
        return image.copy()
    if plan.scheme is NormScheme.CT:
        clipped = np.clip(image, plan.clip_low, plan.clip_high)
        return ((clipped - plan.mean) / max(plan.std, EPSILON)).astype(np.float32)
    if plan.use_nonzero_mask and mask is not None and mask.any():
        values = image[mask]
        out = np.zeros_like(image)
        out[mask] = (values - values.mean()) / max(float(values.std()), EPSILON)
        return out
    return ((image - image.mean()) / max(float(image.std()), EPSILON)).astype(np.float32)


def normalize(images: np.ndarray, plans: tuple[ChannelNormalization, ...],
              mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise every channel of ``images`` (C, *spatial)."""
    if images.shape[0] != len(plans):
        raise ValueError(f"images have {images.shape[0]} channels, the plan {len(plans)}")
    return np.stack([normalize_channel(c, p, mask) for c, p in zip(images, plans)])
