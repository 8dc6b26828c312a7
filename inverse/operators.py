"""Forward models y = A x for the inverse problems of the paper, one class each, in a registry.

Every operator works on batches: images are (B, C, H, W) float32 in [0, 1] on `op.device`,
measurements are (B, C, *op.measurement_shape). All maps are differentiable through autograd.

- `A(x)`: forward model; `AT(y)`: its true adjoint, sum(A(x) * y) == sum(x * AT(y));
- `pinv(y)`: FBP for CT, the usual pseudo-inverse otherwise (see each class);
- `noise(y, level, generator)`: y + Gaussian noise. Image-domain problems (deblur, super,
  denoise, inpaint): std = `level` in units of [0, 1] images (paper: 0.01 for deblurring).
  CT: std = `level` * max|y| of each batch item's sinogram (all its channels), e.g. 0.005;
- `norm()`: operator 2-norm ||A|| (exact where known, else power iteration), cached on the
  instance and, for CT, per geometry in this process (`NORM_CACHE`: a run's solver and baseline
  operators, and every operator of a benchmark on the same geometry, share one power iteration);
  used for step sizes in inverse.samplers and inverse.baselines.
- `couples_batch`: False for operators that map each batch item on its own. True (`ct_cone`)
  when the batch axis is the z axis of one volume: A mixes batch items, so a solver must take
  its inner products over the whole batch (inverse.samplers.conjugate_gradient's `joint`).

On CUDA the parallel-beam CT operators project a batch as one 3D volume on torch memory
(odlstuff.geometry.VolumeProjector: one ASTRA call, no host copy), if ASTRA's 3D back projector
is within odlstuff.geometry.ADJOINT_TOL of the forward projector's adjoint for the geometry; else
(and on CPU, and for fan beam) slice by slice through odlstuff.geometry.Projector.

`make_operator(name, image_shape, channels, device, **options)` builds one from the registry
`OPERATORS`; the options of an operator are the fields of its `Options` dataclass, passed to
its constructor as keyword arguments after (image_shape, channels, device) (strings such as
"20" or "0,2.1" from a command line are accepted).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from odlstuff import geometry as geo
from odlstuff.torch_op import backproject, fbp, project

# ||A|| per CT geometry (power iteration with a fixed seed: the same number every time), keyed by
# Operator.norm_key; a memo of a deterministic result, never a setting.
NORM_CACHE: dict[str, float] = {}

# --------------------------------------------------------------------------------------------
# option parsing (one clear ValueError naming the option)


def _int_opt(name: str, value, minimum: int = 1) -> int:
    try:
        out = int(value)
        ok = out == float(value) and out >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"option {name!r} must be an integer >= {minimum}, got {value!r}")
    return out


def _float_opt(name: str, value, low: float = 0.0, high: float = math.inf, low_open: bool = True) -> float:
    try:
        out = float(value)
        ok = math.isfinite(out) and (out > low if low_open else out >= low) and out <= high
    except (TypeError, ValueError):
        ok = False
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if math.isfinite(high) else "")
        raise ValueError(f"option {name!r} must be a number {bound}, got {value!r}")
    return out


def _choice_opt(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in {c.lower() for c in choices}:
        raise ValueError(f"option {name!r} must be one of {list(choices)}, got {value!r}")
    return next(c for c in choices if c.lower() == value.lower())


def _range_opt(name: str, value) -> tuple[float, float]:
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        lo, hi = (float(p) for p in parts)
        ok = math.isfinite(lo) and math.isfinite(hi) and hi > lo
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"option {name!r} must be 'lo,hi' in radians with hi > lo, got {value!r}")
    return lo, hi


def _check(x: torch.Tensor, channels: int, shape: tuple[int, ...], what: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels or tuple(x.shape[2:]) != tuple(shape):
        raise ValueError(f"{what} must have shape (B, {channels}, {', '.join(map(str, shape))}), "
                         f"got {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------
# base class


class Operator:
    """Base class: subclasses declare their options as an `Options` dataclass, build themselves
    from it in `_build` (setting `measurement_shape`) and implement `_A`, `_AT`, `_pinv`."""

    @dataclass(frozen=True)
    class Options:
        """No options."""

    name = "operator"
    # pinv(A x) is a (possibly regularised) orthogonal-projection-like inverse: I - pinv A has
    # eigenvalues in [0, 1], so iterating x <- x + pinv(y - A x) (DDNM) is stable. False for CT,
    # where pinv is FBP: iterating its correction diverges at low noise levels. Stable is not
    # noise-safe: with noisy y each correction re-injects pinv's amplified noise (measured for
    # Wiener deblurring in notes/quality.md; sample_ddnm's DDNM+ mode scales the correction for it).
    stable_pinv = True
    couples_batch = False  # True: the batch is one volume's slices and A mixes them (module docstring)
    norm_batch = 1  # batch size of the power iteration's input (couples_batch: the volume's slices)
    norm_key: str | None = None  # set: ||A|| is shared through NORM_CACHE under this key

    def __init__(
        self,
        image_shape: tuple[int, int],  # (H, W) image size in pixels
        channels: int = 1,  # image channels C (1 grayscale, 3 RGB)
        device: str | torch.device = "cpu",  # where inputs, outputs and operator data live
        **options,  # fields of the class's Options
    ):
        try:
            h, w = (int(s) for s in image_shape)
        except (TypeError, ValueError):
            raise ValueError(f"image_shape must be (H, W), got {image_shape!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"image_shape must be positive, got {image_shape!r}")
        self.image_shape = (h, w)
        self.channels = _int_opt("channels", channels)
        self.device = torch.device(device)
        self.measurement_shape: tuple[int, ...] = self.image_shape
        self._norm: float | None = None
        self._build(self.Options(**options))

    def _build(self, o: Options) -> None:
        """Set up the operator from its options (the base class has none)."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, image_shape={self.image_shape}, "
                f"channels={self.channels}, measurement_shape={self.measurement_shape}, device={self.device})")

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Forward model: (B, C, H, W) -> (B, C, *measurement_shape)."""
        _check(x, self.channels, self.image_shape, f"{self.name}: image")
        return self._A(x)

    def AT(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint of A: (B, C, *measurement_shape) -> (B, C, H, W)."""
        _check(y, self.channels, self.measurement_shape, f"{self.name}: measurement")
        return self._AT(y)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Pseudo-inverse / classical reconstruction: (B, C, *measurement_shape) -> (B, C, H, W)."""
        _check(y, self.channels, self.measurement_shape, f"{self.name}: measurement")
        return self._pinv(y)

    def noise_std(self, y: torch.Tensor, level: float) -> torch.Tensor | float:
        """Std of the noise that `noise` adds: `level` (images in [0, 1])."""
        return level

    def noise(self, y: torch.Tensor, level: float, generator: torch.Generator | None = None,
              absolute: bool = False) -> torch.Tensor:
        """y + N(0, std^2) with std from `noise_std` (see the module docstring), or std = `level`
        in the measurement's own units with `absolute` (the paper's --sigma); level 0 returns y."""
        level = _float_opt("level", level, low_open=False)
        gen_device = generator.device if generator is not None else y.device
        n = torch.randn(y.shape, generator=generator, device=gen_device, dtype=torch.float32).to(y.device)
        std = level if absolute else self.noise_std(y.detach(), level)
        return y + std * n

    def norm(self, iters: int = 200, tol: float = 1e-6) -> float:
        """||A||_2 (largest singular value), cached (see the module docstring). Default: power
        iteration on A^T A, fixed seed."""
        if self._norm is None and self.norm_key is not None:
            self._norm = NORM_CACHE.get(self.norm_key)
        if self._norm is None:
            self._norm = self._power_iteration(iters, tol)
            if self.norm_key is not None:
                NORM_CACHE[self.norm_key] = self._norm
        return self._norm

    @torch.no_grad()
    def _power_iteration(self, iters: int, tol: float) -> float:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((self.norm_batch, self.channels, *self.image_shape), generator=gen).to(self.device)
        x /= x.norm()
        lam = 0.0
        for _ in range(iters):
            z = self._AT(self._A(x))
            lam_new = float(z.norm())
            x = z / max(lam_new, 1e-30)
            if abs(lam_new - lam) <= tol * lam_new:
                break
            lam = lam_new
        return math.sqrt(lam_new)


# --------------------------------------------------------------------------------------------
# CT (ODL + ASTRA)


class _CT(Operator):
    """CT on the paper's geometry: images on [-domain, domain]^2, sinograms (views, det_count).

    `pinv` is ODL's FBP with `fbp_filter` and frequency scaling `fbp_freq`. Noise std is
    `level` * max|y| of each batch item. Non-square images keep square pixels; the longer
    axis spans [-domain, domain] (odlstuff.geometry.image_space).
    """

    stable_pinv = False  # FBP is no pseudo-inverse of a sparse-view A (see Operator.stable_pinv)

    @dataclass(frozen=True)
    class Options:
        """The options every CT operator has."""
        views: int = 20  # projection angles (fan and cone beam: source positions)
        det_count: int = geo.DET_COUNT  # detector pixels (cone beam: columns)
        det_extent: float = geo.DET_EXTENT  # detector half width
        domain: float = geo.DOMAIN  # image half width
        fbp_filter: str = "Hann"  # FBP filter (cone beam: FDK filter)
        fbp_freq: float = 0.9  # FBP frequency scaling (paper: 0.9)

    @staticmethod
    def _detector(o: Options) -> tuple[int, float]:
        return _int_opt("det_count", o.det_count), _float_opt("det_extent", o.det_extent)

    def _setup(self, geometry, o: Options, volume_geometry=None) -> None:
        """Projector for the 2D `geometry`; on CUDA with `volume_geometry` ((z_extent, n) -> 3D
        geometry whose rows are the slices) a :class:`geo.VolumeProjector` if its adjoint is exact
        enough, else the 2D one (module docstring)."""
        domain = _float_opt("domain", o.domain)
        space = geo.image_space(self.image_shape, domain)
        plane = geo.Projector(
            space, geometry, impl=geo.astra_impl(self.device),
            fbp_filter=_choice_opt("fbp_filter", o.fbp_filter, geo.FBP_FILTERS),
            fbp_freq=_float_opt("fbp_freq", o.fbp_freq, high=1.0),
        )
        self.projector = plane
        if volume_geometry is not None and geo.astra_impl(self.device) == "astra_cuda":
            vol = geo.VolumeProjector(self.image_shape, volume_geometry, plane.sino_shape, self.device, plane,
                                      domain=domain)
            vol.adjoint_error = vol.adjoint_mismatch(4)
            if vol.adjoint_error <= geo.ADJOINT_TOL:
                self.projector = vol
            else:
                print(f"warning: ASTRA's 3D CUDA projector for {self.name} is {vol.adjoint_error:.1%} off its "
                      f"adjoint (accepted: {geo.ADJOINT_TOL:.0%}); projecting slice by slice instead",
                      file=sys.stderr)
        self.measurement_shape = self.projector.sino_shape
        self.norm_key = (f"{self.name}|C={self.channels}|{type(self.projector).__name__}|{self.projector.impl}|"
                         f"{space!r}|{geometry!r}")

    def _A(self, x):
        return project(x, self.projector)

    def _AT(self, y):
        return backproject(y, self.projector)

    def _pinv(self, y):
        return fbp(y, self.projector)

    def noise_std(self, y, level):
        return level * y.abs().amax(dim=(1, 2, 3), keepdim=True)


class ParallelBeamCT(_CT):
    """Sparse-view parallel-beam CT: `views` angles over [0, pi)."""

    name = "ct_parbeam"

    def _angle_range(self, o: _CT.Options) -> tuple[float, float]:
        return 0.0, math.pi

    def _build(self, o: _CT.Options) -> None:
        args = (_int_opt("views", o.views), self._angle_range(o))
        det = self._detector(o)
        self._setup(geo.parallel_geometry(*args, *det), o,
                    lambda z, n: geo.parallel3d_geometry(args[0], z, n, args[1], *det))


class LimitedAngleCT(ParallelBeamCT):
    """Limited-angle parallel-beam CT: `views` angles over the wedge `angle_range` (radians)."""

    name = "ct_lact"

    @dataclass(frozen=True)
    class Options(_CT.Options):
        angle_range: str | tuple[float, float] = geo.LACT_RANGE  # 'lo,hi' radians; the paper's (0, 2 pi / 3)

    def _angle_range(self, o: Options) -> tuple[float, float]:
        return _range_opt("angle_range", o.angle_range)


FOV_TOL = 0.02  # image values above this outside the fan's field of view count as content
# Fan-beam detector half width whose field of view covers the whole square [-20, 20]^2 with the
# default radii (odlstuff.geometry.fan_det_extent_for(20 * sqrt(2)) = 80); the paper's code uses 40.
FAN_DET_EXTENT = 80.0


class FanBeamCT(_CT):
    """Fan-beam CT with a flat detector: `views` source positions over `angle_range`, by default
    [0, 2 pi) (a full scan; the paper's code: [0, pi), `angle_range=(0, pi)`)."""

    name = "ct_fanbeam"

    @dataclass(frozen=True)
    class Options(_CT.Options):
        src_radius: float = geo.SRC_RADIUS  # source to rotation centre
        det_radius: float = geo.DET_RADIUS  # rotation centre to detector
        det_extent: float = FAN_DET_EXTENT  # detector half width (paper's code: 40, the FOV misses the corners)
        fbp_freq: float = 0.3  # FBP frequency scaling (paper: 0.3)
        angle_range: str | tuple[float, float] = (0.0, 2.0 * math.pi)  # 'lo,hi' radians; paper's code: 0,pi

    def _build(self, o: Options) -> None:
        views = _int_opt("views", o.views)
        radii = (_float_opt("src_radius", o.src_radius), _float_opt("det_radius", o.det_radius))
        det = self._detector(o)
        self._setup(geo.fan_geometry(views, *radii, *det, angle_range=_range_opt("angle_range", o.angle_range)), o)
        self.fov_radius = geo.fan_fov_radius(*radii, det[1])
        self._outside = geo.outside_disc(self.projector.ray.domain, self.fov_radius)
        self.square_det_extent = None
        half_diagonal = float(np.hypot(*self.projector.ray.domain.max_pt))
        if half_diagonal < radii[0]:
            self.square_det_extent = geo.fan_det_extent_for(half_diagonal, *radii)

    def fov_warning(self, x: np.ndarray, tol: float = FOV_TOL) -> str | None:
        """A one-line warning if the (C, H, W) image in [0, 1] has content (values above
        ``tol``) outside the disc every view covers (:func:`odlstuff.geometry.fan_fov_radius`),
        else None. Such content is measured from some views only and cannot be reconstructed."""
        outside = np.abs(np.asarray(x))[:, self._outside]
        if not outside.size or float(outside.max()) <= tol:
            return None
        cover = (f"det_extent={math.ceil(self.square_det_extent - 1e-6)} (--det-extent) covers the whole image"
                 if self.square_det_extent else "a larger src_radius and det_extent cover the whole image")
        half = max(self.projector.ray.domain.max_pt)
        return (f"image content outside the fan beam's field of view (radius {self.fov_radius:.1f} of the image "
                f"half width {half:g}; {int(self._outside.sum())} pixels there, max value {outside.max():.2f}): "
                f"not seen from every view, so not reconstructed; {cover}")


class ConeBeamCT(_CT):
    """Circular cone-beam CT of one volume of `slices` slices: the batch axis is the volume's z
    axis (B = slices, C = 1), so A mixes batch items (`couples_batch`). Flat detector of `slices`
    rows over [-det_height, det_height] (0: the volume's height magnified to the detector,
    (src_radius + det_radius) / src_radius), and `det_count` columns over [-det_extent, det_extent];
    measurements are (slices, 1, views, det_count), row r in batch item r. Slices are
    `slice_spacing` pixel sides apart. `pinv` is ODL's FDK-type `fbp_op`. ASTRA has cone beam
    on CUDA only: on a CPU device this is a ValueError. The 3D back projector's distance from the
    adjoint is measured (`adjoint_error`) and, there being no exact alternative, only warned about
    beyond odlstuff.geometry.ADJOINT_TOL.
    """

    name = "ct_cone"
    couples_batch = True

    @dataclass(frozen=True)
    class Options(FanBeamCT.Options):
        slices: int = 16  # slices of the volume = batch size = detector rows
        slice_spacing: float = 1.0  # distance of slices, in pixel sides
        det_height: float = 0.0  # detector half height; 0: the volume's magnified height

    def _build(self, o: Options) -> None:
        if geo.astra_impl(self.device) != "astra_cuda":
            raise ValueError(f"{self.name}: cone beam needs ASTRA's CUDA projectors and device {self.device} "
                             "has none (ASTRA has no CPU cone-beam projector); use a CUDA device")
        if self.channels != 1:
            raise ValueError(f"{self.name}: volumes are single-channel, got channels={self.channels}")
        n, spacing = _int_opt("slices", o.slices), _float_opt("slice_spacing", o.slice_spacing)
        domain = _float_opt("domain", o.domain)
        space = geo.volume_space(self.image_shape, n, domain, spacing)
        radii = (_float_opt("src_radius", o.src_radius), _float_opt("det_radius", o.det_radius))
        height = _float_opt("det_height", o.det_height, low_open=False)
        height = height or float(space.max_pt[2]) * (radii[0] + radii[1]) / radii[0]
        geometry = geo.cone_geometry(_int_opt("views", o.views), *radii, *self._detector(o), n, height,
                                     angle_range=_range_opt("angle_range", o.angle_range))
        fdk = geo.ConeFBP(space, geometry, _choice_opt("fbp_filter", o.fbp_filter, geo.FBP_FILTERS),
                          _float_opt("fbp_freq", o.fbp_freq, high=1.0))
        self.projector = geo.VolumeProjector(self.image_shape, lambda z, rows: geometry,
                                             (geometry.angles.size, geometry.det_partition.shape[0]),
                                             self.device, fdk, domain=domain, slice_spacing=spacing, slices=n)
        self.adjoint_error = self.projector.adjoint_mismatch()
        if self.adjoint_error > geo.ADJOINT_TOL:
            print(f"warning: ASTRA's cone-beam projector is {self.adjoint_error:.1%} off its adjoint "
                  f"(accepted elsewhere: {geo.ADJOINT_TOL:.0%}); no exact alternative, using it", file=sys.stderr)
        self.measurement_shape = self.projector.sino_shape
        self.norm_batch = n
        self.norm_key = f"{self.name}|{space!r}|{geometry!r}"

    def noise_std(self, y, level):
        return level * y.abs().amax()  # one volume: max over all its rows


# --------------------------------------------------------------------------------------------
# deblurring (circular convolution via FFT)


class _Blur(Operator):
    """Convolution with a k x k kernel (k odd, centred) and **circular** boundary handling.

    A = F^-1 diag(K) F with K the FFT of the kernel wrapped onto the H x W grid (kernels larger
    than the image wrap around, which is still exactly a circular convolution); AT uses conj(K),
    so A and AT are exact adjoints. `pinv` is the Tikhonov/Wiener inverse
    F^-1 conj(K) / (|K|^2 + pinv_eps) F.
    """

    @dataclass(frozen=True)
    class Options:
        kernel_size: int = 9  # odd kernel width; paper uses 9 and 17
        pinv_eps: float = 1e-3  # Tikhonov regularisation of the Wiener pseudo-inverse

    def _setup(self, kernel: np.ndarray, pinv_eps) -> None:
        self.pinv_eps = _float_opt("pinv_eps", pinv_eps)
        k = kernel.shape[0]
        h, w = self.image_shape
        rows = (np.arange(k) - k // 2) % h
        cols = (np.arange(k) - k // 2) % w
        wrapped = np.zeros((h, w), dtype=np.float64)
        np.add.at(wrapped, (rows[:, None], cols[None, :]), kernel)
        self.kernel = torch.from_numpy(kernel.astype(np.float32)).to(self.device)  # (k, k), sums to 1
        khat = torch.fft.rfft2(torch.from_numpy(wrapped))
        self._khat = khat.to(torch.complex64).to(self.device)
        self._wiener = (khat.conj() / (khat.abs() ** 2 + self.pinv_eps)).to(torch.complex64).to(self.device)

    def _filter(self, x, spectrum):
        return torch.fft.irfft2(torch.fft.rfft2(x) * spectrum, s=self.image_shape)

    def _A(self, x):
        return self._filter(x, self._khat)

    def _AT(self, y):
        return self._filter(y, self._khat.conj())

    def _pinv(self, y):
        return self._filter(y, self._wiener)

    def norm(self, iters: int = 200, tol: float = 1e-6) -> float:
        """Exact: max |K| over frequencies (1 for these normalised non-negative kernels)."""
        return float(self._khat.abs().max())


def _odd_kernel_size(value) -> int:
    k = _int_opt("kernel_size", value)
    if k % 2 == 0:
        raise ValueError(f"option 'kernel_size' must be odd (centred kernel), got {value!r}")
    return k


class UniformDeblur(_Blur):
    """Uniform (box) blur, kernel_size x kernel_size, circular boundary."""

    name = "deblur_uniform"

    def _build(self, o: _Blur.Options) -> None:
        k = _odd_kernel_size(o.kernel_size)
        self._setup(np.full((k, k), 1.0 / (k * k)), o.pinv_eps)


class GaussianDeblur(_Blur):
    """Gaussian blur exp(-r^2 / (2 sigma^2)) on a kernel_size x kernel_size support, normalised to sum 1.

    Defaults (9, sigma 3.0) truncate the Gaussian at +-1.33 sigma, a strong blur between a box
    and a Gaussian; use kernel_size >= 6 * sigma + 1 for an untruncated one.
    """

    name = "deblur_gauss"

    @dataclass(frozen=True)
    class Options(_Blur.Options):
        kernel_sigma: float = 3.0  # standard deviation in pixels

    def _build(self, o: Options) -> None:
        k = _odd_kernel_size(o.kernel_size)
        s = _float_opt("kernel_sigma", o.kernel_sigma)
        r = np.arange(k) - k // 2
        g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * s * s))
        self._setup(g / g.sum(), o.pinv_eps)


# --------------------------------------------------------------------------------------------
# super-resolution, denoising, inpainting


class SuperResolution(Operator):
    """Average pooling by `factor` (H and W must be divisible by it).

    AT(y) = nearest upsampling / factor^2; A AT = I / factor^2, so the exact pseudo-inverse
    A^T (A A^T)^-1 is nearest upsampling, and A(pinv(y)) == y.
    """

    name = "super"

    @dataclass(frozen=True)
    class Options:
        factor: int = 4  # downsampling factor

    def _build(self, o: Options) -> None:
        self.factor = _int_opt("factor", o.factor)
        h, w = self.image_shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"super: image_shape {self.image_shape} is not divisible by option 'factor' "
                             f"= {self.factor}")
        self.measurement_shape = (h // self.factor, w // self.factor)

    def _up(self, y):
        return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)

    def _A(self, x):
        return F.avg_pool2d(x, self.factor)

    def _AT(self, y):
        return self._up(y) / self.factor**2

    def _pinv(self, y):
        return self._up(y)

    def norm(self, iters: int = 200, tol: float = 1e-6) -> float:
        """Exact: 1 / factor."""
        return 1.0 / self.factor


class Denoise(Operator):
    """Identity forward model (denoising); A = AT = pinv = identity."""

    name = "denoise"

    def _A(self, x):
        return x.clone()

    _AT = _pinv = _A

    def norm(self, iters: int = 200, tol: float = 1e-6) -> float:
        return 1.0


class Inpaint(Operator):
    """Pixel masking y = M x with a 0/1 mask M (1 = observed) shared by channels and batch.

    mask 'box': a centred box of mask_fraction of the pixels is missing;
    mask 'random': each pixel is missing with probability mask_fraction (seeded by mask_seed).
    Measurements keep the image shape (zeros where missing); AT = pinv = multiplication by M.
    Noise is added to the observed pixels only.
    """

    name = "inpaint"

    @dataclass(frozen=True)
    class Options:
        mask: str = "box"  # 'box' or 'random'
        mask_fraction: float = 0.25  # fraction of pixels missing, in (0, 1)
        mask_seed: int = 0  # seed of the random mask

    def _build(self, o: Options) -> None:
        kind = _choice_opt("mask", o.mask, ("box", "random"))
        frac = _float_opt("mask_fraction", o.mask_fraction, high=1.0)
        if frac >= 1.0:
            raise ValueError(f"option 'mask_fraction' must be < 1, got {o.mask_fraction!r}")
        h, w = self.image_shape
        if kind == "box":
            bh, bw = round(h * math.sqrt(frac)), round(w * math.sqrt(frac))
            m = torch.ones(h, w)
            m[(h - bh) // 2:(h - bh) // 2 + bh, (w - bw) // 2:(w - bw) // 2 + bw] = 0.0
        else:
            gen = torch.Generator().manual_seed(_int_opt("mask_seed", o.mask_seed, minimum=0))
            m = (torch.rand(h, w, generator=gen) >= frac).float()
        self.mask = m[None, None].to(self.device)  # (1, 1, H, W), 1 = observed

    def _A(self, x):
        return x * self.mask

    _AT = _pinv = _A

    def noise_std(self, y, level):
        return level * self.mask

    def norm(self, iters: int = 200, tol: float = 1e-6) -> float:
        return float(self.mask.max())


# --------------------------------------------------------------------------------------------
# registry

OPERATORS: dict[str, type[Operator]] = {
    "ct_parbeam": ParallelBeamCT,
    "ct_fanbeam": FanBeamCT,
    "ct_lact": LimitedAngleCT,
    "ct_cone": ConeBeamCT,
    "deblur_uniform": UniformDeblur,
    "deblur_gauss": GaussianDeblur,
    "super": SuperResolution,
    "denoise": Denoise,
    "inpaint": Inpaint,
}

# Operators whose batch is the slices of one volume (couples_batch: the rows of a cone-beam
# detector see several slices); they need CUDA and a batch of exactly their `slices`.
VOLUME_OPERATORS = tuple(n for n, cls in OPERATORS.items() if cls.couples_batch)
# The others: each batch item is an image of its own.
IMAGE_OPERATORS = tuple(n for n in OPERATORS if n not in VOLUME_OPERATORS)

def operator_options(name: str) -> dict[str, object]:
    """The options of operator `name` with their defaults (the fields of its Options)."""
    if name not in OPERATORS:
        raise ValueError(f"unknown operator {name!r}; valid names: {', '.join(OPERATORS)}")
    return {f.name: f.default for f in dataclasses.fields(OPERATORS[name].Options)}


def make_operator(
    name: str,  # a key of OPERATORS
    image_shape: tuple[int, int],  # (H, W)
    channels: int = 1,  # image channels
    device: str | torch.device = "cpu",  # device of images, measurements and operator data
    **options,  # operator options (see operator_options(name))
) -> Operator:
    """Build operator `name`; unknown names or options raise ValueError listing the valid ones."""
    valid = operator_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for operator {name!r}; "
                         f"valid options: {', '.join(valid) or 'none'}")
    return OPERATORS[name](image_shape, channels, device, **options)
