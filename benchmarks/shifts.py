"""The shifted benchmark's images: held-out slices under the shifts another scanner brings.

Every slice gets its own shift, drawn from a generator seeded by ``(seed, slice name)`` so the
same slice always gets the same shift whatever else is staged, applied in this order:

1. **rotation** by an angle uniform in [-180, 180) degrees (a patient in another pose; any angle);
2. **zoom**: another pixel spacing, a factor log-uniform in [0.7, 1.4] of ours, with the matching
   field of view (same matrix size: a larger spacing shows the head smaller with more air
   around it, a smaller one larger and cropped), i.e. ``training.augment`` zoom ``1 / factor``;
3. **another intensity window / HU calibration**: ``clip(gain * x + offset, 0, 1)``, gain
   log-uniform in [0.8, 1.25], offset uniform in [-0.01, 0.01] (about +-30 HU in our window);
4. **texture noise**: white noise smoothed by a Gaussian of ``TEXTURE_SIGMA`` pixels, scaled to
   std ``TEXTURE_STD``, added where the shifted image is above ``BODY`` (air stays air).

Images are written as 16-bit PNGs (the format of the test slices) with the same names, and the
parameters of every slice to ``shifts.json`` beside them.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

ANGLE = (-180.0, 180.0)    # rotation, degrees
SPACING = (0.7, 1.4)       # pixel-spacing factor (log-uniform); zoom = 1 / factor
GAIN = (0.8, 1.25)         # intensity gain (log-uniform)
OFFSET = (-0.01, 0.01)     # intensity offset, image units
TEXTURE_STD = 0.01         # std of the added texture
TEXTURE_SIGMA = 1.5        # its correlation length, pixels (Gaussian smoothing)
BODY = 0.02                # texture only where the image exceeds this


def draw_shift(name: str, seed: int) -> dict:
    """The shift of slice ``name`` (its parameters, and the seed of its texture)."""
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(digest)
    spacing = math.exp(rng.uniform(math.log(SPACING[0]), math.log(SPACING[1])))
    return dict(angle=float(rng.uniform(*ANGLE)), spacing=spacing, zoom=1.0 / spacing,
                gain=math.exp(rng.uniform(math.log(GAIN[0]), math.log(GAIN[1]))),
                offset=float(rng.uniform(*OFFSET)), texture_seed=int(rng.integers(2**31)))


def apply_shift(image: np.ndarray, shift: dict) -> np.ndarray:
    """``image`` (C, H, W) in [0, 1] under ``shift`` (:func:`draw_shift`), float32 in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    from training.augment import rewindow, warp_images
    x = warp_images(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None], shift["angle"], shift["zoom"])
    x = rewindow(x, shift["gain"], shift["offset"])[0].numpy()
    rng = np.random.default_rng(shift["texture_seed"])
    texture = gaussian_filter(rng.standard_normal(x.shape), sigma=(0, TEXTURE_SIGMA, TEXTURE_SIGMA))
    texture *= TEXTURE_STD / max(float(texture.std()), 1e-12)
    return np.clip(x + texture * (x > BODY), 0, 1).astype(np.float32)


def stage_shifted(files: list[Path], folder: Path, seed: int = 0) -> list[Path]:
    """Write every file of ``files`` shifted into ``folder`` (kept if already there) and
    ``shifts.json``; returns the shifted files in the order of ``files``."""
    from PIL import Image

    from training.dataset import read_images
    folder.mkdir(parents=True, exist_ok=True)
    record, out = {}, []
    for f in files:
        f = Path(f)
        shift = draw_shift(f.stem, seed)
        record[f.name] = dict(shift, source=str(f))
        target = folder / (f.stem + ".png")
        if not target.exists():
            (_, image), = read_images(f)
            shifted = apply_shift(image, shift)
            tmp = target.with_name(target.name + ".tmp.png")
            Image.fromarray(np.round(shifted[0] * 65535).astype(np.uint16)).save(tmp)
            tmp.replace(target)
        out.append(target)
    (folder / "shifts.json").write_text(json.dumps(dict(seed=seed, slices=record), indent=2) + "\n")
    return out
