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

Best relative weights measured on skimage's camera resized to 64x64, 300 iterations (PSNR dB of
pinv -> TV): CT parallel 20 views, noise 0.005 * max|y|: 1e-3 (21.7 -> 29.9); fan beam: 3e-3
(12.3 -> 27.1); limited angle: 1e-3..3e-3 (16.3 -> 25.3); uniform / Gaussian deblur, noise 0.01:
3e-3 (19.7 -> 25.9 / 21.0 -> 26.0); super x4, noise 0.01: 3e-2 (21.7 -> 24.3); inpaint random
50 %: 1e-2 (7.8 -> 28.2); denoise, noise 0.05: 3e-2 (26.3 -> 31.9). Tune per data set.
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


def tv_norm(x: torch.Tensor) -> torch.Tensor:
    """Isotropic total variation of each batch item: (B, C, H, W) -> (B,)."""
    dh, dw = grad(x)
    return (dh.square() + dw.square()).sqrt().flatten(1).sum(1)


def tv_objective(op: Operator, x: torch.Tensor, y: torch.Tensor, weight: float,
                 relative: bool = True) -> torch.Tensor:
    """The objective :func:`tv` minimises, per batch item: (B,)."""
    scale = op.norm() ** 2 if relative else 1.0
    data = 0.5 * (op.A(x) - y).square().flatten(1).sum(1) / scale
    return data + weight * tv_norm(x)


def fbp(op: Operator, y: torch.Tensor) -> torch.Tensor:
    """The operator's pseudo-inverse (FBP for CT, Wiener for deblurring, ...): (B, C, H, W)."""
    return op.pinv(y)


@torch.no_grad()
def tv(
    op: Operator,  # forward model (inverse.operators)
    y: torch.Tensor,  # measurements (B, C, *op.measurement_shape)
    weight: float = 1e-3,  # TV weight; relative to ||A||^2 unless relative=False (module docstring)
    iters: int = 2000,  # maximum PDHG iterations (2000 for quality runs)
    x_init: torch.Tensor | None = None,  # start (B, C, H, W); default op.pinv(y), clipped if box
    tol: float = 0.0,  # stop once every item's ||x_k - x_{k-1}|| / ||x_k|| < tol (0: never)
    callback: Callable[[dict], None] | None = None,  # called with {'i', 'x', 'rel_change'} each iteration
    box: bool = True,  # constrain x to [0, 1]
    relative: bool = True,  # divide the data term by ||A||^2
) -> torch.Tensor:
    """Isotropic-TV regularised least squares by PDHG (Chambolle & Pock 2011), batched over B.

    Internally A and y are divided by L = ||A|| (diagonal preconditioning of the dual), so
    K = [A / L; grad] has ||K||^2 <= 1 + 8 and the step sizes are tau = sigma = 0.99 / 3.
    Returns x (B, C, H, W) float32.
    """
    if weight < 0 or iters < 1 or tol < 0:
        raise ValueError(f"tv: need weight >= 0, iters >= 1, tol >= 0; got {weight}, {iters}, {tol}")
    L = op.norm()
    lam = weight if relative else weight / L**2
    yt = y / L
    x = op.pinv(y) if x_init is None else x_init.clone()
    if box:
        x = x.clamp(0.0, 1.0)
    xbar = x.clone()
    p = torch.zeros_like(y)
    qh, qw = torch.zeros_like(x), torch.zeros_like(x)
    tau = sigma = 0.99 / 3.0
    for i in range(iters):
        p = (p + sigma * (op.A(xbar) / L - yt)) / (1.0 + sigma)
        gh, gw = grad(xbar)
        qh, qw = qh + sigma * gh, qw + sigma * gw
        shrink = ((qh.square() + qw.square()).sqrt() / max(lam, 1e-30)).clamp(min=1.0)
        qh, qw = qh / shrink, qw / shrink
        x_new = x - tau * (op.AT(p) / L + grad_T(qh, qw))
        if box:
            x_new = x_new.clamp(0.0, 1.0)
        rel = (x_new - x).flatten(1).norm(dim=1) / x_new.flatten(1).norm(dim=1).clamp(min=1e-12)
        xbar = 2.0 * x_new - x
        x = x_new
        if callback is not None:
            callback({"i": i, "x": x, "rel_change": rel})
        if tol > 0 and i % 10 == 9 and bool((rel < tol).all()):
            break
    return x


BASELINES: dict[str, Callable[..., torch.Tensor]] = {"fbp": fbp, "tv": tv}


def method_label(name: str, problem: str) -> str:
    """What a baseline is called in tables, metrics.csv, summary.json, figures and file names:
    ``fbp`` is FBP only for CT problems; elsewhere it is the pseudo-inverse, ``pinv``."""
    return "pinv" if name == "fbp" and not problem.startswith("ct") else name
