"""Coming from the paper's code: its solver step, its checkpoints and its command lines.

Tiny position-aware network, 32 x 32 images, a few steps (the paper's sizes only in dry runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import inverse_nodist


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """A saved tiny grayscale network and two 32 x 32 grayscale PNGs."""
    from torch_utils.persistence import save_network
    from training.networks import build_network

    root = tmp_path_factory.mktemp("paper")
    torch.manual_seed(0)
    net = build_network("tiny", img_resolution=32, image_channels=1).eval()
    net_path = save_network(net, root / "tiny.safetensors")
    images = root / "images"
    images.mkdir()
    yy, xx = np.mgrid[:32, :32]
    for k in range(2):
        img = 0.5 + 0.4 * np.sin(xx / (3 + k)) * np.cos(yy / 4)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L").save(images / f"img{k}.png")
    return dict(root=root, net=str(net_path), images=str(images))


def invoke(cli, args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_dc_step_paper_from_the_cli(assets, tmp_path):
    base = ["--network", assets["net"], "--input", assets["images"], "--outdir", tmp_path, "--pad", "4",
            "--psize", "12", "--problem", "denoise", "--noise", "0.05", "--steps", "2",
            "--baseline", "none", "--max-images", "1"]
    res = invoke(inverse_nodist, [*base, "--solver", "dps", "--inner", "1", "--dc-step", "paper", "--zeta", "0.2"])
    assert res.exit_code == 0, res.output
    (run_dir,) = Path(tmp_path).iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["solver_kwargs"] == dict(inner=1, zeta=0.2, dc_step="paper")
    assert np.isfinite(np.load(run_dir / "img0_recon.npy")).all()
    res = invoke(inverse_nodist, [*base, "--solver", "dds", "--dc-step", "paper"])
    assert res.exit_code == 2 and "--dc-step does not apply to --solver dds" in res.output
