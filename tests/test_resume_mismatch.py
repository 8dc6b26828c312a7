"""--resume with a state that does not fit: the error names the first differing config field,
or the first differing parameter."""

from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

import train
from training.networks import build_network
from training.resume_check import config_difference, state_dict_difference, state_mismatch

BASE = ["--arch", "tiny", "--pad-width", "4", "--patch-sizes", "8,16", "--batch", "2", "--batch-mul-base", "1",
        "--tick", "0.01", "--device", "cpu", "--workers", "1", "--no-progress", "--seed", "0"]


def test_first_differing_parameter_or_field_is_named():
    torch.manual_seed(0)
    a = build_network("tiny", img_resolution=24, image_channels=1)
    b = build_network("tiny", img_resolution=24, image_channels=1, model_channels=8)
    state = dict(net=a.state_dict(), ema=a.state_dict(), config=dict(arch="tiny", arch_overrides={}))
    assert state_mismatch(state, dict(arch="tiny", arch_overrides={}), a, a) is None
    why = state_mismatch(state, dict(arch="tiny", arch_overrides={}), b, b)
    assert why.startswith("net: parameter ") and "has shape [" in why and "in this network" in why
    why = state_mismatch(state, dict(arch="tiny", arch_overrides=dict(model_channels=8)), b, b)
    assert why == "config field 'arch_overrides' was {} in the saved run, now {'model_channels': 8}"
    partial = {k: v for k, v in a.state_dict().items() if not k.endswith(".bias")}
    assert "is not in the saved state" in state_dict_difference(partial, a, "ema")
    assert config_difference(None, dict(arch="tiny")) is None


def test_cli_resume_mismatch_is_one_line_naming_the_field(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(data / f"i{k}.png")
    run = CliRunner().invoke(train.main, [str(a) for a in ["--data", data, "--outdir", tmp_path / "runs",
                                                           "--duration", 0.00002, *BASE]])
    assert run.exit_code == 0, run.output
    (state,) = (tmp_path / "runs").glob("*/training-state-*.pt")
    res = CliRunner().invoke(train.main, [str(a) for a in ["--data", data, "--outdir", tmp_path / "runs",
                                                           "--duration", 0.00004, *BASE, "--cbase", "8",
                                                           "--resume", state]])
    assert res.exit_code == 1
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert "training state does not match this network/config: config field 'arch_overrides'" in line
    assert "Error(s) in loading state_dict" not in res.output


def test_cli_resume_with_other_padding_names_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / "z.png")
    args = ["--data", data, "--outdir", tmp_path / "runs", "--duration", 0.00002, *BASE]
    assert CliRunner().invoke(train.main, [str(a) for a in args]).exit_code == 0
    (state,) = (tmp_path / "runs").glob("*/training-state-*.pt")
    res = CliRunner().invoke(train.main, [str(a) for a in [*args, "--pad-width", "8", "--resume", state]])
    assert res.exit_code == 1 and "config field '--pad-width' was 4 in the saved run, now 8" in res.output  # the CLI spells it as its flag
