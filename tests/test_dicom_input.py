"""DICOM input through the shared image loader and inverse_nodist.py (--hu-window)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_dicom import H, W, ramp
from test_dicom import write_ct as _write_ct

from training.dataset import read_images


def write_ct(path, pixels, **kw):
    """Stored values are HU (intercept 0)."""
    return _write_ct(path, pixels, slope=1.0, intercept=0.0, **kw)


def test_dicom_directory_is_one_series_in_instance_order(tmp_path):
    write_ct(tmp_path / "b.dcm", ramp(-1000, 0), instance=2)
    write_ct(tmp_path / "a.dcm", ramp(0, 2000), instance=3)
    write_ct(tmp_path / "c.dcm", ramp(-1000, 2000), instance=1)
    names = [n for n, _ in read_images(tmp_path)]
    assert names == ["c", "b", "a"]
    (_, img), = read_images(tmp_path / "b.dcm")
    assert img.shape == (1, H, W) and img.dtype == np.float32
    assert img.min() == pytest.approx(0.0) and img.max() == pytest.approx(1000 / 3000, abs=1e-6)


def test_hu_window_option_and_mixed_directory(tmp_path):
    write_ct(tmp_path / "s.dcm", ramp(-1000, 1000), instance=1)
    Image.fromarray(np.full((H, W), 255, np.uint8)).save(tmp_path / "t.png")
    images = dict(read_images(tmp_path, hu_window=(0, 1000)))
    assert set(images) == {"s", "t"}  # mixed directory: each file by its own reader
    assert images["s"].min() == 0 and images["s"].max() == pytest.approx(1.0)
    assert np.all(images["t"] == 1)
    assert read_images(tmp_path / "s.dcm", max_images=1)[0][0] == "s"


def test_cli_reads_dicom_with_hu_window(tmp_path, tiny_patch_net):
    import inverse_nodist
    from torch_utils.persistence import save_network

    net_path = save_network(tiny_patch_net, tmp_path / "net.safetensors")
    series = tmp_path / "series"
    series.mkdir()
    for k in range(2):
        hu = np.linspace(-1000 + 100 * k, 1500, 16 * 16).round().reshape(16, 16)
        write_ct(series / f"im{k}.dcm", hu, instance=k + 1)
    torch.manual_seed(0)
    args = ["--network", str(net_path), "--input", str(series), "--problem", "denoise", "--baseline", "none",
            "--pad", "8", "--psize", "8", "--steps", "2", "--outdir", str(tmp_path / "out"),
            "--device", "cpu", "--hu-window", "-1000,1500"]
    result = CliRunner().invoke(inverse_nodist.main, args)
    assert result.exit_code == 0, result.output
    run_dir, = (tmp_path / "out").iterdir()
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["hu_window"] == [-1000.0, 1500.0]
    assert (run_dir / "im0_recon.npy").exists() and (run_dir / "im1_recon.npy").exists()
    bad = CliRunner().invoke(inverse_nodist.main, args[:-1] + ["2000,-1000"])
    assert bad.exit_code == 2 and "--hu-window" in bad.output and "lower bound" in bad.output
