"""Baselines: FBP/pseudo-inverse and PDHG total-variation reconstruction."""

from __future__ import annotations

import pytest
import torch

from inverse.baselines import BASELINES, CHECK_EVERY, fbp, grad, grad_T, tv, tv_norm, tv_objective
from inverse.operators import IMAGE_OPERATORS, make_operator

SMALL = {
    "ct_parbeam": ((24, 24), dict(views=9, det_count=64)),
    "ct_fanbeam": ((24, 24), dict(views=9, det_count=64)),
    "ct_lact": ((24, 24), dict(views=9, det_count=64)),
    "deblur_uniform": ((16, 8), {}),
    "deblur_gauss": ((16, 8), {}),
    "super": ((16, 8), {}),
    "denoise": ((16, 8), {}),
    "inpaint": ((16, 8), dict(mask="random", mask_fraction=0.5)),
}



def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / (x - ref).square().mean()))


def phantom(n: int) -> torch.Tensor:
    """Piecewise-constant test image in [0, 1], (1, 1, n, n): a disk and a bright square."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    img = 0.6 * ((xx**2 + yy**2) < 0.6**2).float()
    img[(xx.abs() < 0.2) & ((yy - 0.1).abs() < 0.2)] = 1.0
    return img[None, None]


def test_registry():
    assert set(BASELINES) == {"fbp", "tv"}


def test_grad_adjoint(generator):
    x = torch.randn(2, 3, 7, 5, generator=generator, dtype=torch.float64)
    qh, qw = torch.randn(2, *x.shape, generator=generator, dtype=torch.float64)
    gh, gw = grad(x)
    lhs = (gh * qh).sum() + (gw * qw).sum()
    # grad() is zero in the last row/column, so only those entries of q are seen by its adjoint
    qh[..., -1, :] = 0
    qw[..., :, -1] = 0
    assert float(lhs) == pytest.approx(float((x * grad_T(qh, qw)).sum()), rel=1e-12)
    assert float(tv_norm(torch.ones(1, 1, 4, 4))) == 0.0


def test_fbp_is_pinv(generator):
    op = make_operator("super", (16, 8))
    y = torch.rand(2, 1, 4, 2, generator=generator)
    assert torch.equal(fbp(op, y), op.pinv(y))


@pytest.mark.parametrize("name", list(IMAGE_OPERATORS))
def test_tv_decreases_objective(name, device, generator):
    shape, opts = SMALL[name]
    op = make_operator(name, shape, device=device, **opts)
    x = torch.rand(2, 1, *shape, generator=generator).to(device)
    y = op.noise(op.A(x), 0.02, generator)
    init = op.pinv(y).clamp(0, 1)
    out = tv(op, y, weight=1e-3, iters=60)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert (tv_objective(op, out, y, 1e-3) < tv_objective(op, init, y, 1e-3)).all()


@pytest.mark.parametrize("name,shape,opts,level,weight", [
    ("deblur_gauss", (32, 32), {}, 0.01, 3e-4),
    ("ct_parbeam", (32, 32), dict(views=20, det_count=64), 0.005, 1e-4),
])
def test_tv_beats_pinv(name, shape, opts, level, weight, generator):
    op = make_operator(name, shape, **opts)
    x = phantom(shape[0])
    y = op.noise(op.A(x), level, generator)
    base = psnr(op.pinv(y).clamp(0, 1), x)
    out = psnr(tv(op, y, weight, iters=300), x)
    assert out > base + 2.0, (out, base)


def test_tv_relative_weight_equivalence(generator):
    """relative=False with weight * ||A||^2 solves the same problem as relative=True."""
    op = make_operator("ct_parbeam", (24, 24), views=9, det_count=64)
    y = op.A(phantom(24))
    a = tv(op, y, 1e-3, iters=30)
    b = tv(op, y, 1e-3 * op.norm() ** 2, iters=30, relative=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_tv_batched_equals_single(generator):
    op = make_operator("deblur_uniform", (16, 8))
    x = torch.rand(3, 1, 16, 8, generator=generator)
    y = op.noise(op.A(x), 0.01, generator)
    torch.testing.assert_close(tv(op, y, 1e-3, iters=15)[1:2], tv(op, y[1:2], 1e-3, iters=15))


def test_tv_stops_on_objective_tolerance(generator):
    op = make_operator("denoise", (16, 8))
    y = op.noise(phantom(16)[..., :8], 0.05, generator)
    seen = []
    tv(op, y, 0.03, iters=2000, tol=1e-6, callback=seen.append)
    objectives = [float(d["objective"][0]) for d in seen if d["objective"] is not None]
    assert 20 <= len(seen) < 2000 and len(seen) % CHECK_EVERY == 0
    assert len(objectives) == len(seen) // CHECK_EVERY
    assert abs(objectives[-2] - objectives[-1]) < 1e-6 * objectives[-1]
    assert all(abs(a - b) >= 1e-6 * b for a, b in zip(objectives[:-2], objectives[1:-1]))
    assert objectives[-1] == pytest.approx(float(tv_objective(op, seen[-1]["x"], y, 0.03)[0]), rel=1e-6)
    # tol 0 runs every iteration; a looser tolerance stops earlier
    assert len(_iterations(op, y, tol=0.0, iters=70)) == 70
    assert len(_iterations(op, y, tol=1e-3, iters=2000)) < len(seen)


def _iterations(op, y, **kw):
    seen = []
    tv(op, y, 0.03, callback=seen.append, **kw)
    return seen


def test_tv_anisotropic(generator):
    x = torch.zeros(1, 1, 4, 4)
    x[..., 0, 1] = x[..., 1, 0] = 1.0  # pixels (0,0), (0,1), (1,0): both differences +-1
    assert float(tv_norm(x, isotropic=False)) == pytest.approx(6.0)
    assert float(tv_norm(x)) == pytest.approx(3 * 2**0.5)
    op = make_operator("deblur_uniform", (16, 8))
    y = op.noise(op.A(phantom(16)[..., :8]), 0.01, generator)
    init = op.pinv(y).clamp(0, 1)
    out = tv(op, y, 1e-3, iters=100, tol=0.0, isotropic=False)
    iso = tv(op, y, 1e-3, iters=100, tol=0.0)
    assert not torch.allclose(out, iso, atol=1e-4)
    assert float(tv_objective(op, out, y, 1e-3, isotropic=False)[0]) < float(
        tv_objective(op, init, y, 1e-3, isotropic=False)[0])


def test_tv_step_ratio_same_minimum(generator):
    """Other primal/dual step ratios reach the same minimum (the objective is convex)."""
    op = make_operator("deblur_uniform", (16, 8))
    y = op.noise(op.A(phantom(16)[..., :8]), 0.01, generator)
    ref = float(tv_objective(op, tv(op, y, 1e-3, iters=3000, tol=0.0, step_ratio=100.0), y, 1e-3)[0])
    start = float(tv_objective(op, op.pinv(y).clamp(0, 1), y, 1e-3)[0])
    for ratio in (3.0, 30.0):
        out = float(tv_objective(op, tv(op, y, 1e-3, iters=3000, tol=0.0, step_ratio=ratio), y, 1e-3)[0])
        assert out == pytest.approx(ref, rel=1e-3) and out < 0.9 * start


def test_tv_x_init_and_no_box(generator):
    op = make_operator("denoise", (16, 8))
    y = torch.full((1, 1, 16, 8), 1.5)
    out = tv(op, y, 1e-3, iters=50, box=False, x_init=torch.zeros_like(y))
    assert float(out.max()) > 1.2
    assert float(tv(op, y, 1e-3, iters=5).max()) <= 1.0


def test_tv_bad_arguments():
    op = make_operator("denoise", (16, 8))
    with pytest.raises(ValueError, match="weight"):
        tv(op, torch.zeros(1, 1, 16, 8), -1.0)
    with pytest.raises(ValueError, match="step_ratio"):
        tv(op, torch.zeros(1, 1, 16, 8), 1e-3, step_ratio=0.0)
