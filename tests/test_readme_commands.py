"""The README's first-hour commands as written (read from README.md), each run for real with
a few options appended to keep it short (click keeps the last value of an option)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_make_data import HAS_PACKAGE

REPO = Path(__file__).resolve().parents[1]

def readme_command(start: str) -> list[str]:
    """The README line that starts with ``start``, without its comment, as argv (program dropped)."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith(start):
            return shlex.split(line.split("#")[0])[2:]
    raise AssertionError(f"README has no line starting {start!r}")

@pytest.mark.slow
def test_reconstruct_and_generate_commands(tmp_path, monkeypatch):
    import generate
    import inverse_nodist

    monkeypatch.chdir(REPO)  # the README's paths are relative to the checkout
    args = readme_command("python inverse_nodist.py --input datasets/ct_head/test")
    res = CliRunner().invoke(inverse_nodist.main, args + ["--max-images", "1", "--steps", "2", "--baseline", "none",
                                                          "--outdir", str(tmp_path / "out"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / "out").iterdir()
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["problem"] == "ct_parbeam" and cfg["problem_kwargs"]["views"] == 20
    args = readme_command("python generate.py --size 256")
    res = CliRunner().invoke(generate.main, args + ["--seeds", "0", "--steps", "2", "--outdir", str(tmp_path / "gen"),
                                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "gen").glob("*/grid.png"))

@pytest.mark.slow
@pytest.mark.skipif(not HAS_PACKAGE, reason="invesalius-examples is not installed (make data needs it)")
def test_make_data_then_the_training_command(tmp_path, monkeypatch):
    import train

    res = subprocess.run(["make", "--no-print-directory", "data", f"DATA={tmp_path}/data/ct_head"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    monkeypatch.chdir(tmp_path)  # data/ct_head/train.mat as the README writes it
    args = readme_command("python train.py --data data/ct_head/train.mat")
    res = CliRunner().invoke(train.main, args + ["--duration", "0.000001", "--no-progress", "--device", "cpu",
                                                 "--batch-mul-base", "1"])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "runs").glob("*/network-snapshot-*.safetensors"))
