"""CT geometries on ODL 1.0 + ASTRA, with the paper's defaults, and a batched numpy projector.

Conventions (the paper's code):
- image domain [-domain, domain] along the longer image axis (default domain 20), square pixels
  of side 2 * domain / max(H, W); the image array's first axis (rows, H) is ODL's first
  coordinate, its second axis (columns, W) the second one;
- flat detector of `det_count` pixels (default 512) over [-det_extent, det_extent] (default 40);
- parallel beam: `views` angles over [0, pi); fan beam: source radius 40, detector radius 40,
  `views` angles over [0, 2 pi); limited angle: parallel beam over a wedge `angle_range`
  (default (0, 2 pi / 3)). Angles are the midpoints of a uniform partition of the range
  (`odl.uniform_partition`), as ODL does.
- sinograms are arrays of shape (views, det_count).

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


def limited_angle_geometry(
    views: int = 20,  # number of projection angles inside the wedge
    angle_range: tuple[float, float] = LACT_RANGE,  # radians; the paper uses (0, 2 pi / 3)
    det_count: int = DET_COUNT,  # detector pixels
    det_extent: float = DET_EXTENT,  # detector half width
) -> tomo.Parallel2dGeometry:
    """Parallel beam over a wedge of angles (limited-angle CT)."""
    return parallel_geometry(views, angle_range, det_count, det_extent)


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
