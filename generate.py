"""Unconditional whole-image samples from a patch prior: what did the network learn?

    python generate.py --network net.safetensors --seeds 0-7 --size 256,256 --outdir out

Each seed gives one image of any size the patch grid can tile, sampled with EDM's sampler
(Euler / Heun on the probability-flow ODE, or the stochastic sampler) through the stitched
whole-image denoiser. Writes ``grid.png``, ``samples.npy`` and ``config.json`` into a new run
directory. Parses and validates options, then calls ``inverse.generate.run``.
"""

from __future__ import annotations

import click

from dnnlib.cli import run_or_fail
from inverse.cli import check_network, parse_size, patch_grid_options, pick_prior
from inverse.generate import EDM_METHODS, parse_int_list
from inverse.generate import run as generate_run
from inverse.prior import PAD_FILLS, PRIOR_BUILDERS
from torch_utils.device import default_device


def parse_seeds(ctx, param, value):
    try:
        return parse_int_list(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings=dict(show_default=True, help_option_names=["-h", "--help"]))
@click.option("--network", help="Checkpoint (.safetensors/.json/.pkl) [default: the one under checkpoints/]")
@click.option("--seeds", default="0-7", callback=parse_seeds, help="Seeds, e.g. 0-7 or 1,5,9 (one image each)")
@click.option("--size", default="256", callback=parse_size, help="Image size S or H,W, pixels")
@click.option("--method", default="heun", type=click.Choice(EDM_METHODS), help="EDM sampler")
@click.option("--churn", default=40.0, type=click.FloatRange(min=0), help="S_churn of the stochastic sampler")
@click.option("--steps", default=18, type=click.IntRange(min=1), help="Noise levels")
@click.option("--sigma-min", default=0.002, type=float, help="Smallest noise level")
@click.option("--sigma-max", default=80.0, type=float, help="Largest noise level")
@click.option("--prior", type=click.Choice(sorted(PRIOR_BUILDERS)), help="Whole-image denoiser [default: "
              "patch; whole for a checkpoint trained on whole images]")
@patch_grid_options(sizes="--size")
@click.option("--pad-fill", default="zeros", type=click.Choice(PAD_FILLS), help="The prior's canvas outside the "
              "image: zeros, or Gaussian noise of std sigma (the current level, drawn from the seed's generator) "
              "as the padding of the training patches")
@click.option("--batch", type=click.IntRange(min=1), help="Max patches per network call [default: all]")
@click.option("--outdir", default="out", type=click.Path(file_okay=False), help="Runs go to OUTDIR/NNNNN-generate-HxW/")
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--debug", is_flag=True, help="Show tracebacks")
def main(debug, **opts):
    """Sample whole images from a patch prior and write them as a PNG grid."""
    network = check_network(opts["network"])
    cfg = dict(opts, network=network, prior=pick_prior(opts["prior"], network),
               device=opts["device"] or default_device())
    run_or_fail(generate_run, cfg, debug)


if __name__ == "__main__":
    main()
