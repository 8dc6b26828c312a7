"""padis reproduces what the paper's own code computed, from the committed inputs, to the
tolerance benchmarks/paper_equiv.py measured (no paper code at test time).

The fixtures (tests/fixtures/paper_equiv/, tensors and JSON only) were written by
``python benchmarks/paper_equiv.py --paper CHECKOUT``: the paper's outputs on inputs it drew, and
in manifest.json the configurations it read from the paper's code and the errors it measured
(padis against the paper). The networks are not stored: their weights are a seeded function of
the parameter names (``paper_equiv_child.fill_parameters``), rebuilt here.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import paper_equiv as pe  # noqa: E402
from paper_equiv_child import fill_parameters  # noqa: E402

from edm_fixtures import no_side_effect, paper_network, write_paper_pickle  # noqa: E402  isort: skip
from helpers import write_noise_images, write_smooth_images  # noqa: E402  isort: skip

FIX = REPO / "tests" / "fixtures" / "paper_equiv"
MANIFEST = json.loads((FIX / "manifest.json").read_text())


def fixture(name: str) -> dict[str, np.ndarray]:
    return dict(np.load(FIX / f"{name}.npz"))


def tolerance(row: str) -> float:
    """Four times the max-abs error measured against the paper, at least 1e-6 of the paper's
    largest value (an exact 0 then still allows float rounding elsewhere)."""
    m = MANIFEST["measured"][row]
    return max(4 * m["max_abs"], 1e-6 * max(1.0, m["ref_max"]))


def assert_close(ours, paper, row: str) -> None:
    err = float(np.abs(np.asarray(ours, dtype=np.float64) - paper).max())
    assert err <= tolerance(row), f"{row}: max |ours - paper| {err:.3g} > {tolerance(row):.3g}"


def our_network(name: str) -> torch.nn.Module:
    """Our network for the paper's stored kwargs, with the benchmark's seeded weights."""
    info = MANIFEST["networks"][f"a_{name}"]
    net = paper_network(info["init_kwargs"])
    assert [n for n, _ in sorted(net.named_parameters())] == info["parameter_names"]  # the fill's order
    assert sum(p.numel() for p in net.parameters()) == info["parameters"]
    fill_parameters(net, info["seed"])
    return net.eval()


@pytest.fixture(scope="module")
def tiny_pickle(tmp_path_factory) -> Path:
    """The tiny network as a paper-layout pickle (its module_src would leave a marker), for the loader."""
    root = tmp_path_factory.mktemp("paper_equiv")
    path = root / "network-snapshot-tiny.pkl"
    write_paper_pickle(path, our_network("tiny"), root / "marker", top_kwargs=MANIFEST["networks"]["a_tiny"]["init_kwargs"])
    return path


@pytest.fixture(scope="module")
def tiny(tiny_pickle):
    from torch_utils.persistence import load_network
    net = load_network(tiny_pickle).eval()
    no_side_effect(tiny_pickle.parent / "marker")
    return net


# (a) the network


def test_a_tiny_network_through_the_loader(tiny):
    f = fixture("a_tiny")
    assert_close(pe.ours_network_outputs(tiny, f["x"], f["sigma"], f["pos"]), f["D"], "a_tiny")


def test_a_paper_size_network():
    f = fixture("a_paper")
    net = our_network("paper")
    assert sum(p.numel() for p in net.parameters()) == 54_409_729
    assert_close(pe.ours_network_outputs(net, f["x"], f["sigma"], f["pos"]), f["D"], "a_paper")


# (b) the patch prior at fixed grid offsets


def test_b_patch_prior_is_denoised_from_patches(tiny):
    f = fixture("b_patches")
    ours = pe.ours_patches(tiny, f["clean"], f["z"], f["sigmas"].tolist(), f["offsets"].tolist())
    assert len(f["sigmas"]) == 12 and f["sigmas"].min() == 0.01 and f["sigmas"].max() == 10
    assert_close(ours, f["D"], "b")


# (c) one inner iteration of the paper's dps


@pytest.mark.parametrize("k", range(len(MANIFEST["dps_cases"])))
def test_c_one_dps_iteration(tiny, k):
    f = fixture("c_dps")
    t = float(f[f"t{k}"])
    states = pe.ours_dps(tiny, f["y"], t, t / 2, 1, f[f"offsets{k}"].tolist(), f[f"z{k}"])
    assert_close(states[0], f["start"], "c_start")  # clamp(pinv(y)): the paper's start
    assert_close(states[1], f[f"after{k}"], f"c{k}")
    assert (k == 3) == (not f[f"z{k}"].any())  # case 3: the noise-free part of the update alone
    assert float(f[f"ring{k}"]) > 0  # the paper's canvas ring no longer 0 after one iteration


# (d) the CT operators on the paper's geometry


@pytest.mark.parametrize("paper_name, ours, options", [
    ("ct_parbeam", "ct_parbeam", {}),
    ("lact", "ct_lact", {}),
    ("ct_fanbeam", "ct_fanbeam", dict(det_extent=40.0, angle_range=(0.0, math.pi))),
])
def test_d_operators(paper_name, ours, options):
    f = fixture("d_operators")
    op = pe.our_operator(ours, pe.D_FIXTURE_SIZE, options)
    out = pe.ours_operator_outputs(op, f["x"], f[f"{paper_name}_A"])
    variant = len(pe.OUR_VARIANTS[paper_name]) - 1
    assert_close(out["A"], f[f"{paper_name}_A"], f"d_{paper_name}_48_{variant}_A")
    assert_close(out["pinv"], f[f"{paper_name}_pinv"], f"d_{paper_name}_48_{variant}_pinv")
    # The paper's AT is ODL's adjoint for its weighted inner products; ours the plain-sum adjoint:
    # ours = (image cell area / sinogram cell area) x the paper's, exactly that scalar.
    fit = pe.scale_fit(out["AT"], f[f"{paper_name}_AT"])
    assert fit["rel_after_scale"] < 1e-6
    assert fit["scale"] == pytest.approx(float(op.projector.adjoint_scale), rel=1e-6)
    assert fit["scale"] == pytest.approx(MANIFEST["measured"][f"d_{paper_name}_48_{variant}_AT"]["scale"], rel=1e-6)
    g = pe.geometry_of(op)
    assert not pe.layout_differences(g, MANIFEST["operators"][f"d_{paper_name}_48"])
    np.testing.assert_allclose(np.asarray(op.projector.ray.geometry.angles), f[f"{paper_name}_angles"], rtol=0,
                               atol=1e-12)


def test_d_fan_beam_defaults_differ_from_the_paper():
    """Our fan beam on purpose: detector half width 80 (the paper's 40 misses the image corners)
    and a full scan over [0, 2 pi) (the paper's [0, pi) is short of a fan-beam short scan)."""
    paper = MANIFEST["operators"]["d_ct_fanbeam_48"]
    diff = pe.layout_differences(pe.geometry_of(pe.our_operator("ct_fanbeam", 48, {})), paper)
    assert [d.split()[0] for d in diff] == ["angle_max", "det_min", "det_max"]
    assert (paper["angle_min"], paper["angle_max"], paper["det_max"]) == (0.0, math.pi, 40.0)


# (e) the README commands


def test_e_recon_command(tiny_pickle, tmp_path):
    import PIL.Image

    import inverse_nodist
    f = fixture("e_commands")
    (tmp_path / "image_dir").mkdir()
    PIL.Image.fromarray(f["image"]).save(tmp_path / "image_dir" / "slice_025.png")
    argv = [a.replace("{PKL}", str(tiny_pickle)).replace("{IMAGES}", str(tmp_path / "image_dir"))
            .replace("--outdir=results", f"--outdir={tmp_path / 'out'}") for a in MANIFEST["paper_recon"]["argv"]]
    res = CliRunner().invoke(inverse_nodist.main, argv + ["--dry-run"])
    assert res.exit_code == 0, res.output
    rows = pe.recon_rows(MANIFEST["paper_recon"], json.loads(res.stdout))
    assert [r["setting"] for r in rows if not r["same"]] == []
    res = CliRunner().invoke(inverse_nodist.main, argv + ["--steps=1", "--inner", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "out").iterdir()
    y = np.load(run / "slice_025_measurement.npy")
    assert_close(y.reshape(f["y"].shape), f["y"], "e_y")


def test_e_position_channels():
    from training.networks import position_grid
    f = fixture("e_commands")
    n = pe.SIZE + 2 * pe.PAD
    assert_close(position_grid(n, n).numpy(), f["latents_pos"], "e_pos")


def test_e_train_command(tmp_path):
    """The README's train.py command: every setting as the paper's, except the defaults of
    options the command does not give (README: From the paper's code)."""
    import train
    data = write_noise_images(tmp_path / "mydata")
    argv = [a.replace("--data=mydata", f"--data={data}") for a in MANIFEST["paper_train"]["argv"]]
    res = CliRunner().invoke(train.main, argv + ["-n"])
    assert res.exit_code == 0, res.output
    rows = pe.train_rows(MANIFEST["paper_train"], json.loads(res.stdout))
    assert [r["setting"] for r in rows if not r["same"]] == [
        "state dump every [ticks]", "duration [kimg]", "EMA half-life [kimg]", "lr ramp-up [kimg]", "seed"]


def test_d_fan_beam_paper_geometry_from_the_cli(tiny_pickle, tmp_path):
    import inverse_nodist
    images = write_smooth_images(tmp_path / "images", n=1, size=48)
    res = CliRunner().invoke(inverse_nodist.main, ["--network", str(tiny_pickle), "--input", str(images), "--problem",
                                                   "ct_fanbeam", "--det-extent", "40", "--angle-range",
                                                   "0,3.141592653589793", "--dry-run"])
    assert res.exit_code == 0, res.output
    kwargs = json.loads(res.stdout)["problem_kwargs"]
    assert kwargs == dict(det_extent=40.0, angle_range="0,3.141592653589793")
    op = pe.our_operator("ct_fanbeam", 48, kwargs)
    assert not pe.layout_differences(pe.geometry_of(op), MANIFEST["operators"]["d_ct_fanbeam_48"])
