"""The CT intensity window shared by the data script and the DICOM reader.

Hounsfield units (HU) map linearly to [0, 1]: ``clip((HU - HU_MIN) / (HU_MAX - HU_MIN), 0, 1)``.
The default window [-1000, 2000] HU sends air (about -1000 HU) to 0, so the zero padding of
the patch prior is black like the air around the head, puts water at 1/3 and keeps cortical bone
(up to about 2000 HU) unclipped. It is the window of ``datasets/make_ct_head.py`` and of
``training.dicom.read_dicom``, so images from either source share one intensity scale.
"""

from __future__ import annotations

import numpy as np

HU_MIN = -1000.0  # HU mapped to 0 (air)
HU_MAX = 2000.0  # HU mapped to 1 (dense bone)


def hu_to_unit(hu: np.ndarray, hu_min: float = HU_MIN, hu_max: float = HU_MAX) -> np.ndarray:
    """Window HU values linearly into [0, 1]; same shape as ``hu``, float32.

    Raises ValueError unless ``hu_min < hu_max`` (both finite).
    """
    hu_min, hu_max = float(hu_min), float(hu_max)
    if not (np.isfinite(hu_min) and np.isfinite(hu_max) and hu_min < hu_max):
        raise ValueError(f"HU window needs finite hu_min < hu_max, got ({hu_min}, {hu_max})")
    unit = (np.asarray(hu, dtype=np.float64) - hu_min) / (hu_max - hu_min)
    return np.clip(unit, 0.0, 1.0).astype(np.float32)
