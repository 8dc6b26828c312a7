"""The priors' canvas fill (issue 23 item 2): 'zeros' as before, 'noise' of std sigma from the
run's generator; the ReconConfig field / --pad-fill option, config.json and resume; the
benchmark script benchmarks/pad_fill.py (smoke)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import load_benchmark, write_smooth_images

import inverse_nodist
from inverse.config import ReconConfig
from inverse.prior import (
    PAD_FILLS,
    OverlapAveragePrior,
    PatchPrior,
    WholeImagePrior,
    build_prior,
    check_grid,
    extract_patches,
    grid_region,
    stitch_patches,
)
from inverse.samplers import PAD_FILL_DEFAULTS, SAMPLERS, sample_dps


class Recorder(torch.nn.Module):
    """D(x) = x / 2; records its inputs (position-aware)."""

    pos_channels = 2

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, sigma, pos=None):
        self.seen.append(x.detach().clone())
        return x / 2


def canvas_of_call(prior: PatchPrior, net: Recorder, bsz: int, height: int, width: int) -> torch.Tensor:
    """The grid region of the canvas the network was given in its last call (stitched back)."""
    pad, p = prior.grid_for(height, width)
    ph, pw = check_grid(height, width, pad, p)
    return stitch_patches(net.seen[-1], bsz, ph, pw)


def zero_canvas_reference(net, x, sigma, offset, pad, psize):
    """The patch prior's output before pad_fill existed: F.pad zeros, cut, denoise, stitch, crop."""
    bsz, _, h, w = x.shape
    ph, pw = check_grid(h, w, pad, psize)
    a, b = offset
    canvas = F.pad(x, (pad,) * 4)
    patches = extract_patches(grid_region(canvas, a, b, ph, pw, psize), psize)
    from training.networks import position_grid
    grid = position_grid(h + 2 * pad, w + 2 * pad, dtype=x.dtype)
    pos = extract_patches(grid_region(grid, a, b, ph, pw, psize), psize).repeat(bsz, 1, 1, 1)
    sig = torch.full((bsz,), float(sigma)).repeat_interleave(ph * pw)
    out = stitch_patches(net(patches, sig, pos), bsz, ph, pw)
    return out[:, :, pad - a:pad - a + h, pad - b:pad - b + w]


def test_zeros_is_the_canvas_of_before_and_draws_only_the_offset(tiny_patch_net):
    x = torch.rand(2, 1, 32, 32)
    g = torch.Generator().manual_seed(5)
    for prior in (PatchPrior(tiny_patch_net, pad=4, psize=12), PatchPrior(tiny_patch_net, pad=4, psize=12,
                                                                         pad_fill="zeros")):
        g.manual_seed(5)
        with torch.no_grad():
            out = prior(x, 0.7, g)
        after = g.get_state()
        offset = tuple(torch.randint(0, 4, (2,), generator=torch.Generator().manual_seed(5)).tolist())
        with torch.no_grad():
            ref = zero_canvas_reference(tiny_patch_net, x, 0.7, offset, 4, 12)
        assert torch.equal(out, ref)
        g.manual_seed(5)
        torch.randint(0, 4, (2,), generator=g)  # the offset draw only
        assert torch.equal(after, g.get_state())


def test_noise_fill_std_sigma_outside_image_untouched_inside():
    net = Recorder()
    x = torch.rand(2, 1, 40, 40)
    prior = PatchPrior(net, pad=24, psize=32, pad_fill="noise")
    sigma = torch.tensor([0.5, 3.0])
    offset = (0, 0)  # the grid region starts at the canvas corner: pad 24 rows/cols of it are canvas
    prior(x, sigma, torch.Generator().manual_seed(1), offset=offset)
    region = canvas_of_call(prior, net, 2, 40, 40)
    assert torch.equal(region[:, :, 24:64, 24:64], x)  # the image pixels exactly
    outside = torch.ones(region.shape[-2:], dtype=torch.bool)
    outside[24:64, 24:64] = False
    for k, s in enumerate(sigma.tolist()):
        pad_px = region[k, 0][outside]
        assert pad_px.numel() > 2000
        assert abs(float(pad_px.std()) / s - 1) < 0.06 and abs(float(pad_px.mean())) < 0.06 * s


def test_noise_fill_seeded_by_the_generator(tiny_patch_net):
    x = torch.rand(1, 1, 32, 32)

    def run(seed, fill="noise"):
        prior = PatchPrior(tiny_patch_net, pad=4, psize=12, pad_fill=fill)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return prior(x, 1.0, g, offset=(2, 1)), g.get_state()

    a, state_a = run(0)
    b, state_b = run(0)
    c, _ = run(1)
    z, state_z = run(0, "zeros")
    assert torch.equal(a, b) and torch.equal(state_a, state_b)
    assert not torch.equal(a, c) and not torch.equal(a, z)
    assert not torch.equal(state_a, state_z)  # the noise came from the run's generator
    # the canvas of two seeds differs in the pad only
    net = Recorder()
    canvases = []
    for seed in (0, 1):
        prior = PatchPrior(net, pad=4, psize=12, pad_fill="noise")
        prior(x, 1.0, torch.Generator().manual_seed(seed), offset=(0, 0))
        canvases.append(canvas_of_call(prior, net, 1, 32, 32))
    assert torch.equal(canvases[0][:, :, 4:36, 4:36], canvases[1][:, :, 4:36, 4:36])
    assert not torch.equal(canvases[0], canvases[1])


def test_noise_fill_needs_a_generator_and_a_known_name():
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        PatchPrior(Recorder(), pad=4, psize=12, pad_fill="noise")(torch.rand(1, 1, 32, 32), 1.0, offset=(0, 0))
    with pytest.raises(ValueError, match="pad_fill='gauss'; expected one of 'zeros', 'noise'"):
        PatchPrior(Recorder(), pad=4, psize=12, pad_fill="gauss")
    assert PAD_FILLS == ("zeros", "noise") and set(PAD_FILL_DEFAULTS) == set(SAMPLERS)
    assert set(PAD_FILL_DEFAULTS.values()) <= set(PAD_FILLS)


def test_chunked_dps_gradient_with_noise_fill_equals_one_autograd_pass(tiny_patch_net):
    """PatchPrior.denoise_with_grad with batch (two passes) uses one offset and one canvas noise:
    the same x0 and gradient as one autograd pass from the same generator state."""
    x = torch.rand(2, 1, 32, 32)
    loss = lambda z: (z ** 2).sum()  # noqa: E731
    outs = []
    for batch in (None, 5):
        prior = PatchPrior(tiny_patch_net, pad=4, psize=12, batch=batch, pad_fill="noise")
        outs.append(prior.denoise_with_grad(x, 0.8, torch.Generator().manual_seed(3), loss))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-5)


def test_dps_solve_with_noise_fill_is_seeded(tiny_patch_net):
    from inverse.operators import make_operator
    op = make_operator("denoise", (32, 32), channels=1)
    y = torch.rand(1, 1, 32, 32)
    sigmas = torch.tensor([2.0, 0.5, 0.05])
    runs = [sample_dps(PatchPrior(tiny_patch_net, pad=4, psize=12, pad_fill=f), op, y, sigmas,
                       torch.Generator().manual_seed(s), inner=1) for f, s in (("noise", 0), ("noise", 0), ("zeros", 0))]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_overlap_average_and_whole_image_fill():
    """'average' pads too: noise there, deterministic with zeros; 'whole' pads only sizes the
    U-Net does not take, and draws nothing otherwise."""
    x = torch.rand(1, 1, 20, 20)
    net = Recorder()
    avg = OverlapAveragePrior(net, psize=8, stride=4, pad=4, pad_fill="noise")
    avg(x, 2.0, torch.Generator().manual_seed(0))
    corner = net.seen[-1][0, 0]  # the first 8 x 8 patch of the 28 x 28 canvas: 4 pad rows/columns, then image
    assert torch.equal(corner[4:, 4:], x[0, 0, :4, :4])
    assert corner[:4].abs().min() > 0 and 1.2 < float(corner[:4].std()) < 3  # noise of std 2
    plain = OverlapAveragePrior(Recorder(), psize=8, stride=4, pad=4)
    assert torch.equal(plain(x, 2.0, None), plain(x, 2.0, torch.Generator()))

    class Multiple8(Recorder):
        model = type("M", (), {"num_levels": 4})()
    whole = WholeImagePrior(Multiple8(), pad_fill="noise")
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    whole(torch.rand(1, 1, 16, 16), 1.0, g)  # a multiple of 8: no canvas
    assert torch.equal(before, g.get_state())
    out = whole(x, 1.0, g)  # 20 -> 24: two pixels each side
    seen = whole.net.seen[-1]
    assert torch.equal(seen[:, :, 2:22, 2:22], x) and seen[:, :, :2].abs().min() > 0
    assert torch.equal(out, x / 2)
    assert build_prior(Recorder(), "patch", pad=4, psize=12, pad_fill="noise").pad_fill == "noise"


# ----------------------------------------------------------------------------------------
# The run: config field, CLI option, config.json, resume

GEOM = ["--pad", "4", "--psize", "12"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    from torch_utils.persistence import save_network
    from training.networks import build_network
    root = tmp_path_factory.mktemp("padfill")
    torch.manual_seed(0)
    net = save_network(build_network("tiny", img_resolution=32, image_channels=1).eval(), root / "tiny.safetensors")
    images = write_smooth_images(root / "images", n=2, noise=0.05)
    return dict(root=root, net=str(net), images=str(images))


def recon(assets, outdir, *extra):
    args = ["--network", assets["net"], "--input", assets["images"], "--outdir", outdir, *GEOM,
            "--problem", "denoise", "--solver", "dds", "--steps", "3", "--sigma-max", "1", "--baseline", "none",
            "--seed", "2", *extra]
    return CliRunner().invoke(inverse_nodist.main, [str(a) for a in args])


def only_run(outdir: Path) -> Path:
    (run,) = [p for p in Path(outdir).iterdir() if p.is_dir()]
    return run


def test_config_default_is_the_solvers_and_cli_option_is_recorded(assets, tmp_path):
    cfg = ReconConfig(network="n", problem="denoise", solver="dps").resolved()
    assert cfg.pad_fill == PAD_FILL_DEFAULTS["dps"]
    assert ReconConfig(network="n", problem="denoise", pad_fill="noise").resolved().pad_fill == "noise"
    res = recon(assets, tmp_path / "dry", "--pad-fill", "noise", "--dry-run")
    assert res.exit_code == 0 and json.loads(res.stdout)["pad_fill"] == "noise"
    res = recon(assets, tmp_path / "bad", "--pad-fill", "gauss")
    assert res.exit_code == 2 and "--pad-fill" in res.output
    for fill in PAD_FILLS:
        res = recon(assets, tmp_path / fill, "--pad-fill", fill)
        assert res.exit_code == 0, res.output
        assert json.loads((only_run(tmp_path / fill) / "config.json").read_text())["pad_fill"] == fill
    res = recon(assets, tmp_path / "default")
    assert json.loads((only_run(tmp_path / "default") / "config.json").read_text())["pad_fill"] == \
        PAD_FILL_DEFAULTS["dds"]
    a, b = (np.load(only_run(tmp_path / f) / "img1_recon.npy") for f in PAD_FILLS)
    assert not np.array_equal(a, b)
    same = np.load(only_run(tmp_path / PAD_FILL_DEFAULTS["dds"]) / "img1_recon.npy")
    assert np.array_equal(np.load(only_run(tmp_path / "default") / "img1_recon.npy"), same)


def test_noise_run_resumes_to_the_fresh_result(assets, tmp_path):
    """A noise-fill run that lost an image resumes (with or without --pad-fill) to the files of
    the uninterrupted run; resuming it with the other fill is refused naming the option."""
    assert recon(assets, tmp_path / "full", "--pad-fill", "noise").exit_code == 0
    full = only_run(tmp_path / "full")
    assert recon(assets, tmp_path / "cut", "--pad-fill", "noise").exit_code == 0
    cut = only_run(tmp_path / "cut")
    for extra in ([], ["--pad-fill", "noise"]):
        (cut / "img1_metrics.json").unlink()
        (cut / "img1_recon.npy").unlink()
        res = recon(assets, tmp_path / "cut", "--resume", cut, *extra)
        assert res.exit_code == 0, res.output
        assert json.loads((cut / "summary.json").read_text())["resumed_images"] == 1
        for name in ("img0", "img1"):
            assert np.array_equal(np.load(cut / f"{name}_recon.npy"), np.load(full / f"{name}_recon.npy"))
    res = recon(assets, tmp_path / "cut", "--resume", cut, "--pad-fill", "zeros")
    assert res.exit_code == 1 and "option '--pad-fill' was 'noise' in that run, now 'zeros'" in res.output


def test_old_config_without_pad_fill_resumes_as_zeros(assets, tmp_path, monkeypatch):
    """A run directory from before the option (config.json without pad_fill) resumes with zeros,
    even for a solver whose default is noise; asking for noise there is refused."""
    import inverse.samplers
    monkeypatch.setitem(inverse.samplers.PAD_FILL_DEFAULTS, "dds", "noise")
    assert recon(assets, tmp_path, "--pad-fill", "zeros").exit_code == 0
    run = only_run(tmp_path)
    fresh = np.load(run / "img1_recon.npy")
    config = json.loads((run / "config.json").read_text())
    del config["pad_fill"]
    (run / "config.json").write_text(json.dumps(config))
    assert ReconConfig(network="n", problem="denoise", solver="dds", resume=str(run)).resolved().pad_fill == "zeros"
    (run / "img1_metrics.json").unlink()
    res = recon(assets, tmp_path, "--resume", run)
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.load(run / "img1_recon.npy"), fresh)
    res = recon(assets, tmp_path, "--resume", run, "--pad-fill", "noise")
    assert res.exit_code == 1 and "option '--pad-fill' was 'zeros' in that run, now 'noise'" in res.output


def test_benchmark_smoke(tmp_path):
    """benchmarks/pad_fill.py on a tiny network and two 64x64 images: one cell per problem, solver
    and fill, per-image PSNR and border error, JSON and markdown, finished cells kept."""
    from PIL import Image

    from torch_utils.persistence import save_network
    from training.networks import build_network
    pf = load_benchmark("pad_fill")
    torch.manual_seed(0)
    net = save_network(build_network("tiny", img_resolution=112, image_channels=1).eval(), tmp_path / "p.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    for k in range(2):
        img = np.zeros((64, 64), np.uint8)
        img[16:48, 12:52] = 120 + 30 * k
        Image.fromarray(img).save(images / f"slice_{k:03d}.png")
    args = ["--network", net, "--images", images, "--psize", "44", "--smoke", "--threads", "1",
            "--problems", "ct_parbeam_8,super_x4", "--solvers", "dps,diffpir", "--outdir", tmp_path / "out"]
    res = CliRunner().invoke(pf.main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    bench = only_run(tmp_path / "out")
    cells = pf.load_cells(bench)
    assert {(c["problem"], c["solver"], c["pad_fill"]) for c in cells} == {
        (p, s, f) for p in ("ct_parbeam_8", "super_x4") for s in ("dps", "diffpir") for f in PAD_FILLS}
    for c in cells:
        slices = {"slice_000"} if c["solver"] == "dps" else {"slice_000", "slice_001"}  # --expensive-slices 1
        assert set(c["per_image"]) == slices and c["steps"] == 2
        assert all(math.isfinite(v["psnr"]) and v["border_rmse"] > 0 for v in c["per_image"].values())
    result = json.loads((bench / "pad_fill.json").read_text())
    assert set(result["solvers"]) == {"dps", "diffpir"} and result["solvers"]["dps"]["n"] == 2
    assert result["solvers"]["diffpir"]["n"] == 4
    den = json.loads((bench / "denoiser.json").read_text())
    assert [r["sigma"] for r in den] == list(pf.LEVELS[::3]) and all(r["border_rmse_noise"] > 0 for r in den)
    assert result["solvers"]["dps"]["verdict"] in PAD_FILLS and result["meta"]["smoke"] is True
    md = (bench / "pad_fill.md").read_text()
    assert "| 10 | 2 |" in md  # the denoiser table: sigma 10, two slices x one draw
    assert md.count("| ct_parbeam_8 |") == 2 and "| diffpir | 4 |" in md and "| diffpir | 4 |" in res.output
    before = {p: p.stat().st_mtime_ns for p in (bench / "cells").iterdir()}
    res = CliRunner().invoke(pf.main, [str(a) for a in args[:-2]] + ["--run-dir", str(bench)], catch_exceptions=False)
    assert res.exit_code == 0 and {p: p.stat().st_mtime_ns for p in before} == before
    edge = pf.edge_mask(6, 5, 2)
    assert edge.sum() == 30 - 2 and not edge[2, 2] and edge[0, 0]
