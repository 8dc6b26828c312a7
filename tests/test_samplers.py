import math

import pytest
import torch

from inverse.prior import PatchPrior
from inverse.samplers import (
    SAMPLERS,
    SCHEDULE_DEFAULTS,
    conjugate_gradient,
    data_consistency,
    get_sigmas_karras,
    operator_norm,
    renoise,
    residual_norm,
    sampler_options,
)

H = W = 16


class MatrixOp:
    """y = M vec(x): a small dense operator for tests (the registry operators live elsewhere).

    ``exact=True``: pixel masking, pinv = Aᵀ (exact pseudo-inverse since A Aᵀ = I).
    ``exact=False``: 3x3 box blur then masking, pinv = Aᵀ / ||A||² (a crude back-projection,
    inexact like FBP).
    """

    def __init__(self, exact: bool, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        n = H * W
        keep = torch.randperm(n, generator=g)[: int(0.6 * n)].sort().values
        m = torch.eye(n)
        if not exact:
            basis = torch.eye(n).reshape(n, 1, H, W)
            blur = torch.nn.functional.conv2d(basis, torch.full((1, 1, 3, 3), 1 / 9), padding=1)
            m = blur.reshape(n, n).T  # column j = blur of basis image j
        self.M = m[keep]
        self.exact = exact
        self._norm = float(torch.linalg.matrix_norm(self.M, ord=2))

    def A(self, x):
        return x.reshape(x.shape[0], -1) @ self.M.T

    def AT(self, y):
        return (y @ self.M).reshape(y.shape[0], 1, H, W)

    def pinv(self, y):
        return self.AT(y) if self.exact else self.AT(y) / self._norm ** 2

    def norm(self):
        return self._norm


class NoNormOp:
    """The blur operator without ``norm()``: operator_norm falls back to a power iteration."""

    def __init__(self):
        inner = MatrixOp(exact=False)
        self.A, self.AT = inner.A, inner.AT


def truth(batch: int = 2) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    img = 0.3 + 0.4 * xx * (1 - yy) + 0.25 * ((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.08)
    return torch.stack([img, img.flip(1)])[:batch, None]


FAST = dict(dps=dict(inner=2), langevin=dict(inner=2), pc=dict(inner=1), ddnm={}, dds={}, diffpir={})


def run(name, prior, op, y, seed=0, steps=6, sigma_max=1.0, **kw):
    sigmas = get_sigmas_karras(steps, 0.01, sigma_max)
    return SAMPLERS[name](prior, op, y, sigmas, torch.Generator().manual_seed(seed), **{**FAST[name], **kw})


@pytest.fixture
def prior(tiny_patch_net):
    return PatchPrior(tiny_patch_net, pad=4, psize=10)


@pytest.mark.parametrize("exact", [True, False], ids=["mask", "blur"])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_reduces_residual_and_is_deterministic(name, exact, prior):
    op = MatrixOp(exact)
    y = op.A(truth())
    start = op.pinv(y) + 1.0 * torch.randn(y.shape[0], 1, H, W, generator=torch.Generator().manual_seed(0))
    x = run(name, prior, op, y)
    assert x.shape == (2, 1, H, W) and x.min() >= 0 and x.max() <= 1
    res = residual_norm(op, y, x)
    assert (res < 0.5 * residual_norm(op, y, start)).all(), (name, res)
    if not exact and name in ("ddnm", "dds", "diffpir"):  # x0-space solvers beat the crude back-projection
        assert (res < residual_norm(op, y, op.pinv(y))).all(), (name, res)
    assert torch.equal(x, run(name, prior, op, y))
    assert not torch.equal(x, run(name, prior, op, y, seed=1))


def test_ddnm_exact_pinv_is_data_consistent(prior):
    op = MatrixOp(exact=True)
    y = op.A(truth())
    x = run("ddnm", prior, op, y)
    assert residual_norm(op, y, x).max() < 1e-4 * y.norm()


def test_dps_dc_grad_modes_and_calls(prior):
    op = MatrixOp(exact=False)
    y = op.A(truth(1))
    prior.reset_calls()
    full = run("dps", prior, op, y, steps=3, inner=2, dc_grad="full")
    assert prior.calls == 3 * 2
    x0 = run("dps", prior, op, y, steps=3, inner=2, dc_grad="x0")
    assert not torch.equal(full, x0)
    with pytest.raises(ValueError, match="dc_grad"):
        run("dps", prior, op, y, dc_grad="nope")


def test_callback_once_per_level(prior):
    op = MatrixOp(exact=True)
    y = op.A(truth(1))
    for name in SAMPLERS:
        seen = []
        run(name, prior, op, y, steps=4, callback=seen.append)
        assert [d["i"] for d in seen] == [0, 1, 2, 3], name
        assert set(seen[0]) == {"i", "sigma", "x", "x0"}
        assert seen[0]["sigma"] == pytest.approx(1.0) and seen[-1]["sigma"] == pytest.approx(0.01)


def test_non_finite_raises_with_step():
    op = MatrixOp(exact=True)
    y = op.A(truth(1))
    nan_prior = lambda x, sigma, generator: x * math.nan
    for name in SAMPLERS:
        with pytest.raises(FloatingPointError, match="step 0"):
            run(name, nan_prior, op, y)


def test_x_init_and_init_noise(prior):
    op = MatrixOp(exact=True)
    y = op.A(truth(1))
    x_init = torch.full((1, 1, H, W), 0.5)
    a = run("dds", prior, op, y, x_init=x_init)
    b = run("dds", prior, op, y, init="noise")
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="init"):
        run("dds", prior, op, y, init="zeros")
    with pytest.raises(ValueError, match="Generator"):
        SAMPLERS["dds"](prior, op, y, get_sigmas_karras(3), None)


def test_default_schedule_and_options():
    assert set(SAMPLERS) == {"dps", "langevin", "pc", "ddnm", "dds", "diffpir"} == set(SCHEDULE_DEFAULTS)
    assert sampler_options("dps") == dict(zeta=None, inner=10, eps=0.25, dc_grad="full", dc_step="landweber",
                                             init="pinv")
    assert sampler_options("dds")["cg_iters"] == 5
    with pytest.raises(ValueError, match="dds"):
        sampler_options("ddim")


def test_karras_schedule():
    s = get_sigmas_karras(100, 0.003, 10.0)
    assert s.shape == (100,) and s.dtype == torch.float32
    assert s[0].item() == pytest.approx(10.0) and s[-1].item() == pytest.approx(0.003)
    assert (s[1:] < s[:-1]).all()
    z = get_sigmas_karras(5, 0.01, 1.0, append_zero=True)
    assert z.shape == (6,) and z[-1] == 0 and z[-2].item() == pytest.approx(0.01)
    # rho = 7 puts most levels at low noise
    assert (s < 1).sum() > 50
    assert get_sigmas_karras(1, 0.1, 2.0).tolist() == [2.0]
    with pytest.raises(ValueError):
        get_sigmas_karras(0)
    with pytest.raises(ValueError):
        get_sigmas_karras(5, 1.0, 0.5)


def test_conjugate_gradient_solves_spd_batch():
    g = torch.Generator().manual_seed(0)
    mats = torch.randn(2, 6, 6, generator=g)
    spd = mats @ mats.transpose(1, 2) + torch.eye(6)
    rhs = torch.randn(2, 1, 2, 3, generator=g)
    apply = lambda v: (spd @ v.reshape(2, 6, 1)).reshape(v.shape)
    x = conjugate_gradient(apply, rhs, torch.zeros_like(rhs), 12)
    torch.testing.assert_close(apply(x), rhs, atol=1e-4, rtol=1e-4)


def test_data_consistency_solves_the_regularised_normal_equations():
    """(AᵀA + w I) x = Aᵀy + w anchor from anchor; w = 0 from 0: the min-norm least-squares
    solution; an operator that couples the batch gets one joint CG system."""
    g = torch.Generator().manual_seed(0)
    blur = MatrixOp(exact=False)
    y = blur.A(truth()) + 0.05 * torch.randn(2, blur.M.shape[0], generator=g)
    anchor = torch.rand(2, 1, H, W, generator=g)
    w = 0.5 * blur.norm() ** 2
    x = data_consistency(blur, blur.AT(y), anchor, 30, w)
    torch.testing.assert_close(blur.AT(blur.A(x)) + w * x, blur.AT(y) + w * anchor, atol=1e-4, rtol=1e-4)
    assert torch.equal(data_consistency(blur, blur.AT(y), anchor, 0, w), anchor)

    mask = MatrixOp(exact=True)
    r = torch.randn(2, mask.M.shape[0], generator=g)
    d = data_consistency(mask, mask.AT(r), torch.zeros_like(anchor), 3)
    torch.testing.assert_close(d.reshape(2, -1), r @ torch.linalg.pinv(mask.M).T, atol=1e-5, rtol=0)

    class Joint(MatrixOp):
        couples_batch = True

    joint = Joint(exact=False)
    normal = lambda v: joint.AT(joint.A(v)) + w * v  # noqa: E731
    rhs = joint.AT(y) + w * anchor
    x = data_consistency(joint, joint.AT(y), anchor, 2, w)
    assert torch.equal(x, conjugate_gradient(normal, rhs, anchor, 2, joint=True))
    assert not torch.equal(x, conjugate_gradient(normal, rhs, anchor, 2, joint=False))


def test_operator_norm_power_iteration_and_renoise():
    op = NoNormOp()
    like = torch.zeros(1, 1, H, W)
    est, true = operator_norm(op, like), MatrixOp(exact=False).norm()
    assert 0.97 * true < est <= true * (1 + 1e-5)  # power iteration approaches from below
    x0, x, x0_hat = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    det = renoise(x0, x, x0_hat, 2.0, 1.0, 0.0, torch.Generator())
    torch.testing.assert_close(det, torch.full_like(x, 0.5))  # eta 0: keeps eps_hat, scaled
    assert torch.equal(renoise(x0, x, x0_hat, 2.0, 0.0, 1.0, torch.Generator()), x0)


def _registry():
    try:
        from inverse.operators import IMAGE_OPERATORS, make_operator
    except ImportError:  # operators (ODL/ASTRA) not available here
        return [], None
    return sorted(IMAGE_OPERATORS), make_operator


REGISTRY, MAKE_OPERATOR = _registry()
SMALL = dict(ct_parbeam=dict(det_count=32), ct_fanbeam=dict(det_count=32), ct_lact=dict(det_count=32),
             super=dict(factor=2))


@pytest.mark.skipif(not REGISTRY, reason="inverse.operators not importable")
@pytest.mark.parametrize("name", ["dds", "langevin", "dps"])
@pytest.mark.parametrize("problem", REGISTRY)
def test_registry_operators(problem, name, prior):
    """Step sizes are scaled by ||A||, so the same defaults work from masks to CT (||A|| ~ 100)."""
    op = MAKE_OPERATOR(problem, (H, W), **SMALL.get(problem, {}))
    gen = torch.Generator().manual_seed(0)
    y = op.noise(op.A(truth()), 0.01, gen)
    start = op.pinv(y) + torch.randn(2, 1, H, W, generator=torch.Generator().manual_seed(0))
    x = run(name, prior, op, y, steps=4)
    assert torch.isfinite(x).all()
    assert (residual_norm(op, y, x) < residual_norm(op, y, start)).all()


@pytest.mark.parametrize("gen_on_device", [False, True])
def test_runs_on_device_with_either_generator(device, gen_on_device, tiny_patch_net):
    """Noise and grid offsets are drawn on the generator's device (CPU generator: moved)."""
    op = MatrixOp(exact=True)
    op.M = op.M.to(device)
    prior = PatchPrior(tiny_patch_net.to(device), pad=4, psize=10)
    y = op.A(truth(1).to(device))
    gen = torch.Generator(device=device if gen_on_device else "cpu").manual_seed(0)
    for name, kw in (("dds", {}), ("dps", dict(inner=1))):
        x = SAMPLERS[name](prior, op, y, get_sigmas_karras(3, 0.01, 1.0), gen, **kw)
        assert x.device.type == torch.device(device).type and torch.isfinite(x).all()


class IdentityPrior:
    """D(x) = x: what a denoiser is at tiny sigma; leaves DDNM's correction on its own."""

    calls = 0

    def __call__(self, x, sigma, generator=None):
        return x


def test_ddnm_on_ct_uses_a_stable_least_squares_correction():
    """FBP is no pseudo-inverse: iterating x <- x + FBP(y - A x) diverges (it did on 20-view
    CT: 27.7 dB mid-way, 5 dB at the end). With CT the correction is CG least squares."""
    from inverse.operators import make_operator

    op = make_operator("ct_parbeam", (32, 32), channels=1, views=8)
    assert not op.stable_pinv and make_operator("super", (32, 32), factor=2).stable_pinv
    x_true = torch.zeros(1, 1, 32, 32)
    x_true[..., 8:24, 10:22] = 0.6
    y = op.A(x_true)
    sig = get_sigmas_karras(30, 0.003, 0.1)
    fbp_iter = op.pinv(y)
    for _ in range(30):
        fbp_iter = fbp_iter + op.pinv(y - op.A(fbp_iter))
    x = SAMPLERS["ddnm"](IdentityPrior(), op, y, sig, torch.Generator().manual_seed(0), eta=0.0)
    assert torch.isfinite(x).all()
    assert (x - x_true).norm() < (op.pinv(y) - x_true).norm()  # bounded, better than FBP
    assert residual_norm(op, y, fbp_iter) > 1e3 * residual_norm(op, y, op.pinv(y))  # what it replaces
    with pytest.raises(ValueError, match="cg_iters"):
        SAMPLERS["ddnm"](IdentityPrior(), op, y, sig, torch.Generator().manual_seed(0), cg_iters=0)


@pytest.mark.parametrize("dc_grad", ["x0", "full"])
def test_dps_zeta_is_a_fraction_of_a_landweber_step(dc_grad):
    """With D(x) = x, eps = 0 and one noise-free level, a DPS iteration is exactly the Landweber
    step x - zeta/||A||² Aᵀ(A x - y) (so zeta = 1 on A = masking lands on y in the kept pixels)."""
    op = MatrixOp(exact=False)
    g = torch.Generator().manual_seed(0)
    x_init = torch.rand(1, 1, H, W, generator=g)
    y = op.A(torch.rand(1, 1, H, W, generator=g))
    identity = lambda x, sigma, gen: x  # noqa: E731
    for zeta in (0.5, 1.0):
        out = SAMPLERS["dps"](identity, op, y, torch.tensor([0.01]), g, x_init=x_init.clone(), zeta=zeta,
                              inner=1, eps=0.0, dc_grad=dc_grad)
        want = (x_init - zeta / op.norm() ** 2 * op.AT(op.A(x_init) - y)).clamp(0, 1)
        assert torch.allclose(out, want, atol=1e-6), (zeta, dc_grad)


def test_dps_paper_step_matches_a_hand_computation(tiny_patch_net):
    """dc_step='paper' is the paper code's update: start clamp(pinv(y)) without noise, then per
    iteration x - zeta * d||y - A D(x)||/dx + (t²/4) (D(x) - x)/t² + t/√2 z (no z on the last
    level). Two levels of one iteration each, with the real patch prior and its random grid
    offsets, against the formula written out here (gradient of the norm by the chain rule)."""
    prior = PatchPrior(tiny_patch_net, pad=4, psize=10)
    op = MatrixOp(exact=False)
    y = op.A(truth(1)) + 0.01 * torch.randn(1, op.M.shape[0], generator=torch.Generator().manual_seed(3))
    sigmas, zeta = torch.tensor([0.5, 0.1]), 0.3
    out = SAMPLERS["dps"](prior, op, y, sigmas, torch.Generator().manual_seed(5), inner=1, zeta=zeta,
                          dc_step="paper")

    gen = torch.Generator().manual_seed(5)
    x = op.pinv(y).clamp(0, 1)
    for i, t in enumerate(sigmas.tolist()):
        xr = x.clone().requires_grad_()
        with torch.enable_grad():
            d = prior(xr, t, gen)  # draws this call's grid offset from gen, as the solver's call does
            r = op.A(d) - y
            g = torch.autograd.grad(d, xr, grad_outputs=op.AT(r / r.norm()))[0]  # J_Dᵀ Aᵀ r/||r||
        d = d.detach()
        x = x - zeta * g + t ** 2 / 4 * (d - x) / t ** 2
        if i < len(sigmas) - 1:
            x = x + t / math.sqrt(2) * torch.randn(x.shape, generator=gen)
    assert torch.allclose(out, x.clamp(0, 1), atol=1e-6)
    assert not torch.allclose(out, run("dps", prior, op, y, steps=2, inner=1, zeta=zeta), atol=1e-3)


def test_dps_paper_step_options():
    op = MatrixOp(exact=True)
    y = op.A(truth(1))
    identity = lambda x, sigma, gen: x  # noqa: E731
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="dc_step='nope'"):
        SAMPLERS["dps"](identity, op, y, torch.tensor([0.1]), g, dc_step="nope")
    with pytest.raises(ValueError, match="needs dc_grad='full'"):
        SAMPLERS["dps"](identity, op, y, torch.tensor([0.1]), g, dc_step="paper", dc_grad="x0")
    with pytest.raises(ValueError, match="init='noise' with dc_step='paper'"):
        SAMPLERS["dps"](identity, op, y, torch.tensor([0.1]), g, dc_step="paper", init="noise")
    # Default zeta of the paper step is its README's 0.3: one noise-free iteration with D(x) = x
    # and eps = 0 moves x by exactly 0.3 along -Aᵀr/||r||.
    x_init = torch.rand(1, 1, H, W, generator=g)
    out = SAMPLERS["dps"](identity, op, y, torch.tensor([0.1]), g, x_init=x_init.clone(), inner=1, eps=0.0,
                          dc_step="paper")
    r = op.A(x_init) - y
    assert torch.allclose(out, (x_init - 0.3 * op.AT(r) / r.norm()).clamp(0, 1), atol=1e-6)
