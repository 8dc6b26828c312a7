"""Reconstruct a directory of images (or measurements) with a PaDIS patch prior.

    python inverse_nodist.py --network net.safetensors --input data/test --problem ct_parbeam --views 20

Parses and validates options, builds one ``inverse.config.ReconConfig`` and calls ``inverse.reconstruct.run``
(``inverse.volume.run_volume`` with ``--volume``).
Exit codes: 2 usage errors, 1 failures (one line; the traceback only with --debug), also when
some inputs failed and the others were reconstructed (listed in summary.json and on stderr).
"""

from __future__ import annotations

import os

import click

from dnnlib.cli import fail, run_or_fail, to_flags
from dnnlib.paper_cli import HintChoice, PaperCommand, paper_options
from inverse.baselines import CHECK_EVERY, TV_ITERS, TV_TOL, TV_WEIGHT, TV_WEIGHTS
from inverse.cli import (
    check_network,
    pad_fill_defaults,
    parse_baselines,
    parse_size,
    parse_window,
    patch_grid_options,
    pick_prior,
    problem_options,
    solver_options,
    solver_table_help,
)
from inverse.config import ReconConfig
from inverse.operators import OPERATORS
from inverse.paper_cli import RECON_OPTIONS, SOLVER_HINTS, apply_recon_options, recon_summary
from inverse.prior import PAD_FILLS, PRIOR_BUILDERS
from inverse.samplers import SAMPLERS
from torch_utils.device import default_device
from torch_utils.misc import bf16_cpu_warning


@click.command(context_settings=dict(show_default=True, help_option_names=["-h", "--help"]), cls=PaperCommand,
               epilog=solver_table_help())
@click.option("--network", help="Checkpoint (.safetensors/.json/.pkl) [default: the one under checkpoints/]")
@click.option("--input", "input_", type=click.Path(exists=True), help="Ground-truth image file or directory")
@click.option("--measurements", type=click.Path(exists=True), help="A .npy measurement file or directory (no ground truth)")
@click.option("--problem", type=click.Choice(sorted(OPERATORS)), help="Forward model  [required]")
@click.option("--solver", default="diffpir", type=HintChoice(sorted(SAMPLERS), **SOLVER_HINTS), help="Inverse solver")
@click.option("--prior", type=click.Choice(sorted(PRIOR_BUILDERS)), help="Whole-image denoiser [default: "
              "patch; whole for a checkpoint trained on whole images]")
@click.option("--baseline", "baselines", default="fbp,tv", callback=parse_baselines, help="Comma list or 'none'; fbp is the pseudo-inverse ('pinv', its name outside CT)")
@click.option("--tv-weight", type=click.FloatRange(min=0), help="TV baseline weight, relative to ||A||^2 "
              "[default: the weight tuned per problem on the tuning slices, "
              f"{', '.join(f'{k} {v:g}' for k, v in TV_WEIGHTS.items())}; others {TV_WEIGHT:g}]")
@click.option("--tv-iters", type=click.IntRange(min=1), help="TV baseline: maximum PDHG iterations "
              f"[default: {TV_ITERS}; about 0.1 s each for 20-view CT at 256x256 on one CPU core]")
@click.option("--tv-tol", type=click.FloatRange(min=0), help="TV baseline: stop when the objective changes by less "
              f"than this (relative) over {CHECK_EVERY} iterations; 0 runs all --tv-iters [default: {TV_TOL:g}]")
@click.option("--threads", default=0, type=click.IntRange(min=0), help="CPU threads for torch (0 = torch's default, "
              "one per core; on a loaded machine 1 is often faster)")
@click.option("--outdir", default="out", type=click.Path(file_okay=False), help="Runs go to OUTDIR/NNNNN-<problem>-<solver>/")
@click.option("--seed", default=0, type=int, help="Image i uses seed + i")
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--batch", type=click.IntRange(min=1), help="Max patches per network call [default: all]; with dps --dc-grad full only one chunk's graph is kept (one extra forward per iteration)")
@click.option("--precision", default="fp32", type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Network call under autocast: bf16 (CPU or CUDA), fp16 (CUDA only)")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network (falls back with a warning)")
@click.option("--channels-last", is_flag=True, help="Channels-last memory format for the network")
@click.option("--images-per-batch", default=1, type=click.IntRange(min=1),
              help="Solve K images of the same size together (their patches in one call); results depend on K")
@click.option("--samples", default=1, type=click.IntRange(min=1),
              help="K posterior samples per image in one batched solve: NAME_recon is their mean (scored), "
                   "NAME_std.png/.npy the per-pixel std")
@click.option("--save-samples", is_flag=True, help="With --samples K > 1: also write the K samples (NAME_samples.npy)")
@click.option("--parallel-baselines", is_flag=True,
              help="Run the baselines (TV, FBP) in a thread beside the solve: faster on CPU, same results; "
                   "per-method seconds then overlap")
@click.option("--volume", is_flag=True, help="Each input (.npy D,H,W / .mat stack / NIfTI / DICOM series or slice directory) is one volume, solved in slabs")
@click.option("--slab", default=16, type=click.IntRange(min=1), help="--volume: adjacent slices solved together (one network and projector call per step)")
@click.option("--z-coupling", default=0.0, type=click.FloatRange(min=0), help="--volume: weight of ||slice differences||² (relative to ||A||²) in the data step; 0: slices independent")
@patch_grid_options(sizes="each image's size")
@click.option("--pad-fill", type=click.Choice(PAD_FILLS), help="The prior's canvas outside the image: zeros, or "
              "Gaussian noise of std sigma (the current level, drawn from the run's seed) as the padding of the "
              f"training patches [default: the solver's: {pad_fill_defaults()}; on --resume the run's]")
@click.option("--steps", type=click.IntRange(min=1), help="Noise levels [default: solver's; dds/diffpir 20 (diffpir on ct_lact 50), ddnm 50, others 100]")
@click.option("--sigma-min", type=click.FloatRange(min=0, min_open=True), help="Smallest noise level [default: 0.003]")
@click.option("--sigma-max", type=click.FloatRange(min=0, min_open=True), help="Largest noise level [default: solver's; dds/diffpir 1, others 10]")
@click.option("--zeta", type=float, help="dps/langevin/pc data step, a fraction of a Landweber step 1/||A||² "
              "[default: 1.8]; with --dc-step paper an absolute step [default: 0.3]; diffpir: renoise mix, "
              "0 predicted noise .. 1 fresh noise [default: 1]")
@click.option("--inner", type=click.IntRange(min=0), help="dps/langevin/pc inner iterations per level [default: dps/langevin 10, pc 1]")
@click.option("--eps", type=float, help="dps/langevin/pc Langevin step alpha = eps*sigma^2 [default: 0.25]")
@click.option("--dc-grad", type=click.Choice(["full", "x0"]), help="dps: gradient through the network or at D(x) [default: full]")
@click.option("--dc-step", type=click.Choice(["landweber", "paper"]),
              help="dps data step: zeta/||A||^2 on grad ½||y-A D(x)||^2, or the paper code's zeta on "
                   "grad ||y-A D(x)|| started from clamp(pinv(y)) [default: landweber]")
@click.option("--predictor", type=click.Choice(["sde", "ode"]), help="pc predictor [default: sde]")
@click.option("--eta", type=float, help="ddnm/dds renoise: 1 fresh noise, 0 deterministic [default: ddnm 0.85, dds 1]")
@click.option("--lam", type=float, help="dds: weight of ||x - D(x)||^2 in the data step, relative to ||A||^2 "
              "[default: 0.01]; diffpir: that weight is rho = lam * noise_std^2 / sigma^2 [default: 0.3] "
              "(table below)")
@click.option("--cg-iters", type=click.IntRange(min=0), help="dds/diffpir conjugate-gradient iterations per level [default: 5]; ddnm: CG correction")
@click.option("--init", type=click.Choice(["pinv", "noise"]), help="Solver start [default: pinv]")
@click.option("--views", type=click.IntRange(min=1), help="CT: projection angles [default: operator's, 20]")
@click.option("--angle-range", help="CT angles 'lo,hi' in radians: the limited-angle wedge, or the fan/cone-beam "
              "source positions (the paper's fan beam: 0,3.14159) [default: operator's]")
@click.option("--detectors", type=click.IntRange(min=1), help="CT: detector pixels [default: operator's, 512]")
@click.option("--det-extent", type=click.FloatRange(min=0, min_open=True),
              help="CT: detector half width, image half width is 20 [default: 40; fan beam: 80 covers the whole "
                   "image, 40 only a disc of radius 17.9]")
@click.option("--src-radius", type=click.FloatRange(min=0, min_open=True), help="Fan/cone beam: source to rotation centre [default: 40]")
@click.option("--det-radius", type=click.FloatRange(min=0, min_open=True), help="Fan/cone beam: rotation centre to detector [default: 40]")
@click.option("--det-height", type=click.FloatRange(min=0), help="Cone beam: detector half height [default: 0, the slab's magnified height]")
@click.option("--slice-spacing", type=click.FloatRange(min=0, min_open=True), help="Cone beam: slice distance in pixel sides [default: 1]")
@click.option("--kernel-size", type=click.IntRange(min=1), help="Deblur: odd kernel side, pixels")
@click.option("--kernel-sigma", type=float, help="Gaussian deblur: kernel std, pixels")
@click.option("--factor", type=click.IntRange(min=1), help="Super-resolution factor")
@click.option("--mask", type=click.Choice(["box", "random"]), help="Inpainting mask kind")
@click.option("--mask-fraction", type=float, help="Inpainting: fraction of pixels missing")
@click.option("--noise", type=click.FloatRange(min=0), help="Noise level: std in image units; CT: "
              "fraction of max |sinogram| [default: 0.005 CT, 0.01 others]")
@click.option("--image-size", callback=parse_size, help="S or H,W: images must have it (not resized); needed with --measurements")
@click.option("--mat-key", default="images", help="Variable of .mat/.npz inputs")
@click.option("--hu-window", callback=parse_window, help="DICOM input: 'HUmin,HUmax' mapped to [0, 1] "
              "[default: -1000,2000, the training data's window]")
@click.option("--normalize", is_flag=True, help="Min-max scale each input image to [0, 1] (its min/max are "
              "kept as input_range in NAME_metrics.json)")
@click.option("--max-images", type=click.IntRange(min=1), help="Only the first N images")
@click.option("--dry-run", is_flag=True, help="Print the config and exit")
@click.option("--resume", type=click.Path(exists=True, file_okay=False),
              help="Complete this earlier run directory (same options): skip finished images, redo the rest")
@click.option("--debug", is_flag=True, help="Show tracebacks")
@paper_options(RECON_OPTIONS)
def main(**opts):
    """Reconstruct images from simulated (--input) or given (--measurements) data with PaDIS.
    The options of the paper's inverse_nodist.py work too (README: From the paper's code)."""
    paper = apply_recon_options(click.get_current_context(), opts)
    input_, measurements, baselines = opts.pop("input_"), opts.pop("measurements"), opts.pop("baselines")
    dry_run, debug, compile_ = opts.pop("dry_run"), opts.pop("debug"), opts.pop("compile_")
    if opts["problem"] is None:
        raise click.UsageError("Missing option '--problem' (the paper's --name)")
    if (input_ is None) == (measurements is None):
        raise click.UsageError("give exactly one of --input (ground truth) or --measurements")
    if measurements is not None and opts["image_size"] is None:
        raise click.UsageError("--measurements needs --image-size (the size of the images to reconstruct)")
    if opts["volume"] and measurements is not None:
        raise click.UsageError("--volume reconstructs ground-truth volumes given with --input")
    if opts["problem"] == "ct_cone" and not opts["volume"]:
        raise click.UsageError("--problem ct_cone projects volumes: add --volume")
    problem_kwargs = problem_options(opts)
    device = opts["device"] or default_device()
    if opts["precision"] == "fp16" and not device.startswith("cuda"):
        raise click.BadParameter(f"fp16 needs a CUDA device (--device is {device}); use bf16 on CPU",
                                 param_hint="'--precision'")
    bf16_slow = bf16_cpu_warning(opts["precision"], device)
    if bf16_slow and os.environ.get("RANK", "0") == "0":  # once under torchrun
        click.echo(f"warning: {to_flags(bf16_slow)}", err=True)
    network = check_network(opts["network"])
    cfg = ReconConfig(
        network=network, input=input_, measurements=measurements,
        image_size=opts["image_size"], mat_key=opts["mat_key"], normalize=opts["normalize"],
        max_images=opts["max_images"], hu_window=opts["hu_window"], problem=opts["problem"],
        noise=opts["noise"], noise_absolute=opts["paper_noise_absolute"],
        problem_kwargs=problem_kwargs,
        prior=pick_prior(opts["prior"], network), pad=opts["pad"], psize=opts["psize"], stride=opts["stride"],
        pad_fill=opts["pad_fill"], batch=opts["batch"],
        precision=opts["precision"], channels_last=opts["channels_last"], compile=compile_,
        images_per_batch=opts["images_per_batch"], parallel_baselines=opts["parallel_baselines"],
        volume=opts["volume"], slab=opts["slab"], z_coupling=opts["z_coupling"],
        solver=opts["solver"], solver_kwargs=solver_options(opts),
        steps=opts["steps"], sigma_min=opts["sigma_min"], sigma_max=opts["sigma_max"],
        samples=opts["samples"], save_samples=opts["save_samples"],
        baselines=baselines, tv_weight=opts["tv_weight"], tv_iters=opts["tv_iters"],
        tv_tol=opts["tv_tol"], threads=opts["threads"],
        outdir=opts["outdir"], seed=opts["seed"], resume=opts["resume"],
        device=device,
    )
    if paper:
        click.echo(recon_summary(cfg.resolved().to_dict(), paper, opts["paper_notes"]), err=True)
    if dry_run:
        import json
        click.echo(json.dumps(cfg.resolved().to_dict(), indent=2))
        return
    if cfg.volume:  # each input is one 3-D volume, solved in slabs
        from inverse.volume import run_volume as run
    else:
        from inverse.reconstruct import run
    summary = run_or_fail(run, cfg, debug)
    if summary["failures"]:
        fail(f"{len(summary['failures'])} input(s) failed, the others were reconstructed; "
             f"see {summary['run_dir']}/summary.json")


if __name__ == "__main__":
    main()
