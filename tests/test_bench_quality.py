"""Smoke version of benchmarks/bench_quality.py: tiny networks, two 64x64 images, capped steps."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_quality as bq  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from torch_utils.persistence import save_network
    from training.networks import build_network

    root = tmp_path_factory.mktemp("bq")
    torch.manual_seed(0)
    patch = save_network(build_network("tiny", img_resolution=112, image_channels=1).eval(), root / "patch.safetensors")
    whole = save_network(build_network("tiny", img_resolution=64, image_channels=1, positional=False).eval(),
                         root / "whole.safetensors")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("slice_004", "slice_013", "slice_022"):
        img = np.zeros((64, 64), np.uint8)
        img[16:48, 12:52] = 120 + rng.integers(0, 60)
        img[28:36, 20:30] = 230
        Image.fromarray(img).save(images / f"{name}.png")
    return root, patch, whole, images


def test_smoke_all_methods(setup):
    root, patch, whole, images = setup
    common = ["--network", str(patch), "--whole-network", str(whole), "--images", str(images),
              "--slices", "1", "--expensive-slices", "1", "--threads", "1", "--psize", "44", "--smoke",
              "--exclude", "slice_004"]
    res = CliRunner().invoke(bq.main, common + ["--outdir", str(root / "out"), "--problems", "ct_parbeam_20"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    bench = next((root / "out").iterdir())
    cells = {(c["problem"], c["method"]): c for c in bq.load_cells(bench)}
    assert set(cells) == {("ct_parbeam_20", m) for m in bq.METHODS}
    for c in cells.values():
        assert c["n_images"] == 1 and math.isfinite(c["psnr"]["mean"]) and c["failures"] == 0
    assert cells[("ct_parbeam_20", "dps")]["calls_per_image"]["mean"] == 2  # capped: 2 levels x 1 inner
    assert cells[("ct_parbeam_20", "tv")]["calls_per_image"] is None
    # an excluded slice never enters: the staged inputs hold the next slice only
    assert [p.name for p in (bench / "inputs" / "n1").iterdir()] == ["slice_013.png"]
    assert json.loads((bench / "quality.json").read_text())["meta"]["smoke"] is True
    assert (bench / "psnr_vs_seconds.png").stat().st_size > 0
    assert all(set(c["per_image"]) == {"slice_013"} for c in cells.values())

    # --run-dir adds to an earlier benchmark: done cells are kept, the ~1000-call solvers run only
    # on --expensive-problems (CT 20 views), the baselines come with the default cell
    before = {p: p.stat().st_mtime_ns for p in (bench / "cells").iterdir()}
    res = CliRunner().invoke(bq.main, common + ["--run-dir", str(bench), "--problems", "ct_parbeam_20,deblur_uniform_9",
                                                "--methods", "tv,dps"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in before} == before
    cells = {(c["problem"], c["method"]) for c in bq.load_cells(bench)}
    assert {("deblur_uniform_9", m) for m in ("fbp", "tv", "diffpir")} <= cells
    assert ("deblur_uniform_9", "dps") not in cells
    md = (bench / "quality.md").read_text()
    assert md.count("| ct_parbeam_20 |") == len(bq.METHODS) and md.count("| deblur_uniform_9 |") == 3
    res = CliRunner().invoke(bq.main, ["--report", str(bench)], catch_exceptions=False)
    assert res.exit_code == 0 and "| deblur_uniform_9 | TV (PDHG) |" in res.output
    assert len(json.loads((bench / "quality.json").read_text())["meta"]["commands"]) == 2  # both runs


def test_same_measurements_across_methods(setup):
    """FBP of the default (diffpir) cell and the stand-alone config share seeds: the configs
    differ only in the method's own keys; each solver gets its own tuned lam."""
    root, patch, whole, images = setup
    nets = dict(patch=str(patch), whole=str(whole))
    a = bq.cell_config("ct_parbeam_8", "diffpir", nets, images, root, "cpu", 0, {})
    b = bq.cell_config("ct_parbeam_8", "dps", nets, images, root, "cpu", 0, {})
    c = bq.cell_config("ct_parbeam_8", "dds", nets, images, root, "cpu", 0, {})
    assert a.baselines == ["fbp", "tv"] and b.baselines == [] == c.baselines
    assert a.tv_iters == bq.TV_ITERS and a.solver_kwargs["lam"] == bq.PROBLEMS["ct_parbeam_8"].lam
    assert c.solver_kwargs["lam"] == bq.PROBLEMS["ct_parbeam_8"].dds_lam != a.solver_kwargs["lam"]
    same = ("input", "problem", "problem_kwargs", "noise", "seed", "pad", "psize")
    assert all(getattr(a, k) == getattr(b, k) for k in same) and b.solver_kwargs == dict(inner=10, dc_grad="full")


def test_bad_names(setup):
    root, patch, _, images = setup
    res = CliRunner().invoke(bq.main, ["--network", str(patch), "--images", str(images), "--problems", "ct_99"])
    assert res.exit_code == 2 and "ct_99" in res.output


def test_ablation_smoke(setup):
    import bench_ablation as ba

    root, patch, whole, images = setup
    args = ["--network", str(patch), "--psizes", "44:24,24:8", "--model", f"whole net={whole}@whole",
            "--images", str(images), "--slices", "1", "--outdir", str(root / "abl"), "--threads", "1", "--smoke"]
    res = CliRunner().invoke(ba.main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    [bench] = list((root / "abl").iterdir())
    rows = json.loads((bench / "ablation.json").read_text())["rows"]
    assert [(r["label"], r["prior"], r["psize"]) for r in rows] == [
        ("psize 44", "patch", 44), ("psize 24", "patch", 24), ("whole net", "whole", None)]
    assert all(r["n_images"] == 1 and math.isfinite(r["psnr"]["mean"]) for r in rows)
    assert rows[0]["calls_per_image"]["mean"] == 2
    assert "| whole net | whole | - |" in (bench / "ablation.md").read_text()
    bad = CliRunner().invoke(ba.main, ["--network", str(patch), "--model", "x=/nonexistent.safetensors"])
    assert bad.exit_code == 2 and "/nonexistent.safetensors" in bad.output


def test_plot_uses_images_common_to_all_cells(tmp_path):
    """Cells run on different slice counts are compared on the images they share."""
    def cell(method, psnrs, calls=20):
        per = {f"s{i}": dict(psnr=p, ssim=0.5, seconds=1.0) for i, p in enumerate(psnrs)}
        return dict(problem="ct_parbeam_20", method=method, n_images=len(psnrs), psnr=dict(mean=sum(psnrs) / len(psnrs)),
                    seconds_per_image=dict(mean=1.0), calls_per_image=dict(mean=calls) if calls else None,
                    per_image=per)
    cells = [cell("dds", [30, 31, 20, 20]), cell("dps", [29, 32], 1000), cell("tv", [28, 28, 28], None)]
    assert bq.common_images(cells) == ["s0", "s1"]
    assert bq.common_images(cells + [dict(cells[0], per_image=None)]) == []  # one without: no common set
    assert bq.plot_psnr_vs_seconds(cells, tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 0


def test_shifts_are_seeded_documented_and_keep_air():
    import shifts
    a, b = shifts.draw_shift("slice_020", 0), shifts.draw_shift("slice_020", 0)
    assert a == b and shifts.draw_shift("slice_021", 0) != a and shifts.draw_shift("slice_020", 1) != a
    assert -180 <= a["angle"] < 180 and 0.7 <= a["spacing"] <= 1.4 and a["zoom"] == pytest.approx(1 / a["spacing"])
    assert 0.8 <= a["gain"] <= 1.25 and abs(a["offset"]) <= 0.01
    image = np.zeros((1, 32, 32), np.float32)
    image[0, 10:22, 8:24] = 0.5
    out = shifts.apply_shift(image, dict(a, offset=0.0))
    assert out.shape == image.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert out[0, 0, 0] == 0  # air (a corner) stays air: no texture there
    plain = shifts.apply_shift(image, dict(angle=0.0, zoom=1.0, gain=1.0, offset=0.0, texture_seed=1))
    inside = image > shifts.BODY
    assert np.abs(plain[~inside]).max() < 1e-5 and 0.003 < np.std(plain[inside] - image[inside]) < 0.03


def test_shifted_smoke_retunes_tv_and_scores_shifted_slices(setup, tmp_path):
    root, patch, _, images = setup
    tune = tmp_path / "tune"
    tune.mkdir()
    Image.open(images / "slice_004.png").save(tune / "slice_055.png")
    res = CliRunner().invoke(bq.main, ["--network", str(patch), "--images", str(images), "--slices", "1",
                                       "--threads", "1", "--psize", "44", "--smoke", "--exclude", "slice_004",
                                       "--problems", "deblur_uniform_9", "--methods", "diffpir", "--shifted",
                                       "--tune-images", str(tune), "--outdir", str(tmp_path / "out")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    bench = next((tmp_path / "out").iterdir())
    assert bench.name.endswith("-quality-shifted")
    tuned = json.loads((bench / "tv_shifted.json").read_text())["deblur_uniform_9"]
    weight = bq.PROBLEMS["deblur_uniform_9"].tv_weight
    assert [r["weight"] for r in tuned["rows"]] == pytest.approx([f * weight for f in bq.TV_SHIFT_FACTORS])
    cells = {c["method"]: c for c in bq.load_cells(bench)}
    assert cells["tv"]["tv_weight"] == tuned["best"]
    shifted = Image.open(bench / "inputs" / "n1" / "slice_013.png")
    assert np.asarray(shifted).dtype == np.uint16  # the staged input is the shifted 16-bit slice
    record = json.loads((bench / "inputs" / "shifted-test" / "shifts.json").read_text())
    assert set(record["slices"]) == {"slice_013.png"}
    assert json.loads((bench / "quality.json").read_text())["meta"]["shifted"] is True
