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

import generate
import inverse_nodist
from torch_utils import convert
from torch_utils.persistence import load_network

from edm_fixtures import PAPER_DATASET_KWARGS, PAPER_TINY_KWARGS, no_side_effect, paper_network, write_paper_pickle  # isort: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """A saved tiny grayscale network, the paper-layout pickle of a small paper config (its
    module_src would leave ``marker``) and two 32 x 32 grayscale PNGs."""
    from torch_utils.persistence import save_network
    from training.networks import build_network

    root = tmp_path_factory.mktemp("paper")
    torch.manual_seed(0)
    net = build_network("tiny", img_resolution=32, image_channels=1).eval()
    net_path = save_network(net, root / "tiny.safetensors")
    write_paper_pickle(root / "network-snapshot-000800.pkl", paper_network(PAPER_TINY_KWARGS), root / "marker")
    images = root / "images"
    images.mkdir()
    yy, xx = np.mgrid[:32, :32]
    for k in range(2):
        img = 0.5 + 0.4 * np.sin(xx / (3 + k)) * np.cos(yy / 4)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L").save(images / f"img{k}.png")
    return dict(root=root, net=str(net_path), images=str(images), pkl=str(root / "network-snapshot-000800.pkl"),
                marker=root / "marker")


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


# ----------------------------------------------------------------------------------------
# The paper's pickles: through every entry point, and converted once


def test_paper_pickle_through_inverse_nodist_and_generate(assets, tmp_path):
    res = invoke(inverse_nodist, ["--network", assets["pkl"], "--input", assets["images"], "--outdir", tmp_path / "r",
                                  "--pad", "4", "--psize", "12", "--problem", "denoise", "--noise", "0.05",
                                  "--steps", "2", "--baseline", "none", "--max-images", "1"])
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / "r").iterdir()
    assert np.isfinite(np.load(run_dir / "img0_recon.npy")).all()
    res = invoke(generate, ["--network", assets["pkl"], "--seeds", "0", "--size", "32", "--pad", "4", "--psize", "12",
                            "--steps", "2", "--outdir", tmp_path / "g"])
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / "g").iterdir()
    assert np.isfinite(np.load(run_dir / "samples.npy")).all()
    no_side_effect(assets["marker"])


def test_convert_paper_pickle(assets, tmp_path):
    """One conversion: the same network as safetensors + JSON, with what else the pickle held;
    never overwrites; a second conversion of the result is refused onto itself."""
    out = tmp_path / "ct.safetensors"
    res = CliRunner().invoke(convert.main, [assets["pkl"], str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"wrote {out} and ct.json: PatchEDMPrecond, ")
    ref, net = load_network(assets["pkl"]), load_network(out)
    assert type(net) is type(ref) and net.init_kwargs == ref.init_kwargs
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), net.state_dict().values()))
    extra = json.loads((tmp_path / "ct.json").read_text())["extra"]
    assert extra["converted_from"] == "network-snapshot-000800.pkl"
    assert extra["dataset_kwargs"] == PAPER_DATASET_KWARGS
    assert extra["loss_fn"] == dict(class_name="Patch_EDMLoss", init_kwargs={},
                                    state=dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5))
    before = out.read_bytes(), (tmp_path / "ct.json").read_bytes()
    res = CliRunner().invoke(convert.main, [assets["pkl"], str(out)])
    assert res.exit_code == 1 and "ct.safetensors already exists; refusing to overwrite it" in res.output
    assert (out.read_bytes(), (tmp_path / "ct.json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.json", "ct.safetensors"]  # no temporary left
    res = CliRunner().invoke(convert.main, [str(out)])
    assert res.exit_code == 1 and "is the input file" in res.output
    res = CliRunner().invoke(convert.main, [assets["pkl"], str(tmp_path / "ct.pt")])
    assert res.exit_code == 1 and "must end with .safetensors" in res.output
    no_side_effect(assets["marker"])


def test_convert_as_module_refuses_hostile_pickle(assets, tmp_path):
    """``python -m torch_utils.convert``: default OUT beside IN; a hostile pickle is refused in
    one line and nothing is written."""
    import subprocess
    import sys

    src = tmp_path / "network-snapshot-000800.pkl"
    src.write_bytes(Path(assets["pkl"]).read_bytes())
    cmd = [sys.executable, "-m", "torch_utils.convert"]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([*cmd, str(src)], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "network-snapshot-000800.safetensors").is_file()
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    done = subprocess.run([*cmd, str(evil)], capture_output=True, text=True, cwd=root)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "it references os.system, which is not allowed in a network pickle" in done.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "evil.safetensors").exists()
