"""Reconstruction run, its CLI (inverse_nodist.py), result files and generate.py.

Tiny position-aware network (build_network('tiny', 32, 1)), two 32 x 32 images, a few steps.
Patch geometry for 32 px: pad 4, psize 12 (P = 3, 36 <= 3*12 <= 37).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import write_smooth_images
from PIL import Image

import generate
import inverse_nodist
from inverse import io as rio
from inverse.generate import edm_sample, make_grid, parse_int_list
from inverse.samplers import SAMPLERS, sampler_options

GEOM = ["--pad", "4", "--psize", "12"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """A saved tiny grayscale network, two 32x32 grayscale PNGs, one RGB PNG, an empty dir."""
    from torch_utils.persistence import save_network
    from training.networks import build_network

    root = tmp_path_factory.mktemp("recon")
    torch.manual_seed(0)
    net = build_network("tiny", img_resolution=32, image_channels=1).eval()
    net_path = save_network(net, root / "tiny.safetensors")
    images = write_smooth_images(root / "images", noise=0.05)
    rng = np.random.default_rng(1)
    rgb = root / "rgb"
    rgb.mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "RGB").save(rgb / "color.png")
    empty = root / "empty"
    empty.mkdir()
    corrupt = root / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint")
    return dict(root=root, net=str(net_path), images=str(images), rgb=str(rgb), empty=str(empty),
                corrupt=str(corrupt))


def invoke(cli, args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def recon(assets, outdir, *extra):
    args = ["--network", assets["net"], "--outdir", outdir, *GEOM, *extra]
    if "--measurements" not in extra and "--input" not in extra:
        args += ["--input", assets["images"]]
    return invoke(inverse_nodist, args)


def only_run_dir(outdir: Path) -> Path:
    (run_dir,) = [p for p in Path(outdir).iterdir() if p.is_dir()]
    return run_dir


@pytest.mark.slow
def test_cli_end_to_end_writes_every_file_and_new_run_dirs(assets, tmp_path):
    args = ["--problem", "deblur_gauss", "--kernel-size", "5", "--kernel-sigma", "1.5", "--solver", "dds",
            "--steps", "2", "--baseline", "fbp,tv", "--tv-iters", "5", "--seed", "3"]
    res = recon(assets, tmp_path, *args)
    assert res.exit_code == 0, res.output
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name == "00000-deblur_gauss-dds"
    for name in ("img0", "img1"):
        for tag in ("recon", "pinv", "tv", "measurement"):  # deblurring: the baseline 'fbp' is the pinv
            for ext in ("png", "npy"):
                assert (run_dir / f"{name}_{tag}.{ext}").is_file(), f"{name}_{tag}.{ext}"
        rec = np.load(run_dir / f"{name}_recon.npy")
        assert rec.shape == (1, 32, 32) and rec.dtype == np.float32 and np.isfinite(rec).all()
        assert Image.open(run_dir / f"{name}_recon.png").mode == "L"
    for f in ("metrics.csv", "summary.json", "comparison.png", "config.json"):
        assert (run_dir / f).is_file(), f
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [(r["image"], r["method"]) for r in rows] == [
        (n, m) for n in ("img0", "img1") for m in ("pinv", "tv", "padis")]
    assert all(float(r["psnr"]) > 0 and -1 <= float(r["ssim"]) <= 1 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_images"] == 2 and set(summary["methods"]) == {"pinv", "tv", "padis"}
    assert summary["methods"]["padis"]["psnr"]["n"] == 2
    assert summary["denoiser_calls_per_image"]["mean"] == 2
    assert summary["config"]["seed"] == 3
    assert json.loads((run_dir / "config.json").read_text())["problem"] == "deblur_gauss"

    # A second identical run gets a new directory and repeats the numbers (seeded per image).
    res2 = recon(assets, tmp_path, *args)
    assert res2.exit_code == 0, res2.output
    second = Path(tmp_path) / "00001-deblur_gauss-dds"
    assert second.is_dir()
    np.testing.assert_allclose(np.load(second / "img1_recon.npy"), np.load(run_dir / "img1_recon.npy"),
                               atol=1e-5)


@pytest.mark.slow
def test_cli_ct_with_reduced_detector(assets, tmp_path):
    res = recon(assets, tmp_path, "--problem", "ct_parbeam", "--views", "8", "--detectors", "48",
                "--steps", "2", "--baseline", "fbp", "--max-images", "1")
    assert res.exit_code == 0, res.output
    run_dir = only_run_dir(tmp_path)
    y = np.load(run_dir / "img0_measurement.npy")
    assert y.shape == (1, 8, 48)
    assert np.asarray(Image.open(run_dir / "img0_measurement.png")).shape == (8, 48)
    assert not (run_dir / "img1_recon.npy").exists()


@pytest.mark.slow
@pytest.mark.parametrize("solver", sorted(SAMPLERS))
def test_each_solver_reachable_from_cli(assets, tmp_path, solver):
    inner = ["--inner", "1"] if "inner" in sampler_options(solver) else []
    res = recon(assets, tmp_path, "--problem", "denoise", "--noise", "0.05", "--solver", solver,
                "--steps", "2", *inner, "--baseline", "none", "--max-images", "1")
    assert res.exit_code == 0, res.output
    run_dir = only_run_dir(tmp_path)
    assert np.isfinite(np.load(run_dir / "img0_recon.npy")).all()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["solver"] == solver and list(summary["methods"]) == ["padis"]


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["whole", "average"])
def test_other_priors(assets, tmp_path, prior):
    res = recon(assets, tmp_path, "--problem", "denoise", "--prior", prior, "--stride", "6", "--steps", "2",
                "--baseline", "none", "--max-images", "1")
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_measurements_mode(assets, tmp_path):
    from inverse.operators import make_operator

    op = make_operator("super", (32, 32), factor=2)
    meas = tmp_path / "meas"
    meas.mkdir()
    for k in range(2):
        y = op.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(k)))
        np.save(meas / f"scan{k}_measurement.npy", y[0].numpy())
    out = tmp_path / "out"
    res = recon(assets, out, "--measurements", meas, "--image-size", "32", "--problem", "super",
                "--factor", "2", "--steps", "2", "--baseline", "fbp")
    assert res.exit_code == 0, res.output
    run_dir = only_run_dir(out)
    assert (run_dir / "scan1_recon.npy").is_file() and (run_dir / "scan0_pinv.png").is_file()
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 4 and all(r["psnr"] == "" for r in rows)
    assert json.loads((run_dir / "summary.json").read_text())["ground_truth"] is False

    # Wrong shape for the operator: one line naming the file and both shapes.
    res = recon(assets, tmp_path / "out2", "--measurements", meas, "--image-size", "32", "--problem", "super",
                "--factor", "4", "--steps", "2")
    assert res.exit_code == 1
    assert "scan0_measurement.npy" in res.output and "(1, 8, 8)" in res.output


def one_line_error(res, code, *needles):
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], res.output


def test_bad_inputs_give_one_clear_line(assets, tmp_path):
    base = ["--problem", "denoise", "--steps", "2", "--baseline", "none"]
    missing = tmp_path / "nope"
    one_line_error(recon(assets, tmp_path, *base, "--input", missing), 2, "nope")
    one_line_error(recon(assets, tmp_path, *base, "--input", assets["empty"]), 1, "empty")
    one_line_error(recon(assets, tmp_path, *base, "--input", assets["rgb"]), 1, "color", "channel")
    res = invoke(inverse_nodist, ["--network", assets["net"], "--input", assets["images"], "--outdir", tmp_path,
                                  "--pad", "8", "--psize", "16", *base])
    one_line_error(res, 1, "psize", "valid")
    res = invoke(inverse_nodist, ["--network", tmp_path / "none.safetensors", "--input", assets["images"], *base])
    one_line_error(res, 2, "none.safetensors")
    res = invoke(inverse_nodist, ["--network", assets["corrupt"], "--input", assets["images"], "--outdir", tmp_path,
                                  *GEOM, *base])
    one_line_error(res, 1, "corrupt.safetensors")
    one_line_error(recon(assets, tmp_path, *base, "--input", assets["images"], "--measurements", assets["images"]),
                   2, "exactly one")
    res = invoke(inverse_nodist, ["--network", assets["net"], *base])
    one_line_error(res, 2, "exactly one")
    one_line_error(recon(assets, tmp_path, "--problem", "nosuch"), 2, "ct_parbeam", "denoise")
    one_line_error(recon(assets, tmp_path, *base, "--views", "4"), 2, "--views")
    one_line_error(recon(assets, tmp_path, *base, "--lam", "0.5", "--solver", "dps"), 2, "--lam")
    # Nothing was written by any failing run.
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name[:5].isdigit()]


def test_dry_run_prints_config(assets, tmp_path):
    res = recon(assets, tmp_path, "--problem", "ct_lact", "--views", "10", "--dry-run")
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output)
    assert cfg["problem_kwargs"] == {"views": 10} and cfg["solver"] == "diffpir" and cfg["noise"] == 0.005
    assert not any(tmp_path.iterdir())


def test_read_measurements_checks_shape(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 1, 8, 9), np.float32))
    assert rio.read_measurements(tmp_path, (1, 8, 9))[0][1].shape == (1, 8, 9)
    with pytest.raises(ValueError, match="a.npy.*measurement shape"):
        rio.read_measurements(tmp_path, (1, 8, 8))
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        rio.read_measurements(tmp_path / "missing", (1, 8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no .npy"):
        rio.read_measurements(tmp_path / "empty", (1, 8, 8))


def test_writer_never_overwrites(tmp_path):
    w = rio.ResultWriter(tmp_path)
    w.save_image("x", "recon", np.zeros((1, 4, 4)))
    with pytest.raises(FileExistsError):
        w.save_image("x", "recon", np.ones((1, 4, 4)))


@pytest.mark.parametrize("method", ["euler", "heun", "stochastic"])
def test_edm_sample_converges_to_constant_denoiser(method):
    # D(x, sigma) = 0.5 everywhere: the ODE ends exactly at 0.5 for every start.
    prior = lambda x, sigma, generator: torch.full_like(x, 0.5)
    sigmas = torch.tensor([10.0, 2.0, 0.5, 0.01])
    x = edm_sample(prior, (2, 1, 8, 6), sigmas, torch.Generator().manual_seed(0), method=method)
    torch.testing.assert_close(x, torch.full_like(x, 0.5))


def test_grid_and_seed_parsing():
    assert make_grid(np.zeros((5, 1, 4, 3)), gap=1).shape == (1, 2 * 5 - 1, 3 * 4 - 1)
    assert parse_int_list("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(ValueError):
        parse_int_list("a-b")


@pytest.mark.slow
def test_generate_writes_grid(assets, tmp_path):
    res = invoke(generate, ["--network", assets["net"], "--seeds", "0-2", "--size", "32", *GEOM,
                            "--steps", "2", "--outdir", tmp_path])
    assert res.exit_code == 0, res.output
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name == "00000-generate-32x32"
    samples = np.load(run_dir / "samples.npy")
    assert samples.shape == (3, 1, 32, 32) and samples.min() >= 0 and samples.max() <= 1
    assert not np.allclose(samples[0], samples[1])
    assert np.asarray(Image.open(run_dir / "grid.png")).shape == (2 * 34 - 2, 2 * 34 - 2)
    one_line_error(invoke(generate, ["--network", assets["net"], "--size", "32", "--pad", "8", "--psize", "16",
                                     "--outdir", tmp_path]), 1, "psize")


def test_generate_pad_fill_reaches_the_prior(assets, tmp_path):
    """--pad-fill noise draws the canvas noise from each seed's generator (load_prior's prior with
    pad_fill 'noise'); zeros, the default, is the run without the option."""
    from inverse.prior_setup import load_prior

    args = ["--network", assets["net"], "--seeds", "1", "--size", "32", *GEOM, "--steps", "2", "--method", "euler"]
    runs = {}
    for fill in (None, "zeros", "noise"):
        outdir = tmp_path / str(fill)
        res = invoke(generate, [*args, "--outdir", outdir, *(["--pad-fill", fill] if fill else [])])
        assert res.exit_code == 0, res.output
        run_dir = only_run_dir(outdir)
        assert json.loads((run_dir / "config.json").read_text())["pad_fill"] == (fill or "zeros")
        runs[fill] = np.load(run_dir / "samples.npy")
    assert np.array_equal(runs[None], runs["zeros"]) and not np.allclose(runs["zeros"], runs["noise"])
    loaded = load_prior(assets["net"], [(32, 32)], pad=4, psize=12, pad_fill="noise", steps=2, sigma_min=0.002,
                        sigma_max=80.0)
    x = edm_sample(loaded.prior, (1, 1, 32, 32), loaded.sigmas, torch.Generator().manual_seed(1), method="euler")
    assert np.array_equal(runs["noise"][0], np.clip(x[0].numpy(), 0, 1))
    res = invoke(generate, [*args, "--outdir", tmp_path / "bad", "--pad-fill", "ones"])
    assert res.exit_code == 2 and "--pad-fill" in res.output


# ----------------------------------------------------------------------------------------
# Speed options (issue 7): --images-per-batch, --precision, --compile


def _files(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir() if p.name not in ("config.json",)}


@pytest.mark.slow
def test_images_per_batch_same_files_valid_metrics_and_tail_batch_equals_k1(assets, tmp_path):
    images = tmp_path / "three"
    images.mkdir()
    for p in sorted(Path(assets["images"]).iterdir()):
        (images / p.name).write_bytes(p.read_bytes())
    (images / "img2.png").write_bytes((Path(assets["images"]) / "img0.png").read_bytes())
    args = ["--input", images, "--problem", "deblur_gauss", "--kernel-size", "5", "--kernel-sigma", "1.5",
            "--solver", "dds", "--steps", "3", "--baseline", "fbp", "--seed", "5"]
    runs = {}
    for k in (1, 2):
        res = recon(assets, tmp_path / f"k{k}", *args, "--images-per-batch", k)
        assert res.exit_code == 0, res.output
        runs[k] = only_run_dir(tmp_path / f"k{k}")
    assert _files(runs[1]) == _files(runs[2])
    rows = {k: list(csv.DictReader(open(runs[k] / "metrics.csv"))) for k in runs}
    assert [(r["image"], r["method"]) for r in rows[2]] == [(r["image"], r["method"]) for r in rows[1]]
    assert all(np.isfinite(float(r["psnr"])) and float(r["psnr"]) > 5 and -1 <= float(r["ssim"]) <= 1
               for r in rows[2])
    for name in ("img0", "img1", "img2"):  # measurements never depend on K
        np.testing.assert_array_equal(np.load(runs[2] / f"{name}_measurement.npy"),
                                      np.load(runs[1] / f"{name}_measurement.npy"))
    # img2 is a batch of one (batches [img0, img1], [img2]): exactly its K = 1 result.
    np.testing.assert_array_equal(np.load(runs[2] / "img2_recon.npy"), np.load(runs[1] / "img2_recon.npy"))
    # img0/img1 share a solve (noise and offsets from img0's generator): different, equally valid numbers.
    assert not np.array_equal(np.load(runs[2] / "img1_recon.npy"), np.load(runs[1] / "img1_recon.npy"))
    summary = json.loads((runs[2] / "summary.json").read_text())
    assert summary["n_images"] == 3 and summary["config"]["images_per_batch"] == 2
    assert summary["denoiser_calls_per_image"]["mean"] == 3  # one call per level serves the whole batch


def test_image_batches_groups_consecutive_equal_sizes():
    from inverse.reconstruct import image_batches
    items = [(0, 32), (1, 32), (2, 32), (3, 16), (4, 32), (5, 32)]
    out = image_batches(items, 2, key=lambda it: it[1])
    assert [[i for i, _ in b] for b in out] == [[0, 1], [2], [3], [4, 5]]
    assert [[i for i, _ in b] for b in image_batches(items, 1, key=lambda it: it[1])] == [[i] for i in range(6)]
    with pytest.raises(ValueError, match="images_per_batch=0"):
        image_batches(items, 0, key=lambda it: it[1])


@pytest.mark.slow
def test_precision_bf16_and_compile_fallback_from_cli(assets, tmp_path, monkeypatch):
    def broken_compile(model, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    args = ["--problem", "denoise", "--noise", "0.05", "--steps", "2", "--baseline", "none", "--max-images", "1"]
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        res = recon(assets, tmp_path, *args, "--precision", "bf16", "--compile", "--device", "cpu")
    assert res.exit_code == 0, res.output
    run_dir = only_run_dir(tmp_path)
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["precision"] == "bf16" and cfg["compile"] is True
    rec = np.load(run_dir / "img0_recon.npy")
    assert rec.dtype == np.float32 and np.isfinite(rec).all()


def test_fp16_on_cpu_is_a_usage_error(assets, tmp_path):
    res = recon(assets, tmp_path, "--problem", "denoise", "--precision", "fp16", "--device", "cpu")
    one_line_error(res, 2, "--precision", "fp16 needs a CUDA device", "use bf16 on CPU")
    assert not any(Path(tmp_path).iterdir())


def test_resume_accepts_config_written_before_the_speed_options(tmp_path):
    from inverse.config import ReconConfig
    from inverse.stages import check_resume_config
    old = dict(network="net.safetensors", problem="denoise", solver="dds", seed=0, outdir="out")
    (tmp_path / "config.json").write_text(json.dumps(old))
    check_resume_config(tmp_path, ReconConfig(**old, compile=True))  # compile is free
    with pytest.raises(ValueError, match="option 'precision' was 'fp32' in that run, now 'bf16'"):
        check_resume_config(tmp_path, ReconConfig(**old, precision="bf16"))


def test_parallel_baselines_give_the_same_results(assets, tmp_path):
    """--parallel-baselines (TV in a thread beside the CT solve, its own operator instance)
    changes the timing only: every image file and every PSNR/SSIM are identical."""
    args = ["--problem", "ct_parbeam", "--views", "8", "--detectors", "48", "--solver", "dds", "--steps", "3",
            "--baseline", "fbp,tv", "--tv-iters", "20", "--seed", "3"]
    runs = {}
    for mode in ("seq", "par"):
        extra = ["--parallel-baselines"] if mode == "par" else []
        res = recon(assets, tmp_path / mode, *args, *extra)
        assert res.exit_code == 0, res.output
        runs[mode] = only_run_dir(tmp_path / mode)
    assert _files(runs["seq"]) == _files(runs["par"])
    for f in sorted(runs["seq"].glob("*.npy")):
        np.testing.assert_array_equal(np.load(f), np.load(runs["par"] / f.name), err_msg=f.name)
    rows = {m: [(r["image"], r["method"], r["psnr"], r["ssim"]) for r in csv.DictReader(open(runs[m] / "metrics.csv"))]
            for m in runs}
    assert rows["seq"] == rows["par"] and {r[1] for r in rows["seq"]} == {"fbp", "tv", "padis"}
    assert json.loads((runs["par"] / "config.json").read_text())["parallel_baselines"] is True


def test_non_square_images_reconstruct_with_a_chosen_grid(assets, tmp_path):
    """48x40 and 40x56 (no single pad works with psize >= 16 for 48x40): no --pad/--psize
    needed; the chosen grid is printed and recorded in config.json and reused on resume."""
    images = tmp_path / "odd"
    images.mkdir()
    rng = np.random.default_rng(1)
    for h, w in [(48, 40), (40, 56)]:
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), "L").save(images / f"im{h}x{w}.png")
    args = ["--network", assets["net"], "--input", images, "--outdir", tmp_path / "out", "--problem", "denoise",
            "--steps", "2", "--baseline", "none"]
    res = invoke(inverse_nodist, args)
    assert res.exit_code == 0, res.output
    assert "patch grid for 48x40: pad " in res.output and "patch grid for 40x56: pad 7, psize 16" in res.output
    run_dir = only_run_dir(tmp_path / "out")
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["pad"] is None and cfg["psize"] is None and cfg["patch_range"] == [16, 64]
    assert cfg["grid"]["40x56"] == dict(pad=7, psize=16, chosen=True)
    g = cfg["grid"]["48x40"]
    assert g["chosen"] and len(g["pad"]) == 2 and 16 <= g["psize"] <= 64
    for name in ("im48x40", "im40x56"):
        assert np.load(run_dir / f"{name}_recon.npy").shape[1:] == tuple(int(v) for v in name[2:].split("x"))
    res = invoke(inverse_nodist, [*args, "--resume", run_dir])
    assert res.exit_code == 0, res.output
    # A given pair that does not tile: the error lists pairs that do.
    one_line_error(invoke(inverse_nodist, [*args, "--pad", "24", "--psize", "56"]), 1, "working (pad, psize) pairs",
                   "(7, 16)")


def test_tv_cost_in_help_and_threads_tol_reach_the_run(assets, tmp_path, monkeypatch):
    """--help names TV's iteration count and tolerance; --threads and --tv-tol reach the run
    (config.json; torch's thread count set; TV stops on the tolerance, called with it)."""
    from inverse import baselines
    from inverse.baselines import TV_ITERS, TV_TOL
    text = CliRunner().invoke(inverse_nodist.main, ["--help"], terminal_width=400).output
    assert f"[default: {TV_ITERS};" in text and f"[default: {TV_TOL:g}]" in text and "--threads" in text
    assert "baseline's" not in text
    seen = []
    real_tv = baselines.tv
    monkeypatch.setitem(baselines.BASELINES, "tv", lambda op, y, **kw: seen.append(kw) or real_tv(op, y, **kw))
    threads = torch.get_num_threads()
    try:
        res = recon(assets, tmp_path, "--problem", "denoise", "--steps", "2", "--max-images", "1",
                    "--threads", "1", "--tv-tol", "1e-3", "--tv-iters", "500")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    cfg = json.loads((only_run_dir(tmp_path) / "config.json").read_text())
    assert cfg["threads"] == 1 and cfg["tv_tol"] == 1e-3 and cfg["tv_iters"] == 500
    # no --tv-weight: the problem's default (denoise is not tuned: TV_WEIGHT), written to config.json
    assert seen == [dict(weight=baselines.TV_WEIGHT, iters=500, tol=1e-3)]
    assert cfg["tv_weight"] == baselines.TV_WEIGHT
