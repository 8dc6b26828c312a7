"""CT geometries on ODL 1.0 + ASTRA, with the paper's defaults, and a batched numpy projector.

Conventions (the paper's code):
- image domain [-domain, domain] along the longer image axis (default domain 20), square pixels
  of side 2 * domain / max(H, W); the image array's first axis (rows, H) is ODL's first
  coordinate, its second axis (columns, W) the second one;
- flat detector of `det_count` pixels (default 512) over [-det_extent, det_extent] (default 40);
- parallel beam: `views` angles over [0, pi); fan beam: source radius 40, detector radius 40,
  `views` angles over [0, 2 pi) here (the paper's code: [0, pi), `angle_range=(0, pi)`);
  limited angle: parallel beam over a wedge `angle_range`
  (default (0, 2 pi / 3)). Angles are the midpoints of a uniform partition of the range
  (`odl.uniform_partition`), as ODL does.
- sinograms are arrays of shape (views, det_count).
- volumes (stacks of N slices, :class:`VolumeProjector`): the slices are the z axis, one pixel
  side apart unless `slice_spacing` says otherwise; the volume is ODL's (H, W, N) array, so the
  rotation axis is ODL's third axis and every 2-D convention above holds in each slice. Parallel
  beam (`parallel3d_geometry`) has one detector row per slice, so its projections are exactly
  the slices' sinograms; cone beam (`cone_geometry`, no CPU projector in ASTRA) has `det_rows`
  rows over [-det_height, det_height]. Projections are laid out (rows, views, det_count): row r
  plays the part of slice r's sinogram.

ODL's `RayTransform.adjoint` is the adjoint for the *weighted* inner products of its spaces
(cell volumes), not for the plain sums that torch code uses; :class:`Projector` rescales it so
that sum(A x * y) == sum(x * A^T y) (checked in tests/test_operators.py).
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import odl
from odl.applications import tomo

DET_COUNT = 512  # detector pixels (paper's code)
DET_EXTENT = 40.0  # detector half width (paper's code)
DOMAIN = 20.0  # image half width (paper's code)
SRC_RADIUS = 40.0  # fan beam source radius (paper's code)
DET_RADIUS = 40.0  # fan beam detector radius (paper's code)
LACT_RANGE = (0.0, 2.0 * math.pi / 3.0)  # limited-angle wedge used in the paper
FBP_FILTERS = ("Ram-Lak", "Shepp-Logan", "Cosine", "Hamming", "Hann")


# ASTRA keeps its data, projector and algorithm objects in process-wide registries that are not
# safe to change from two threads at once (ODL's CPU backend makes and deletes them per call);
# every projection takes this lock, so threads (the solve and the baselines, inverse.reconstruct)
# can share the process. Uncontended it costs nothing measurable.
ASTRA_LOCK = threading.Lock()

# Relative adjoint mismatch accepted from ASTRA's CUDA projector before falling back to the CPU one.
ADJOINT_TOL = 0.02


def astra_impl(device) -> str:
    """ASTRA backend for a torch device: 'astra_cuda' on CUDA (if ASTRA has CUDA), else 'astra_cpu'."""
    is_cuda = getattr(device, "type", str(device).split(":")[0]) == "cuda"
    return "astra_cuda" if is_cuda and tomo.ASTRA_CUDA_AVAILABLE else "astra_cpu"


def image_space(image_shape: tuple[int, int], domain: float = DOMAIN) -> odl.DiscretizedSpace:
    """float32 ODL space of `image_shape` (H, W) pixels; the longer axis spans [-domain, domain]."""
    h, w = (int(s) for s in image_shape)
    if h < 1 or w < 1 or domain <= 0:
        raise ValueError(f"image_shape must be positive and domain > 0, got {image_shape}, {domain}")
    half = np.array([h, w], dtype=np.float64) * (domain / max(h, w))
    return odl.uniform_discr(-half, half, (h, w), dtype="float32")


def _detector(det_count: int, det_extent: float):
    if det_count < 1 or det_extent <= 0:
        raise ValueError(f"det_count must be >= 1 and det_extent > 0, got {det_count}, {det_extent}")
    return odl.uniform_partition(-det_extent, det_extent, int(det_count))


def _angles(views: int, angle_range: tuple[float, float]):
    lo, hi = (float(a) for a in angle_range)
    if views < 1 or not hi > lo:
        raise ValueError(f"need views >= 1 and angle_range (lo, hi) with hi > lo, got {views}, {angle_range}")
    return odl.uniform_partition(lo, hi, int(views))


def parallel_geometry(
    views: int = 20,  # number of projection angles
    angle_range: tuple[float, float] = (0.0, math.pi),  # radians; [0, pi) is a full parallel scan
    det_count: int = DET_COUNT,  # detector pixels
    det_extent: float = DET_EXTENT,  # detector half width, same units as the image domain
) -> tomo.Parallel2dGeometry:
    """2D parallel-beam geometry (sparse view by default; limited angle with a smaller range)."""
    return tomo.Parallel2dGeometry(_angles(views, angle_range), _detector(det_count, det_extent))


def fan_geometry(
    views: int = 20,  # number of source positions
    src_radius: float = SRC_RADIUS,  # source to rotation centre
    det_radius: float = DET_RADIUS,  # rotation centre to (flat) detector
    det_count: int = DET_COUNT,  # detector pixels
    det_extent: float = DET_EXTENT,  # detector half width
    angle_range: tuple[float, float] = (0.0, 2.0 * math.pi),  # radians; full fan-beam scan
) -> tomo.FanBeamGeometry:
    """2D fan-beam geometry with a flat detector."""
    if src_radius <= 0 or det_radius <= 0:
        raise ValueError(f"src_radius and det_radius must be > 0, got {src_radius}, {det_radius}")
    return tomo.FanBeamGeometry(
        _angles(views, angle_range), _detector(det_count, det_extent),
        src_radius=float(src_radius), det_radius=float(det_radius),
    )


def parallel3d_geometry(
    views: int,  # number of projection angles
    z_extent: tuple[float, float],  # (z_min, z_max) of the volume; one detector row per slice
    slices: int,  # slices N of the volume = detector rows
    angle_range: tuple[float, float] = (0.0, math.pi),  # radians
    det_count: int = DET_COUNT,  # detector pixels per row
    det_extent: float = DET_EXTENT,  # detector half width
) -> tomo.Parallel3dAxisGeometry:
    """3D parallel beam about the z axis whose row r sees exactly slice r (the 2D geometry per slice)."""
    det = _detector(det_count, det_extent)
    rows = odl.uniform_partition([det.min_pt[0], z_extent[0]], [det.max_pt[0], z_extent[1]],
                                 (int(det_count), int(slices)))
    return tomo.Parallel3dAxisGeometry(_angles(views, angle_range), rows)


def cone_geometry(
    views: int = 20,  # number of source positions
    src_radius: float = SRC_RADIUS,  # source to rotation axis
    det_radius: float = DET_RADIUS,  # rotation axis to (flat) detector
    det_count: int = DET_COUNT,  # detector pixels per row
    det_extent: float = DET_EXTENT,  # detector half width
    det_rows: int = 16,  # detector rows
    det_height: float = 2.0,  # detector half height, same units as the image domain
    angle_range: tuple[float, float] = (0.0, 2.0 * math.pi),  # radians; full circular scan
) -> tomo.ConeBeamGeometry:
    """Circular cone-beam geometry with a flat detector (the fan beam of `fan_geometry` with rows)."""
    if src_radius <= 0 or det_radius <= 0:
        raise ValueError(f"src_radius and det_radius must be > 0, got {src_radius}, {det_radius}")
    if det_rows < 1 or det_height <= 0:
        raise ValueError(f"det_rows must be >= 1 and det_height > 0, got {det_rows}, {det_height}")
    det = odl.uniform_partition([-det_extent, -det_height], [det_extent, det_height],
                                (int(det_count), int(det_rows)))
    return tomo.ConeBeamGeometry(_angles(views, angle_range), det, src_radius=float(src_radius),
                                 det_radius=float(det_radius))


def volume_space(image_shape: tuple[int, int], slices: int, domain: float = DOMAIN, slice_spacing: float = 1.0,
                 impl: str = "numpy", device: str = "cpu") -> odl.DiscretizedSpace:
    """float32 ODL space of a (H, W, slices) volume: the slices' `image_space` stacked along z,
    `slice_spacing` pixel sides apart, centred at z = 0; `impl` 'pytorch' keeps it in torch memory."""
    if slices < 1 or slice_spacing <= 0:
        raise ValueError(f"slices must be >= 1 and slice_spacing > 0, got {slices}, {slice_spacing}")
    plane = image_space(image_shape, domain)
    half_z = 0.5 * slices * slice_spacing * float(plane.cell_sides[0])
    kw = dict(impl=impl, device=device) if impl != "numpy" else {}
    return odl.uniform_discr([*plane.min_pt, -half_z], [*plane.max_pt, half_z], (*plane.shape, int(slices)),
                             dtype="float32", **kw)


def fan_fov_radius(src_radius: float = SRC_RADIUS, det_radius: float = DET_RADIUS,
                   det_extent: float = DET_EXTENT) -> float:
    """Radius of the disc that every fan-beam view covers (flat detector, centred): the fan's
    half angle is atan(det_extent / (src_radius + det_radius)) and its edge rays pass the
    rotation centre at src_radius * sin(half angle). The paper's 40/40/40: 17.89, i.e. 0.89 of
    the image half width 20; image content farther out is not seen from every view."""
    return float(src_radius * math.sin(math.atan(det_extent / (src_radius + det_radius))))


def fan_det_extent_for(radius: float, src_radius: float = SRC_RADIUS, det_radius: float = DET_RADIUS) -> float:
    """The detector half width whose fan covers a disc of ``radius`` (< src_radius)."""
    if not 0 < radius < src_radius:
        raise ValueError(f"radius must be in (0, src_radius={src_radius}), got {radius}")
    return float((src_radius + det_radius) * math.tan(math.asin(radius / src_radius)))


def outside_disc(space: odl.DiscretizedSpace, radius: float) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centre lies farther than ``radius`` from the centre."""
    rows, cols = space.meshgrid
    return (rows ** 2 + cols ** 2) > radius ** 2


def _const_weight(space) -> float:
    weighting = getattr(space, "weighting", None)
    const = getattr(weighting, "const", None)
    return float(const) if const is not None else float(space.cell_volume)


class Projector:
    """Forward projection, its plain-sum adjoint and FBP for stacks of 2D slices (numpy, float32).

    Each method maps an array (N, H, W) <-> (N, views, det_count); ASTRA works per 2D slice, so
    the N slices are projected one after another.
    """

    def __init__(
        self,
        space: odl.DiscretizedSpace,  # image space (see image_space)
        geometry,  # an ODL tomography geometry
        impl: str = "astra_cpu",  # 'astra_cpu' or 'astra_cuda' (see astra_impl)
        fbp_filter: str = "Hann",  # FBP filter (ODL names, case-insensitive)
        fbp_freq: float = 0.9,  # FBP frequency scaling in (0, 1]; paper 0.9 parallel, 0.3 fan
    ):
        names = {f.lower(): f for f in FBP_FILTERS}
        if str(fbp_filter).lower() not in names:
            raise ValueError(f"fbp_filter must be one of {list(FBP_FILTERS)}, got {fbp_filter!r}")
        if not 0.0 < float(fbp_freq) <= 1.0:
            raise ValueError(f"fbp_freq must be in (0, 1], got {fbp_freq}")
        fbp_filter = names[str(fbp_filter).lower()]
        self._build(space, geometry, impl, fbp_filter, fbp_freq)
        # ASTRA's CUDA back projector is not the exact adjoint of its forward projector
        # (different interpolation); solvers that rely on A^T (CG, gradients) need it close.
        self.adjoint_error = None
        if impl == "astra_cuda":
            self.adjoint_error = self.adjoint_mismatch()
            if self.adjoint_error > ADJOINT_TOL:
                print(f"warning: ASTRA's CUDA projector for {type(geometry).__name__} is {self.adjoint_error:.1%} "
                      f"off its adjoint (accepted: {ADJOINT_TOL:.0%}); using the exact CPU projector instead",
                      file=sys.stderr)
                self._build(space, geometry, "astra_cpu", fbp_filter, fbp_freq)

    def _build(self, space, geometry, impl: str, fbp_filter: str, fbp_freq: float) -> None:
        self.impl = impl
        self.ray = tomo.RayTransform(space, geometry, impl=impl)
        self.fbp_op = tomo.fbp_op(self.ray, filter_type=fbp_filter, frequency_scaling=float(fbp_freq))
        w_img, w_sino = _const_weight(self.ray.domain), _const_weight(self.ray.range)
        self.adjoint_scale = np.float32(w_img / w_sino)  # plain A^T = (w_img / w_sino) * ODL adjoint
        self.fbp_adjoint_scale = np.float32(w_sino / w_img)
        self.image_shape = tuple(self.ray.domain.shape)
        self.sino_shape = tuple(self.ray.range.shape)

    def adjoint_mismatch(self, seed: int = 0) -> float:
        """|<A x, y> - <x, A^T y>| / max(|.|) for fixed-seed uniform random x, y (0: exact adjoint)."""
        rng = np.random.default_rng(seed)
        x = rng.random((1, *self.image_shape), dtype=np.float32)
        y = rng.random((1, *self.sino_shape), dtype=np.float32)
        lhs = float(np.vdot(self.forward(x).astype(np.float64), y.astype(np.float64)))
        rhs = float(np.vdot(x.astype(np.float64), self.adjoint(y).astype(np.float64)))
        return abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-30)

    @staticmethod
    def _map(op, x: np.ndarray, out_shape: tuple[int, ...], scale=None) -> np.ndarray:
        out = np.empty((x.shape[0], *out_shape), dtype=np.float32)
        for i in range(x.shape[0]):
            with ASTRA_LOCK:
                out[i] = op(x[i]).asarray()
        if scale is not None:
            out *= scale
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W) -> (N, views, det_count) line integrals."""
        return self._map(self.ray, x, self.sino_shape)

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        """(N, views, det_count) -> (N, H, W): back projection, the true adjoint of `forward`."""
        return self._map(self.ray.adjoint, y, self.image_shape, self.adjoint_scale)

    def fbp(self, y: np.ndarray) -> np.ndarray:
        """(N, views, det_count) -> (N, H, W): filtered back projection (ODL's fbp_op)."""
        return self._map(self.fbp_op, y, self.image_shape)

    def fbp_adjoint(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W) -> (N, views, det_count): plain-sum adjoint of `fbp` (for autograd)."""
        return self._map(self.fbp_op.adjoint, x, self.sino_shape, self.fbp_adjoint_scale)


class VolumeProjector:
    """Forward projection and its plain-sum adjoint of N slices as **one** 3D volume, on ASTRA's 3D
    CUDA projectors through ODL's pytorch backend: torch CUDA tensors in and out, no host copies
    (ASTRA >= 2.3 links torch memory through DLPack in `astra.experimental.direct_FP3D/BP3D`).

    `forward` maps a torch tensor (N, H, W) to (N, views, det_count) (row r of the detector as
    "sinogram" r, see the module docstring) and `adjoint` back. `make_geometry(z_extent, n)` gives
    the 3D geometry of an n-slice volume; `slices` fixes n (cone beam: the rows couple slices), None
    lets n follow each call (parallel beam: one ray transform per n, built once). `fbp` (numpy
    (N, views, det_count) -> (N, H, W), from `fbp_projector`) is the classical reconstruction, run
    once per solve on host memory. ASTRA's 3D back projector is not the exact adjoint of its forward projector: measure it
    with `adjoint_mismatch` (the operators fall back to :class:`Projector` beyond ADJOINT_TOL).
    """

    torch_methods = ("forward", "adjoint")  # take and return torch tensors on `device`

    def __init__(
        self,
        image_shape: tuple[int, int],  # (H, W) of each slice
        make_geometry,  # (z_extent, n) -> ODL 3D geometry about the z axis
        sino_shape: tuple[int, int],  # (views, det_count) of each detector row
        device,  # torch CUDA device of the tensors
        fbp_projector,  # has numpy fbp (N, views, det_count) -> (N, H, W) and its adjoint fbp_adjoint
        domain: float = DOMAIN,  # image half width
        slice_spacing: float = 1.0,  # distance of slices in pixel sides
        slices: int | None = None,  # fixed number of slices (cone beam), None: any
    ):
        import torch

        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # ODL's backend wants 'cuda:N'
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.image_shape, self.sino_shape = tuple(image_shape), tuple(sino_shape)
        self.make_geometry = make_geometry
        self.fbp, self.fbp_adjoint = fbp_projector.fbp, fbp_projector.fbp_adjoint
        self.domain, self.slice_spacing, self.slices = float(domain), float(slice_spacing), slices
        self.impl = "astra_cuda"
        self._rays: dict[int, tuple] = {}

    def ray(self, n: int):
        """(ODL ray transform, plain-sum adjoint scale) of an n-slice volume."""
        n = int(self.slices or n)
        if n not in self._rays:
            space = volume_space(self.image_shape, n, self.domain, self.slice_spacing, impl="pytorch",
                                 device=str(self.device))
            ray = tomo.RayTransform(space, self.make_geometry((space.min_pt[2], space.max_pt[2]), n),
                                    impl="astra_cuda")
            self._rays[n] = (ray, _const_weight(ray.domain) / _const_weight(ray.range))
        return self._rays[n]

    def _check_rows(self, n: int) -> None:
        if self.slices is not None and n != self.slices:
            raise ValueError(f"this volume projector takes {self.slices} slices at once, got {n}")

    def forward(self, x):
        """torch (N, H, W) -> (N, views, det_count): line integrals of the volume."""
        self._check_rows(x.shape[0])
        ray, _ = self.ray(x.shape[0])
        with ASTRA_LOCK:
            proj = ray(ray.domain.element(x.permute(1, 2, 0).contiguous())).data  # (views, det, N)
        return proj.permute(2, 0, 1).contiguous()

    def adjoint(self, y):
        """torch (N, views, det_count) -> (N, H, W): ASTRA's back projection, scaled to plain sums."""
        self._check_rows(y.shape[0])
        ray, scale = self.ray(y.shape[0])
        with ASTRA_LOCK:
            vol = ray.adjoint(ray.range.element(y.permute(1, 2, 0).contiguous())).data  # (H, W, N)
        return vol.permute(2, 0, 1).contiguous() * scale

    def adjoint_mismatch(self, n: int | None = None, seed: int = 0) -> float:
        """|<A x, y> - <x, A^T y>| / max(|.|) for fixed-seed uniform x, y of n slices (0: exact)."""
        import torch

        n = int(self.slices or n or 1)
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand((n, *self.image_shape), generator=gen).to(self.device)
        y = torch.rand((n, *self.sino_shape), generator=gen).to(self.device)
        lhs = float((self.forward(x).double() * y.double()).sum())
        rhs = float((x.double() * self.adjoint(y).double()).sum())
        return abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-30)


class ConeFBP:
    """FDK-type reconstruction (ODL's `fbp_op` on a cone-beam ray transform, numpy, astra_cuda) of
    one n-slice volume in the (N, views, det_count) layout of :class:`VolumeProjector`."""

    def __init__(self, space: odl.DiscretizedSpace, geometry, fbp_filter: str = "Hann", fbp_freq: float = 0.3):
        self.ray = tomo.RayTransform(space, geometry, impl="astra_cuda")
        self.fbp_op = tomo.fbp_op(self.ray, filter_type=fbp_filter, frequency_scaling=float(fbp_freq))
        self.fbp_adjoint_scale = np.float32(_const_weight(self.ray.range) / _const_weight(self.ray.domain))

    def fbp(self, y: np.ndarray) -> np.ndarray:
        with ASTRA_LOCK:
            vol = self.fbp_op(np.ascontiguousarray(np.transpose(y, (1, 2, 0)))).asarray()
        return np.ascontiguousarray(np.transpose(vol, (2, 0, 1)), dtype=np.float32)

    def fbp_adjoint(self, x: np.ndarray) -> np.ndarray:
        with ASTRA_LOCK:
            proj = self.fbp_op.adjoint(np.ascontiguousarray(np.transpose(x, (1, 2, 0)))).asarray()
        return np.ascontiguousarray(np.transpose(proj, (2, 0, 1)), dtype=np.float32) * self.fbp_adjoint_scale
