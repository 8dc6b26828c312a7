"""What the checkpoint records about its training decides the prior (whole-image network) and
warns about inputs outside it (images larger than the training images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import inverse_nodist
from inverse.checkpoint_info import input_warnings, prior_problem, trained_patch_range, training_info


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    from torch_utils.persistence import save_network
    from training.networks import build_network

    root = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    net = build_network("tiny", img_resolution=32, image_channels=1).eval()
    whole = save_network(net, root / "whole.safetensors",
                         extra=dict(patch_sizes=["whole"], pad_width=0, dataset_kwargs=dict(resolution=[32, 32])))
    patch = save_network(net, root / "patch.safetensors",
                         extra=dict(patch_sizes=["16", "32"], pad_width=8, dataset_kwargs=dict(resolution=[16, 16])))
    images = root / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(images / "a.png")
    return dict(whole=str(whole), patch=str(patch), images=str(images), root=root)


def test_training_info_and_its_checks(nets):
    info = training_info(nets["patch"])
    assert trained_patch_range(info) == (16, 32)
    assert prior_problem(training_info(nets["whole"]), "patch").startswith("this is a whole-image network")
    assert prior_problem(info, "patch") is None
    warn = input_warnings(info, "patch", (32, 32), 48)
    assert any("larger than the network's training images 16x16" in w for w in warn)
    assert any("psize 48 is outside the network's trained patch sizes 16-32" in w for w in warn)
    assert input_warnings(info, "patch", (16, 16), 16) == []
    assert training_info(nets["root"] / "missing.pkl") == {}


def run(nets, tmp_path, network, *extra):
    args = ["--network", network, "--input", nets["images"], "--problem", "denoise", "--baseline", "none",
            "--steps", "1", "--outdir", tmp_path, "--device", "cpu", *extra]
    return CliRunner().invoke(inverse_nodist.main, [str(a) for a in args])


def test_whole_image_network_is_picked_or_refused_for_patches(nets, tmp_path):
    res = run(nets, tmp_path / "a", nets["whole"])
    assert res.exit_code == 0, res.output
    assert "note: prior 'whole' chosen: the checkpoint was trained on whole images" in res.output
    (run_dir,) = (tmp_path / "a").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["prior"] == "whole"
    res = run(nets, tmp_path / "b", nets["whole"], "--prior", "patch")
    assert res.exit_code == 1
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert "this is a whole-image network" in line and "--prior whole" in line


def test_larger_images_than_trained_are_warned_once(nets, tmp_path):
    res = run(nets, tmp_path, nets["patch"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "larger than the network's training images" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: image 32x32")
    assert "patch grid for 32x32: pad " in res.output and "patch sizes 16-32 px" in res.output
