"""training.config.TrainConfig: the defaults train.py shows, unknown keys, config.json and
training states of earlier runs, batch geometry, the one default-device function."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import write_noise_images

import train
from training import training_loop
from training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
BASE = ["--arch", "tiny", "--pad-width", "4", "--patch-sizes", "8,16", "--batch", "4", "--batch-mul-base", "1",
        "--tick", "0.03", "--lr-rampup", "0.02", "--ema", "0.02", "--device", "cpu", "--workers", "1",
        "--no-progress", "--seed", "3"]

# config.json of `train.py BASE --duration 0.00005 --resume auto --desc r` on write_noise_images'
# five 16x16 images, as the code before TrainConfig wrote it (OUT, DATA: the run's paths). A
# training state holds the same dict under "config".
LEGACY_CONFIG = {
    "outdir": "OUT", "desc": "r", "data": "DATA", "mat_key": "images", "normalize": False, "xflip": False,
    "max_images": None, "arch": "tiny", "arch_overrides": {}, "transfer": None, "batch": 4, "batch_mul_base": 1,
    "batch_gpu": None, "lr": 0.0002, "lr_rampup_kimg": 0.02, "ema_halflife_kimg": 0.02, "ema_rampup_ratio": 0.05,
    "duration_mimg": 5e-05, "tick_kimg": 0.03, "snap_ticks": 10, "dump_ticks": 10, "seed": 3, "real_p": 0.5,
    "pad_width": 4, "patch_sizes": [8, 16], "positional": True, "precision": "fp32", "workers": 1,
    "device": "cpu", "resume": "auto", "max_nonfinite": 10,
    "loss_kwargs": {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5},
    "augment": {"p": 0.0, "rotate": 0.0, "zoom_min": 1.0, "zoom_max": 1.0, "gain": 1.0, "offset": 0.0},
    "adam_betas": [0.9, 0.999], "adam_eps": 1e-08, "progress": False, "run_dir": "OUT/00000-r", "world_size": 1,
    "resumed_from": "", "image_resolution": [16, 16], "image_channels": 1, "batch_mul": {"8": 2, "16": 1},
    "patch_probs": [0.5, 0.5],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_noise_images(tmp_path_factory.mktemp("pngs"))


def _train(args, expect=0):
    result = CliRunner().invoke(train.main, [str(a) for a in args])
    assert result.exit_code == expect, (result.output, result.exception)
    return result


def _legacy(outdir: Path, data: Path) -> dict:
    text = json.dumps(LEGACY_CONFIG).replace('"OUT', json.dumps(str(outdir))[:-1]).replace('"DATA"', json.dumps(str(data)))
    return json.loads(text)


def _final_state(outdir: Path) -> dict:
    [run] = [p for p in outdir.iterdir() if p.is_dir()]
    return torch.load(max(run.glob("training-state-*.pt")), map_location="cpu", weights_only=True)


def test_train_py_defaults_are_the_config_defaults(data_dir):
    printed = json.loads(_train(["--data", data_dir, "--dry-run"]).output)
    assert printed == TrainConfig(data=str(data_dir)).resolved().to_dict()
    assert list(printed) == TrainConfig.field_names()


def test_help_shows_the_config_defaults():
    out = _train(["--help"]).output
    for flag, key in (("--lr", "lr"), ("--ema", "ema_halflife_kimg"), ("--duration", "duration_mimg"),
                      ("--pad-width", "pad_width"), ("--batch-mul-base", "batch_mul_base")):
        shown = re.search(rf"{flag} \S+\s+.*?\[default: ([^\];]+)", out, re.S).group(1)  # '0.0002; x>0'
        assert float(shown) == TrainConfig.default(key), flag
    assert "[default: 16,32,64]" in out


def test_unknown_keys_are_refused_with_the_valid_ones(data_dir):
    for call in (lambda: TrainConfig.from_dict({"data": "x", "lr_kimg": 1}),
                 lambda: TrainConfig(data="x").replace(lr_kimg=1),
                 lambda: training_loop.run(dict(data=str(data_dir)), lr_kimg=1),
                 lambda: TrainConfig.default("lr_kimg")):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and "'lr_kimg'" in msg and "valid: outdir, desc, data," in msg


def test_from_dict_copies_and_resolved_is_stable():
    overrides = {"dropout": 0.1}
    cfg = TrainConfig.from_dict(dict(data="x", arch_overrides=overrides, patch_sizes="32,16", device="cpu"))
    overrides["dropout"] = 0.5
    assert cfg.arch_overrides == {"dropout": 0.1}
    resolved = cfg.resolved()
    assert resolved.patch_sizes == [16, 32] and resolved.augment["zoom_max"] == 1.0
    assert resolved.resolved() == resolved and cfg.patch_sizes == "32,16"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    assert TrainConfig.default("patch_sizes") is not TrainConfig.default("patch_sizes")  # a fresh list


@pytest.mark.parametrize("change, words", [
    (dict(data=None), "'data' (training images) is required"),
    (dict(precision="fp8"), "precision='fp8'"),
    (dict(tick_kimg=0), "tick_kimg must be positive"),
    (dict(pad_width=-1), "pad_width must be >= 0"),
])
def test_bad_values_are_one_line_naming_the_field(change, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        TrainConfig(**dict(dict(data="x", device="cpu"), **change)).resolved()


def test_batch_geometry_returns_the_batch_and_leaves_the_config(tmp_path):
    cfg = TrainConfig(data="x", batch_gpu=1)
    assert training_loop._batch_geometry(cfg, 2) == (2, 1, 1)  # batch None: one per process
    assert cfg.batch is None
    assert training_loop._batch_geometry(cfg.replace(batch=8, batch_gpu=2), 2) == (8, 2, 2)
    with pytest.raises(ValueError, match="batch=6 is not divisible by the 4 processes"):
        training_loop._batch_geometry(cfg.replace(batch=6), 4)


def test_config_json_has_the_keys_and_values_of_earlier_runs(data_dir, tmp_path):
    _train(["--data", data_dir, "--outdir", tmp_path] + BASE + ["--duration", 0.00005, "--resume", "auto",
                                                                "--desc", "r"])
    written = json.loads((tmp_path / "00000-r" / "config.json").read_text())
    legacy = _legacy(tmp_path, data_dir)
    assert list(written) == list(legacy)  # the same keys in the same order
    assert written == legacy
    assert _final_state(tmp_path)["config"] == legacy


def test_a_training_state_of_an_earlier_run_resumes_exactly(data_dir, tmp_path):
    """A state whose config is what the code before TrainConfig wrote resumes, to the same
    weights as an uninterrupted run; a network field that differs from it is still refused."""
    args = ["--data", data_dir] + BASE + ["--desc", "r"]
    _train(args + ["--outdir", tmp_path / "a", "--duration", 0.0001])
    _train(args + ["--outdir", tmp_path / "b", "--duration", 0.00005, "--resume", "auto"])
    [state_path] = (tmp_path / "b" / "00000-r").glob("training-state-*.pt")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    state["config"] = _legacy(tmp_path / "b", data_dir)
    torch.save(state, state_path)
    odd = dict(state, config=dict(state["config"], pad_width=5))
    torch.save(odd, tmp_path / "odd.pt")
    r = _train(args + ["--outdir", tmp_path / "c", "--duration", 0.0001, "--resume", tmp_path / "odd.pt"], expect=1)
    assert "config field '--pad-width' was 5 in the saved run, now 4" in r.output
    _train(args + ["--outdir", tmp_path / "b", "--duration", 0.0001, "--resume", "auto"])
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert a["step"] == b["step"] > state["step"]
    for key in ("net", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_one_default_device_function(monkeypatch):
    from inverse.config import ReconConfig
    from torch_utils.device import default_device

    for available, device in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert default_device() == device
        assert TrainConfig(data="x").resolved().device == device
        assert ReconConfig(network="n", problem="ct_parbeam").resolved().device == device
    pattern = re.compile(r"""cuda\.is_available\(\)\)?\s*else\s*\(?["']cpu""")  # "cuda" if ... else "cpu"
    paths = [p for p in REPO.rglob("*.py") if not {".venv", "tests", "out", "runs", "build"} & set(p.relative_to(REPO).parts)]
    copies = [str(p.relative_to(REPO)) for p in paths if pattern.search(p.read_text(errors="replace"))]
    assert copies == ["torch_utils/device.py"]
