"""inverse.deepinv_adapters: our prior as a deepinv denoiser, our operators as deepinv physics,
and deepinv's own DiffPIR running on both. Skipped where deepinv cannot be imported (it is the
optional extra 'deepinv'; from PyPI it needs a torchvision built for the installed torch)."""

from __future__ import annotations

import pytest
import torch

from inverse.operators import make_operator
from inverse.prior import PatchPrior


def _deepinv():
    try:
        import deepinv
    except Exception as exc:  # ImportError, or torchvision's extension failing against this torch
        pytest.skip(f"deepinv not importable here: {type(exc).__name__}: {str(exc)[:100]}", allow_module_level=True)
    return deepinv


dinv = _deepinv()
from inverse.deepinv_adapters import PadisDenoiser, PadisPhysics, as_denoiser, as_physics  # noqa: E402

N = 32


@pytest.fixture
def prior(tiny_patch_net):
    return PatchPrior(tiny_patch_net, pad=4, psize=12)


def test_denoiser_is_a_deepinv_denoiser_returning_our_prior(prior):
    den = as_denoiser(prior, seed=3)
    assert isinstance(den, PadisDenoiser) and isinstance(den, dinv.models.Denoiser)
    x = torch.rand(2, 1, N, N, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = den(x, 0.2)
        ours = prior(x, 0.2, torch.Generator().manual_seed(3))
        per_image = as_denoiser(prior, seed=3)(x, torch.tensor([0.2, 0.5]))
        expect = prior(x, torch.tensor([0.2, 0.5]), torch.Generator().manual_seed(3))
        scalar_tensor = as_denoiser(prior, seed=3)(x, torch.tensor(0.2))
    assert torch.equal(out, ours) and torch.equal(per_image, expect) and torch.equal(scalar_tensor, ours)
    assert out.shape == x.shape and out.dtype == torch.float32


@pytest.mark.parametrize("problem, options", [("inpaint", dict(mask="random", mask_fraction=0.4)),
                                              ("deblur_gauss", dict(kernel_size=5, kernel_sigma=1.0)),
                                              ("ct_parbeam", dict(views=8))])
def test_physics_wraps_our_operator(problem, options):
    op = make_operator(problem, (N, N), **options)
    physics = as_physics(op)
    assert isinstance(physics, PadisPhysics) and isinstance(physics, dinv.physics.LinearPhysics)
    x = torch.rand(2, 1, N, N, generator=torch.Generator().manual_seed(1))
    y = physics.A(x)
    assert torch.equal(y, op.A(x)) and torch.equal(physics(x), y)  # no noise model: y exactly
    assert torch.equal(physics.A_adjoint(y), op.AT(y))
    assert abs(float(physics.adjointness_test(x))) < 1e-3 * float((x * physics.A_adjoint(y)).sum().abs())
    assert float(physics.compute_norm(x)) == pytest.approx(op.norm() ** 2)
    assert float(physics.compute_norm(x, squared=False)) == pytest.approx(op.norm())
    dagger = physics.A_dagger(y)
    if op.stable_pinv:
        assert torch.equal(dagger, op.pinv(y))
    else:  # CT: deepinv's least squares, not FBP; it fits y better than FBP does
        fit = lambda z: float((op.A(z) - y).norm())
        assert fit(dagger) < fit(op.pinv(y))


def test_physics_noise_model_has_the_given_std():
    op = make_operator("inpaint", (N, N), mask="box", mask_fraction=0.25)
    physics = as_physics(op, noise_std=0.1)
    x = torch.full((4, 1, N, N), 0.5)
    noise = physics(x) - op.A(x)
    assert float(physics.noise_model.sigma) == pytest.approx(0.1)
    assert float(noise.std()) == pytest.approx(0.1, rel=0.1)


def test_deepinv_diffpir_runs_with_our_prior_and_operator(prior):
    op = make_operator("inpaint", (N, N), mask="random", mask_fraction=0.3)
    physics = as_physics(op, noise_std=0.02)
    x_true = torch.full((1, 1, N, N), 0.4)
    x_true[..., 8:24, 8:24] = 0.8
    y = physics(x_true)
    model = dinv.sampling.DiffPIR(as_denoiser(prior, seed=0), dinv.optim.data_fidelity.L2(), max_iter=4,
                                  sigma=0.02)
    torch.manual_seed(0)  # deepinv's DiffPIR draws its noise from the global RNG
    with torch.no_grad():
        x = model(y, physics)
    assert x.shape == x_true.shape and torch.isfinite(x).all()
    observed = op.mask.expand_as(x) > 0
    assert float((x - x_true)[observed].abs().mean()) < 0.2  # pulled onto the measured pixels
