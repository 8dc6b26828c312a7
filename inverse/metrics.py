"""Image quality metrics (scikit-image) and summary tables.

Images are in [0, 1] (data range 1), given as ``(H, W)`` or ``(C, H, W)`` numpy arrays or
torch tensors (a leading batch axis of 1 is accepted). Metrics are computed on the image region
only; callers crop any padding first.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

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


def summarize(rows: Iterable[Mapping[str, float]], keys: Sequence[str] | None = None) -> dict:
    """Mean and (population) std per numeric metric over rows: ``{"psnr": {"mean", "std", "n"}}``.

    Non-numeric fields (e.g. an image name) are skipped; ``keys`` picks the metrics to keep.
    Infinite values (identical images) make the mean infinite, as they should.
    """
    rows = list(rows)
    if keys is None:
        keys = [k for k, v in (rows[0].items() if rows else ())
                if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)]
    out = {}
    for k in keys:
        vals = np.array([float(r[k]) for r in rows if k in r], dtype=np.float64)
        if vals.size == 0:
            continue
        finite = np.isfinite(vals).all()
        out[k] = dict(mean=float(vals.mean()), std=float(vals.std()) if finite else math.nan,
                      n=int(vals.size))
    return out


def _fmt(v, digits: int) -> str:
    if isinstance(v, (float, np.floating)):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None,
                   digits: int = 4) -> str:
    """A GitHub markdown table of rows (dicts); floats with ``digits`` decimals."""
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c, ""), digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def summary_table(summary: Mapping[str, Mapping[str, float]], digits: int = 4) -> str:
    """Markdown table of a :func:`summarize` result: metric | mean | std | n."""
    rows = [dict(metric=k, mean=v["mean"], std=v["std"], n=v["n"]) for k, v in summary.items()]
    return markdown_table(rows, ["metric", "mean", "std", "n"], digits)
