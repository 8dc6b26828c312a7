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

import generate
import inverse_nodist
from torch_utils import convert
from torch_utils.persistence import load_network

from edm_fixtures import PAPER_DATASET_KWARGS, PAPER_TINY_KWARGS, no_side_effect, paper_network, write_paper_pickle  # isort: skip
from helpers import write_noise_images, write_smooth_images


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
    images = write_smooth_images(root / "images")
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


# ----------------------------------------------------------------------------------------
# train.py: the paper's README command, every paper option, --transfer

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
README_TRAIN = ("--outdir=training-runs --data=mydata --cond=0 --arch=ddpmpp --batch=16 --lr=1e-4 --dropout=0.05 "
                "--augment=0 --real_p=0.5 --padding=1 --tick=2 --snap=10 --pad_width=64").split()
# Our options that shrink the run to test size (given after the paper's, so they only add).
TINY_TRAIN = ["--cbase", "8", "--cres", "1,1", "--blocks", "1", "--attn", "", "--duration", "0.000016",
              "--batch-mul-base", "1", "--device", "cpu", "--no-progress"]
# For option checks: tiny network and data.
BASE = ["--arch", "tiny", "--pad-width", "4", "--patch-sizes", "8,16", "--batch", "4", "--batch-mul-base", "1",
        "--tick", "0.03", "--lr-rampup", "0.02", "--ema", "0.02", "--device", "cpu", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    return write_noise_images(tmp_path_factory.mktemp("mydata"))


def _train(args, expect=0):
    res = CliRunner().invoke(train.main, [str(a) for a in args])
    assert res.exit_code == expect, res.output
    return res


@pytest.mark.slow
def test_readme_train_command_verbatim_under_torchrun(train_data, tmp_path):
    """The paper README's training command, as typed (4 processes), on tiny data and network."""
    (tmp_path / "mydata").symlink_to(train_data)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
           str(REPO / "train.py"), *README_TRAIN, *TINY_TRAIN]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("paper command (--cond, --padding, --augment): training Patch_EDMPrecond "
                             "(--arch ddpmpp)") == 1
    (run,) = (tmp_path / "training-runs").iterdir()
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["world_size"], cfg["batch"], cfg["lr"], cfg["real_p"], cfg["pad_width"]) == (4, 16, 1e-4, 0.5, 64)
    assert (cfg["tick_kimg"], cfg["snap_ticks"], cfg["arch"], cfg["arch_overrides"]["dropout"]) == (2, 10, "ddpmpp", 0.05)
    (pkl,) = run.glob("network-snapshot-*.pkl")
    assert load_network(pkl).init_kwargs["img_resolution"] == 16 + 2 * 64


def _dry(train_data, tmp_path, *args):
    res = _train(["--data", train_data, "--outdir", tmp_path, *BASE, *args, "-n"])
    return json.loads(res.stdout), res.stderr


@pytest.mark.parametrize("args, key, value", [
    (["--fp16=1"], "precision", "fp16"),
    (["--precond=edm"], "positional", False),
    (["--precond=pedm"], "positional", True),
    (["--implicit_mlp=1"], "arch_overrides", {"implicit_mlp": True}),
    (["--cond=0", "--ema=0.5"], "ema_halflife_kimg", 500.0),  # a paper command: --ema in Mimg
    (["--ema=0.5"], "ema_halflife_kimg", 0.5),                # ours: kimg
    (["--cond=0", "--workers=4"], "workers", 0),              # the paper's loader processes: none here
    (["--real_p=0.3"], "real_p", 0.3),
    (["--pad_width=2"], "pad_width", 2),
    (["--batch-gpu=2"], "batch_gpu", 2),
    (["--xflip=1"], "xflip", True),                           # ours too: the paper's spelling
    (["--xflip"], "xflip", True),
    (["--cond=0", "--cache=1", "--ls=1", "--train_on_latents=0", "--progressive=0", "--four_channels=1",
      "--hash_channels=1", "--padding=1", "--augment=0", "--bench=1"], "precision", "fp32"),
])
def test_paper_train_options_accepted(train_data, tmp_path, args, key, value):
    cfg, err = _dry(train_data, tmp_path, *args)
    assert cfg[key] == value
    assert ("paper command" in err) == any(a.split("=")[0] not in ("--ema", "--real_p", "--pad_width", "--batch-gpu", "--xflip")
                                           for a in args)


def test_train_help_keeps_our_names(train_data):
    text = _train(["--help"]).output
    assert "--real-p" in text and "--pad-width" in text and "--transfer" in text and "-n, --dry-run" in text
    for paper_only in ("--cond", "--precond", "--augment", "--nosubdir", "--real_p", "--hash_channels"):
        assert paper_only not in text


def _final_state(outdir: Path) -> dict:
    (run,) = [p for p in outdir.iterdir() if p.is_dir()]
    return torch.load(max(run.glob("training-state-*.pt")), map_location="cpu", weights_only=True)


def test_transfer_fine_tunes_and_resumes_exactly(train_data, tmp_path):
    """--transfer starts from the given network (its architecture, here not --arch's), changes
    its weights, and an interrupted transfer run resumed from its state ends where an
    uninterrupted one does."""
    from torch_utils.persistence import save_network
    from training.networks import build_network

    torch.manual_seed(5)
    src = build_network("tiny", 24, 1, model_channels=8).eval()
    path = save_network(src, tmp_path / "src.safetensors")
    args = ["--data", train_data, *BASE, "--arch", "small", "--transfer", path]
    _train([*args, "--outdir", tmp_path / "a", "--duration", 0.00012])
    _train([*args, "--outdir", tmp_path / "b", "--duration", 0.00005])
    (half,) = next((tmp_path / "b").iterdir()).glob("training-state-*.pt")
    cfg = json.loads((half.parent / "config.json").read_text())
    assert cfg["transfer"] == str(path) and cfg["ema_rampup_ratio"] is None  # the paper: no EMA ramp-up
    # Resumed as every run is: the same options plus --resume (into its own directory with 'auto').
    _train([*args, "--outdir", tmp_path / "c", "--duration", 0.00012, "--resume", half])
    _train([*args, "--outdir", tmp_path / "b", "--duration", 0.00012, "--resume", "auto"])
    assert len(list((tmp_path / "b").iterdir())) == 1
    a, b, c = (_final_state(tmp_path / name) for name in "abc")
    assert a["step"] == b["step"] == c["step"] > torch.load(half, weights_only=True)["step"]
    assert list(a["net"]) == list(src.state_dict())  # the transfer network's architecture, not 'small'
    assert any(not torch.equal(a["net"][k], v) for k, v in src.state_dict().items())  # fine-tuned
    for key in ("net", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) and torch.equal(a[key][k], c[key][k]) for k in a[key]), key


# ----------------------------------------------------------------------------------------
# inverse_nodist.py: the paper's README command and every paper option

README_RECON = ("--outdir=results --image_dir=image_dir --image_size=256 --views=20 --name=ct_parbeam --steps=100 "
                "--sigma_min=0.003 --sigma_max=10 --zeta=0.3 --pad=24 --psize=56").split()


def _recon(assets, cwd, *args, expect=0):
    (cwd / "image_dir").mkdir(exist_ok=True)
    for f in Path(assets["images"]).iterdir():
        if not (cwd / "image_dir" / f.name).exists():
            (cwd / "image_dir" / f.name).symlink_to(f)
    with CliRunner().isolated_filesystem(temp_dir=cwd) as here:
        Path(here, "image_dir").symlink_to(cwd / "image_dir")
        res = CliRunner().invoke(inverse_nodist.main, [f"--network={assets['net']}", *map(str, args)])
        assert res.exit_code == expect, res.output
        return res, Path(here)


def test_readme_recon_command_verbatim(assets, tmp_path):
    """The paper README's reconstruction command as typed: the paper's solver, step, schedule,
    geometry and noise (dry run: 256 x 256 at 100 x 10 iterations is not for a test)."""
    res, _ = _recon(assets, tmp_path, *README_RECON, "--dry-run")
    cfg = json.loads(res.stdout)
    assert (cfg["problem"], cfg["problem_kwargs"], cfg["image_size"]) == ("ct_parbeam", {"views": 20}, [256, 256])
    assert (cfg["solver"], cfg["solver_kwargs"]) == ("dps", {"zeta": 0.3, "dc_step": "paper"})
    assert (cfg["steps"], cfg["sigma_min"], cfg["sigma_max"], cfg["pad"], cfg["psize"]) == (100, 0.003, 10, 24, 56)
    assert (cfg["noise"], cfg["noise_absolute"], cfg["baselines"]) == (0, True, ["fbp"])
    assert cfg["input"].endswith("image_dir") and cfg["outdir"] == "results"
    assert res.stderr == ("paper command (--image_dir, --name): solver dps with the paper's step (x -= 0.3 * grad "
                          "||y - A D(x)||, then (t^2/4) score + t/sqrt2 z; start clamp(pinv(y)); 10 inner "
                          "iterations), 100 levels 10 -> 0.003, measurement noise std 0 (absolute, --sigma); "
                          "padis' own default is --solver diffpir (README: From the paper's code)\n")


@pytest.mark.slow
def test_readme_recon_command_runs_at_tiny_size(assets, tmp_path):
    """The same command on 32 x 32 images with a few iterations (our options appended), and
    --sigma as the absolute std of the measurement noise (default 0, as in the paper)."""
    tiny = ["--image_size=32", "--pad=4", "--psize=12", "--steps=2", "--inner=1", "--max-images=1"]
    _, here = _recon(assets, tmp_path, *README_RECON, *tiny)
    (run,) = (here / "results").iterdir()
    assert run.name == "00000-ct_parbeam-dps"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["solver_kwargs"] == {"zeta": 0.3, "dc_step": "paper", "inner": 1} and cfg["noise_absolute"]
    assert np.isfinite(np.load(run / "img0_recon.npy")).all()
    clean = np.load(run / "img0_measurement.npy")
    _, here = _recon(assets, tmp_path, *README_RECON, *tiny, "--sigma=0.5", "--steps=1")
    noisy = np.load(next((here / "results").iterdir()) / "img0_measurement.npy")
    assert abs(float(np.std(noisy - clean)) - 0.5) < 0.03  # absolute std, not relative to max |y|
    assert float(np.abs(clean).max()) > 5  # (relative noise 0.5 would be ten times larger)


@pytest.mark.parametrize("args, key, value", [
    (["--name=lact"], "problem", "ct_lact"),
    (["--name=deblur_uniform", "--blursize=5"], "problem_kwargs", {"kernel_size": 5}),
    (["--name=ct_parbeam", "--blursize=31", "--scale=2"], "problem_kwargs", {}),  # not this problem's: unused
    (["--name=super", "--scale=4"], "problem_kwargs", {"factor": 4}),
    (["--name=denoise", "--sigma=0.1"], "noise", 0.1),
    (["--name=denoise", "--channels=1", "--rho=7", "--S_churn=40", "--S_min=0", "--S_max=1", "--S_noise=1"],
     "solver", "dps"),
    (["--name=denoise", "--solver", "dds"], "solver_kwargs", {}),  # ours given: ours runs
    (["--name=denoise", "--dc-step", "landweber"], "solver_kwargs", {"dc_step": "landweber"}),
    (["--problem=denoise", "--image_size=32", "--sigma_min=0.01", "--sigma_max=2"], "sigma_max", 2),  # spellings
])
def test_paper_recon_options_accepted(assets, tmp_path, args, key, value):
    res, _ = _recon(assets, tmp_path, "--image_dir=image_dir", *args, "--dry-run")
    assert json.loads(res.stdout)[key] == value
    assert res.stderr.startswith("paper command (--image_dir")


# The paper's options padis does not implement: each refused with one error line (exit code 2)
# that names it, by train.py (tool "train", dry run) and inverse_nodist.py ("recon", dry run).
@pytest.mark.parametrize("tool, args, words", [
    ("train", ["--cond=1"], "--cond=1 (the paper's option): padis trains unconditional priors"),
    ("train", ["--precond=vp"], "--precond=vp (the paper's option): padis implements EDM preconditioning only"),
    ("train", ["--padding=0"], "--padding=0 (the paper's option): the paper's code marks training without padding"),
    ("train", ["--augment=0.12"], "--augment=0.12 (the paper's option): padis has no augmentation pipeline"),
    ("train", ["--ls=100"], "--ls=100.0 (the paper's option): loss scaling is automatic here"),
    ("train", ["--cache=0"], "--cache=0 (the paper's option): padis always holds the training images in memory"),
    ("train", ["--nosubdir"], "--nosubdir (the paper's option): padis writes every run into a new OUTDIR/NNNNN-DESC"),
    ("train", ["--train_on_latents=1"], "--train_on_latents=1 (the paper's option): latent-space training"),
    ("train", ["--progressive=1"], "--progressive=1 (the paper's option): progressive patch sizes are not implemented"),
    ("train", ["--four_channels=2"], "--four_channels=2 (the paper's option): only the paper's 2 position channels"),
    ("train", ["--hash_channels=3"], "--hash_channels=3 (the paper's option): only the paper's 2 position channels"),
    ("train", ["--arch=adm"], "'adm': the paper's ADM (DhariwalUNet) is not implemented; use ddpmpp"),
    ("train", ["--fp16=1", "--precision", "bf16"], "--fp16 (the paper's option) sets --precision to fp16, but --precision bf16"),
    ("recon", ["--class=3"], "--class=3 (the paper's option): padis priors are unconditional"),
    ("recon", ["--rho=5"], "--rho=5.0 (the paper's option): padis' noise schedule is EDM's with rho 7"),
    ("recon", ["--disc=vp"], "--disc=vp (the paper's option): the paper's inverse_nodist.py hands it to its dps()"),
    ("recon", ["--schedule=ve"], "--schedule=ve (the paper's option): the paper's inverse_nodist.py hands it"),
    ("recon", ["--scaling=none"], "--scaling=none (the paper's option): the paper's inverse_nodist.py hands it"),
    ("recon", ["--solver=euler"], "'euler': the paper's --solver euler|heun is an ODE-solver ablation its dps never uses"),
    ("recon", ["--problem=ct_fanbeam"], "--name (the paper's option) sets --problem to denoise, but --problem ct_fanbeam"),
    ("recon", ["--noise=0.2", "--sigma=0.1"], "--sigma (the paper's option) sets --noise to 0.1, but --noise 0.2"),
])
def test_paper_options_refused_in_one_line(request, tmp_path, tool, args, words):
    if tool == "train":
        res = _train(["--data", request.getfixturevalue("train_data"), "--outdir", tmp_path, *BASE, *args, "-n"],
                     expect=2)
    else:
        res, _ = _recon(request.getfixturevalue("assets"), tmp_path, "--image_dir=image_dir", "--name=denoise",
                        *args, "--dry-run", expect=2)
    error = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(error) == 1 and words in error[0], res.output


def test_recon_help_keeps_our_names():
    text = CliRunner().invoke(inverse_nodist.main, ["--help"]).output
    assert "--input" in text and "--problem" in text and "--sigma-min" in text and "--dc-step" in text
    for paper_only in ("--image_dir", "--name", "--blursize", "--S_churn", "--sigma_min", "--class", "--disc"):
        assert paper_only not in text


def test_transfer_network_must_fit_the_data(tmp_path):
    from torch_utils.persistence import save_network
    from training.networks import build_network
    from training.training_loop import transfer_network

    path = save_network(build_network("tiny", 24, 1, positional=False), tmp_path / "nopos.safetensors")
    with pytest.raises(ValueError, match=r"nopos\.safetensors: --transfer network denoises 1-channel images "
                                         r"without position channels; the training data has 3 channel"):
        transfer_network(path, {}, 3, True)
    net = transfer_network(path, {"dropout": 0.3}, 1, False)
    assert net.training and net.init_kwargs["dropout"] == 0.3 and all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match=r"cannot take the overrides \['model_channels'\]"):
        transfer_network(path, {"model_channels": 32}, 1, False)
