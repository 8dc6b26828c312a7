"""inverse.prior_setup.load_prior: one way from a checkpoint to a prior and its noise schedule,
and the prior it gives is the one image mode, volume mode, generate and the deepinv adapter use.

Tiny network (build_network('tiny', 32, 1)) saved with a training record of patch sizes 16-32 on
16 x 16 images, so that 32 x 32 inputs draw a warning; whole-image copy for the refusals.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from inverse.config import ReconConfig
from inverse.prior import build_prior
from inverse.prior_setup import PRIOR_OPTIONS, LoadedPrior, Network, load_prior, open_network, prior_options
from inverse.samplers import get_sigmas_karras
from torch_utils.persistence import CheckpointError, load_network

SIZE = 32


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict:
    from torch_utils.persistence import save_network
    from training.networks import build_network

    root = tmp_path_factory.mktemp("prior_setup")
    torch.manual_seed(0)
    net = build_network("tiny", img_resolution=32, image_channels=1).eval()
    patch = save_network(net, root / "patch.safetensors",
                         extra=dict(patch_sizes=["16", "32"], pad_width=8, dataset_kwargs=dict(resolution=[16, 16])))
    whole = save_network(net, root / "whole.safetensors",
                         extra=dict(patch_sizes=["whole"], pad_width=0, dataset_kwargs=dict(resolution=[32, 32])))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)).save(images / f"img{k}.png")
    return dict(patch=str(patch), whole=str(whole), images=str(images), root=root)


def denoised(prior, seed: int = 3, batch: int = 1) -> torch.Tensor:
    """prior(x, 0.5, generator) of one fixed noisy input; the generator draws the grid offset."""
    x = torch.rand(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return prior(x, 0.5, torch.Generator().manual_seed(seed))


def recon_config(nets, tmp_path, **changes) -> ReconConfig:
    cfg = ReconConfig(network=nets["patch"], problem="denoise", input=nets["images"], baselines=[], steps=3,
                      outdir=str(tmp_path), device="cpu", progress=False)
    return cfg.replace(**changes).resolved()


def test_load_prior_gives_network_grid_notes_prior_and_schedule(nets):
    loaded = load_prior(nets["patch"], [(SIZE, SIZE)], steps=4, sigma_min=0.01, sigma_max=2.0)
    assert isinstance(loaded, LoadedPrior) and isinstance(loaded.network, Network)
    assert loaded.channels == 1 and loaded.network.info["patch_sizes"] == ["16", "32"]
    grids = loaded.grids
    assert grids.patch_range == [16, 32]
    chosen = grids.grid[f"{SIZE}x{SIZE}"]
    assert chosen["chosen"] and 16 <= chosen["psize"] <= 32
    assert grids.notes == [f"patch grid for {SIZE}x{SIZE}: pad {chosen['pad']}, psize {chosen['psize']} (chosen "
                           "from the image size and the network's patch sizes 16-32 px; set with pad/psize)"]
    assert any("larger than the network's training images 16x16" in w for w in grids.warnings)
    assert loaded.messages() == [*grids.notes, *(f"warning: {w}" for w in grids.warnings)]
    assert torch.equal(loaded.sigmas, get_sigmas_karras(4, 0.01, 2.0))
    by_hand = build_prior(load_network(nets["patch"]), "patch", patch_range=[16, 32], grid=grids.grid)
    assert torch.equal(denoised(loaded.prior), denoised(by_hand))
    assert load_prior(nets["patch"], [(SIZE, SIZE)]).sigmas is None  # no steps: no schedule


def test_load_prior_passes_the_prior_options(nets):
    given = load_prior(nets["patch"], [(SIZE, SIZE)], pad=4, psize=18, pad_fill="noise", batch=2)
    assert given.grids.grid == {f"{SIZE}x{SIZE}": dict(pad=4, psize=18, chosen=False)} and given.grids.notes == []
    assert given.prior.pad_fill == "noise" and given.prior.batch == 2
    assert torch.equal(denoised(given.prior), denoised(build_prior(load_network(nets["patch"]), "patch", pad=4,
                                                                   psize=18, pad_fill="noise", batch=2)))
    average = load_prior(nets["patch"], [(SIZE, SIZE)], prior="average")
    assert type(average.prior).__name__ == "OverlapAveragePrior" and average.grids.grid
    whole = load_prior(nets["whole"], [(SIZE, SIZE)], prior="whole")
    assert whole.grids.grid == {} and whole.grids.notes == [] and whole.grids.warnings == []
    opened = open_network(nets["patch"])
    assert torch.equal(denoised(load_prior(opened, [(SIZE, SIZE)]).prior), denoised(load_prior(nets["patch"],
                                                                                               [(SIZE, SIZE)]).prior))


def test_prior_options_reads_a_config_or_a_dict(nets, tmp_path):
    cfg = recon_config(nets, tmp_path, pad_fill="noise")
    options = prior_options(cfg)
    assert set(options) == set(PRIOR_OPTIONS) and options["pad_fill"] == "noise" and options["steps"] == 3
    assert prior_options(dict(prior="patch", pad=None, seeds=[0], steps=2)) == dict(prior="patch", pad=None, steps=2)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_load_prior_refuses_a_bad_checkpoint_with_one_line_naming_the_file(nets):
    missing = nets["root"] / "missing.safetensors"
    with pytest.raises(FileNotFoundError) as exc:
        load_prior(missing, [(SIZE, SIZE)])
    assert str(missing) in one_line(exc)
    junk = nets["root"] / "junk.pkl"
    junk.write_text("not a pickle")
    with pytest.raises(CheckpointError) as exc:
        load_prior(junk, [(SIZE, SIZE)])
    assert str(junk) in one_line(exc)


def test_load_prior_checks_before_loading_and_refuses_a_prior_the_network_cannot_serve(nets):
    missing = nets["root"] / "missing.safetensors"
    with pytest.raises(ValueError, match="unknown prior 'nope'"):
        load_prior(missing, [(SIZE, SIZE)], prior="nope")  # the name first: the file is not read
    with pytest.raises(ValueError, match="does not tile"):
        load_prior(missing, [(SIZE, SIZE)], pad=8, psize=16)
    with pytest.raises(ValueError) as exc:
        load_prior(nets["whole"], [(SIZE, SIZE)], prior="patch")
    assert one_line(exc).startswith(f"{nets['whole']}: this is a whole-image network")
    opened = open_network(nets["whole"])  # no prior named: not checked yet; load_prior checks it
    with pytest.raises(ValueError, match="whole-image network"):
        load_prior(opened, [(SIZE, SIZE)], prior="patch")
    with pytest.raises(ValueError, match="whole-image network"):
        open_network(nets["whole"], prior="average")


# ----------------------------------------------------------------------------------------
# The callers get load_prior's prior


def test_image_mode_uses_load_prior(nets, tmp_path):
    from inverse.reconstruct import set_up

    setup = set_up(recon_config(nets, tmp_path))
    loaded = load_prior(nets["patch"], [(SIZE, SIZE)], **prior_options(setup.cfg))
    assert setup.cfg.grid == loaded.grids.grid and setup.cfg.patch_range == loaded.grids.patch_range
    assert torch.equal(setup.sigmas, loaded.sigmas) and setup.channels == loaded.channels
    assert torch.equal(denoised(setup.prior), denoised(loaded.prior))
    recorded = json.loads((setup.run_dir / "config.json").read_text())
    assert recorded["grid"] == loaded.grids.grid


def test_volume_mode_uses_load_prior(nets, tmp_path):
    from inverse.volume import VolumeContext

    cfg = recon_config(nets, tmp_path, volume=True, pad_fill="noise")
    ctx = VolumeContext(cfg, torch.device("cpu"), {(SIZE, SIZE)}, verbose=False)
    loaded = load_prior(nets["patch"], [(SIZE, SIZE)], **prior_options(cfg))
    assert ctx.cfg.grid == loaded.grids.grid and torch.equal(ctx.sigmas, loaded.sigmas)
    assert torch.equal(denoised(ctx.prior, batch=2), denoised(loaded.prior, batch=2))


def test_generate_uses_load_prior(nets, tmp_path):
    from inverse.generate import edm_sample
    from inverse.generate import run as generate

    cfg = dict(network=nets["patch"], size=[SIZE, SIZE], seeds=[4], steps=2, sigma_min=0.01, sigma_max=5.0,
               method="euler", churn=0.0, prior="patch", pad=None, psize=None, stride=None, batch=None,
               outdir=str(tmp_path), device="cpu", progress=False)
    run_dir = generate(cfg)
    loaded = load_prior(nets["patch"], [(SIZE, SIZE)], **prior_options(cfg))
    expect = edm_sample(loaded.prior, (1, 1, SIZE, SIZE), loaded.sigmas, torch.Generator().manual_seed(4),
                        method="euler")
    assert np.array_equal(np.load(run_dir / "samples.npy")[0], np.clip(expect[0].numpy(), 0, 1))
    assert json.loads((run_dir / "config.json").read_text())["grid"] == loaded.grids.grid
    with pytest.raises(ValueError, match="whole-image network"):  # the check generate lacked before load_prior
        generate(dict(cfg, network=nets["whole"]))


def fake_deepinv() -> types.ModuleType:
    """The few deepinv names the adapters' module subclasses, as plain stand-ins."""
    class Denoiser(torch.nn.Module):
        def __init__(self, device=None):
            super().__init__()

    class LinearPhysics:
        pass

    dinv = types.ModuleType("deepinv")
    dinv.models = types.SimpleNamespace(Denoiser=Denoiser)
    dinv.physics = types.SimpleNamespace(LinearPhysics=LinearPhysics, GaussianNoise=object, ZeroNoise=object)
    return dinv


def test_deepinv_adapter_uses_load_prior(nets, monkeypatch):
    """load_denoiser wraps load_prior's prior (with deepinv where it can be imported, else with a
    stand-in for the few names the adapters' module subclasses)."""
    import inverse

    try:
        import deepinv  # noqa: F401
        stand_in = False
    except Exception:
        stand_in = True
        monkeypatch.setitem(sys.modules, "deepinv", fake_deepinv())
    try:
        from inverse.deepinv_adapters import load_denoiser

        den = load_denoiser(nets["patch"], (SIZE, SIZE), seed=3, pad_fill="noise")
        loaded = load_prior(nets["patch"], [(SIZE, SIZE)], pad_fill="noise")
        x = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            assert torch.equal(den(x, 0.5), denoised(loaded.prior, seed=3))
    finally:
        if stand_in:  # no later import may see the module built on the stand-in
            sys.modules.pop("inverse.deepinv_adapters", None)
            if hasattr(inverse, "deepinv_adapters"):
                delattr(inverse, "deepinv_adapters")
