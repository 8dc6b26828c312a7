"""`make data`: the README's training data from the Debian package (or one line saying what to
install)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import scipy.io

REPO = Path(__file__).resolve().parents[1]
HAS_PACKAGE = subprocess.run(["dpkg", "-s", "invesalius-examples"], capture_output=True).returncode == 0 \
    if shutil.which("dpkg") else False


def make(args: list[str], env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PACKAGE, reason="invesalius-examples is not installed")
def test_make_data_builds_the_training_file(tmp_path):
    res = make(["data", f"DATA={tmp_path}/ct_head"])
    assert res.returncode == 0, res.stderr
    images = scipy.io.loadmat(tmp_path / "ct_head" / "train.mat")["images"]
    assert images.ndim == 3 and images.shape[:2] == (256, 256) and 0 <= images.min() and images.max() <= 1
    assert make(["data", f"DATA={tmp_path}/ct_head"]).returncode == 0  # up to date: nothing rebuilt


def test_make_data_without_the_package_says_what_to_install(tmp_path):
    """No package and not root: one line naming the package, exit status != 0, nothing built."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, code in (("dpkg", "exit 1"), ("id", "echo 1000")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{code}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    res = make(["data", f"DATA={tmp_path}/ct_head"], env=env)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("make data:")]
    assert lines == ["make data: install the Debian package invesalius-examples first "
                     "(sudo apt-get install invesalius-examples)"], res.stderr
    assert not (tmp_path / "ct_head").exists()
