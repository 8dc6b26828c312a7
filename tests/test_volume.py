"""Volume mode: 3-D inputs, slabs, the slice coupling, cone beam (CUDA only) and the 3D CUDA projector.

Tiny network (build_network('tiny', 32, 1)), volumes of 16 x 16 slices, a few solver steps.
Patch geometry for 16 px: pad 4, psize 10 (P = 2, 20 <= 2*10 <= 21).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import inverse_nodist
from inverse import io as rio
from inverse.operators import NORM_CACHE, make_operator
from inverse.samplers import conjugate_gradient
from inverse.volume import SliceCoupled, mid_planes, slab_bounds, volume_scores
from odlstuff import geometry as geo

CUDA_ASTRA = torch.cuda.is_available() and geo.tomo.ASTRA_CUDA_AVAILABLE
GEOM = ["--pad", "4", "--psize", "10"]
CT = ["--problem", "ct_parbeam", "--views", "8", "--detectors", "24"]


def phantom(depth: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """A smooth (D, size, size) volume in [0, 1]: a ball that changes slowly along z."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:depth, :size, :size].astype(np.float32)
    c = (size - 1) / 2
    r = np.sqrt((x - c) ** 2 + (y - c) ** 2 + ((z - depth / 2) * size / max(depth, 1)) ** 2)
    vol = 0.7 * (r < size * 0.4) + 0.2 + 0.02 * rng.standard_normal((depth, size, size))
    return np.clip(vol, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory) -> str:
    from torch_utils.persistence import save_network
    from training.networks import build_network

    torch.manual_seed(0)
    net = build_network("tiny", img_resolution=32, image_channels=1).eval()
    return str(save_network(net, tmp_path_factory.mktemp("vol") / "tiny.safetensors"))


def invoke(args):
    return CliRunner().invoke(inverse_nodist.main, [str(a) for a in args])


def only_run_dir(outdir: Path) -> Path:
    (run_dir,) = [p for p in Path(outdir).iterdir() if p.is_dir()]
    return run_dir


@pytest.mark.slow
def test_cli_reconstructs_64_slice_volume_in_one_slab(tiny_net, tmp_path):
    """Done-when of issue 14: 64 slices, parallel beam, one slab = one batch of 64 slices per call."""
    vol = phantom(64)
    src = tmp_path / "head.npy"
    np.save(src, vol)
    out = tmp_path / "out"
    res = invoke(["--network", tiny_net, "--input", src, "--outdir", out, "--volume", "--slab", "64", *GEOM, *CT,
                  "--steps", "2", "--baseline", "fbp", "--seed", "1"])
    assert res.exit_code == 0, res.output
    run_dir = only_run_dir(out)
    assert run_dir.name == "00000-ct_parbeam-diffpir-volume"
    recon = np.load(run_dir / "head_recon.npy")
    fbp = np.load(run_dir / "head_fbp.npy")
    meas = np.load(run_dir / "head_measurement.npy")
    assert recon.shape == fbp.shape == (64, 16, 16) and recon.dtype == np.float32
    assert meas.shape == (64, 8, 24)
    assert (run_dir / "head_views.png").stat().st_size > 0
    record = json.loads((run_dir / "head_metrics.json").read_text())
    assert record["slabs"] == 1 and record["calls"] == 2  # 2 steps = 2 network calls for all 64 slices
    mse = float(np.mean((recon.astype(np.float64) - vol) ** 2))
    assert record["methods"]["padis"]["psnr"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-6)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mode"] == "volume" and summary["n_slices"] == 64
    assert not list(run_dir.glob("*_z0000-*"))  # slab files are gone once the volume is assembled
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0] == "image,method,psnr,ssim,seconds" and len(rows) == 3


def test_slabs_stream_and_resume(tiny_net, tmp_path):
    """Three slabs (8 + 8 + 4 slices) give the same volume as the slabs solved alone; a resumed
    run keeps finished slabs (their markers) and redoes only the missing one."""
    src = tmp_path / "v.npy"
    np.save(src, phantom(20))
    base = ["--network", tiny_net, "--input", src, "--volume", "--slab", "8", *GEOM, *CT, "--steps", "2",
            "--baseline", "none"]
    res = invoke([*base, "--outdir", tmp_path / "a"])
    assert res.exit_code == 0, res.output
    full = np.load(only_run_dir(tmp_path / "a") / "v_recon.npy")
    # the last slab alone (seed + 16) is the last 4 slices of the full run
    np.save(tmp_path / "tail.npy", phantom(20)[16:])
    res = invoke([*base[:3], tmp_path / "tail.npy", *base[4:], "--outdir", tmp_path / "b", "--seed", "16"])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(np.load(only_run_dir(tmp_path / "b") / "tail_recon.npy"), full[16:], atol=1e-5)
    # a killed run: slab markers for the first two slabs, nothing for the third
    run_dir = only_run_dir(tmp_path / "a")
    from inverse.volume import run_volume
    cfg = json.loads((run_dir / "config.json").read_text())
    (run_dir / "v_metrics.json").unlink()
    for tag in ("recon", "measurement"):
        vol = np.load(run_dir / f"v_{tag}.npy")
        (run_dir / f"v_{tag}.npy").unlink()
        for z0, z1 in ((0, 8), (8, 16)):
            rio.save_npy(run_dir / f"v_z{z0:04d}-{z1 - 1:04d}_{tag}.npy", vol[z0:z1])
    marker = json.dumps(dict(z0=0, z1=8, seconds=dict(padis=1.0), calls=2,
                             errors=dict(padis=dict(sse=1.0, voxels=2048, ssim_sum=4.0, slices=8))))
    (run_dir / "v_z0000-0007_metrics.json").write_text(marker)  # fake numbers: read back, not recomputed
    (run_dir / "v_z0008-0015_metrics.json").write_text(marker.replace('"z0": 0, "z1": 8', '"z0": 8, "z1": 16'))
    summary = run_volume(dict(cfg, resume=str(run_dir), progress=False))
    np.testing.assert_allclose(np.load(run_dir / "v_recon.npy"), full, atol=1e-5)
    assert summary["volumes"][0]["calls"] == 6 and summary["methods"]["padis"]["ssim"]["n"] == 1


def test_each_mode_has_its_own_runner(tiny_net, tmp_path):
    """inverse.reconstruct.run is image mode and refuses a volume config, naming the runner that
    takes it; run_volume takes a dict and records volume True."""
    from inverse.reconstruct import run
    from inverse.volume import run_volume

    np.save(tmp_path / "v.npy", phantom(4))
    cfg = dict(network=tiny_net, problem="ct_parbeam", problem_kwargs=dict(views=8, det_count=24),
               input=str(tmp_path / "v.npy"), pad=4, psize=10, steps=1, baselines=[], slab=4,
               outdir=str(tmp_path / "out"), device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"inverse\.volume\.run_volume"):
        run(dict(cfg, volume=True))
    summary = run_volume(cfg)
    assert summary["mode"] == "volume" and summary["config"]["volume"] is True
    assert summary["n_slices"] == 4


def test_slab_bounds_and_scores():
    assert slab_bounds(20, 8) == [(0, 8), (8, 16), (16, 20)]
    assert slab_bounds(3, 16) == [(0, 3)]
    with pytest.raises(ValueError, match="slab=0"):
        slab_bounds(3, 0)
    recs = [dict(seconds=dict(m=1.0), errors=dict(m=dict(sse=0.01, voxels=100, ssim_sum=1.8, slices=2))),
            dict(seconds=dict(m=2.0), errors=dict(m=dict(sse=0.03, voxels=100, ssim_sum=0.7, slices=1)))]
    s = volume_scores(recs, ["m"])["m"]
    assert s["psnr"] == pytest.approx(10 * np.log10(200 / 0.04)) and s["ssim"] == pytest.approx(2.5 / 3)
    assert s["seconds"] == 3.0


def test_volume_readers(tmp_path):
    """.npy (memory-mapped), .npy with a channel axis, a directory of 2-D slices, NIfTI; errors."""
    vol = phantom(5, 12)
    np.save(tmp_path / "a.npy", vol)
    np.save(tmp_path / "b.npy", vol[:, None])
    v = rio.open_volume(tmp_path / "a.npy")
    assert v.shape == (5, 12, 12) and v.name == "a"
    np.testing.assert_array_equal(v.slab(1, 3), vol[1:3])
    assert rio.open_volume(tmp_path / "b.npy").shape == (5, 12, 12)
    for streamed, whole in zip(mid_planes(v), mid_planes(vol)):  # the figure's planes, streamed or not
        np.testing.assert_array_equal(streamed, whole)
    assert [p.shape for p in mid_planes(vol)] == [(12, 12), (5, 12), (5, 12)]
    assert rio.list_volume_sources(tmp_path) == [tmp_path / "a.npy", tmp_path / "b.npy"]
    slices = tmp_path / "slices"
    slices.mkdir()
    from PIL import Image

    for k in range(3):
        Image.fromarray((vol[k] * 255).round().astype(np.uint8), "L").save(slices / f"s{k}.png")
    assert rio.list_volume_sources(slices) == [slices]
    sv = rio.open_volume(slices)
    assert sv.shape == (3, 12, 12)
    np.testing.assert_allclose(sv.slab(0, 3), vol[:3], atol=1 / 255)
    hu = (vol * 3000 - 1000).astype(np.float32)
    np.save(tmp_path / "hu.npy", hu)
    with pytest.raises(ValueError, match=r"hu.npy: values in .* expected \[0, 1\] \(use --normalize or --hu-window\)"):
        rio.open_volume(tmp_path / "hu.npy").slab(0, 5)
    np.testing.assert_allclose(rio.open_volume(tmp_path / "hu.npy", hu_window=(-1000, 2000)).slab(0, 5), vol,
                               atol=1e-5)
    np.testing.assert_allclose(rio.open_volume(tmp_path / "hu.npy", normalize=True).slab(0, 5),
                               (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-5)
    np.save(tmp_path / "flat.npy", vol[0])
    with pytest.raises(ValueError, match=r"flat.npy: array of shape \(12, 12\); a volume is \(D, H, W\)"):
        rio.open_volume(tmp_path / "flat.npy")


def test_nifti_volume(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = phantom(6, 12)  # slices (z, y, x), anterior (largest y) in row 0
    data = np.transpose(vol[:, ::-1, :], (2, 1, 0))  # stored (x, y, z), RAS
    nib.save(nib.Nifti1Image(data * 3000 - 1000, np.eye(4)), tmp_path / "ct.nii.gz")
    v = rio.open_volume(tmp_path / "ct.nii.gz", hu_window=(-1000, 2000))
    assert v.name == "ct" and v.shape == (6, 12, 12)
    np.testing.assert_allclose(v.slab(0, 6), vol, atol=1e-4)
    (tmp_path / "bad.nii").write_bytes(b"not nifti")
    with pytest.raises(ValueError, match="bad.nii: unreadable NIfTI file"):
        rio.open_volume(tmp_path / "bad.nii")


def test_slice_coupled_operator_adjoint_and_joint_cg(generator):
    """[A; s D_z] and its adjoint agree; with couples_batch the CG solves the coupled system."""
    op = make_operator("ct_parbeam", (12, 12), views=6, det_count=20)
    zc = SliceCoupled(op, 0.1)
    assert zc.couples_batch and zc.measurement_shape == (1, 6 * 20 + 144)
    x = torch.rand(5, 1, 12, 12, generator=generator)
    v = torch.randn(5, 1, *zc.measurement_shape, generator=generator)
    lhs, rhs = float((zc.A(x).double() * v.double()).sum()), float((x.double() * zc.AT(v).double()).sum())
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)
    d = zc.dz(x)
    torch.testing.assert_close(d[1], x[2] - x[1])
    assert float(d[-1].abs().max()) == 0.0
    y = zc.extend(op.A(x))
    torch.testing.assert_close(zc.A(x)[..., :120], y[..., :120])
    assert float(y[..., 120:].abs().max()) == 0.0
    # A^T A + D_z^T D_z is SPD and couples slices: the joint CG reduces the residual of the whole
    # system further than the per-slice one (whose step sizes ignore the coupling)
    normal = lambda u: zc.AT(zc.A(u)) + 1e-3 * u
    rhs_ = normal(x)
    res = [float((normal(conjugate_gradient(normal, rhs_, torch.zeros_like(x), 15, joint=j)) - rhs_).norm())
           for j in (True, False)]
    assert res[0] < 1e-2 * float(rhs_.norm()) and res[0] < res[1]
    assert zc.norm() == pytest.approx(op.norm() * np.sqrt(1.4))


def test_z_coupling_runs_from_cli(tiny_net, tmp_path):
    src = tmp_path / "v.npy"
    np.save(src, phantom(6))
    outs = []
    for w in ("0", "0.05"):
        res = invoke(["--network", tiny_net, "--input", src, "--volume", "--slab", "6", *GEOM, *CT, "--steps", "2",
                      "--baseline", "none", "--z-coupling", w, "--outdir", tmp_path / w])
        assert res.exit_code == 0, res.output
        outs.append(np.load(only_run_dir(tmp_path / w) / "v_recon.npy"))
    dz = [float(np.abs(np.diff(o, axis=0)).mean()) for o in outs]
    assert dz[1] < dz[0]  # the coupled volume varies less from slice to slice


def test_norm_cache_shares_power_iteration_across_instances(monkeypatch):
    NORM_CACHE.clear()
    calls = []
    from inverse.operators import Operator
    real = Operator._power_iteration
    monkeypatch.setattr(Operator, "_power_iteration", lambda self, *a: calls.append(1) or real(self, *a))
    a = make_operator("ct_parbeam", (12, 12), views=6, det_count=20)
    b = make_operator("ct_parbeam", (12, 12), views=6, det_count=20)
    c = make_operator("ct_parbeam", (12, 12), views=7, det_count=20)
    assert a.norm() == b.norm() and len(calls) == 1
    assert c.norm() != a.norm() and len(calls) == 2


def test_cli_volume_errors(tiny_net, tmp_path):
    np.save(tmp_path / "v.npy", phantom(4))
    res = invoke(["--network", tiny_net, "--measurements", tmp_path / "v.npy", "--image-size", "16", "--volume", *CT])
    assert res.exit_code == 2 and "--volume reconstructs ground-truth volumes" in res.output
    res = invoke(["--network", tiny_net, "--input", tmp_path / "v.npy", "--problem", "ct_cone"])
    assert res.exit_code == 2 and "ct_cone projects volumes: add --volume" in res.output


@pytest.mark.skipif(CUDA_ASTRA, reason="the CPU error only")
def test_cone_beam_on_cpu_is_one_clear_error(tiny_net, tmp_path):
    with pytest.raises(ValueError, match=r"^ct_cone: cone beam needs ASTRA's CUDA projectors and device cpu has none"):
        make_operator("ct_cone", (16, 16), slices=4)
    np.save(tmp_path / "v.npy", phantom(4))
    res = invoke(["--network", tiny_net, "--input", tmp_path / "v.npy", "--volume", "--problem", "ct_cone",
                  "--device", "cpu", "--outdir", tmp_path / "o", *GEOM])
    assert res.exit_code == 1 and "ct_cone: cone beam needs ASTRA's CUDA projectors" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.skipif(not CUDA_ASTRA, reason="needs CUDA and ASTRA built with CUDA")
def test_cone_beam_adjoint_and_fdk_on_cuda(generator):
    op = make_operator("ct_cone", (24, 24), device="cuda", views=12, slices=6, det_count=48)
    assert op.couples_batch and op.measurement_shape == (12, 48) and op.adjoint_error < 0.05
    x = torch.rand(6, 1, 24, 24, generator=generator).to("cuda")
    v = torch.rand(6, 1, 12, 48, generator=generator).to("cuda")
    lhs, rhs = float((op.A(x).double() * v.double()).sum()), float((x.double() * op.AT(v).double()).sum())
    assert abs(lhs - rhs) <= 0.05 * abs(lhs)
    assert op.A(x).device.type == "cuda"
    with pytest.raises(ValueError, match="takes 6 slices"):
        op.A(x[:4])
    ball = torch.from_numpy(phantom(6, 24)).to("cuda")[:, None]
    rec = op.pinv(op.A(ball))
    assert float((rec - ball).square().mean()) < float(ball.square().mean())  # FDK resembles the volume


@pytest.mark.skipif(not CUDA_ASTRA, reason="needs CUDA and ASTRA built with CUDA")
def test_parallel_volume_projector_on_cuda_matches_slice_projector(generator, monkeypatch):
    """On CUDA the parallel-beam batch is one 3D call on torch memory and equals the per-slice CPU
    projection up to the projectors' discretisation."""
    cuda = make_operator("ct_parbeam", (24, 20), device="cuda", views=9, det_count=64)
    cpu = make_operator("ct_parbeam", (24, 20), device="cpu", views=9, det_count=64)
    assert isinstance(cuda.projector, geo.VolumeProjector), cuda.projector
    x = torch.rand(5, 1, 24, 20, generator=generator)
    ya, yb = cuda.A(x.to("cuda")).cpu(), cpu.A(x)
    assert float((ya - yb).norm() / yb.norm()) < 0.05
    v = torch.rand(5, 1, 9, 64, generator=generator)
    assert float((cuda.AT(v.to("cuda")).cpu() - cpu.AT(v)).norm() / cpu.AT(v).norm()) < 0.05

    def host_path(*a, **k):
        raise AssertionError("the per-slice numpy projector was called")

    # A and AT must not go through host (numpy) arrays: the per-slice projector's methods fail here
    monkeypatch.setattr(geo.Projector, "forward", host_path)
    monkeypatch.setattr(geo.Projector, "adjoint", host_path)
    out = cuda.AT(cuda.A(x.to("cuda")))
    assert out.device.type == "cuda" and out.shape == x.shape


class _FakeSpace:
    """What VolumeProjector uses of an ODL space: element(tensor).data and weighting.const."""

    def __init__(self, const: float):
        self.weighting = SimpleNamespace(const=const)

    def element(self, t):
        return SimpleNamespace(data=t)


class _SliceStackRay:
    """A 3D parallel-beam ray transform stand-in on CPU: ODL's 2D transform applied to each z (the
    property the 3D geometry has by construction), in ODL's (H, W, N) / (views, det, N) layout and
    with ODL's weighted adjoint, so the test checks VolumeProjector's layout and scaling. (Called
    under ASTRA_LOCK by VolumeProjector: it uses the ODL operators directly, not Projector.)"""

    def __init__(self, plane: geo.Projector, dz: float):
        self.domain = _FakeSpace(geo._const_weight(plane.ray.domain) * dz)
        self.range = _FakeSpace(geo._const_weight(plane.ray.range) * dz)
        ray = plane.ray

        def per_z(op, e):
            slices = e.data.permute(2, 0, 1).numpy()
            return SimpleNamespace(data=torch.from_numpy(np.stack([op(s).asarray() for s in slices])).permute(1, 2, 0))

        self._forward = lambda e: per_z(ray, e)
        self.adjoint = lambda e: per_z(ray.adjoint, e)

    def __call__(self, e):
        return self._forward(e)


def test_volume_projector_layout_and_scaling_on_a_cpu_stand_in(monkeypatch, generator):
    """VolumeProjector's permutes and plain-sum scaling, with the 3D transform replaced by the
    per-slice one (the CUDA test checks the real 3D geometry)."""
    plane = geo.Projector(geo.image_space((12, 10)), geo.parallel_geometry(views=5, det_count=16))
    dz = float(geo.image_space((12, 10)).cell_sides[0])
    vp = geo.VolumeProjector((12, 10), lambda z, n: None, plane.sino_shape, "cpu", plane)
    monkeypatch.setattr(geo.tomo, "RayTransform", lambda space, geometry, impl: _SliceStackRay(plane, dz))
    x = torch.rand(4, 12, 10, generator=generator)
    y = torch.rand(4, 5, 16, generator=generator)
    torch.testing.assert_close(vp.forward(x), torch.from_numpy(plane.forward(x.numpy())))
    torch.testing.assert_close(vp.adjoint(y), torch.from_numpy(plane.adjoint(y.numpy())), rtol=1e-5, atol=1e-5)
    assert vp.adjoint_mismatch(4) < 1e-5
    np.testing.assert_allclose(vp.fbp(y.numpy()), plane.fbp(y.numpy()))
