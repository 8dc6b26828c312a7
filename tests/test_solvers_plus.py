"""DDNM+ (noise-aware DDNM) and the DiffPIR-style solver: their formulas on hand-checkable
cases, and DDNM+ on noisy deblurring staying at least as good as the pseudo-inverse where plain
DDNM amplifies the noise."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from inverse.cli import SOLVER_TABLE, SOLVER_TABLE_COLUMNS, solver_table, solver_table_markdown
from inverse.operators import make_operator
from inverse.samplers import (
    SAMPLERS,
    correction_noise,
    ddnm_plus_scale,
    get_sigmas_karras,
    noise_level,
    sampler_options,
)

N = 32


class IdentityPrior:
    def __call__(self, x, sigma, generator=None):
        return x


class SmoothingPrior:
    """A denoiser for smooth images: Gaussian blur of width ~ 2 sigma / 0.05 pixels (capped),
    clamped to [0, 1]; good enough to tell a noise-aware correction from a noisy one."""

    def __call__(self, x, sigma, generator=None):
        width = min(3.0, 0.5 + 40.0 * float(sigma))
        r = 6
        t = torch.arange(-r, r + 1, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / width) ** 2)
        k = k / k.sum()
        pad = F.pad(x, (r, r, r, r), mode="reflect")
        out = F.conv2d(F.conv2d(pad, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
        return out.clamp(0, 1)


def smooth_truth() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, N), torch.linspace(-1, 1, N), indexing="ij")
    return (0.5 + 0.3 * torch.cos(2 * xx) * torch.sin(3 * yy))[None, None]


def psnr(x, ref):
    return float(-10 * torch.log10(((x - ref) ** 2).mean()))


def test_ddnm_plus_scale_and_noise_helpers():
    assert ddnm_plus_scale(0.5, 0.0) == (1.0, 0.5)  # no measurement noise: plain DDNM
    assert ddnm_plus_scale(0.5, 0.1) == (1.0, pytest.approx(math.sqrt(0.25 - 0.01)))
    assert ddnm_plus_scale(0.05, 0.1) == (pytest.approx(0.5), pytest.approx(0.0))
    assert ddnm_plus_scale(0.0, 0.1) == (0.0, 0.0)  # the last step keeps the prior's estimate
    assert noise_level(None) == 0.0 and noise_level(0.02) == 0.02
    assert noise_level(torch.tensor([3.0, 4.0]).reshape(2, 1, 1, 1)) == pytest.approx(math.sqrt(12.5))
    with pytest.raises(ValueError, match="noise_std"):
        noise_level(-1.0)
    y = torch.zeros(1, 1, N, N)
    assert correction_noise(lambda r: 2 * r, y, 0.1, draws=8) == pytest.approx(0.2, rel=0.05)
    assert correction_noise(lambda r: r, y, 0.0) == 0.0


def test_ddnm_plus_on_noisy_deblurring_is_not_worse_than_pinv_where_ddnm_is():
    op = make_operator("deblur_gauss", (N, N), kernel_size=7, kernel_sigma=2.0)
    x_true = smooth_truth()
    g = torch.Generator().manual_seed(1)
    y = op.noise(op.A(x_true), 0.02, g)
    noise_std = float(op.noise_std(y, 0.02))
    sig = get_sigmas_karras(30, 0.003, 1.0)
    plain = SAMPLERS["ddnm"](SmoothingPrior(), op, y, sig, torch.Generator().manual_seed(0))
    plus = SAMPLERS["ddnm"](SmoothingPrior(), op, y, sig, torch.Generator().manual_seed(0), noise_std=noise_std)
    pinv = op.pinv(y).clamp(0, 1)
    assert psnr(plain, x_true) < psnr(pinv, x_true) - 3  # what DDNM+ fixes: noise through the Wiener A⁺
    assert psnr(plus, x_true) > psnr(pinv, x_true)
    zero = SAMPLERS["ddnm"](SmoothingPrior(), op, y, sig, torch.Generator().manual_seed(0), noise_std=0.0)
    assert torch.equal(zero, plain)  # noise_std 0 is plain DDNM exactly


def test_diffpir_data_step_is_the_proximal_point_with_rho_from_the_noise():
    """Identity prior, masking, one level, zeta irrelevant (the last level): the result is
    (y + rho x_init) / (1 + rho) on observed pixels and x_init elsewhere, rho = lam s² / sigma²."""
    op = make_operator("inpaint", (N, N), mask="random", mask_fraction=0.5)
    mask = op.mask.expand(1, 1, N, N)
    x_init = torch.full((1, 1, N, N), 0.2)
    y = op.A(torch.full((1, 1, N, N), 0.8))
    lam, s, sigma = 2.0, 0.1, 0.5
    rho = lam * s ** 2 / sigma ** 2
    x = SAMPLERS["diffpir"](IdentityPrior(), op, y, torch.tensor([sigma]), torch.Generator().manual_seed(0),
                            x_init=x_init, lam=lam, noise_std=s, cg_iters=3)
    expect = torch.where(mask > 0, (0.8 + rho * 0.2) / (1 + rho), torch.tensor(0.2))
    torch.testing.assert_close(x, expect, atol=1e-5, rtol=0)


def test_diffpir_zeta_mixes_fresh_noise_and_checks_options():
    op = make_operator("inpaint", (N, N), mask="box", mask_fraction=0.25)
    y = op.A(smooth_truth())
    sig = get_sigmas_karras(4, 0.01, 1.0)
    x_init = op.pinv(y) + 0.5
    run = lambda seed, **kw: SAMPLERS["diffpir"](SmoothingPrior(), op, y, sig, torch.Generator().manual_seed(seed),
                                                 x_init=x_init, noise_std=0.01, **kw)
    assert torch.equal(run(0, zeta=0.0), run(1, zeta=0.0))  # predicted noise only: deterministic
    assert not torch.equal(run(0, zeta=0.5), run(1, zeta=0.5))
    with pytest.raises(ValueError, match="zeta"):
        run(0, zeta=1.5)
    assert {"lam", "zeta", "cg_iters", "noise_std"} <= set(sampler_options("diffpir"))


def _words(text: str) -> str:
    return " ".join(text.split())


def test_solver_table_has_every_solver_and_says_which_options_it_takes():
    """One row per solver of SAMPLERS (a new solver fails here until documented); '-' exactly
    where the solver does not take the option; a default in [] where it has one."""
    assert list(SOLVER_TABLE) == list(SAMPLERS)
    flags = {"--zeta": "zeta", "--lam": "lam", "--dc-step": "dc_step"}
    for name, cells in solver_table().items():
        options = sampler_options(name)
        assert len(cells) == len(SOLVER_TABLE_COLUMNS) + 1, name
        for head, cell in zip(SOLVER_TABLE_COLUMNS, cells):
            if head not in flags:
                continue
            key = flags[head]
            assert (cell == "-") == (key not in options), (name, head)
            if cell != "-" and isinstance(options[key], (int, float)):
                assert cell.endswith(f"[{options[key]:g}]"), (name, head, cell)
        per_level = cells[SOLVER_TABLE_COLUMNS.index("iterations per level")]
        for flag, key in (("--inner", "inner"), ("--cg-iters", "cg_iters")):
            assert (flag in per_level) == (key in options), (name, flag)


def test_solver_table_is_in_the_help_and_the_architecture_doc():
    import inverse_nodist

    res = CliRunner().invoke(inverse_nodist.main, ["--help"])
    assert res.exit_code == 0, res.output
    shown = _words(res.output)
    heads = SOLVER_TABLE_COLUMNS + ("levels",)
    for name, cells in solver_table().items():
        block = _words(" ".join([name] + [f"{h} {c}" for h, c in zip(heads, cells)]))
        assert block in shown, name
    doc = (Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    assert solver_table_markdown() in doc, "docs/ARCHITECTURE.md: paste inverse.cli.solver_table_markdown()"
