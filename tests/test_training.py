"""train.py end to end on tiny pngs: files, dry run, resume (exact), non-finite losses, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import write_noise_images

import train
from training.patch_loss import PatchEDMLoss

REPO = Path(__file__).resolve().parents[1]
# 16x16 images, 24x24 canvas, patches 8/16: ~20 steps of a tiny net in well under a second each.
# Options given later on a command line override these (click keeps the last value).
BASE = ["--arch", "tiny", "--pad-width", "4", "--patch-sizes", "8,16", "--batch", "4", "--batch-mul-base", "1", "--tick", "0.03",
        "--lr-rampup", "0.02", "--ema", "0.02", "--device", "cpu", "--workers", "1", "--no-progress",
        "--seed", "3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_noise_images(tmp_path_factory.mktemp("pngs"))


def _train(args, expect=0):
    result = CliRunner().invoke(train.main, [str(a) for a in args])
    assert result.exit_code == expect, (result.output, result.exception)
    return result


def _runs(outdir: Path) -> list[Path]:
    return sorted(p for p in outdir.iterdir() if p.is_dir())


def _stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_writes_snapshots_state_config_stats(data_dir, tmp_path):
    _train(["--data", data_dir, "--outdir", tmp_path, "--duration", 0.0001, "--desc", "t"] + BASE)
    [run] = _runs(tmp_path)
    assert run.name == "00000-t"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["patch_sizes"] == [8, 16] and cfg["pad_width"] == 4 and cfg["batch_mul"] == {"8": 2, "16": 1}
    stats = _stats(run)
    assert len(stats) >= 2
    assert {"kimg", "step", "loss", "patches_per_s", "sec_per_tick", "lr", "peak_mem_mb"} <= set(stats[0])
    assert all(np.isfinite(s["loss"]) for s in stats)
    [st] = list(run.glob("training-state-*.pt"))
    step = int(st.stem.split("-")[-1])
    assert step == stats[-1]["step"] > 0
    for suffix in (".pkl", ".safetensors", ".json"):
        assert (run / f"network-snapshot-{step:06d}{suffix}").is_file()
    state = _state(st)
    assert state["step"] == step and state["nimg"] >= 100 and state["config"]["arch"] == "tiny"
    assert {"size", "data", "cpu", "cuda"} <= set(state["rng"])
    from torch_utils.persistence import load_network, load_snapshot

    net = load_network(run / f"network-snapshot-{step:06d}.safetensors")
    assert net.pos_channels == 2 and net.img_resolution == 24
    for name, value in net.state_dict().items():
        assert torch.equal(value, state["ema"][name]), name
    snap = load_snapshot(run / f"network-snapshot-{step:06d}.pkl")
    assert snap["dataset_kwargs"]["resolution"] == [16, 16] and snap["augment_pipe"] is None
    torch.testing.assert_close(snap["ema"].state_dict(), net.state_dict(), rtol=0, atol=0)
    assert "done: step" in (run / "log.txt").read_text()


def test_dry_run_prints_config_and_writes_nothing(data_dir, tmp_path):
    out = tmp_path / "runs"
    result = _train(["--data", data_dir, "--outdir", out, "--dry-run", "--cres", "1,2", "--attn", ""] + BASE)
    cfg = json.loads(result.output)
    assert cfg["arch_overrides"] == {"channel_mult": [1, 2], "attn_resolutions": []}
    assert cfg["batch"] == 4 and cfg["device"] == "cpu" and cfg["patch_sizes"] == [8, 16]
    assert not out.exists()


def test_cli_errors_are_one_line(data_dir, tmp_path):
    r = _train(["--data", tmp_path / "missing", "--outdir", tmp_path] + BASE, expect=1)
    assert "missing: no such file or directory" in r.output
    r = _train(["--data", data_dir, "--outdir", tmp_path] + BASE + ["--patch-sizes", "8,64"], expect=1)
    assert "patch size 64 does not fit the padded canvas" in r.output
    r = _train(["--data", data_dir, "--outdir", tmp_path, "--batch-gpu", "3"] + BASE, expect=2)
    assert "--batch-gpu" in r.output


def test_resume_auto_continues_in_same_run_dir(data_dir, tmp_path):
    args = ["--data", data_dir, "--outdir", tmp_path] + BASE
    _train(args + ["--duration", 0.00006, "--resume", "auto"])  # nothing to resume: fresh run
    [run] = _runs(tmp_path)
    first = _stats(run)
    step0 = first[-1]["step"]
    _train(args + ["--duration", 0.00012, "--resume", "auto"])
    assert _runs(tmp_path) == [run]
    stats = _stats(run)
    assert stats[: len(first)] == first and stats[-1]["step"] > step0
    assert [s["step"] for s in stats] == sorted(s["step"] for s in stats)
    steps = sorted(int(p.stem.split("-")[-1]) for p in run.glob("training-state-*.pt"))
    assert steps[0] == step0 and steps[-1] == stats[-1]["step"]
    assert (run / f"config-resume-{step0:06d}.json").is_file()
    assert len(list(run.glob("network-snapshot-*.safetensors"))) == 2
    _train(args + ["--duration", 0.00006])  # no --resume: a new run directory
    assert len(_runs(tmp_path)) == 2


def test_resume_auto_only_resumes_its_own_experiment(data_dir, tmp_path):
    """Two experiments in one --outdir: 'auto' picks the newest run with the same run name."""
    args = ["--data", data_dir, "--outdir", tmp_path, "--resume", "auto"] + BASE
    _train(args + ["--duration", 0.00006, "--desc", "a"])
    _train(args + ["--duration", 0.00006, "--desc", "b", "--no-pos"])  # not a's state: a new run
    a, b = _runs(tmp_path)
    assert a.name.endswith("-a") and b.name.endswith("-b")
    _train(args + ["--duration", 0.00012, "--desc", "a"])  # a continues though b is newer
    assert _runs(tmp_path) == [a, b] and list(a.glob("config-resume-*.json"))
    assert not list(b.glob("config-resume-*.json"))


def test_resumed_run_is_bit_identical(data_dir, tmp_path):
    args = ["--data", data_dir] + BASE + ["--dropout", "0.2", "--batch-gpu", "2"]
    _train(args + ["--outdir", tmp_path / "a", "--duration", 0.00012])
    _train(args + ["--outdir", tmp_path / "b", "--duration", 0.00005])
    [half] = list(_runs(tmp_path / "b")[0].glob("training-state-*.pt"))
    _train(args + ["--outdir", tmp_path / "c", "--duration", 0.00012, "--resume", half])  # --resume PATH
    _train(args + ["--outdir", tmp_path / "b", "--duration", 0.00012, "--resume", "auto"])
    final = {}
    for name in ("a", "b", "c"):
        runs = _runs(tmp_path / name)
        assert len(runs) == 1
        final[name] = _state(max(runs[0].glob("training-state-*.pt")))
    assert final["b"]["step"] == final["a"]["step"] > _state(half)["step"]
    for name in ("b", "c"):
        for key in ("net", "ema"):
            for p, value in final["a"][key].items():
                assert torch.equal(value, final[name][key][p]), (name, key, p)
        assert torch.equal(final["a"]["rng"]["data"][0], final[name]["rng"]["data"][0])


def test_nonfinite_loss_skipped_then_stops(data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_call = PatchEDMLoss.__call__

    def flaky(self, net, images, psize, generator):
        calls["n"] += 1
        loss = real_call(self, net, images, psize, generator)
        return loss * float("nan") if calls["n"] in (3, 4) or calls["n"] > 1000 else loss

    monkeypatch.setattr(PatchEDMLoss, "__call__", flaky)
    args = ["--data", data_dir] + BASE + ["--max-nonfinite", "3"]
    with pytest.warns(UserWarning, match="non-finite loss at step 2"):
        _train(args + ["--outdir", tmp_path / "a", "--duration", 0.00005])
    [run] = _runs(tmp_path / "a")
    assert sum(s["nonfinite"] for s in _stats(run)) == 2
    assert all(np.isfinite(s["loss"]) for s in _stats(run))
    calls["n"] = 1000
    with pytest.warns(UserWarning):
        r = _train(args + ["--outdir", tmp_path / "b", "--duration", 0.00005], expect=1)
    assert "3 non-finite losses in a row" in r.output and "--max-nonfinite 3" in r.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_sigint_write_training_state(data_dir, tmp_path, monkeypatch, signum):
    calls = {"n": 0}
    real_call = PatchEDMLoss.__call__

    def interrupt(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signum)
        return real_call(self, *args)

    monkeypatch.setattr(PatchEDMLoss, "__call__", interrupt)
    before = signal.getsignal(signum)
    _train(["--data", data_dir, "--outdir", tmp_path, "--duration", 0.01] + BASE, expect=128 + signum)
    [run] = _runs(tmp_path)
    [st] = list(run.glob("training-state-*.pt"))
    assert _state(st)["step"] == 3
    for suffix in (".safetensors", ".json", ".pkl"):  # the network of that step too
        assert (run / f"network-snapshot-000003{suffix}").is_file()
    assert f"stopped by signal {int(signum)} at step 3; training state and network snapshot written" \
        in (run / "log.txt").read_text()
    assert signal.getsignal(signum) == before  # handler restored


def test_whole_image_baseline_bf16(data_dir, tmp_path):
    _train(["--data", data_dir, "--outdir", tmp_path, "--duration", 0.00002] + BASE
           + ["--patch-sizes", "whole", "--pad-width", "0", "--precision", "bf16"])
    [run] = _runs(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["patch_sizes"] == ["whole"] and cfg["batch_mul"] == {"whole": 1}
    from torch_utils.persistence import load_network

    [snap] = list(run.glob("network-snapshot-*.safetensors"))
    net = load_network(snap)
    assert net.pos_channels == 0 and net.img_resolution == 16


def test_no_pos_ablation_trains_a_plain_patch_denoiser(data_dir, tmp_path):
    _train(["--data", data_dir, "--outdir", tmp_path, "--duration", 0.0002] + BASE + ["--no-pos"])
    [run] = _runs(tmp_path)
    assert json.loads((run / "config.json").read_text())["positional"] is False
    from inverse.prior import PatchPrior
    from torch_utils.persistence import load_network

    [snap] = list(run.glob("network-snapshot-*.safetensors"))
    net = load_network(snap)
    assert net.pos_channels == 0 and net.img_resolution == 24  # the padded canvas, as with positions
    prior = PatchPrior(net, pad=4, psize=10)  # stitches like the position-aware prior, without positions
    assert not prior.positional and prior(torch.rand(1, 1, 16, 16), 0.5, torch.Generator().manual_seed(0)).shape == (1, 1, 16, 16)


@pytest.mark.slow
def test_ddp_two_cpu_processes(data_dir, tmp_path):
    env = dict(os.environ, PADIS_DEBUG_CHECKSUM_DIR=str(tmp_path / "sums"), OMP_NUM_THREADS="1")
    (tmp_path / "sums").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(REPO / "train.py"), "--data", str(data_dir), "--outdir", str(tmp_path / "runs"),
           "--duration", "0.00005"] + BASE
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "broadcast_buffers" not in proc.stderr and "Grad strides" not in proc.stderr  # no per-rank warnings
    [run] = _runs(tmp_path / "runs")
    sums = [json.loads((tmp_path / "sums" / f"params-rank{r}.json").read_text()) for r in (0, 1)]
    assert sums[0]["step"] == sums[1]["step"] > 0
    assert sums[0]["net"] == sums[1]["net"] and sums[0]["ema"] == sums[1]["ema"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2
    [st] = list(run.glob("training-state-*.pt"))
    state = _state(st)
    assert len(state["rng"]["data"]) == 2 and not torch.equal(*state["rng"]["data"])


def test_distributed_init_gives_plain_cuda_an_index(monkeypatch):
    """torch.cuda.set_device rejects a bare 'cuda' device (seen with torch 2.11 on an H100):
    init picks the current device's index first (CUDA calls stubbed: no GPU needed)."""
    from torch_utils import distributed as ddp
    calls = []
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    assert ddp.init("cuda") == torch.device("cuda", 0)
    assert calls == [torch.device("cuda", 0)]
    assert ddp.init("cuda:0") == torch.device("cuda", 0)


@pytest.mark.slow
def test_ddp_bad_input_is_reported_once_and_every_rank_exits_1(tmp_path):
    """One unreadable file under torchrun: one Error line (rank 0), naming the path once; both
    ranks exit with status 1 (none dies of the launcher's SIGTERM)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"garbage")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(REPO / "train.py"), "--data", str(bad), "--outdir", str(tmp_path / "runs")] + BASE
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and errors[0].count("x.png") == 1, proc.stderr[-3000:]
    assert "unreadable image file" in errors[0]
    assert "exitcode  : -15" not in proc.stderr and proc.stderr.count("exitcode  : 1 ") == 2, proc.stderr[-3000:]
