"""A non-editable install (``pip install .``): console scripts, ``python -m`` entry points and
the shipped checkpoint and slices as package data, run from outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(REPO)], check=True, capture_output=True,
                   timeout=300, cwd=target)
    return target


def run_installed(installed: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(installed), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_installed_copy_finds_its_checkpoint_and_slices(installed, tmp_path):
    for script in ("padis-train", "padis-reconstruct", "padis-generate", "padis-demo"):
        assert (installed / "bin" / script).is_file()
    assert (installed / "padis_checkpoints" / "ct_head_small.safetensors").is_file()
    probe = run_installed(installed, ["-c", "import inverse.cli, inverse.cases; print(inverse.cli.default_network()); "
                                      "print(inverse.cases.HELD_OUT)"], tmp_path)
    assert probe.returncode == 0, probe.stderr
    network, held_out = probe.stdout.split()
    assert network == str(installed / "padis_checkpoints" / "ct_head_small.safetensors")
    assert held_out == str(installed / "padis_ct_head" / "test") and list(Path(held_out).glob("slice_*.png"))
    # No pyproject.toml beside the installed packages: the network classes come from the
    # installed metadata's entry-point group padis.networks, in a fresh interpreter.
    assert not (installed / "pyproject.toml").exists()
    load = run_installed(installed, ["-c", "from torch_utils.persistence import load_network\n"
                                     "import sys\nnet = load_network(sys.argv[1])\n"
                                     "print(type(net).__name__, sys.modules[type(net).__module__].__file__)",
                                     network], tmp_path)
    assert load.returncode == 0, load.stderr
    assert load.stdout.split() == ["PatchEDMPrecond", str(installed / "training" / "networks.py")]
    res = run_installed(installed, ["-m", "inverse_nodist", "--input", held_out, "--problem", "denoise",
                                    "--dry-run"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["network"] == network
    for module in ("train", "generate"):
        res = run_installed(installed, ["-m", module, "-h"], tmp_path)
        assert res.returncode == 0 and "Usage:" in res.stdout, res.stderr
