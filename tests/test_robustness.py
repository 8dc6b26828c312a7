"""Robustness (issue 6): kill and resume (training and reconstruction), one bad file among
good ones, every bad input of docs/ARCHITECTURE.md through the CLIs, never overwrite, full disk /
unwritable outdir, untrusted training states, non-finite reconstructions.

Tiny nets, 16-32 px images, a few steps; the kill tests run train.py / inverse_nodist.py as
subprocesses and are marked slow. notes/robustness.md maps each failure class to its test.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from click.testing import CliRunner
from PIL import Image

import inverse_nodist
import train
from torch_utils import misc
from torch_utils.persistence import load_network, load_snapshot, save_network
from training.networks import build_network

REPO = Path(__file__).resolve().parents[1]
# train.py: 16x16 images, patches 8/16 on a 24x24 canvas, a state and a snapshot every tick (~5 steps).
TRAIN = ["--arch", "tiny", "--pad-width", "4", "--patch-sizes", "8,16", "--batch", "4", "--batch-mul-base", "1",
         "--tick", "0.03", "--lr-rampup", "0.02", "--ema", "0.02", "--device", "cpu", "--workers", "1",
         "--no-progress", "--seed", "5", "--snap", "1", "--dump", "1"]
# inverse_nodist.py: 32x32 images, pad 4 / psize 12, dds with 2 levels, fbp baseline.
RECON = ["--problem", "denoise", "--noise", "0.05", "--pad", "4", "--psize", "12", "--steps", "2",
         "--baseline", "fbp", "--seed", "1", "--device", "cpu"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _png(path: Path, size: int = 32, seed: int = 0, mode: str = "L") -> Path:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("robust")
    torch.manual_seed(0)
    net = save_network(build_network("tiny", 32, 1).eval(), root / "net.safetensors")
    other = root / "other"  # a network of another architecture (3-channel images)
    other.mkdir()
    save_network(build_network("tiny", 32, 3).eval(), other / "rgbnet.safetensors")
    train_data, recon_data = root / "train", root / "recon"
    train_data.mkdir()
    recon_data.mkdir()
    for k in range(5):
        _png(train_data / f"img{k}.png", 16, k)
    for k in range(3):
        _png(recon_data / f"img{k}.png", 32, 10 + k)
    return dict(root=root, net=str(net), other_net=str(other / "rgbnet.safetensors"),
                train=train_data, recon=recon_data)


def _invoke(cli, args, env=None):
    return CliRunner(env=env).invoke(cli.main, [str(a) for a in args])


def _ok(cli, args):
    res = _invoke(cli, args)
    assert res.exit_code == 0, (res.output, res.exception)
    return res


@pytest.fixture
def one_thread():
    """Bit-for-bit comparisons with subprocesses (OMP_NUM_THREADS=1) need one thread here too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_line_error(res, code: int, *needles: str) -> str:
    """Exit ``code``, exactly one 'Error: ...' line holding every needle, no traceback."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _run_dirs(outdir: Path) -> list[Path]:
    return sorted(p for p in Path(outdir).iterdir() if p.is_dir()) if Path(outdir).exists() else []


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _temps(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def _check_training_files(run_dir: Path) -> int:
    """(a) every snapshot and state file is complete and loads; returns the newest state step."""
    for snap in run_dir.glob("network-snapshot-*.safetensors"):
        load_network(snap)
    for pkl in run_dir.glob("network-snapshot-*.pkl"):
        assert "ema" in load_snapshot(pkl)
    steps = []
    for st in run_dir.glob("training-state-*.pt"):
        state = _state(st)
        assert state["step"] == int(st.stem.split("-")[-1])
        steps.append(state["step"])
    from training.training_loop import find_latest_state
    latest = find_latest_state(run_dir.parent)
    assert latest is not None and latest.name == f"training-state-{max(steps):06d}.pt"  # never a temp file
    return max(steps)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.time()
    while not predicate():
        assert proc.poll() is None, f"process ended early: {proc.stderr.read()[-2000:]}"
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.02)


def _spawn(script: str, args: list, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / script)] + [str(a) for a in args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "the process finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


# ----------------------------------------------------------------------------------------
# 1. Kill and resume: training


@pytest.mark.slow
def test_train_sigkill_anytime_and_mid_snapshot_then_resume_is_bit_identical(assets, tmp_path, one_thread):
    args = ["--data", assets["train"], "--duration", 0.0003] + TRAIN
    _ok(train, args + ["--outdir", tmp_path / "ref"])  # uninterrupted reference (in-process)
    [ref] = _run_dirs(tmp_path / "ref")
    ref_state = _state(max(ref.glob("training-state-*.pt")))

    out = tmp_path / "runs"
    rng = np.random.default_rng(6)
    # Kill 1: at a random moment after the first snapshot. Each state write is slowed by 0.3 s
    # (after its temporary file is written) so that the run lasts long enough to be killed.
    proc = _spawn("train.py", args + ["--outdir", out], dict(ENV, **{misc.WRITE_DELAY_ENV: "training-state-*.pt:0.3"}))
    _wait_for(lambda: any(out.glob("*/training-state-*.pt")), proc)  # first snapshot + state
    time.sleep(float(rng.uniform(0.0, 1.5)))
    _kill(proc)
    [run] = _run_dirs(out)
    killed_at = _check_training_files(run)

    # Kill 2: while a snapshot's .pkl exists only under its temporary name (a new one: kill 1
    # may itself have left temporaries, which the resumed run deletes when it starts).
    left = set(run.glob(".network-snapshot-*.pkl.*.tmp"))
    proc = _spawn("train.py", args + ["--outdir", out, "--resume", "auto"],
                  dict(ENV, **{misc.WRITE_DELAY_ENV: "network-snapshot-*.pkl:60"}))
    _wait_for(lambda: set(run.glob(".network-snapshot-*.pkl.*.tmp")) - left, proc)
    _kill(proc)
    assert _run_dirs(out) == [run]
    log = (run / "log.txt").read_text()
    assert f"resumed from {run / f'training-state-{killed_at:06d}.pt'} at step {killed_at}," in log  # (b)
    [tmp] = _temps(run)
    step = int(tmp.name.split(".")[1].split("-")[-1])
    assert (run / f"network-snapshot-{step:06d}.safetensors").is_file()
    assert not (run / f"network-snapshot-{step:06d}.pkl").exists()  # the half-written snapshot
    resumed_at = _check_training_files(run)  # the temp file is ignored
    assert resumed_at >= killed_at

    # Resume to the end (in-process): temporaries cleaned, the partial snapshot completed.
    _ok(train, args + ["--outdir", out, "--resume", "auto"])
    assert _run_dirs(out) == [run] and not _temps(run)
    assert f"removed {tmp.name}" in (run / "log.txt").read_text()
    assert f"resumed from {run / f'training-state-{resumed_at:06d}.pt'}" in (run / "log.txt").read_text()
    final_step = _check_training_files(run)
    for snap in run.glob("network-snapshot-*.safetensors"):
        assert snap.with_suffix(".json").is_file() and snap.with_suffix(".pkl").is_file()
    final = _state(run / f"training-state-{final_step:06d}.pt")
    assert final["step"] == ref_state["step"]  # (c): bit for bit
    for key in ("net", "ema"):
        for name, value in ref_state[key].items():
            assert torch.equal(value, final[key][name]), (key, name)
    assert torch.equal(final["rng"]["data"][0], ref_state["rng"]["data"][0])


def test_train_hostile_or_foreign_training_state_is_refused(assets, tmp_path):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "training-state-000001.pt"
    torch.save({"net": Evil()}, evil)
    args = ["--data", assets["train"], "--outdir", tmp_path / "runs", "--duration", 0.00002] + TRAIN
    _one_line_error(_invoke(train, args + ["--resume", evil]), 1, "training-state-000001.pt",
                    "unreadable training state")
    assert not marker.exists()
    truncated = tmp_path / "training-state-000002.pt"
    _ok(train, ["--data", assets["train"], "--outdir", tmp_path / "small", "--duration", 0.00002] + TRAIN)
    good = max(_run_dirs(tmp_path / "small")[0].glob("training-state-*.pt"))
    truncated.write_bytes(good.read_bytes()[:-200])
    _one_line_error(_invoke(train, args + ["--resume", truncated]), 1, "training-state-000002.pt",
                    "unreadable training state")
    # A state of another architecture (wider network).
    _one_line_error(_invoke(train, args + ["--resume", good, "--cbase", "32"]), 1, good.name,
                    "does not match this network/config")
    _one_line_error(_invoke(train, args + ["--cbase", "48", "--cres", "1,2,2"]), 1, "model_channels 48",
                    "not divisible by its 32 groups")
    assert not _run_dirs(tmp_path / "runs")


# ----------------------------------------------------------------------------------------
# 2. Kill and resume: reconstruction


def _outputs(run_dir: Path, name: str) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in run_dir.glob(f"{name}_*")}


def _metrics(run_dir: Path) -> list[tuple]:
    import csv
    return [(r["image"], r["method"], r["psnr"], r["ssim"]) for r in csv.DictReader(open(run_dir / "metrics.csv"))]


@pytest.mark.slow
def test_recon_sigkill_then_resume_redoes_only_the_image_in_progress(assets, tmp_path, one_thread):
    args = ["--network", assets["net"], "--input", assets["recon"]] + RECON
    _ok(inverse_nodist, args + ["--outdir", tmp_path / "ref"])  # uninterrupted reference
    [ref] = _run_dirs(tmp_path / "ref")

    out = tmp_path / "out"
    # img1's reconstruction blocks once written to its temporary name: the kill lands mid-image.
    proc = _spawn("inverse_nodist.py", args + ["--outdir", out],
                  dict(ENV, **{misc.WRITE_DELAY_ENV: "img1_recon.npy:60"}))
    _wait_for(lambda: any(out.glob("*/.img1_recon.npy.*.tmp")), proc)
    _kill(proc)
    [run] = _run_dirs(out)
    assert (run / "img0_metrics.json").is_file() and not (run / "img1_metrics.json").exists()
    assert not (run / "summary.json").exists()
    done = _outputs(run, "img0")
    assert (run / "img1_measurement.npy").is_file()  # img1's partial outputs

    _ok(inverse_nodist, args + ["--outdir", out, "--resume", run])
    assert _run_dirs(out) == [run] and not _temps(run)
    assert _outputs(run, "img0") == done  # not recomputed, not rewritten
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_images"] == 1 and summary["n_images"] == 3 and summary["failures"] == []
    assert _metrics(run) == _metrics(ref)  # same numbers as a fresh run
    for k in range(3):
        np.testing.assert_array_equal(np.load(run / f"img{k}_recon.npy"), np.load(ref / f"img{k}_recon.npy"))
        assert json.loads((run / f"img{k}_metrics.json").read_text())["files"]
    assert (run / "comparison.png").is_file()


def test_recon_resume_after_lost_marker_and_config_mismatch(assets, tmp_path):
    args = ["--network", assets["net"], "--input", assets["recon"], "--outdir", tmp_path] + RECON
    _ok(inverse_nodist, args)
    [run] = _run_dirs(tmp_path)
    before = {k: _outputs(run, f"img{k}") for k in range(3)}
    summary_before = json.loads((run / "summary.json").read_text())
    (run / "img2_metrics.json").unlink()  # as if killed just before img2's marker
    (run / ".img2_tv.npy.deadbeef.tmp").write_bytes(b"partial")

    _ok(inverse_nodist, args + ["--resume", run])
    assert [_outputs(run, f"img{k}") == before[k] for k in range(3)] == [True, True, False]
    assert not _temps(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_images"] == 2
    assert summary["methods"]["padis"]["psnr"] == summary_before["methods"]["padis"]["psnr"]

    # Options that change the result must match the run being resumed.
    res = _invoke(inverse_nodist, args + ["--resume", run, "--steps", "3"])
    _one_line_error(res, 1, "--resume", "'steps'", "2", "3")
    res = _invoke(inverse_nodist, args + ["--resume", tmp_path])  # not a run directory
    _one_line_error(res, 1, "--resume", "config.json")
    _one_line_error(_invoke(inverse_nodist, args + ["--resume", tmp_path / "nope"]), 2, "--resume")
    assert _run_dirs(tmp_path) == [run]


# ----------------------------------------------------------------------------------------
# 3. One bad file does not sink a directory; 7. non-finite reconstruction


def test_recon_bad_files_are_reported_and_the_others_reconstructed(assets, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(assets["recon"], data)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _png(data / "small.png", 16)
    _png(data / "color.png", 32, mode="RGB")
    np.save(data / "nan.npy", np.full((32, 32), np.nan, np.float32))
    res = _invoke(inverse_nodist, ["--network", assets["net"], "--input", data, "--outdir", tmp_path / "out"]
                  + RECON)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "4 input(s) failed" in res.output
    [run] = _run_dirs(tmp_path / "out")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_images"] == 3
    reasons = {Path(f["file"]).name: f["reason"] for f in summary["failures"]}
    assert set(reasons) == {"broken.png", "small.png", "color.png", "nan.npy"}
    assert "unreadable image file" in reasons["broken.png"]
    assert "psize" in reasons["small.png"] and "16" in reasons["small.png"]
    assert "3 channel(s)" in reasons["color.png"] and "1-channel" in reasons["color.png"]
    assert "NaN or Inf" in reasons["nan.npy"]
    for name in reasons:
        assert name in res.stderr
    for k in range(3):
        assert (run / f"img{k}_metrics.json").is_file()


def test_recon_nonfinite_solver_stops_that_image_only(assets, tmp_path, monkeypatch):
    from inverse.io import ResultWriter
    from inverse.prior import PatchPrior
    real_prior, real_measurement, current = PatchPrior.__call__, ResultWriter.save_measurement, {}

    def measurement(self, name, y):  # the run saves each image's measurement before solving
        current["name"] = name
        return real_measurement(self, name, y)

    def nan_for_img1(self, *args, **kwargs):
        out = real_prior(self, *args, **kwargs)
        return out * float("nan") if current.get("name") == "img1" else out

    monkeypatch.setattr(ResultWriter, "save_measurement", measurement)
    monkeypatch.setattr(PatchPrior, "__call__", nan_for_img1)
    res = _invoke(inverse_nodist, ["--network", assets["net"], "--input", assets["recon"], "--outdir", tmp_path]
                  + RECON)
    assert res.exit_code == 1 and "1 input(s) failed" in res.output and "Traceback" not in res.output
    [run] = _run_dirs(tmp_path)
    [failure] = json.loads((run / "summary.json").read_text())["failures"]
    assert failure["image"] == "img1" and failure["file"].endswith("img1.png")
    assert "reconstruction stopped" in failure["reason"] and "non-finite" in failure["reason"]
    assert "img1.png [img1]: reconstruction stopped" in res.stderr
    assert (run / "img0_metrics.json").is_file() and (run / "img2_metrics.json").is_file()
    assert not (run / "img1_metrics.json").exists() and not (run / "img1_recon.npy").exists()


# ----------------------------------------------------------------------------------------
# 5. Every bad input of docs/ARCHITECTURE.md through the CLIs: one line naming the file or option and
#    what was expected; exit 2 for usage errors, 1 for failures; traceback only with --debug.


def _bad_inputs(root: Path, size: int) -> dict[str, tuple[Path, list[str]]]:
    """name -> (path, needles of the expected message)."""
    root.mkdir(parents=True, exist_ok=True)
    cases = {}

    def case(name, path, *needles):
        cases[name] = (path, [*needles])

    (root / "empty").mkdir()
    case("empty_dir", root / "empty", "empty", "no files", "expected image files")
    (root / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    case("unreadable_file", root / "garbage.png", "garbage.png", "unreadable image file")
    rgba = root / "rgba.png"
    Image.fromarray(np.zeros((size, size, 4), np.uint8), "RGBA").save(rgba)
    case("wrong_channel_count", rgba, "rgba.png", "RGBA has transparent pixels", "expected an opaque image")
    np.save(root / "nan.npy", np.where(np.eye(size) > 0, np.inf, 0.5).astype(np.float32))
    case("nan_inf", root / "nan.npy", "nan.npy", "NaN or Inf", "expected finite values")
    np.save(root / "range.npy", np.linspace(-1, 2, size * size, dtype=np.float32).reshape(size, size))
    case("float_outside_unit_range", root / "range.npy", "range.npy", "expected [0, 1]", "--normalize")
    scipy.io.savemat(root / "novar.mat", {"slices": np.zeros((size, size))})
    case("mat_without_variable", root / "novar.mat", "novar.mat", "no variable 'images'", "--mat-key")
    return cases


BAD_INPUTS = ["empty_dir", "unreadable_file", "wrong_channel_count", "nan_inf", "float_outside_unit_range",
              "mat_without_variable"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_train_cli_bad_input(assets, tmp_path, case):
    path, needles = _bad_inputs(tmp_path / "bad", 16)[case]
    res = _invoke(train, ["--data", path, "--outdir", tmp_path / "runs", "--duration", 0.00002] + TRAIN)
    _one_line_error(res, 1, *needles)
    assert not _run_dirs(tmp_path / "runs")  # failed before any work


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_recon_cli_bad_input(assets, tmp_path, case):
    path, needles = _bad_inputs(tmp_path / "bad", 32)[case]
    res = _invoke(inverse_nodist, ["--network", assets["net"], "--input", path, "--outdir", tmp_path / "out"]
                  + RECON)
    _one_line_error(res, 1, *needles)
    assert not _run_dirs(tmp_path / "out")


def test_train_cli_missing_data_and_debug_traceback(tmp_path):
    args = ["--data", tmp_path / "nope", "--outdir", tmp_path / "runs"] + TRAIN
    _one_line_error(_invoke(train, args), 1, "nope: no such file or directory")
    res = _invoke(train, args + ["--debug"])
    assert res.exit_code == 1 and isinstance(res.exception, FileNotFoundError)  # the traceback's exception
    _one_line_error(_invoke(train, ["--outdir", tmp_path] + TRAIN), 2, "--data")  # usage error


def test_recon_cli_missing_input_and_debug_traceback(assets, tmp_path):
    args = ["--network", assets["net"], "--outdir", tmp_path / "out"] + RECON
    _one_line_error(_invoke(inverse_nodist, args + ["--input", tmp_path / "nope"]), 2, "--input", "nope",
                    "does not exist")
    res = _invoke(inverse_nodist, args + ["--input", tmp_path, "--debug"])  # tmp_path: no image files
    assert res.exit_code == 1 and isinstance(res.exception, ValueError)


def test_recon_cli_wrong_image_size_for_option(assets, tmp_path):
    res = _invoke(inverse_nodist, ["--network", assets["net"], "--input", assets["recon"] / "img0.png",
                                   "--image-size", "48", "--outdir", tmp_path] + RECON)
    _one_line_error(res, 1, "img0.png", "32x32", "expected --image-size 48x48")


def test_recon_cli_checkpoint_of_another_architecture(assets, tmp_path):
    res = _invoke(inverse_nodist, ["--network", assets["other_net"], "--input", assets["recon"],
                                   "--outdir", tmp_path] + RECON)
    _one_line_error(res, 1, "img0.png", "1 channel(s)", "3-channel")
    bad = tmp_path / "net.safetensors"
    bad.write_bytes(Path(assets["net"]).read_bytes()[:-64])  # truncated, .json beside it missing
    _one_line_error(_invoke(inverse_nodist, ["--network", bad, "--input", assets["recon"], "--outdir", tmp_path]
                            + RECON), 1, "net.safetensors", "not a valid safetensors")


@pytest.mark.parametrize("cli", ["train", "recon"])
def test_cli_impossible_patch_geometry(assets, tmp_path, cli):
    if cli == "train":
        res = _invoke(train, ["--data", assets["train"], "--outdir", tmp_path] + TRAIN + ["--patch-sizes", "8,64"])
        _one_line_error(res, 1, "patch size 64", "canvas")
        _one_line_error(_invoke(train, ["--data", assets["train"], "--outdir", tmp_path] + TRAIN
                                + ["--pad-width", "-1"]), 2, "--pad-width")
    else:
        args = ["--network", assets["net"], "--input", assets["recon"], "--outdir", tmp_path] + RECON
        _one_line_error(_invoke(inverse_nodist, args + ["--psize", "16"]), 1, "--psize 16", "valid psize values")
        _one_line_error(_invoke(inverse_nodist, args + ["--psize", "0"]), 2, "--psize")
    assert not _run_dirs(tmp_path)


# ----------------------------------------------------------------------------------------
# 6. Never overwrite; unwritable outdir and full disk fail cleanly


def test_atomic_write_refuses_existing_file_and_keeps_it(tmp_path):
    path = misc.atomic_write_bytes(tmp_path / "a.bin", b"first")
    with pytest.raises(FileExistsError, match=r"a\.bin already exists; refusing to overwrite"):
        misc.atomic_write_bytes(path, b"second")
    with pytest.raises(FileExistsError):
        misc.atomic_write_with(path, lambda tmp: tmp.write_bytes(b"third"))
    assert path.read_bytes() == b"first" and not _temps(tmp_path)
    misc.atomic_write_bytes(path, b"replaced", overwrite=True)  # only where a caller asks (summaries)
    assert path.read_bytes() == b"replaced"


@pytest.mark.parametrize("cli", ["train", "recon"])
def test_outdir_under_a_file_fails_before_loading_anything(assets, tmp_path, cli):
    """An outdir that cannot be created (its parent is a regular file; tests run as root, where
    permission bits stop nothing): the writability check comes first, so the missing data /
    corrupt checkpoint given too are never read."""
    (tmp_path / "afile").write_text("a file, not a directory")
    outdir = tmp_path / "afile" / "runs"
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"junk")
    if cli == "train":
        res = _invoke(train, ["--data", tmp_path / "missing", "--outdir", outdir] + TRAIN)
    else:
        res = _invoke(inverse_nodist, ["--network", corrupt, "--input", assets["recon"], "--outdir", outdir] + RECON)
    _one_line_error(res, 1, f"output directory {outdir} is not writable")
    assert (tmp_path / "afile").read_text() == "a file, not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: permission bits do not stop writes "
                    "(test_outdir_under_a_file_fails_before_loading_anything covers the check)")
def test_read_only_outdir_fails_before_any_work(assets, tmp_path):
    outdir = tmp_path / "ro"
    outdir.mkdir()
    outdir.chmod(0o500)
    try:
        res = _invoke(train, ["--data", tmp_path / "missing", "--outdir", outdir] + TRAIN)
        _one_line_error(res, 1, f"output directory {outdir} is not writable")
    finally:
        outdir.chmod(0o700)


def _enospc(match: str, real):
    def write(file, *args, **kwargs):
        if match in str(getattr(file, "name", file)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(file, *args, **kwargs)
    return write


def test_recon_full_disk_is_one_line_and_keeps_earlier_files(assets, tmp_path, monkeypatch):
    monkeypatch.setattr(np, "save", _enospc("img1_recon", np.save))
    args = ["--network", assets["net"], "--input", assets["recon"], "--outdir", tmp_path] + RECON
    res = _invoke(inverse_nodist, args)
    line = _one_line_error(res, 1, "cannot write", "img1_recon.npy", "No space left on device")
    assert line.count("\n") == 0
    [run] = _run_dirs(tmp_path)
    assert json.loads((run / "img0_metrics.json").read_text())["rows"]
    assert np.isfinite(np.load(run / "img0_recon.npy")).all() and not _temps(run)
    monkeypatch.undo()  # space freed: resuming completes the run
    assert _invoke(inverse_nodist, args + ["--resume", run]).exit_code == 0
    assert json.loads((run / "summary.json").read_text())["resumed_images"] == 1


def test_train_full_disk_is_one_line_and_keeps_earlier_files(assets, tmp_path, monkeypatch):
    real = torch.save
    states = {"n": 0}

    def save(obj, f, *args, **kwargs):
        if "training-state-" in str(f):
            states["n"] += 1
            if states["n"] == 2:  # the second training state: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    res = _invoke(train, ["--data", assets["train"], "--outdir", tmp_path, "--duration", 0.0001] + TRAIN)
    _one_line_error(res, 1, "cannot write", "training-state-", "No space left on device")
    [run] = _run_dirs(tmp_path)
    [state] = run.glob("training-state-*.pt")
    assert _state(state)["step"] > 0 and not _temps(run)
    monkeypatch.undo()
    _check_training_files(run)
