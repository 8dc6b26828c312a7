"""Shifts another scanner brings, as image transforms: rotation, zoom, intensity window.

One set of transforms serves two purposes:

- **training augmentation** (:class:`AugmentSpec`, ``train.py --aug-*``): every training patch
  is cut from its own randomly rotated / zoomed / re-windowed copy of the image, drawn from the
  run's data generator, so a resumed run draws the same augmentations;
- **the shifted benchmark** (``benchmarks/bench_quality.py --shifted``): the test and tuning
  slices under one fixed, seeded shift each (:func:`warp_images`, :func:`rewindow`).

Geometry. The transform acts about the image centre ``c = ((H-1)/2, (W-1)/2)``. A *zoom*
``z`` is the factor by which the pixel spacing shrinks: ``z > 1`` shows the anatomy larger
(and crops the field of view), ``z < 1`` smaller (the new field of view is filled with air, 0,
like the zero padding). A pixel-spacing factor ``s`` of another scanner (0.7x-1.4x of ours) is
``z = 1 / s``. The output pixel ``p`` takes the input value at
``c + R(-angle) (p - c) / z`` (bicubic, clamped to [0, 1]; outside the image: 0).

Intensity. The CT window maps HU linearly to [0, 1] (``training.ct_window``); another window
or HU calibration is then the affine map ``clip(gain * x + offset, 0, 1)`` of our images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    """Ranges of the training augmentation; the defaults switch every part off.

    Each patch, with probability ``p``, is cut from a transformed image: angle uniform in
    ``[-rotate, rotate]`` degrees, zoom log-uniform in ``[zoom_min, zoom_max]``, gain
    log-uniform in ``[1/gain, gain]``, offset uniform in ``[-offset, offset]``.
    """

    p: float = 0.0          # probability that a patch is augmented
    rotate: float = 0.0     # max |angle|, degrees (180: any angle)
    zoom_min: float = 1.0   # smallest zoom (1 / largest pixel-spacing factor)
    zoom_max: float = 1.0   # largest zoom
    gain: float = 1.0       # max intensity gain factor (>= 1)
    offset: float = 0.0     # max |intensity offset| (image units)

    def __post_init__(self):
        checks = [(0 <= self.p <= 1, "p in [0, 1]"), (0 <= self.rotate <= 180, "rotate in [0, 180] degrees"),
                  (0 < self.zoom_min <= self.zoom_max, "0 < zoom_min <= zoom_max"),
                  (self.gain >= 1, "gain >= 1"), (0 <= self.offset < 1, "offset in [0, 1)")]
        for ok, what in checks:
            if not ok:
                raise ValueError(f"augment: expected {what}, got {asdict(self)}")

    @property
    def active(self) -> bool:
        return self.p > 0 and (self.rotate > 0 or self.zoom_min != 1 or self.zoom_max != 1
                               or self.gain != 1 or self.offset != 0)

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentSpec:
        return cls(**(d or {}))


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return lo + (hi - lo) * u


def draw_params(spec: AugmentSpec, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image transform parameters (float64, on the generator's device): ``angle``
    (radians), ``zoom``, ``gain``, ``offset``; images not augmented get the identity.
    Draws a fixed number of values per call (six per image) so the stream stays aligned."""
    on = _uniform(n, 0, 1, generator) < spec.p
    angle = _uniform(n, -spec.rotate, spec.rotate, generator) * (math.pi / 180)
    zoom = _uniform(n, math.log(spec.zoom_min), math.log(spec.zoom_max), generator).exp()
    gain = _uniform(n, -math.log(spec.gain), math.log(spec.gain), generator).exp()
    offset = _uniform(n, -spec.offset, spec.offset, generator)
    _uniform(n, 0, 1, generator)  # reserved (keeps six draws per image)
    one, zero = torch.ones_like(zoom), torch.zeros_like(zoom)
    return dict(angle=torch.where(on, angle, zero), zoom=torch.where(on, zoom, one),
                gain=torch.where(on, gain, one), offset=torch.where(on, offset, zero))


def source_grid(points_rc: torch.Tensor, image_hw: tuple[int, int], angle: torch.Tensor,
                zoom: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` grid (B, ..., 2: x, y in [-1, 1], align_corners=True) that reads, for
    output points ``points_rc`` (B, ..., 2: row, column in image pixels), the input pixel
    ``c + R(-angle) (p - c) / zoom``. angle, zoom: (B,)."""
    h, w = image_hw
    cy, cx = (h - 1) / 2, (w - 1) / 2
    shape = (-1,) + (1,) * (points_rc.dim() - 2)
    cos, sin = angle.cos().view(shape), angle.sin().view(shape)
    z = zoom.view(shape)
    dy, dx = points_rc[..., 0].double() - cy, points_rc[..., 1].double() - cx
    sy = cy + (cos * dy - sin * dx) / z
    sx = cx + (sin * dy + cos * dx) / z
    gx = sx * (2 / max(w - 1, 1)) - 1
    gy = sy * (2 / max(h - 1, 1)) - 1
    return torch.stack([gx, gy], dim=-1)


def sample_at(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bicubic read of ``images`` (B, C, H, W) at ``grid`` (B, h, w, 2), 0 outside, clamped to [0, 1]."""
    out = F.grid_sample(images, grid.to(images.dtype), mode="bicubic", padding_mode="zeros",
                        align_corners=True)
    return out.clamp(0, 1)


def rewindow(images: torch.Tensor, gain: torch.Tensor | float, offset: torch.Tensor | float) -> torch.Tensor:
    """Another intensity window: ``clip(gain * x + offset, 0, 1)``; gain/offset scalars or (B,)."""
    g = torch.as_tensor(gain, dtype=images.dtype, device=images.device)
    o = torch.as_tensor(offset, dtype=images.dtype, device=images.device)
    if g.dim():
        g = g.view(-1, *([1] * (images.dim() - 1)))
    if o.dim():
        o = o.view(-1, *([1] * (images.dim() - 1)))
    return (g * images + o).clamp(0, 1)


def warp_images(images: torch.Tensor, angle_deg: float, zoom: float) -> torch.Tensor:
    """The whole images (B, C, H, W) rotated by ``angle_deg`` and zoomed by ``zoom`` (same size)."""
    b, _, h, w = images.shape
    rows = torch.arange(h, device=images.device, dtype=torch.float64)
    cols = torch.arange(w, device=images.device, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).expand(b, h, w, 2)
    angle = torch.full((b,), math.radians(angle_deg), dtype=torch.float64, device=images.device)
    grid = source_grid(pts, (h, w), angle, torch.full_like(angle, zoom))
    return sample_at(images, grid)


def augmented_patches(images: torch.Tensor, offsets: torch.Tensor, shape: tuple[int, int],
                      pad_width: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Patches (B, C, h, w) at canvas ``offsets`` (B, 2: row, column on the canvas padded by
    ``pad_width``) of each image transformed by its own ``params`` (:func:`draw_params`);
    only the patch's pixels are computed. The padding stays 0 (air)."""
    h, w = shape
    dev = images.device
    rows = offsets[:, 0, None].to(dev).double() - pad_width + torch.arange(h, device=dev, dtype=torch.float64)
    cols = offsets[:, 1, None].to(dev).double() - pad_width + torch.arange(w, device=dev, dtype=torch.float64)
    pts = torch.stack([rows[:, :, None].expand(-1, h, w), cols[:, None, :].expand(-1, h, w)], dim=-1)
    p = {k: v.to(dev) for k, v in params.items()}
    windowed = rewindow(images, p["gain"], p["offset"])
    return sample_at(windowed, source_grid(pts, tuple(images.shape[-2:]), p["angle"], p["zoom"]))
