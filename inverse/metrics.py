"""Image quality metrics (scikit-image) and summary tables.

Images are in [0, 1] (data range 1), given as ``(H, W)`` or ``(C, H, W)`` numpy arrays or
torch tensors (a leading batch axis of 1 is accepted). Metrics are computed on the image region
only; callers crop any padding first.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _as_chw(x) -> np.ndarray:
    """(H, W) / (C, H, W) / (1, C, H, W) array or tensor -> float64 numpy (C, H, W)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"metrics: expected an image of shape (H, W) or (C, H, W); got {a.shape}")
    return a


def _pair(x, ref) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_chw(x), _as_chw(ref)
    if a.shape != b.shape:
        raise ValueError(f"metrics: image shape {a.shape} differs from reference {b.shape}")
    return a, b


def psnr(x, ref) -> float:
    """PSNR in dB of ``x`` against ``ref`` over data range 1; ``inf`` for identical images."""
    a, b = _pair(x, ref)
    if np.array_equal(a, b):
        return math.inf
    return float(peak_signal_noise_ratio(b, a, data_range=1.0))


def ssim(x, ref) -> float:
    """SSIM (Wang et al. 2004, scikit-image defaults: 7x7 uniform window) over data range 1;
    multichannel images average over channels."""
    a, b = _pair(x, ref)
    if a.shape[0] == 1:
        return float(structural_similarity(b[0], a[0], data_range=1.0))
    return float(structural_similarity(b, a, data_range=1.0, channel_axis=0))
