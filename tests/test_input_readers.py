"""Inputs a new user has at hand: extensionless DICOM exports, opaque RGBA PNGs, grey images
stored as RGB, and --normalize's record of each image's original range."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_dicom import H, W, ramp
from test_dicom import write_ct as _write_ct

from training.dataset import list_image_files, read_images


def write_ct(path, pixels, **kw):
    return _write_ct(path, pixels, slope=1.0, intercept=0.0, **kw)


def test_dicom_files_without_extension_are_read_by_their_header(tmp_path):
    series = tmp_path / "export"
    series.mkdir()
    write_ct(series / "IM0002", ramp(-1000, 0), instance=2)
    write_ct(series / "IM0001", ramp(0, 2000), instance=1)
    (series / "notes").write_text("not an image")  # no DICOM header: not an input
    assert [p.name for p in list_image_files(series)] == ["IM0001", "IM0002"]
    names = [n for n, _ in read_images(series)]
    assert names == ["IM0001", "IM0002"]  # one series, InstanceNumber order
    (name, img), = read_images(series / "IM0002")
    assert name == "IM0002" and img.shape == (1, H, W)
    np.testing.assert_allclose(img[0], (ramp(-1000, 0) + 1000) / 3000, atol=1e-6)
    with pytest.raises(ValueError, match="notes: unsupported file type .* DICOM header"):
        read_images(series / "notes")


def test_opaque_rgba_and_grey_alpha_are_read_transparent_refused(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (7, 5, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((7, 5, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    (_, img), = read_images(tmp_path / "opaque.png")
    np.testing.assert_allclose(img, rgb.transpose(2, 0, 1) / 255.0, atol=1e-7)
    grey = np.stack([rgb[..., 0], np.full((7, 5), 255, np.uint8)], axis=2)
    Image.fromarray(grey, "LA").save(tmp_path / "grey.png")
    (_, img), = read_images(tmp_path / "grey.png")
    np.testing.assert_allclose(img, rgb[None, ..., 0] / 255.0, atol=1e-7)
    rgba[2, 3, 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "holes.png")
    with pytest.raises(ValueError, match=r"holes.png: image mode RGBA has transparent pixels \(alpha down to 10"):
        read_images(tmp_path / "holes.png")


def test_grey_rgb_input_for_a_grey_network_and_normalize_ranges(tmp_path, tiny_patch_net):
    import inverse_nodist
    from torch_utils.persistence import save_network

    net = save_network(tiny_patch_net, tmp_path / "net.safetensors")
    images = tmp_path / "in"
    images.mkdir()
    g = np.linspace(20, 200, 16 * 16).reshape(16, 16).astype(np.uint8)
    Image.fromarray(np.stack([g] * 3, axis=2), "RGB").save(images / "grey_rgb.png")
    np.save(images / "hu.npy", np.linspace(-3.0, 5.0, 16 * 16, dtype=np.float32).reshape(16, 16))
    args = ["--network", net, "--input", images, "--problem", "denoise", "--baseline", "none", "--steps", "2",
            "--outdir", tmp_path / "out", "--normalize", "--device", "cpu"]
    res = CliRunner().invoke(inverse_nodist.main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    assert "note: 1 grey image(s) stored as RGB (grey_rgb) read as 1 channel" in res.output
    run_dir, = (tmp_path / "out").iterdir()
    assert np.load(run_dir / "grey_rgb_recon.npy").shape == (1, 16, 16)
    hu = json.loads((run_dir / "hu_metrics.json").read_text())
    assert hu["input_range"] == pytest.approx([-3.0, 5.0])
    grey = json.loads((run_dir / "grey_rgb_metrics.json").read_text())
    assert grey["input_range"] == pytest.approx([20 / 255, 200 / 255], abs=1e-6)
