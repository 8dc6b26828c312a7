"""Classical baselines: `fbp` (the operator's pseudo-inverse; FBP for CT) and `tv` (TV-regularised
least squares by PDHG / Chambolle-Pock). Both take an operator from inverse.operators and
measurements y of shape (B, C, *op.measurement_shape) and return images (B, C, H, W).

TV problem (per batch item, images in [0, 1]):

    min_x  0.5 * ||A x - y||^2 / ||A||^2  +  weight * TV(x)   (+ box constraint 0 <= x <= 1)

with isotropic TV(x) = sum over channels and pixels of sqrt(dx_h^2 + dx_w^2) (forward
differences, Neumann boundary, channels independent). With the default `relative=True` the data
term is divided by ||A||^2 (op.norm()), so `weight` means the same for every operator: for
denoising (||A|| = 1) it is the usual ROF weight on [0, 1] images, about the noise std. With
`relative=False` the objective is literally 0.5 ||A x - y||^2 + weight * TV(x).

Convergence: the PDHG step ratio tau / sigma (``auto_step_ratio``) and the objective tolerance
(``tol``) decide whether TV is converged. Measured weights per problem and the convergence
study: notes/quality.md (tuned per data set with benchmarks/tune_tv.py).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from inverse.operators import Operator


def grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along H and W (zero in the last row / column): two (B, C, H, W)."""
    dh = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    dw = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    return dh, dw


def grad_T(qh: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`grad` (minus the divergence)."""
    qh, qw = qh[..., :-1, :], qw[..., :, :-1]
    return (F.pad(qh, (0, 0, 1, 0)) - F.pad(qh, (0, 0, 0, 1))
            + F.pad(qw, (1, 0, 0, 0)) - F.pad(qw, (0, 1, 0, 0)))


def tv_norm(x: torch.Tensor, isotropic: bool = True) -> torch.Tensor:
    """Total variation of each batch item: (B, C, H, W) -> (B,). Isotropic: sum of
    sqrt(dh^2 + dw^2); anisotropic: sum of |dh| + |dw|."""
    dh, dw = grad(x)
    if isotropic:
        return (dh.square() + dw.square()).sqrt().flatten(1).sum(1)
    return (dh.abs() + dw.abs()).flatten(1).sum(1)


def tv_objective(op: Operator, x: torch.Tensor, y: torch.Tensor, weight: float,
                 relative: bool = True, isotropic: bool = True) -> torch.Tensor:
    """The objective :func:`tv` minimises, per batch item: (B,)."""
    scale = op.norm() ** 2 if relative else 1.0
    data = 0.5 * (op.A(x) - y).square().flatten(1).sum(1) / scale
    return data + weight * tv_norm(x, isotropic)


def fbp(op: Operator, y: torch.Tensor) -> torch.Tensor:
    """The operator's pseudo-inverse (FBP for CT, Wiener for deblurring, ...): (B, C, H, W)."""
    return op.pinv(y)


TV_WEIGHT = 1e-3  # relative weight of a problem that TV_WEIGHTS does not list
# The default TV weight per operator: the weights tuned for converged TV on the tuning slices
# (benchmarks/tune_tv.py; notes/quality.md). inverse.cases and the CLI default read them from here.
TV_WEIGHTS = {"ct_parbeam": 3e-4, "ct_fanbeam": 3e-4, "ct_lact": 3e-4, "deblur_uniform": 1e-3, "super": 1e-2}


def default_tv_weight(problem: str) -> float:
    """The default relative TV weight of ``problem`` (an operator name): TV_WEIGHTS, else TV_WEIGHT."""
    return TV_WEIGHTS.get(problem, TV_WEIGHT)

TV_ITERS = 2000  # default maximum PDHG iterations (the tolerance usually stops earlier)
TV_TOL = 1e-5  # default stop: relative objective change over CHECK_EVERY iterations
CHECK_EVERY = 10  # iterations between objective evaluations (one extra A x each)


@torch.no_grad()
def tv(
    op: Operator,  # forward model (inverse.operators)
    y: torch.Tensor,  # measurements (B, C, *op.measurement_shape)
    weight: float = TV_WEIGHT,  # TV weight; relative to ||A||^2 unless relative=False (module docstring)
    iters: int = TV_ITERS,  # maximum PDHG iterations
    x_init: torch.Tensor | None = None,  # start (B, C, H, W); default op.pinv(y), clipped if box
    tol: float = TV_TOL,  # stop once every item's objective changed by < tol (relative) in CHECK_EVERY its (0: never)
    callback: Callable[[dict], None] | None = None,  # called each iteration with {'i', 'x', 'rel_change', 'objective'}
    box: bool = True,  # constrain x to [0, 1]
    relative: bool = True,  # divide the data term by ||A||^2
    isotropic: bool = True,  # isotropic TV (False: anisotropic, |dh| + |dw|)
    step_ratio: float | None = None,  # PDHG tau / sigma (tau * sigma fixed); None: auto_step_ratio(weight)
) -> torch.Tensor:
    """TV regularised least squares by PDHG (Chambolle & Pock 2011), batched over B.

    Internally A and y are divided by L = ||A|| (diagonal preconditioning of the dual), so
    K = [A / L; grad] has ||K||^2 <= 1 + 8 and tau * sigma = 0.98 / 9. Every CHECK_EVERY
    iterations the objective (:func:`tv_objective`) of the current x is evaluated (passed to
    ``callback`` as 'objective', None in between); the loop stops when its relative change since
    the previous evaluation is below ``tol`` for every item, or after ``iters`` iterations.
    Returns x (B, C, H, W) float32.
    """
    L = op.norm()
    lam = weight if relative else weight / L**2
    step_ratio = auto_step_ratio(lam) if step_ratio is None else step_ratio
    if weight < 0 or iters < 1 or tol < 0 or step_ratio <= 0:
        raise ValueError(f"tv: need weight >= 0, iters >= 1, tol >= 0, step_ratio > 0; "
                         f"got {weight}, {iters}, {tol}, {step_ratio}")
    yt = y / L
    x = op.pinv(y) if x_init is None else x_init.clone()
    if box:
        x = x.clamp(0.0, 1.0)
    xbar = x.clone()
    p = torch.zeros_like(y)
    qh, qw = torch.zeros_like(x), torch.zeros_like(x)
    tau = (0.98 / 9.0 * step_ratio) ** 0.5
    sigma = 0.98 / 9.0 / tau
    previous = None
    for i in range(iters):
        p = (p + sigma * (op.A(xbar) / L - yt)) / (1.0 + sigma)
        gh, gw = grad(xbar)
        qh, qw = _project_dual(qh + sigma * gh, qw + sigma * gw, lam, isotropic)
        x_new = x - tau * (op.AT(p) / L + grad_T(qh, qw))
        if box:
            x_new = x_new.clamp(0.0, 1.0)
        rel = (x_new - x).flatten(1).norm(dim=1) / x_new.flatten(1).norm(dim=1).clamp(min=1e-12)
        xbar = 2.0 * x_new - x
        x = x_new
        objective = None
        if (tol > 0 or callback is not None) and i % CHECK_EVERY == CHECK_EVERY - 1:
            objective = tv_objective(op, x, y, lam, relative=True, isotropic=isotropic)
        if callback is not None:
            callback({"i": i, "x": x, "rel_change": rel, "objective": objective})
        if tol > 0 and objective is not None:
            if previous is not None and bool(((previous - objective).abs() < tol * objective.abs()).all()):
                break
            previous = objective
    return x


def auto_step_ratio(weight: float) -> float:
    """PDHG step ratio tau / sigma for a relative TV weight: 0.05 / weight in [1, 1000].

    The dual TV variable is bounded by the weight while x is O(1), so the primal step should
    grow as the weight shrinks; the constant was measured on CT, deblurring and SR
    (notes/quality.md, benchmarks/tv_study.py)."""
    return float(min(max(0.05 / max(weight, 1e-30), 1.0), 1000.0))


def _project_dual(qh: torch.Tensor, qw: torch.Tensor, lam: float, isotropic: bool):
    """Projection onto the dual TV ball: |q| <= lam per pixel (isotropic) or per component."""
    if isotropic:
        shrink = ((qh.square() + qw.square()).sqrt() / max(lam, 1e-30)).clamp(min=1.0)
        return qh / shrink, qw / shrink
    return qh.clamp(-lam, lam), qw.clamp(-lam, lam)


BASELINES: dict[str, Callable[..., torch.Tensor]] = {"fbp": fbp, "tv": tv}


def method_label(name: str, problem: str) -> str:
    """What a baseline is called in tables, metrics.csv, summary.json, figures and file names:
    ``fbp`` is FBP only for CT problems; elsewhere it is the pseudo-inverse, ``pinv``."""
    return "pinv" if name == "fbp" and not problem.startswith("ct") else name
