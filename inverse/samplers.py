"""Diffusion inverse solvers that use a whole-image prior ``prior(x, sigma, generator) -> x0_hat``.

Every solver is a plain function

    f(prior, op, y, sigmas, generator, x_init=None, callback=None, *, <options>) -> x

with ``op`` an operator (``A``, ``AT``, ``pinv``, optional ``norm``), ``y`` the measurement
batch, ``sigmas`` a descending noise schedule (``get_sigmas_karras``; ``None`` uses the
solver's ``SCHEDULE_DEFAULTS``), and ``x`` the reconstruction ``(B, C, H, W)`` clamped to
[0, 1]. Noise is variance exploding (EDM): ``x = x0 + sigma * z``, score
``(D(x) - x) / sigma**2``. Solvers build no models and do no file I/O.

Conventions shared by all solvers:

* Options are keyword-only with their defaults in the signature (``sampler_options(name)``
  lists them); schedule defaults per solver are in ``SCHEDULE_DEFAULTS``.
* Start: ``x_init`` if given (used as the noisy start as is), else ``init='pinv'``:
  ``op.pinv(y) + sigmas[0] * z`` or ``init='noise'``: ``sigmas[0] * z``.
* Randomness: all noise comes from ``generator`` and is drawn on the generator's device, then
  moved to the image's device (a CPU generator with CUDA images costs one copy per draw; pass a
  generator on the run's device to avoid it). The prior draws its grid offsets (and, with
  ``pad_fill='noise'``, its canvas noise) from the same generator, so a run is repeatable
  from its seed.
* ``callback(dict(i=level index, sigma=float, x=current iterate, x0=current clean estimate))``
  is called once per noise level, after that level's updates.
* Step sizes that touch the data are scaled by the operator norm ``||A||`` (``op.norm()`` or,
  if the operator has none, a power iteration), so ``zeta`` and ``lam`` do not depend on the
  scale of ``A``. ``zeta`` (dps, langevin, pc) is a fraction of a Landweber step: the data
  update is ``zeta/||A||²`` times the gradient of ½||y - A x||² (dps: of ½||y - A D(x)||²), so
  zeta = 1 is one full Landweber step and zeta >= 2 diverges along A's largest singular vector.
  The default 1.8 was tuned on 20-view CT (tuning slice; notes/quality.md, "zeta").
  ``dps`` with ``dc_step='paper'`` instead takes the paper code's own step: an absolute
  ``zeta`` (its README: 0.3) on the gradient of ||y - A D(x)|| (see ``sample_dps``).
* Non-finite values raise ``FloatingPointError`` naming the solver, the level and sigma.
* Gradients: only ``dps`` with ``dc_grad='full'`` backpropagates through the prior (under
  ``torch.enable_grad``); everything else runs under ``torch.inference_mode`` (no autograd
  bookkeeping at all; the returned tensors are inference tensors: ``.clone()`` one outside
  inference mode before using it in autograd). ``dps`` with ``'full'`` runs under ``no_grad``.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch

from inverse.prior import autograd_denoise

# ----------------------------------------------------------------------------------------
# Schedules


def get_sigmas_karras(steps: int, sigma_min: float = 0.003, sigma_max: float = 10.0, rho: float = 7.0,
                      device=None, append_zero: bool = False) -> torch.Tensor:
    """EDM noise levels (Karras et al. 2022, Eq. 5), float32, from ``sigma_max`` down to
    ``sigma_min`` over ``steps`` values (both endpoints included exactly).

    No trailing 0 by default: the solvers here treat the level after the last as 0 themselves.
    ``append_zero=True`` appends one (``steps + 1`` values), as k-diffusion does.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}; expected at least 1 noise level")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"sigma_min={sigma_min}, sigma_max={sigma_max}; expected 0 < sigma_min <= sigma_max")
    if steps == 1:
        sigmas = torch.tensor([float(sigma_max)])
    else:
        ramp = torch.linspace(0, 1, steps)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        sigmas = (hi + ramp * (lo - hi)) ** rho
        sigmas[0], sigmas[-1] = sigma_max, sigma_min
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(device)


# Per-solver schedule defaults (paper: 100 levels from 10 to 0.003; dds: the CPU budget solver,
# 20 levels started from pinv(y) + noise at sigma 1).
SCHEDULE_DEFAULTS = {
    "dps": dict(steps=100, sigma_min=0.003, sigma_max=10.0),
    "langevin": dict(steps=100, sigma_min=0.003, sigma_max=10.0),
    "pc": dict(steps=100, sigma_min=0.003, sigma_max=10.0),
    "ddnm": dict(steps=50, sigma_min=0.003, sigma_max=10.0),
    "dds": dict(steps=20, sigma_min=0.003, sigma_max=1.0),
    "diffpir": dict(steps=20, sigma_min=0.003, sigma_max=1.0),
}
# Per-problem changes to a solver's schedule defaults, chosen on the tuning slices and on the
# same slices shifted (benchmarks/results/tune/aug): on limited-angle CT, 50 DiffPIR levels gain
# 0.6 dB (tuning) and 1.9 dB (shifted tuning) over 20; no other problem gains from more levels.
PROBLEM_SCHEDULES = {"diffpir": {"ct_lact": dict(steps=50)}}


def schedule_defaults(solver: str, problem: str | None = None) -> dict | None:
    """The noise schedule a run of ``solver`` on ``problem`` gets by default (steps, sigma_min,
    sigma_max), or None for a solver without one."""
    base = SCHEDULE_DEFAULTS.get(solver)
    if base is None:
        return None
    return dict(base, **PROBLEM_SCHEDULES.get(solver, {}).get(problem, {}))


# What the patch prior's canvas outside the image holds when a run (inverse.config.ReconConfig
# pad_fill None) uses this solver: 'zeros' or 'noise' of std sigma (inverse.prior, PAD_FILLS).
# Measured on the tuning slices, 6 problems (benchmarks/pad_fill.py), with the shipped prior before
# its augmented retrain (benchmarks/results/pad_fill/00000-pad_fill) and after it (00001-pad_fill):
# noise beat zeros for no solver on either (mean PSNR change noise - zeros between -0.02 and -0.13
# dB before, -0.01 and -0.32 dB after), so every solver keeps zeros.
PAD_FILL_DEFAULTS = {name: "zeros" for name in SCHEDULE_DEFAULTS}

# ----------------------------------------------------------------------------------------
# Shared steps


def _levels(sigmas: torch.Tensor | None, name: str) -> list[float]:
    """Noise levels as Python floats (a small host copy of the schedule, once per run); a
    trailing 0 is dropped (the step after the last level always goes to 0)."""
    if sigmas is None:
        sigmas = get_sigmas_karras(**SCHEDULE_DEFAULTS[name])
    levels = [float(s) for s in torch.as_tensor(sigmas).reshape(-1).tolist()]
    if levels and levels[-1] == 0:
        levels = levels[:-1]
    if not levels or min(levels) <= 0 or any(b > a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"{name}: sigmas must be positive and non-increasing (a trailing 0 is allowed); "
                         f"got {levels[:4]}{'...' if len(levels) > 4 else ''}")
    return levels


def randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of x's shape, drawn on the generator's device, moved to x's."""
    if generator is None:
        raise ValueError("samplers need a torch.Generator (no global RNG is used)")
    z = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return z.to(x.device)


def _check_finite(x: torch.Tensor, name: str, i: int, sigma: float) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{name}: non-finite values at step {i} (sigma={sigma:.4g}); "
                                 "try a smaller zeta/eps or check the operator and measurement scaling")


def _per_batch_item(v: torch.Tensor) -> torch.Tensor:
    """Sum over all but the batch axis, shaped to broadcast against images: (B, 1, 1, 1)."""
    return v.reshape(v.shape[0], -1).sum(1).reshape(-1, *([1] * (v.dim() - 1)))


def _whole_batch(v: torch.Tensor) -> torch.Tensor:
    """Sum over everything, shaped to broadcast against images: (1, 1, 1, 1)."""
    return v.sum().reshape([1] * v.dim())


def couples_batch(op) -> bool:
    """True when ``op`` treats the batch as one volume (inverse.operators.Operator.couples_batch)."""
    return bool(getattr(op, "couples_batch", False))


def residual_norm(op, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||y - A x||_2 per image, shape (B,)."""
    r = y - op.A(x)
    return r.reshape(r.shape[0], -1).norm(dim=1)


def operator_norm(op, like: torch.Tensor, iters: int = 30) -> float:
    """||A||_2: ``op.norm()`` if the operator has it, else a power iteration on AᵀA started
    from a fixed-seed vector (a local generator: no global RNG)."""
    if hasattr(op, "norm"):
        return float(op.norm())
    g = torch.Generator().manual_seed(0)
    v = torch.randn((1, *like.shape[1:]), generator=g, dtype=like.dtype).to(like.device)
    v = v / v.norm()
    est = 0.0
    for _ in range(iters):
        w = op.AT(op.A(v))
        est = float(w.norm())
        if est == 0:
            return 0.0
        v = w / est
    return math.sqrt(est)


def data_loss(op, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """½||y - A x||² summed over the batch (its gradient per image is that image's own)."""
    r = op.A(x) - y
    return 0.5 * (r * r).sum()


def denoise_with_grad(prior, x: torch.Tensor, sigma: float, generator: torch.Generator,
                      loss: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D(x), d loss(D(x)) / dx)``: the prior's own ``denoise_with_grad`` where it has one
    (``PatchPrior`` with ``batch`` keeps one chunk's graph alive at a time), else one autograd pass."""
    own = getattr(prior, "denoise_with_grad", None)
    if own is not None:
        return own(x, sigma, generator, loss)
    return autograd_denoise(prior, x, sigma, generator, loss)


def dc_step(op, y: torch.Tensor, x: torch.Tensor, step: float) -> torch.Tensor:
    """One gradient step on ½||y - A x||²: x + step * Aᵀ(y - A x)."""
    return x + step * op.AT(y - op.A(x))


def langevin_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, eps: float,
                  generator: torch.Generator, noise: bool = True) -> torch.Tensor:
    """Annealed Langevin update x + alpha * score + sqrt(2 alpha) z with alpha = eps * sigma²
    and score = (x0 - x) / sigma² (so alpha * score = eps * (x0 - x))."""
    x = x + eps * (x0 - x)
    if noise:
        x = x + math.sqrt(2 * eps) * sigma * randn_like(x, generator)
    return x


def renoise(x0: torch.Tensor, x: torch.Tensor, x0_hat: torch.Tensor, sigma: float, sigma_next: float,
            eta: float, generator: torch.Generator) -> torch.Tensor:
    """Move a clean estimate ``x0`` to noise level ``sigma_next`` (VE DDIM, Song et al. 2021):
    x0 + sqrt(sigma_next² - s²) * eps_hat + s * z with s = eta * sigma_next and
    eps_hat = (x - x0_hat) / sigma the prior's noise estimate. eta = 1: fresh noise only
    (x0 + sigma_next z); eta = 0: deterministic."""
    if sigma_next == 0:
        return x0
    s = eta * sigma_next
    out = x0
    if s < sigma_next:
        out = out + math.sqrt(sigma_next ** 2 - s ** 2) / sigma * (x - x0_hat)
    if s > 0:
        out = out + s * randn_like(x0, generator)
    return out


def conjugate_gradient(apply: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, x: torch.Tensor,
                       iters: int, joint: bool = False) -> torch.Tensor:
    """``iters`` CG iterations for apply(x) = rhs (apply symmetric positive definite), batched:
    each image has its own step sizes; ``joint``: one system over the whole batch (the slices of
    one volume, for an operator with ``couples_batch``), so inner products sum over it too."""
    total = _whole_batch if joint else _per_batch_item
    r = rhs - apply(x)
    p = r
    rs = total(r * r)
    for _ in range(iters):
        ap = apply(p)
        denom = total(p * ap)
        alpha = torch.where(denom > 0, rs / denom.clamp_min(torch.finfo(rs.dtype).tiny), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = total(r * r)
        beta = torch.where(rs > 0, rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return x


def data_consistency(op, aty: torch.Tensor, anchor: torch.Tensor, iters: int,
                     weight: float = 0.0) -> torch.Tensor:
    """The x0-space data-consistency step of ddnm, dds and diffpir: ``iters`` conjugate-gradient
    iterations, started at ``anchor``, on the normal equations of
    min_x ||y - A x||² + weight ||x - anchor||², that is

        (AᵀA + weight I) x = Aᵀy + weight anchor.

    One joint system over the batch where the operator ``couples_batch``, one per image
    otherwise (``conjugate_gradient``).

    op: the operator (``A``, ``AT``). aty: Aᵀy, the data part of the right-hand side (passed in
    so that a solver with one y computes it once). anchor: the start and the estimate the
    solution is pulled towards (dds, diffpir: the prior's x0_hat; ddnm: zeros), image-shaped.
    iters: CG iterations (0 returns ``anchor``). weight: the anchor term's absolute weight,
    >= 0 (callers scale theirs by ||A||²); 0: plain least squares, CG from ``anchor`` (from 0:
    towards the min-norm least-squares solution)."""
    if weight:
        normal, rhs = (lambda v: op.AT(op.A(v)) + weight * v), aty + weight * anchor
    else:
        normal, rhs = (lambda v: op.AT(op.A(v))), aty
    return conjugate_gradient(normal, rhs, anchor, iters, couples_batch(op))


def _start(op, y: torch.Tensor, sigma: float, generator: torch.Generator, x_init: torch.Tensor | None,
           init: str, name: str) -> torch.Tensor:
    if x_init is not None:
        return x_init.detach().to(torch.float32)
    if init not in ("pinv", "noise"):
        raise ValueError(f"{name}: init={init!r}; expected 'pinv' or 'noise'")
    base = op.pinv(y).detach()
    if init == "noise":
        base = torch.zeros_like(base)
    return base + sigma * randn_like(base, generator)


def noise_level(noise_std) -> float:
    """The measurement-noise std as one float: ``noise_std`` a float, None (0) or a per-image
    tensor (its root mean square over the batch)."""
    if noise_std is None:
        return 0.0
    if isinstance(noise_std, torch.Tensor):
        return float(noise_std.detach().float().pow(2).mean().sqrt())
    if noise_std < 0:
        raise ValueError(f"noise_std={noise_std}; expected a non-negative std of the measurement noise")
    return float(noise_std)


def correction_noise(correction: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, noise_std: float,
                     draws: int = 4) -> float:
    """Root-mean-square per pixel of ``correction(n)`` for measurement noise n ~ N(0, noise_std²):
    how much noise a range-space correction A⁺(y - A x) carries into the image (the gain of
    A⁺ times noise_std). Noise from a fixed-seed local generator (the run's stream is untouched)."""
    if noise_std == 0:
        return 0.0
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(draws):
        n = noise_std * torch.randn(y.shape, generator=g, dtype=torch.float32).to(y.device)
        total += float(correction(n).pow(2).mean())
    return math.sqrt(total / draws)


def _check_inner(inner: int, name: str, least: int = 1) -> None:
    if inner < least:
        raise ValueError(f"{name}: inner={inner}; expected at least {least} iteration(s) per level")


def _end_level(callback, name: str, i: int, sigma: float, x: torch.Tensor, x0: torch.Tensor) -> None:
    """After level ``i``'s updates: raise if ``x`` is not finite (``_check_finite``), then ``callback``."""
    _check_finite(x, name, i, sigma)
    if callback is not None:
        callback(dict(i=i, sigma=sigma, x=x, x0=x0))


def _finish(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clamp(0, 1)


# ----------------------------------------------------------------------------------------
# Solvers


DC_STEPS = ("landweber", "paper")  # dps data-step semantics (see sample_dps)
ZETA_DEFAULTS = dict(landweber=1.8, paper=0.3)  # paper: the value of its README commands


def _dps_start(op, y: torch.Tensor, sigma: float, generator: torch.Generator, x_init: torch.Tensor | None,
               init: str, dc_step: str) -> torch.Tensor:
    """dps start: as every solver's (``_start``), except that the paper's code starts from
    clamp(pinv(y), 0, 1) without added noise."""
    if dc_step != "paper" or x_init is not None:
        return _start(op, y, sigma, generator, x_init, init, "dps")
    if init != "pinv":
        raise ValueError(f"dps: init={init!r} with dc_step='paper'; the paper's solver starts from "
                         "clamp(pinv(y), 0, 1) (init='pinv')")
    return op.pinv(y).detach().to(torch.float32).clamp(0, 1)


def _dps_data_term(op, y: torch.Tensor, x: torch.Tensor, dc_step: str, dc_grad: str, zeta: float):
    """(loss of D(x) to differentiate, step size) of dps' data step. 'landweber':
    ½||y - A D(x)||² with step zeta/||A||²; 'paper': ||y - A D(x)|| per image (the norm, not
    squared, as the paper's code) with step zeta."""
    if dc_step not in DC_STEPS:
        raise ValueError(f"dps: dc_step={dc_step!r}; expected one of {DC_STEPS}")
    if dc_grad not in ("full", "x0"):
        raise ValueError(f"dps: dc_grad={dc_grad!r}; expected 'full' or 'x0'")
    if dc_step == "paper":
        if dc_grad != "full":
            raise ValueError("dps: dc_step='paper' differentiates through the network; it needs dc_grad='full'")
        return (lambda z: residual_norm(op, y, z).sum()), zeta
    return (lambda z: data_loss(op, y, z)), zeta / max(operator_norm(op, x) ** 2, 1e-12)


@torch.no_grad()
def sample_dps(prior, op, y: torch.Tensor, sigmas: torch.Tensor | None, generator: torch.Generator,
               x_init: torch.Tensor | None = None, callback: Callable | None = None, *,
               zeta: float | None = None,  # Data step; None: 1.8 (landweber) or 0.3 (paper).
               inner: int = 10,          # Langevin iterations per noise level (paper's code: 10).
               eps: float = 0.25,        # Langevin step alpha = eps * sigma² (paper's code: 0.25).
               dc_grad: str = "full",    # 'full': backprop through the prior (DPS); 'x0': at D(x).
               dc_step: str = "landweber",  # 'landweber': zeta/||A||² on grad ½||r||²; 'paper': zeta on grad ||r||.
               init: str = "pinv",       # Start: 'pinv' (pinv(y) + noise; paper: clamp(pinv(y))) or 'noise'.
               ) -> torch.Tensor:
    """PaDIS's solver: annealed Langevin dynamics with the patch prior's score plus the DPS
    data-consistency gradient (Chung et al. 2023; PaDIS Alg. 1). Per level sigma and inner
    iteration: x0 = D(x); x <- x + eps (x0 - x) + sqrt(2 eps) sigma z - step * g. No noise on
    the last level. Prior calls: len(sigmas) * inner.

    ``dc_step='landweber'`` (default): step = zeta/||A||² and g = d ½||y - A D(x)||² / dx
    (``dc_grad='full'``, through the network) or g = Aᵀ(A x0 - y) (``'x0'``, no backprop: a
    Landweber step taken at x0); start pinv(y) + sigmas[0] z.

    ``dc_step='paper'``: the update of the paper's code, exactly (on the image; its canvas
    padding aside): start clamp(pinv(y), 0, 1) without noise, step = zeta (absolute) and
    g = d ||y - A D(x)|| / dx (the norm, not squared, through the network); with eps 0.25 the
    prior part is the paper's x + (t²/4) score + t/√2 z.

    Why Landweber is the default: the original step on ||y - A D(x)|| has a fixed update norm
    whatever the residual; on 20-view CT that leaves the solver sampling the prior almost
    unconditionally, below FBP (notes/quality.md). A step in Landweber
    units (``zeta`` as for langevin/pc) shrinks with the residual and is scale-free."""
    name = "dps"
    _check_inner(inner, name)
    zeta = ZETA_DEFAULTS.get(dc_step, 0.0) if zeta is None else zeta
    levels = _levels(sigmas, name)
    x = _dps_start(op, y, levels[0], generator, x_init, init, dc_step)
    loss, step = _dps_data_term(op, y, x, dc_step, dc_grad, zeta)
    # 'x0' needs no autograd at all: inference mode; 'full' differentiates through the prior.
    with torch.inference_mode(dc_grad == "x0"):
        for i, sigma in enumerate(levels):
            last = i == len(levels) - 1
            for _ in range(inner):
                if dc_grad == "full":
                    x0, g = denoise_with_grad(prior, x, sigma, generator, loss)
                else:
                    x0 = prior(x, sigma, generator)
                    g = op.AT(op.A(x0) - y)
                x = langevin_step(x, x0, sigma, eps, generator, noise=not last) - step * g
            _end_level(callback, name, i, sigma, x, x0)
    return _finish(x)


@torch.inference_mode()
def sample_langevin(prior, op, y: torch.Tensor, sigmas: torch.Tensor | None, generator: torch.Generator,
                    x_init: torch.Tensor | None = None, callback: Callable | None = None, *,
                    zeta: float = 1.8,   # Data-consistency step (times 1/||A||²) on ½||y - A x||².
                    inner: int = 10,     # Langevin iterations per noise level.
                    eps: float = 0.25,   # Langevin step alpha = eps * sigma².
                    init: str = "pinv",  # Start: 'pinv' (pinv(y) + noise) or 'noise'.
                    ) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019) with a gradient data-consistency step:
    per iteration x <- x + eps (D(x) - x) + sqrt(2 eps) sigma z, then
    x <- x + zeta/||A||² Aᵀ(y - A x). No noise on the last level. Prior calls: len * inner."""
    name = "langevin"
    _check_inner(inner, name)
    levels = _levels(sigmas, name)
    x = _start(op, y, levels[0], generator, x_init, init, name)
    step = zeta / max(operator_norm(op, x) ** 2, 1e-12)
    for i, sigma in enumerate(levels):
        last = i == len(levels) - 1
        for _ in range(inner):
            x0 = prior(x, sigma, generator)
            x = dc_step(op, y, langevin_step(x, x0, sigma, eps, generator, noise=not last), step)
        _end_level(callback, name, i, sigma, x, x0)
    return _finish(x)


@torch.inference_mode()
def sample_pc(prior, op, y: torch.Tensor, sigmas: torch.Tensor | None, generator: torch.Generator,
              x_init: torch.Tensor | None = None, callback: Callable | None = None, *,
              zeta: float = 1.8,        # Data-consistency step (times 1/||A||²) after each update.
              inner: int = 1,           # Corrector (Langevin) iterations per level.
              eps: float = 0.25,        # Corrector step alpha = eps * sigma².
              predictor: str = "sde",   # 'sde': VE reverse diffusion; 'ode': EDM Euler (probability flow).
              init: str = "pinv",       # Start: 'pinv' (pinv(y) + noise) or 'noise'.
              ) -> torch.Tensor:
    """Predictor-corrector (Song et al. 2021) with data consistency. Per level sigma ->
    sigma_next (0 after the last): ``inner`` corrector steps as in ``langevin``, then the
    predictor: 'sde' x <- x + (sigma² - sigma_next²) score + sqrt(sigma² - sigma_next²) z, or
    'ode' x <- x + (sigma_next - sigma) (x - D(x)) / sigma; then a data-consistency step
    x <- x + zeta/||A||² Aᵀ(y - A x). Prior calls: len(sigmas) * (inner + 1)."""
    name = "pc"
    _check_inner(inner, name, least=0)
    if predictor not in ("sde", "ode"):
        raise ValueError(f"{name}: predictor={predictor!r}; expected 'sde' or 'ode'")
    levels = _levels(sigmas, name)
    x = _start(op, y, levels[0], generator, x_init, init, name)
    step = zeta / max(operator_norm(op, x) ** 2, 1e-12)
    for i, sigma in enumerate(levels):
        sigma_next = levels[i + 1] if i + 1 < len(levels) else 0.0
        for _ in range(inner):
            x0 = prior(x, sigma, generator)
            x = dc_step(op, y, langevin_step(x, x0, sigma, eps, generator), step)
        x0 = prior(x, sigma, generator)
        if predictor == "ode":
            x = x + (sigma_next - sigma) / sigma * (x - x0)
        else:
            var = sigma ** 2 - sigma_next ** 2
            x = x + var / sigma ** 2 * (x0 - x)
            if sigma_next > 0:
                x = x + math.sqrt(var) * randn_like(x, generator)
        x = dc_step(op, y, x, step)
        _end_level(callback, name, i, sigma, x, x0)
    return _finish(x)


DDNM_CG_ITERS = 10  # ddnm's CG iterations where op.pinv is no stable pseudo-inverse (CT: FBP)


@torch.inference_mode()
def sample_ddnm(prior, op, y: torch.Tensor, sigmas: torch.Tensor | None, generator: torch.Generator,
                x_init: torch.Tensor | None = None, callback: Callable | None = None, *,
                eta: float = 0.85,    # Renoise: 1 = fresh noise, 0 = deterministic (DDIM).
                init: str = "pinv",   # Start: 'pinv' (pinv(y) + noise) or 'noise'.
                cg_iters: int | None = None,  # Correction by CG (min-norm least squares); None:
                                              # op.pinv where op.stable_pinv, else DDNM_CG_ITERS (CT).
                noise_std: float | torch.Tensor | None = None,  # Std of y's noise (y's units); > 0:
                                              # DDNM+. The run passes its own (inverse.reconstruct).
                ) -> torch.Tensor:
    """Null-space projection (DDNM, Wang et al. 2023): per level x0_hat = D(x),
    x0 = x0_hat + A⁺(y - A x0_hat) (range from y, null space from the prior), then renoise
    to the next level (``renoise``, DDIM-like with ``eta``). A⁺ is ``op.pinv`` where that is
    a (regularised) pseudo-inverse (masking, super-resolution, Wiener deblurring); for CT,
    whose pinv is FBP, iterating the FBP correction diverges at low noise levels (20-view CT:
    notes/quality.md), so A⁺r is taken as the
    min-norm least-squares solution of A d = r by ``cg_iters`` CG iterations on AᵀA d = Aᵀr
    from d = 0.

    DDNM+ (Wang et al. 2023, Sec. 3.3) when ``noise_std`` > 0: the correction A⁺(y - A x0_hat)
    also carries the measurement noise into the image, with per-pixel std sigma_c (measured once
    by ``correction_noise``). So the correction is scaled by lambda = min(1, sigma_next / sigma_c)
    and the noise re-injected to reach level sigma_next is reduced to std
    sqrt(sigma_next² - (lambda sigma_c)²): the image's total noise stays sigma_next, and at levels
    below sigma_c the prior, not the noisy correction, has the last word (no correction on the
    last step). One sigma_c for the batch (``noise_level``). ``noise_std`` 0 or None: plain
    DDNM. Prior calls: len(sigmas)."""
    name = "ddnm"
    levels = _levels(sigmas, name)
    x = _start(op, y, levels[0], generator, x_init, init, name)
    if cg_iters is None and not getattr(op, "stable_pinv", True):
        cg_iters = DDNM_CG_ITERS
    if cg_iters is not None and cg_iters < 1:
        raise ValueError(f"{name}: cg_iters={cg_iters}; expected a positive number of CG iterations or None")

    def correction(r: torch.Tensor) -> torch.Tensor:
        if cg_iters is None:
            return op.pinv(r)
        return data_consistency(op, op.AT(r), torch.zeros_like(x), cg_iters)

    sigma_c = correction_noise(correction, y, noise_level(noise_std))
    for i, sigma in enumerate(levels):
        sigma_next = levels[i + 1] if i + 1 < len(levels) else 0.0
        scale, sigma_renoise = ddnm_plus_scale(sigma_next, sigma_c)
        x0_hat = prior(x, sigma, generator)
        x0 = x0_hat + scale * correction(y - op.A(x0_hat)) if scale > 0 else x0_hat
        x = renoise(x0, x, x0_hat, sigma, sigma_renoise, eta, generator)
        _end_level(callback, name, i, sigma, x, x0)
    return _finish(x)


def ddnm_plus_scale(sigma_next: float, sigma_c: float) -> tuple[float, float]:
    """DDNM+'s (lambda, std of the re-injected noise) for a step to ``sigma_next`` with a
    correction of noise std ``sigma_c``: lambda = min(1, sigma_next / sigma_c) (1 when sigma_c
    is 0) and sqrt(sigma_next² - (lambda sigma_c)²)."""
    if sigma_c <= 0:
        return 1.0, sigma_next
    scale = min(1.0, sigma_next / sigma_c)
    return scale, math.sqrt(max(sigma_next ** 2 - (scale * sigma_c) ** 2, 0.0))


@torch.inference_mode()
def sample_dds(prior, op, y: torch.Tensor, sigmas: torch.Tensor | None, generator: torch.Generator,
               x_init: torch.Tensor | None = None, callback: Callable | None = None, *,
               lam: float = 0.01,     # Prior weight, relative to ||A||²: (AᵀA + lam ||A||² I);
                                      # tuned on a held-out CT slice (deblur with noise 0.01: 0.1).
               cg_iters: int = 5,     # Conjugate-gradient iterations per level.
               eta: float = 1.0,      # Renoise: 1 = x0 + sigma_next z, 0 = deterministic (DDIM).
               init: str = "pinv",    # Start: 'pinv' (pinv(y) + noise at sigmas[0]) or 'noise'.
               ) -> torch.Tensor:
    """Decomposed diffusion sampling (DDS, Chung et al. 2024) for small compute budgets: per
    level x0_hat = D(x) (no backprop), then ``cg_iters`` CG iterations on
    min ||y - A x||² + lam' ||x - x0_hat||² (normal equations (AᵀA + lam' I) x = Aᵀy +
    lam' x0_hat, lam' = lam ||A||²) started at x0_hat, then renoise to the next level.
    Recommended: 20 levels from pinv(y) + noise at sigma 1 (``SCHEDULE_DEFAULTS['dds']``).
    Prior calls: len(sigmas)."""
    name = "dds"
    levels = _levels(sigmas, name)
    x = _start(op, y, levels[0], generator, x_init, init, name)
    lam_abs = lam * operator_norm(op, x) ** 2
    aty = op.AT(y)
    for i, sigma in enumerate(levels):
        sigma_next = levels[i + 1] if i + 1 < len(levels) else 0.0
        x0_hat = prior(x, sigma, generator)
        x0 = data_consistency(op, aty, x0_hat, cg_iters, lam_abs)
        x = renoise(x0, x, x0_hat, sigma, sigma_next, eta, generator)
        _end_level(callback, name, i, sigma, x, x0)
    return _finish(x)


@torch.inference_mode()
def sample_diffpir(prior, op, y: torch.Tensor, sigmas: torch.Tensor | None, generator: torch.Generator,
                   x_init: torch.Tensor | None = None, callback: Callable | None = None, *,
                   lam: float = 0.3,      # rho = lam * noise_std² / sigma², the weight of ||x - x0_hat||²
                                          # (DiffPIR's lambda; paper 7).
                   zeta: float = 1.0,     # Renoise mix: 0 = predicted noise only, 1 = fresh noise only
                                          # (paper 0.3). Both tuned on CT tuning slice 055 (notes/solvers.md).
                   cg_iters: int = 5,     # CG iterations of the data proximal step per level.
                   rho_min: float = 1e-4,  # Floor of rho relative to ||A||² (noise-free y: near projection).
                   noise_std: float | torch.Tensor | None = None,  # Std of y's noise (y's units); the
                                          # run passes its own (inverse.reconstruct).
                   init: str = "pinv",    # Start: 'pinv' (pinv(y) + noise at sigmas[0]) or 'noise'.
                   ) -> torch.Tensor:
    """DiffPIR-style plug-and-play diffusion (Zhu et al. 2023), variance-exploding form. Per
    level sigma -> sigma_next (0 after the last): x0_hat = D(x) (no backprop); data proximal
    step x0 = argmin ||y - A x||² + rho ||x - x0_hat||² with rho = lam noise_std² / sigma²
    (at least rho_min ||A||²; ``cg_iters`` CG iterations on (AᵀA + rho I) x = Aᵀy + rho x0_hat
    from x0_hat); then x = x0 + sigma_next (sqrt(1 - zeta) eps_hat + sqrt(zeta) z) with
    eps_hat = (x - x0) / sigma the noise the corrected estimate implies and z fresh noise.
    Unlike dds (a fixed weight lam ||A||²) rho, the pull towards x0_hat, grows as sigma falls:
    the data weigh most at high noise levels, the prior's estimate more and more at low ones, in
    the ratio a Gaussian posterior gives (lam = 1).
    With zeta = 1 the renoise is dds's (eta = 1) and the two differ only in that weight.
    Prior calls: len(sigmas)."""
    name = "diffpir"
    if not 0 <= zeta <= 1:
        raise ValueError(f"{name}: zeta={zeta}; expected a mix in [0, 1]")
    if lam < 0 or rho_min <= 0:
        raise ValueError(f"{name}: lam={lam}, rho_min={rho_min}; expected lam >= 0 and rho_min > 0")
    levels = _levels(sigmas, name)
    x = _start(op, y, levels[0], generator, x_init, init, name)
    norm2 = operator_norm(op, x) ** 2
    sigma_n = noise_level(noise_std)
    aty = op.AT(y)
    for i, sigma in enumerate(levels):
        sigma_next = levels[i + 1] if i + 1 < len(levels) else 0.0
        rho = max(lam * sigma_n ** 2 / sigma ** 2, rho_min * norm2)
        x0_hat = prior(x, sigma, generator)
        x0 = data_consistency(op, aty, x0_hat, cg_iters, rho)
        x = renoise(x0, x, x0, sigma, sigma_next, math.sqrt(zeta), generator)
        _end_level(callback, name, i, sigma, x, x0)
    return _finish(x)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "dps": sample_dps,
    "langevin": sample_langevin,
    "pc": sample_pc,
    "ddnm": sample_ddnm,
    "dds": sample_dds,
    "diffpir": sample_diffpir,
}


def sampler_options(name: str) -> dict:
    """The keyword-only options of a solver with their defaults (for CLIs and configs)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown solver {name!r}; expected one of {sorted(SAMPLERS)}")
    params = inspect.signature(SAMPLERS[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
