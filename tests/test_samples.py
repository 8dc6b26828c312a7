"""Posterior samples (--samples K, --save-samples): mean / std / samples files, K = 1 equal to
the single-sample run, std large where the data say nothing (inpainting box) and resume.

Tiny position-aware network, 32 x 32 images, pad 4 / psize 12, dds with 3 levels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import write_smooth_images
from PIL import Image

import inverse_nodist
from inverse import io as rio
from inverse.config import ReconConfig
from inverse.operators import make_operator
from inverse.reconstruct import summarize_samples
from inverse.stages import check_samples, validate

INPAINT = ["--problem", "inpaint", "--mask", "box", "--mask-fraction", "0.25", "--noise", "0", "--solver", "dds",
           "--steps", "3", "--baseline", "fbp", "--seed", "2", "--pad", "4", "--psize", "12"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    from torch_utils.persistence import save_network
    from training.networks import build_network

    root = tmp_path_factory.mktemp("samples")
    torch.manual_seed(0)
    net_path = save_network(build_network("tiny", img_resolution=32, image_channels=1).eval(),
                            root / "tiny.safetensors")
    images = write_smooth_images(root / "images")
    return dict(net=str(net_path), images=str(images))


def run_cli(assets, outdir: Path, *extra) -> Path:
    args = ["--network", assets["net"], "--input", assets["images"], "--outdir", outdir, *INPAINT, *extra]
    res = CliRunner().invoke(inverse_nodist.main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    (run_dir,) = [p for p in Path(outdir).iterdir() if p.is_dir()]
    return run_dir


def test_k_samples_files_shapes_mean_std_and_std_where_the_data_is_missing(assets, tmp_path):
    run_dir = run_cli(assets, tmp_path, "--samples", "3", "--save-samples")
    missing = make_operator("inpaint", (32, 32), mask="box", mask_fraction=0.25).mask.cpu().numpy() == 0
    for name in ("img0", "img1"):
        recon = np.load(run_dir / f"{name}_recon.npy")
        std = np.load(run_dir / f"{name}_std.npy")
        samples = np.load(run_dir / f"{name}_samples.npy")
        assert recon.shape == std.shape == (1, 32, 32) and samples.shape == (3, 1, 32, 32)
        assert recon.dtype == std.dtype == samples.dtype == np.float32
        np.testing.assert_allclose(recon, samples.mean(0), atol=1e-6)
        np.testing.assert_allclose(std, samples.std(0, ddof=1), atol=1e-6)
        assert Image.open(run_dir / f"{name}_std.png").size == (32, 32)
        inside, outside = std[0][missing.reshape(32, 32)], std[0][~missing.reshape(32, 32)]
        assert inside.mean() > 0.01  # the samples disagree where nothing was measured
        assert outside.mean() < 0.05 * inside.mean()  # and agree (up to lam) where y fixes the pixel
        marker = json.loads((run_dir / f"{name}_metrics.json").read_text())
        assert marker["samples"] == 3 and marker["std_max"] == pytest.approx(float(std.max()))
        assert {f"{name}_std.npy", f"{name}_std.png", f"{name}_samples.npy"} <= set(marker["files"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["samples"] == 3
    assert summary["denoiser_calls_per_image"]["mean"] == 3  # K samples share each network call
    assert (run_dir / "comparison.png").is_file()


def test_k1_is_the_single_sample_run_exactly(assets, tmp_path):
    plain = run_cli(assets, tmp_path / "plain")
    k1 = run_cli(assets, tmp_path / "k1", "--samples", "1", "--save-samples")
    names = {p.name for p in plain.iterdir()} - {"config.json", "summary.json"}
    assert names == {p.name for p in k1.iterdir()} - {"config.json", "summary.json"}
    assert not any("std" in n or "samples" in n for n in names)
    for name in ("img0", "img1"):
        np.testing.assert_array_equal(np.load(k1 / f"{name}_recon.npy"), np.load(plain / f"{name}_recon.npy"))


def test_samples_differ_from_each_other_and_from_the_plain_run(assets, tmp_path):
    plain = run_cli(assets, tmp_path / "plain")
    k2 = run_cli(assets, tmp_path / "k2", "--samples", "2", "--save-samples")
    samples = np.load(k2 / "img0_samples.npy")
    assert not np.array_equal(samples[0], samples[1])
    assert not np.array_equal(np.load(k2 / "img0_recon.npy"), np.load(plain / "img0_recon.npy"))


def test_resume_replays_a_completed_k_sample_image_and_redoes_the_other(assets, tmp_path):
    first = run_cli(assets, tmp_path / "a", "--samples", "2")
    before = {p.name: p.stat().st_mtime_ns for p in first.glob("img0_*")}
    reference = {t: np.load(first / f"img1_{t}.npy") for t in ("recon", "std")}
    (first / "img1_metrics.json").unlink()  # img1 as if killed before its marker
    (first / "img1_std.npy").unlink()
    args = ["--network", assets["net"], "--input", assets["images"], "--outdir", tmp_path / "a", *INPAINT,
            "--samples", "2", "--resume", first]
    res = CliRunner().invoke(inverse_nodist.main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    assert {p.name: p.stat().st_mtime_ns for p in first.glob("img0_*")} == before  # replayed, not redone
    for t, ref in reference.items():  # redone with its own seed: the same numbers
        np.testing.assert_array_equal(np.load(first / f"img1_{t}.npy"), ref)
    summary = json.loads((first / "summary.json").read_text())
    assert summary["resumed_images"] == 1 and summary["n_images"] == 2
    changed = [*args[:-4], "--samples", "3", "--resume", first]
    res = CliRunner().invoke(inverse_nodist.main, [str(a) for a in changed])
    assert res.exit_code != 0 and "samples" in res.output


def test_summarize_samples_and_checks():
    s = torch.tensor([[[[0.0, 1.0]]], [[[2.0, 1.0]]]])  # K = 2 samples of a (1, 1, 2) image
    mean, std = summarize_samples(s)
    np.testing.assert_allclose(mean, [[[1.0, 1.0]]])
    np.testing.assert_allclose(std, [[[np.sqrt(2.0), 0.0]]])
    one, none = summarize_samples(s[:1])
    assert none is None and np.array_equal(one, s[0].numpy())
    np.testing.assert_allclose(rio.scaled_to_max(np.array([0.0, 0.5, 2.0])), [0, 0.25, 1])
    assert not rio.scaled_to_max(np.zeros(3)).any()
    with pytest.raises(ValueError, match="samples=0"):
        check_samples(0)
    with pytest.raises(ValueError, match="samples=2 with volume"):
        validate(ReconConfig(network="n", problem="ct_parbeam", samples=2, volume=True, device="cpu"))
