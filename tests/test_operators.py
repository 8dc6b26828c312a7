"""Forward models: adjointness, autograd adjoints, pseudo-inverses, noise, options and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inverse.operators import (
    IMAGE_OPERATORS,
    OPERATORS,
    VOLUME_OPERATORS,
    Operator,
    make_operator,
    operator_options,
)
from odlstuff import geometry as geo

CT_SMALL = dict(views=9, det_count=64)
# small odd shapes catch transposed axes; CT images are non-square on purpose for one geometry
CASES = {
    "ct_parbeam": ((24, 20), CT_SMALL),
    "ct_fanbeam": ((24, 24), CT_SMALL),
    "ct_lact": ((24, 24), CT_SMALL),
    "deblur_uniform": ((16, 8), {}),
    "deblur_gauss": ((16, 8), dict(kernel_size=5, kernel_sigma=1.5)),
    "super": ((16, 8), {}),
    "denoise": ((16, 8), {}),
    "inpaint": ((16, 8), dict(mask="random", mask_fraction=0.4)),
}
CHANNELS = 3


def build(name: str, device) -> Operator:
    shape, opts = CASES[name]
    return make_operator(name, shape, channels=CHANNELS, device=device, **opts)


def rand_pair(op: Operator, generator: torch.Generator, batch: int = 2):
    x = torch.rand(batch, op.channels, *op.image_shape, generator=generator)
    v = torch.randn(batch, op.channels, *op.measurement_shape, generator=generator)
    return x.to(op.device), v.to(op.device)


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / (x - ref).square().mean()))


def test_registry_is_complete():
    assert set(CASES) == set(IMAGE_OPERATORS) and set(VOLUME_OPERATORS) == {"ct_cone"}  # tests/test_volume.py
    assert set(IMAGE_OPERATORS) | set(VOLUME_OPERATORS) == set(OPERATORS)
    for name, cls in OPERATORS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", list(IMAGE_OPERATORS))
def test_shapes_dtype_device(name, device, generator):
    op = build(name, device)
    x, v = rand_pair(op, generator)
    for out, shape in ((op.A(x), op.measurement_shape), (op.AT(v), op.image_shape), (op.pinv(v), op.image_shape)):
        assert out.shape == (2, CHANNELS, *shape)
        assert out.dtype == torch.float32 and out.device.type == torch.device(device).type
    assert op.name == name and op.channels == CHANNELS and op.image_shape == CASES[name][0]


@pytest.mark.parametrize("name", list(IMAGE_OPERATORS))
def test_adjoint(name, device, generator):
    op = build(name, device)
    x, v = rand_pair(op, generator)
    lhs, rhs = dot(op.A(x), v), dot(x, op.AT(v))
    # ASTRA's CUDA back projector is only close to the adjoint (the Projector checks it on set-up).
    cuda_ct = getattr(getattr(op, "projector", None), "impl", None) == "astra_cuda"
    assert abs(lhs - rhs) <= (geo.ADJOINT_TOL if cuda_ct else 1e-4) * max(abs(lhs), abs(rhs))


@pytest.mark.parametrize("name", list(IMAGE_OPERATORS))
def test_autograd_adjoint(name, device, generator):
    """The vjp of A is AT and the vjp of AT is A (the CT autograd.Function twins)."""
    op = build(name, device)
    x, v = rand_pair(op, generator)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(op.A(x), x, v)
    torch.testing.assert_close(g, op.AT(v), rtol=1e-4, atol=1e-5 * float(g.abs().max()))
    v = v.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(op.AT(v), v, x.detach())
    torch.testing.assert_close(g, op.A(x.detach()), rtol=1e-4, atol=1e-5 * float(g.abs().max()))


@pytest.mark.parametrize("name", list(IMAGE_OPERATORS))
def test_batch_items_independent(name, device, generator):
    op = build(name, device)
    x, v = rand_pair(op, generator, batch=3)
    torch.testing.assert_close(op.A(x)[1:2], op.A(x[1:2]))
    torch.testing.assert_close(op.AT(v)[2:], op.AT(v[2:]))


@pytest.mark.parametrize("name", ["ct_parbeam", "ct_fanbeam"])
def test_fbp_pinv_is_differentiable(name, generator):
    """pinv (ODL's fbp_op) has a hand adjoint as its backward: <F y, x> == <y, F^T x>."""
    op = build(name, "cpu")
    x, v = rand_pair(op, generator)
    v.requires_grad_(True)
    (g,) = torch.autograd.grad(op.pinv(v), v, x)
    lhs, rhs = dot(op.pinv(v.detach()), x), dot(v.detach(), g)
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


@pytest.mark.parametrize("name", list(IMAGE_OPERATORS))
def test_norm(name, generator):
    """norm() (exact where overridden) agrees with the base class power iteration."""
    op = build(name, "cpu")
    power = Operator.norm(op)
    assert op.norm() == pytest.approx(power, rel=1e-3)
    x, _ = rand_pair(op, generator)
    assert op.A(x).norm() <= op.norm() * x.norm() * (1 + 1e-3)


def _grid(n: int):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    return yy, xx


def test_fbp_psnr_parallel_beam():
    """Noiseless 180-view parallel beam at 64x64 (512 detector pixels, Hann 0.9).

    Measured: Shepp-Logan (skimage, resized) 28.6 dB, smooth Gaussian blob 53.3 dB.
    """
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    phantom = resize(shepp_logan_phantom(), (64, 64), anti_aliasing=True).astype(np.float32)
    x = torch.from_numpy(phantom)[None, None]
    yy, xx = _grid(64)
    blob = (0.9 * torch.exp(-(xx**2 + yy**2) / (2 * 0.3**2)))[None, None]
    op = make_operator("ct_parbeam", (64, 64), views=180)
    assert psnr(op.pinv(op.A(x)).clamp(0, 1), x) > 27.0
    assert psnr(op.pinv(op.A(blob)).clamp(0, 1), blob) > 45.0


def test_fbp_psnr_fan_beam():
    """Fan beam, 180 views, Hann 0.3: smooth blob inside the field of view measured 32.1 dB.

    With source and detector radius 40 and detector [-40, 40] the field of view is a disk of
    radius 40 * sin(atan(40 / 80)) = 17.9 < 20: the image corners are never measured.
    """
    yy, xx = _grid(64)
    blob = (0.9 * torch.exp(-(xx**2 + yy**2) / (2 * 0.3**2)))[None, None]
    op = make_operator("ct_fanbeam", (64, 64), views=180)
    assert psnr(op.pinv(op.A(blob)).clamp(0, 1), blob) > 30.0


@pytest.mark.parametrize("name,tol", [("deblur_uniform", 2e-2), ("deblur_gauss", 2e-2), ("super", 1e-6),
                                      ("denoise", 0.0), ("inpaint", 0.0)])
def test_pinv_consistency(name, tol, device, generator):
    """A(pinv(y)) ~= y: exact for super/denoise/inpaint, up to the Wiener epsilon for deblurring."""
    op = build(name, device)
    x, _ = rand_pair(op, generator)
    y = op.A(x)
    assert float((op.A(op.pinv(y)) - y).norm() / y.norm()) <= tol


def test_pinv_super_is_nearest_upsampling(generator):
    op = make_operator("super", (16, 8), factor=4)
    y = torch.rand(1, 1, 4, 2, generator=generator)
    up = op.pinv(y)
    assert torch.equal(up[0, 0, :4, :4], y[0, 0, 0, 0].expand(4, 4))
    assert torch.equal(up[0, 0, 12:, 4:], y[0, 0, 3, 1].expand(4, 4))


def test_deblur_matches_circular_convolution(generator):
    """The FFT blur is a circular convolution with the centred kernel (checked by rolling)."""
    op = make_operator("deblur_gauss", (16, 8), kernel_size=5, kernel_sigma=1.0)
    x = torch.rand(1, 1, 16, 8, generator=generator)
    k = op.kernel.double()
    ref = sum(k[i, j] * torch.roll(x.double(), shifts=(i - 2, j - 2), dims=(-2, -1))
              for i in range(5) for j in range(5))
    torch.testing.assert_close(op.A(x).double(), ref, rtol=1e-5, atol=1e-6)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["denoise", "deblur_gauss", "super"])
def test_noise_std_image_domain(name, generator):
    op = make_operator(name, (64, 64))
    y = op.A(torch.rand(4, 1, 64, 64, generator=generator))
    level = 0.05
    n = op.noise(y, level, generator) - y
    assert float(n.std()) == pytest.approx(level, rel=0.05)
    assert float(n.mean()) == pytest.approx(0.0, abs=5 * level / math.sqrt(n.numel()))


def test_noise_std_ct_relative_to_sinogram_max(generator):
    op = make_operator("ct_parbeam", (32, 32), views=30, det_count=128)
    x = torch.rand(2, 1, 32, 32, generator=generator) * torch.tensor([1.0, 0.2]).view(2, 1, 1, 1)
    y = op.A(x)
    n = op.noise(y, 0.01, generator) - y
    for b in range(2):
        assert float(n[b].std()) == pytest.approx(0.01 * float(y[b].abs().max()), rel=0.05)


def test_noise_inpaint_only_observed(generator):
    op = make_operator("inpaint", (16, 8), mask="box", mask_fraction=0.25)
    y = op.A(torch.rand(1, 1, 16, 8, generator=generator))
    noisy = op.noise(y, 0.1, generator)
    assert torch.equal(noisy[op.mask.expand_as(y) == 0], y[op.mask.expand_as(y) == 0])
    assert float(op.mask.mean()) == pytest.approx(0.75, abs=0.02)


def test_noise_is_seeded():
    op = make_operator("denoise", (16, 8))
    y = torch.zeros(1, 1, 16, 8)
    a = op.noise(y, 0.1, torch.Generator().manual_seed(3))
    b = op.noise(y, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, op.noise(y, 0.1, torch.Generator().manual_seed(4)))


def test_geometry_defaults_and_impl():
    assert operator_options("ct_fanbeam")["fbp_freq"] == 0.3
    assert operator_options("ct_parbeam")["fbp_freq"] == 0.9
    assert operator_options("ct_lact")["angle_range"] == geo.LACT_RANGE
    assert operator_options("ct_parbeam")["det_count"] == 512
    assert geo.astra_impl(torch.device("cpu")) == "astra_cpu"
    lact = make_operator("ct_lact", (24, 24), views=9, det_count=64, angle_range=(0.5, 1.5))
    angles = lact.projector.ray.geometry.angles
    assert angles.min() > 0.5 and angles.max() < 1.5 and len(angles) == 9
    fan = make_operator("ct_fanbeam", (24, 24), **CT_SMALL).projector.ray.geometry
    assert fan.src_radius == 40 and fan.det_radius == 40 and fan.angles.max() > math.pi
    space = geo.image_space((24, 12))
    assert tuple(space.min_pt) == (-20.0, -10.0) and tuple(space.max_pt) == (20.0, 10.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_astra_cuda():
    op = make_operator("ct_parbeam", (24, 24), device="cuda", **CT_SMALL)
    err = op.projector.adjoint_error
    cuda_ok = geo.tomo.ASTRA_CUDA_AVAILABLE and err is not None and err <= geo.ADJOINT_TOL
    assert op.projector.impl == ("astra_cuda" if cuda_ok else "astra_cpu")


@pytest.mark.parametrize("mismatch,impl", [(0.5, "astra_cpu"), (1e-3, "astra_cuda")])
def test_cuda_projector_falls_back_when_far_from_adjoint(monkeypatch, capsys, mismatch, impl):
    """A CUDA projector whose back projection is more than ADJOINT_TOL off the adjoint is replaced
    by the exact CPU one, with a one-line warning (RayTransform stubbed: no GPU needed)."""
    built = []
    real = geo.tomo.RayTransform

    def fake_ray(space, geometry, impl):
        built.append(impl)
        return real(space, geometry, impl="astra_cpu")

    monkeypatch.setattr(geo.tomo, "RayTransform", fake_ray)
    monkeypatch.setattr(geo.Projector, "adjoint_mismatch", lambda self, seed=0: mismatch)
    space = geo.image_space((16, 16))
    proj = geo.Projector(space, geo.parallel_geometry(views=6, det_count=32), impl="astra_cuda")
    assert proj.impl == impl and proj.adjoint_error == mismatch
    assert built == (["astra_cuda", "astra_cpu"] if impl == "astra_cpu" else ["astra_cuda"])
    assert ("CPU projector instead" in capsys.readouterr().err) == (impl == "astra_cpu")


def test_adjoint_mismatch_of_cpu_projector_is_tiny():
    space = geo.image_space((16, 16))
    proj = geo.Projector(space, geo.parallel_geometry(views=6, det_count=32))
    assert proj.adjoint_error is None and proj.adjoint_mismatch() < 1e-5


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="ct_parbeam.*inpaint"):
        make_operator("ct_spiral", (16, 16))


@pytest.mark.parametrize("name,options,match", [
    ("ct_parbeam", dict(angle_range="0,1"), "'angle_range'"),
    ("denoise", dict(factor=2), "'factor'"),
    ("ct_parbeam", dict(views=0), "'views'"),
    ("ct_parbeam", dict(views=2.5), "'views'"),
    ("ct_fanbeam", dict(fbp_freq=1.5), "'fbp_freq'"),
    ("ct_parbeam", dict(fbp_filter="gauss"), "'fbp_filter'"),
    ("ct_lact", dict(angle_range="2,1"), "'angle_range'"),
    ("ct_lact", dict(angle_range="0-2"), "'angle_range'"),
    ("deblur_uniform", dict(kernel_size=4), "'kernel_size'"),
    ("deblur_gauss", dict(kernel_sigma=-1), "'kernel_sigma'"),
    ("super", dict(factor=3), "'factor'"),
    ("inpaint", dict(mask="circle"), "'mask'"),
    ("inpaint", dict(mask_fraction=1.0), "'mask_fraction'"),
])
def test_bad_options(name, options, match):
    shape = (24, 24) if name.startswith("ct") else (16, 8)
    extra = CT_SMALL if name.startswith("ct") and "views" not in options else {}
    with pytest.raises(ValueError, match=match):
        make_operator(name, shape, **extra, **options)


def test_string_options_from_cli():
    op = make_operator("ct_lact", (24, 24), views="9", det_count="64", angle_range="0,1.5", fbp_freq="0.5")
    assert op.measurement_shape == (9, 64)


def test_bad_input_shapes():
    op = make_operator("super", (16, 8))
    with pytest.raises(ValueError, match="image must have shape"):
        op.A(torch.zeros(1, 1, 8, 16))
    with pytest.raises(ValueError, match="measurement must have shape"):
        op.AT(torch.zeros(1, 2, 4, 2))
    with pytest.raises(ValueError, match="image_shape"):
        make_operator("denoise", (0, 8))


def test_ct_projections_from_two_threads_match_sequential():
    """reconstruct.run projects from the solver and the baselines' thread at once (ASTRA_LOCK)."""
    from concurrent.futures import ThreadPoolExecutor
    ops = [make_operator(name, (24, 24), **CT_SMALL) for name in ("ct_parbeam", "ct_fanbeam")]
    x = torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    want = [(op.A(x), op.AT(op.A(x))) for op in ops]

    def work(k):
        op = ops[k % 2]
        return k % 2, op.A(x), op.AT(op.A(x))

    with ThreadPoolExecutor(max_workers=4) as pool:
        for k, a, at in pool.map(work, range(24)):
            assert torch.equal(a, want[k][0]) and torch.equal(at, want[k][1])
