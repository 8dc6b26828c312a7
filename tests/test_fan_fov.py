"""Fan beam's field of view: the formula against ASTRA's rays, the one-line warning, and the
detector option that covers the whole image (the default; the paper's detector is 40 wide)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from inverse.operators import make_operator
from odlstuff import geometry as geo

N = 48


def point(row: int, col: int) -> torch.Tensor:
    x = torch.zeros(1, 1, N, N)
    x[0, 0, row, col] = 1.0
    return x


def seen_from_every_view(op, x) -> bool:
    return bool((op.A(x)[0, 0].sum(dim=1) > 1e-6).all())


def test_default_detector_covers_the_square():
    op = make_operator("ct_fanbeam", (N, N), views=16)
    assert op.fov_radius == pytest.approx(20 * np.sqrt(2))
    assert op.fov_warning(np.full((1, N, N), 0.5, np.float32)) is None
    assert seen_from_every_view(op, point(0, 0)) and seen_from_every_view(op, point(N - 1, N - 1))


def test_fov_radius_matches_the_projector():
    op = make_operator("ct_fanbeam", (N, N), views=16, det_extent=geo.DET_EXTENT)  # the paper's detector
    assert op.fov_radius == pytest.approx(40 * np.sin(np.arctan(40 / 80)))  # 17.89 of the half width 20
    pixel = 40 / N
    inside = int(round(N / 2 - 0.5 - 0.9 * op.fov_radius / pixel / np.sqrt(2)))  # on the diagonal, radius 0.9 R
    corner = 1  # radius ~27 > R
    assert seen_from_every_view(op, point(inside, inside))
    assert not seen_from_every_view(op, point(corner, corner))
    wide = make_operator("ct_fanbeam", (N, N), views=16, det_extent=op.square_det_extent)
    assert wide.fov_radius == pytest.approx(20 * np.sqrt(2))
    assert seen_from_every_view(wide, point(0, 0)) and seen_from_every_view(wide, point(N - 1, 0))
    assert geo.fan_det_extent_for(geo.fan_fov_radius(40, 40, 33.0), 40, 40) == pytest.approx(33.0)


def test_warning_only_for_content_outside_the_disc():
    op = make_operator("ct_fanbeam", (N, N), views=8, det_extent=40)
    yy, xx = np.mgrid[:N, :N]
    r = np.hypot(yy - (N - 1) / 2, xx - (N - 1) / 2) * 40 / N
    assert op.fov_warning((r < 0.95 * op.fov_radius)[None].astype(np.float32)) is None
    full = op.fov_warning(np.full((1, N, N), 0.5, np.float32))
    assert "outside the fan beam's field of view (radius 17.9 of the image half width 20" in full
    assert "det_extent=80 (--det-extent) covers the whole image" in full
    wide = make_operator("ct_fanbeam", (N, N), views=8, det_extent=80)
    assert wide.fov_warning(np.full((1, N, N), 0.5, np.float32)) is None


def test_cli_warns_once_and_det_extent_option_silences(tmp_path, tiny_patch_net):
    from PIL import Image

    import inverse_nodist
    from torch_utils.persistence import save_network

    net = save_network(tiny_patch_net, tmp_path / "net.safetensors")
    images = tmp_path / "in"
    images.mkdir()
    for k in range(2):
        Image.fromarray(np.full((32, 32), 100 + 50 * k, np.uint8)).save(images / f"full{k}.png")
    base = ["--network", net, "--input", images, "--problem", "ct_fanbeam", "--views", "8", "--detectors", "64",
            "--baseline", "fbp", "--steps", "1", "--device", "cpu", "--det-extent", "40"]
    res = CliRunner().invoke(inverse_nodist.main, [str(a) for a in [*base, "--outdir", tmp_path / "a"]])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "field of view" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: full0 and 1 more of 2 images: "), res.output
    res = CliRunner().invoke(inverse_nodist.main, [str(a) for a in [*base, "--outdir", tmp_path / "b",
                                                                     "--det-extent", "80"]])  # the later option wins
    assert res.exit_code == 0, res.output
    assert "field of view" not in res.output
