"""Use PaDIS priors and operators from DeepInverse (``pip install 'padis[deepinv]'``).

    import deepinv as dinv
    from inverse.deepinv_adapters import as_denoiser, as_physics

    physics = as_physics(make_operator("ct_parbeam", (256, 256), views=20), noise_std=0.01)
    denoiser = load_denoiser(path, (256, 256), seed=0)  # or as_denoiser(prior) of any prior
    model = dinv.sampling.DiffPIR(denoiser, dinv.optim.data_fidelity.L2(), max_iter=50)
    x = model(physics(x_true), physics)

:class:`PadisDenoiser` is a ``deepinv.models.Denoiser``: ``denoiser(x, sigma)`` with ``x`` in
[0, 1] up to Gaussian noise of std ``sigma`` (a float or one per batch item; deepinv's units
are ours: the patch networks are trained on [0, 1] images with noise std sigma) returns our
prior's ``D(x, sigma)``. The patch prior draws its grid offset at every call, from the
adapter's own generator (seeded: a deepinv run is repeatable without the global RNG).
:func:`load_denoiser` builds it from a checkpoint the way the reconstruction does
(``inverse.prior_setup.load_prior``: the prior checked against the network, the patch grid
chosen for the image size from the network's trained patch sizes).

:class:`PadisPhysics` is a ``deepinv.physics.LinearPhysics`` around one of our operators
(``inverse.operators.make_operator``): ``A`` and ``A_adjoint`` are the operator's ``A`` and
``AT`` (matched adjoints, ASTRA for CT), ``A_dagger`` its ``pinv`` where that is a
pseudo-inverse (``op.stable_pinv``: masking, super-resolution, Wiener deblurring) and deepinv's
least-squares solver otherwise (CT, whose pinv is FBP), ``compute_norm`` its cached ``||A||``,
and the noise model Gaussian with std ``noise_std`` in the measurement's units (for our CT
noise levels: ``op.noise_std(y, level)``).

This module imports deepinv; the rest of the package never does.
"""

from __future__ import annotations

import os

import torch

from inverse.prior_setup import load_prior

try:
    import deepinv as dinv
except ImportError as exc:  # the optional extra is missing
    raise ImportError("inverse.deepinv_adapters needs DeepInverse: pip install 'padis[deepinv]' "
                      f"(or pip install deepinv); {exc}") from None


class PadisDenoiser(dinv.models.Denoiser):
    """Our whole-image prior (``inverse.prior``: ``prior(x, sigma, generator)``) as a deepinv denoiser."""

    def __init__(self, prior, seed: int = 0, generator: torch.Generator | None = None):
        device = getattr(generator, "device", None) or _prior_device(prior)
        super().__init__(device=device)
        self.prior = prior
        self.generator = generator if generator is not None else torch.Generator(device=device).manual_seed(seed)

    def forward(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(x.device, torch.float32).reshape(-1)
            sigma = float(sigma[0]) if sigma.numel() == 1 else sigma.expand(x.shape[0]).contiguous()
        return self.prior(x.float(), sigma, self.generator)


class PadisPhysics(dinv.physics.LinearPhysics):
    """One of our operators (``A``, ``AT``, ``pinv``, ``norm``) as deepinv linear physics."""

    def __init__(self, op, noise_std: float = 0.0, **kwargs):
        noise = dinv.physics.GaussianNoise(sigma=float(noise_std)) if noise_std else dinv.physics.ZeroNoise()
        super().__init__(noise_model=noise, img_size=(op.channels, *op.image_shape),
                         device=getattr(op, "device", "cpu"), **kwargs)
        self.op = op

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.op.A(x)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.op.AT(y)

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        if getattr(self.op, "stable_pinv", False):
            return self.op.pinv(y)
        return super().A_dagger(y, **kwargs)

    def compute_norm(self, x0=None, max_iter: int = 100, tol: float = 1e-3, verbose: bool = False,
                     squared: bool = True, **kwargs) -> torch.Tensor:
        norm = torch.tensor(float(self.op.norm()))
        return norm ** 2 if squared else norm


def as_denoiser(prior, seed: int = 0, generator: torch.Generator | None = None) -> PadisDenoiser:
    """``prior`` (``inverse.prior.build_prior``) as a ``deepinv.models.Denoiser``."""
    return PadisDenoiser(prior, seed=seed, generator=generator)


def load_denoiser(network: str | os.PathLike, image_size: tuple[int, int], seed: int = 0,
                  device: torch.device | str = "cpu", **options) -> PadisDenoiser:
    """The prior of checkpoint ``network`` for ``image_size`` (H, W) images as a deepinv denoiser
    (:func:`inverse.prior_setup.load_prior` with ``options``: prior, pad, psize, batch, pad_fill,
    precision, ...); its grid offsets come from a generator seeded with ``seed``."""
    loaded = load_prior(network, [tuple(image_size)], device=device, **options)
    return as_denoiser(loaded.prior, seed=seed)


def as_physics(op, noise_std: float = 0.0, **kwargs) -> PadisPhysics:
    """``op`` (``inverse.operators.make_operator``) as a ``deepinv.physics.LinearPhysics`` with
    Gaussian noise of std ``noise_std`` (measurement units); ``kwargs`` go to LinearPhysics
    (e.g. ``max_iter``/``tol`` of its least-squares solver)."""
    return PadisPhysics(op, noise_std=noise_std, **kwargs)


def _prior_device(prior) -> torch.device:
    net = getattr(prior, "net", None)
    try:
        return next(net.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")
