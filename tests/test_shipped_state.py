"""The committed training state of the shipped prior: it loads with the safe loader, fits the
network its config builds (what ``--resume`` checks first), and continues past the shipped
snapshot. That resuming a state is bit-exact is tested on a tiny run in test_training.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from training.networks import build_network
from training.resume_check import state_mismatch
from training.training_loop import _load_state

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / "checkpoints" / "ct_head_small_training" / "2-aug"


@pytest.fixture(scope="module")
def state() -> dict:
    [path] = sorted(STAGE.glob("training-state-*.pt"))
    assert path.stat().st_size < 25e6
    return _load_state(path)


def last_config() -> Path:
    """config.json, or the newest config-resume-STEP.json (a resumed run writes one)."""
    resumes = sorted(STAGE.glob("config-resume-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return resumes[-1] if resumes else STAGE / "config.json"


def test_committed_state_fits_the_network_of_its_config(state):
    cfg = state["config"]
    saved = json.loads(last_config().read_text())  # the config of the run that wrote the state
    assert cfg == {k: saved[k] for k in cfg}
    pad = cfg["pad_width"]
    height, width = cfg["image_resolution"]
    net = build_network(cfg["arch"], img_resolution=max(height, width) + 2 * pad, image_channels=1,
                        positional=cfg["positional"], **cfg["arch_overrides"])
    current = dict(cfg, image_channels=1, image_resolution=[height, width])
    assert state_mismatch(state, current, net, copy.deepcopy(net)) is None
    net.load_state_dict(state["ema"])  # the weights themselves load, not only the names
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_committed_state_continues_past_the_shipped_snapshot(state):
    shipped = json.loads((REPO / "checkpoints" / "ct_head_small.json").read_text())["extra"]
    last = json.loads((STAGE / "stats.jsonl").read_text().splitlines()[-1])
    assert state["step"] == last["step"] > shipped["step"]
    assert abs(state["nimg"] / 1000 - last["kimg"]) < 1e-6
    assert shipped["stages"][-1]["steps"] == shipped["step"]
