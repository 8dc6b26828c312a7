"""Volume mode and generate.py under torchrun: work split across 2 gloo ranks on CPU, one run
directory, files bit-identical to one process, each rank's log naming its share, and a 2-rank
volume run stopped midway resumed per slab.

Tiny network (build_network('tiny', 32, 1)); an 8 x 16 x 16 volume in slabs of 2 slices (4 slabs:
rank 0 solves z0000-0001 and z0004-0005, rank 1 z0002-0003 and z0006-0007); 2 solver steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import generate
import inverse_nodist
from inverse import io as rio
from inverse.volume import pending_slabs

REPO = Path(__file__).resolve().parents[1]
VOLUME = ["--volume", "--slab", "2", "--pad", "4", "--psize", "10", "--problem", "ct_parbeam", "--views", "8",
          "--detectors", "24", "--steps", "2", "--baseline", "fbp", "--device", "cpu", "--seed", "5"]
TAGS = ("recon", "fbp", "measurement")
RANK_SLABS = {0: ["v_z0000-0001", "v_z0004-0005"], 1: ["v_z0002-0003", "v_z0006-0007"]}


def phantom(depth: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """A (depth, size, size) volume in [0, 1]: a ball plus a little noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:depth, :size, :size].astype(np.float32)
    c = (size - 1) / 2
    r = np.sqrt((x - c) ** 2 + (y - c) ** 2 + ((z - depth / 2) * size / depth) ** 2)
    return np.clip(0.7 * (r < size * 0.4) + 0.2 + 0.02 * rng.standard_normal(r.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """The tiny network, the volume and the single-process run of it (the reference)."""
    from torch_utils.persistence import save_network
    from training.networks import build_network

    root = tmp_path_factory.mktemp("ranks")
    torch.manual_seed(0)
    net = build_network("tiny", img_resolution=32, image_channels=1).eval()
    net_path = str(save_network(net, root / "tiny.safetensors"))
    np.save(root / "v.npy", phantom(8))
    res = CliRunner().invoke(inverse_nodist.main, ["--network", net_path, "--input", str(root / "v.npy"), *VOLUME,
                                                   "--outdir", str(root / "single")])
    assert res.exit_code == 0, res.output
    (single,) = (root / "single").iterdir()
    return dict(root=root, net=net_path, volume=root / "v.npy", single=single)


def torchrun(args: list, log_dir: Path, env: dict | None = None, wait: bool = True):
    """``torchrun --standalone --nproc_per_node 2`` of a script with its args; each rank's output
    also goes to LOG_DIR/<run>/attempt_0/<rank>/ (:func:`rank_log`)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--log-dir", str(log_dir), "--tee", "3", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def rank_log(log_dir: Path, rank: int) -> str:
    (path,) = log_dir.glob(f"*/attempt_0/{rank}/stderr.log")
    return path.read_text()


def slab_line(log: str) -> str:
    (line,) = [ln for ln in log.splitlines() if "pending slab(s):" in ln]
    return line


def assert_same_volume(run_dir: Path, single: Path) -> None:
    for tag in TAGS:
        a, b = np.load(run_dir / f"v_{tag}.npy"), np.load(single / f"v_{tag}.npy")
        assert a.shape == b.shape and np.array_equal(a, b), tag
    ours, ref = (json.loads((d / "v_metrics.json").read_text()) for d in (run_dir, single))
    assert ours["calls"] == ref["calls"] == 8  # 4 slabs x 2 steps
    for m in ("padis", "fbp"):
        assert ours["methods"][m]["psnr"] == ref["methods"][m]["psnr"]
        assert ours["methods"][m]["ssim"] == ref["methods"][m]["ssim"]
    assert not list(run_dir.glob("*_z0*")) and not list(run_dir.glob(".*.tmp"))  # slab files and temporaries gone


@pytest.mark.slow
def test_two_ranks_split_the_slabs_into_one_run_dir_equal_to_one_process(assets, tmp_path):
    proc = torchrun(["inverse_nodist.py", "--network", assets["net"], "--input", assets["volume"], *VOLUME,
                     "--outdir", tmp_path / "out"], tmp_path / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "out").iterdir()  # one run directory, not one per rank
    assert run_dir.name == "00000-ct_parbeam-diffpir-volume"
    assert_same_volume(run_dir, assets["single"])
    for rank, mine in RANK_SLABS.items():
        log = rank_log(tmp_path / "logs", rank)
        assert slab_line(log) == f"rank {rank} of 2: 2 of 4 pending slab(s): {', '.join(mine)}"
        others = RANK_SLABS[1 - rank]
        assert not any(s in log for s in others), log  # the other rank's slabs are not solved here
    assert f"results in {run_dir}" in proc.stdout  # the table and the path: rank 0 only, once
    assert proc.stdout.count("results in") == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_slices"] == 8 and summary["run_dir"] == str(run_dir)


@pytest.mark.slow
def test_two_rank_run_stopped_midway_resumes_per_slab(assets, tmp_path):
    """Rank 1's last marker is held back (the write-delay hook) while the other three slabs are
    finished; torchrun is then stopped (SIGTERM, as by a scheduler). The resumed 2-rank run solves
    only that slab (on rank 0; rank 1 gets none) and gives the single-process volume exactly."""
    out = tmp_path / "out"
    args = ["inverse_nodist.py", "--network", assets["net"], "--input", assets["volume"], *VOLUME, "--outdir", out]
    proc = torchrun(args, tmp_path / "logs1", env={"PADIS_TEST_WRITE_DELAY": "v_z0006-0007_metrics.json:120"},
                    wait=False)
    try:
        deadline = time.monotonic() + 120
        run_dir = None
        while time.monotonic() < deadline and proc.poll() is None:
            dirs = list(out.iterdir()) if out.is_dir() else []
            run_dir = dirs[0] if dirs else None
            if (run_dir is not None and list(run_dir.glob(".v_z0006-0007_metrics.json.*.tmp"))
                    and all((run_dir / f"{s}_metrics.json").is_file() for s in ["v_z0002-0003", *RANK_SLABS[0]])):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the run did not reach the held-back marker: {proc.poll()} "
                        f"{proc.stdout.read()[-3000:] if proc.poll() is not None else ''}")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert not (run_dir / "v_recon.npy").exists() and not (run_dir / "v_z0006-0007_metrics.json").exists()
    assert list(run_dir.glob(".v_z0006-0007_metrics.json.*.tmp"))  # what the stopped write left
    res = torchrun(args + ["--resume", run_dir], tmp_path / "logs2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert list(out.iterdir()) == [run_dir]
    assert slab_line(rank_log(tmp_path / "logs2", 0)) == "rank 0 of 2: 1 of 1 pending slab(s): v_z0006-0007"
    assert slab_line(rank_log(tmp_path / "logs2", 1)) == "rank 1 of 2: 0 of 1 pending slab(s): none"
    assert_same_volume(run_dir, assets["single"])


@pytest.mark.slow
def test_generate_two_ranks_split_the_seeds_into_one_run_dir(assets, tmp_path):
    opts = ["--network", assets["net"], "--seeds", "0-4", "--size", "16", "--pad", "4", "--psize", "10",
            "--steps", "3", "--device", "cpu"]
    res = CliRunner().invoke(generate.main, [*map(str, opts), "--outdir", str(tmp_path / "single")])
    assert res.exit_code == 0, res.output
    proc = torchrun(["generate.py", *opts, "--outdir", tmp_path / "out"], tmp_path / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "out").iterdir()
    (single,) = (tmp_path / "single").iterdir()
    a, b = np.load(run_dir / "samples.npy"), np.load(single / "samples.npy")
    assert a.shape == (5, 1, 16, 16) and np.array_equal(a, b)
    assert json.loads((run_dir / "config.json").read_text())["run_dir"] == str(run_dir)
    for rank, seeds in ((0, "0, 2, 4"), (1, "1, 3")):
        lines = [ln for ln in rank_log(tmp_path / "logs", rank).splitlines() if "seed(s):" in ln]
        assert lines == [f"rank {rank} of 2: {len(seeds.split(','))} of 5 seed(s): {seeds}"]


def test_pending_slabs_skip_finished_volumes_and_slabs(tmp_path):
    """What rank 0 hands out: slabs without a marker, over all volumes in input order; a volume
    whose NAME_metrics.json exists is complete."""
    for name, depth in (("a", 5), ("b", 4), ("c", 3)):
        np.save(tmp_path / f"{name}.npy", phantom(depth, 8))
    vols = [rio.open_volume(tmp_path / f"{n}.npy") for n in "abc"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert pending_slabs(vols, run_dir, 2) == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 0, 2), (1, 2, 4), (2, 0, 2),
                                                (2, 2, 3)]
    (run_dir / "a_z0002-0003_metrics.json").write_text("{}")
    (run_dir / "b_metrics.json").write_text("{}")
    assert pending_slabs(vols, run_dir, 2) == [(0, 0, 2), (0, 4, 5), (2, 0, 2), (2, 2, 3)]
