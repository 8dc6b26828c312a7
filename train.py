"""Train a PaDIS patch prior: ``python train.py --data DIR --outdir runs`` (or under torchrun).

Parses the options into one config dict, saved as ``config.json`` in the run directory, and
calls ``training.training_loop.run(cfg)``. See that module for files, units and resume.
"""

from __future__ import annotations

import json
import os
import sys

import click

from dnnlib.paper_cli import HintChoice, PaperCommand, given, paper_options
from training.augment import AugmentSpec
from training.config import TrainConfig
from training.networks import ARCHS
from training.paper_cli import TRAIN_OPTIONS, apply_train_options, train_summary


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}; expected comma-separated integers") from None


def _float_pair(value: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}; expected MIN,MAX like 0.7,1.4", param_hint=name) from None
    if not 0 < lo <= hi:
        raise click.BadParameter(f"{value!r}; expected 0 < MIN <= MAX", param_hint=name)
    return lo, hi


D = TrainConfig.default  # every option's default is its config field's (training.config, written once)
AUG = AugmentSpec.from_dict(D("augment"))  # the --aug-* defaults: augmentation off


@click.command(context_settings=dict(show_default=True, max_content_width=110, help_option_names=["-h", "--help"]),
               cls=PaperCommand)
@click.option("--outdir", default=D("outdir"), metavar="DIR", help="Parent directory of the run directories.")
@click.option("--data", required=True, metavar="PATH", help="Training images: directory, file or zip.")
@click.option("--mat-key", default=D("mat_key"), help="Variable name in .mat/.npz files.")
@click.option("--normalize", is_flag=True, default=D("normalize"), help="Min-max scale each image to [0, 1].")
@click.option("--max-images", type=click.IntRange(min=1), default=D("max_images"), help="Use at most N images.")
@click.option("--xflip", type=click.BOOL, is_flag=False, flag_value=True, default=D("xflip"),
              help="Augment with left-right mirror images (the data set doubles; the paper's --xflip=1 too).")
@click.option("--aug-p", type=click.FloatRange(0, 1), default=AUG.p,
              help="Augment: probability that a training patch comes from a transformed image (0 = off).")
@click.option("--aug-rotate", type=click.FloatRange(0, 180), default=AUG.rotate,
              help="Augment: max |rotation|, degrees (180 = any angle).")
@click.option("--aug-zoom", default=f"{AUG.zoom_min:g},{AUG.zoom_max:g}", metavar="MIN,MAX", callback=lambda c, p, v: _float_pair(v, "--aug-zoom"),
              help="Augment: zoom range, log-uniform (1/pixel-spacing factor; 0.7,1.4 = spacing 0.71x-1.43x).")
@click.option("--aug-gain", type=click.FloatRange(min=1), default=AUG.gain,
              help="Augment: intensity gain, log-uniform in [1/G, G] (another HU window).")
@click.option("--aug-offset", type=click.FloatRange(0, 1, max_open=True), default=AUG.offset,
              help="Augment: intensity offset, uniform in [-O, O] (image units; 0.01 = 30 HU).")
@click.option("--arch", type=HintChoice(sorted(ARCHS), adm="the paper's ADM (DhariwalUNet) is not implemented; "
                                      "use ddpmpp (the paper's CT prior) or ncsnpp"),
              default=D("arch"), help="Network architecture.")
@click.option("--cbase", type=click.IntRange(min=1), default=None, help="Override model_channels.")
@click.option("--cres", callback=_int_list, default=None, help="Override channel_mult, e.g. 1,2,2.")
@click.option("--blocks", type=click.IntRange(min=1), default=None, help="Override num_blocks.")
@click.option("--attn", callback=_int_list, default=None, help="Override attn_resolutions ('' = none).")
@click.option("--dropout", type=click.FloatRange(0, 1), default=None, help="Override dropout.")
@click.option("--batch", type=click.IntRange(min=1), default=D("batch"),
              help="Base batch over all processes; a step has batch x batch_mul(p) patches  [default: 1 per process].")
@click.option("--batch-mul-base", type=click.IntRange(min=1), default=D("batch_mul_base"), show_default=True,
              help="batch_mul(p) = base x largest/p: 64/32/16 patches of 16/32/64 per base image (paper).")
@click.option("--batch-gpu", type=click.IntRange(min=1), default=D("batch_gpu"),
              help="Per-process microbatch limit (gradient accumulation).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=D("lr"), help="Learning rate.")
@click.option("--lr-rampup", type=click.FloatRange(min=0), default=D("lr_rampup_kimg"), help="Lr warm-up, kimg (thousands of training patches).")
@click.option("--ema", type=click.FloatRange(min=0), default=D("ema_halflife_kimg"), help="EMA half-life, kimg (thousands of training patches).")
@click.option("--ema-rampup", type=click.FloatRange(min=0), default=D("ema_rampup_ratio"), help="EMA ramp-up ratio (0 = off).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=D("duration_mimg"), help="Training length, Mimg: millions of training patches (each patch counts as "
              "one image; a step has batch x batch_mul patches, e.g. 16-64 per base image).")
@click.option("--tick", type=click.FloatRange(min=0, min_open=True), default=D("tick_kimg"), help="Stats interval, kimg (thousands of training patches).")
@click.option("--snap", type=click.IntRange(min=0), default=D("snap_ticks"), help="Ticks between network snapshots.")
@click.option("--dump", type=click.IntRange(min=0), default=D("dump_ticks"), help="Ticks between training states.")
@click.option("--seed", type=int, default=D("seed"), help="Random seed.")
@click.option("--real-p", type=click.FloatRange(0, 1), default=D("real_p"), help="Probability of the largest patch.")
@click.option("--pad-width", type=click.IntRange(min=0), default=D("pad_width"), help="Zero padding per side, pixels.")
@click.option("--patch-sizes", default=",".join(map(str, D("patch_sizes"))), help="Patch sizes, or 'whole' (use --pad-width 0).")
@click.option("--no-pos", is_flag=True, default=not D("positional"), help="No position channels (ablation: a plain EDM denoiser on patches).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=D("precision"), help="Autocast.")
@click.option("--workers", type=click.IntRange(min=0), default=D("workers"), help="CPU threads for torch (0 = default).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=D("device"), help="Default: cuda if available.")
@click.option("--transfer", default=D("transfer"), metavar="PKL|SAFETENSORS",
              help="Fine-tune this network (its architecture; --arch/--cbase/... ignored) on --data.")
@click.option("--resume", default=D("resume"), metavar="PATH|auto",
              help="Training-state file, or 'auto': the newest run of the same name (--desc) in --outdir.")
@click.option("--max-nonfinite", type=click.IntRange(min=1), default=D("max_nonfinite"),
              help="Stop after N non-finite losses in a row.")
@click.option("--no-progress", is_flag=True, default=not D("progress"), help="No progress bar.")
@click.option("--desc", default=D("desc"), help="Run directory suffix.")
@click.option("-n", "--dry-run", is_flag=True, help="Print the resolved config as JSON and exit.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@paper_options(TRAIN_OPTIONS)
def main(**opts):
    """Train a patch-based diffusion prior (PaDIS) on a set of images in [0, 1].

    Exit codes: 2 usage errors, 1 failures (one line; the traceback only with --debug),
    128 + signal after SIGTERM/SIGINT (a training state was written).
    """
    from dnnlib.cli import run_or_fail, to_flags
    from torch_utils.misc import bf16_cpu_warning
    from training import training_loop

    ctx = click.get_current_context()
    paper = apply_train_options(ctx, opts)
    overrides = {key: opts[opt] for opt, key in (("cbase", "model_channels"), ("cres", "channel_mult"),
                                                  ("blocks", "num_blocks"), ("attn", "attn_resolutions"),
                                                  ("dropout", "dropout")) if opts[opt] is not None}
    overrides.update(opts["paper_arch_overrides"])
    if opts["paper_cudnn_benchmark"] is not None:
        import torch
        torch.backends.cudnn.benchmark = opts["paper_cudnn_benchmark"]
    if opts["batch_gpu"] and opts["batch"] and opts["batch"] % opts["batch_gpu"]:
        raise click.BadParameter(f"{opts['batch_gpu']} does not divide --batch {opts['batch']}",
                                 param_hint="--batch-gpu")
    cfg = dict(outdir=opts["outdir"], desc=opts["desc"], data=opts["data"], mat_key=opts["mat_key"],
               normalize=opts["normalize"], max_images=opts["max_images"], xflip=opts["xflip"], arch=opts["arch"],
               arch_overrides=overrides, transfer=opts["transfer"], batch=opts["batch"], batch_mul_base=opts["batch_mul_base"],
               batch_gpu=opts["batch_gpu"], lr=opts["lr"],
               lr_rampup_kimg=opts["lr_rampup"], ema_halflife_kimg=opts["ema"],
               ema_rampup_ratio=(None if opts["transfer"] and not given(ctx, "ema_rampup")
                                 else opts["ema_rampup"] or None), duration_mimg=opts["duration"],
               tick_kimg=opts["tick"], snap_ticks=opts["snap"], dump_ticks=opts["dump"], seed=opts["seed"],
               real_p=opts["real_p"], pad_width=opts["pad_width"], patch_sizes=opts["patch_sizes"],
               positional=not opts["no_pos"],
               augment=dict(p=opts["aug_p"], rotate=opts["aug_rotate"], zoom_min=opts["aug_zoom"][0],
                            zoom_max=opts["aug_zoom"][1], gain=opts["aug_gain"], offset=opts["aug_offset"]),
               precision=opts["precision"], workers=opts["workers"], device=opts["device"],
               resume=opts["resume"], max_nonfinite=opts["max_nonfinite"], progress=not opts["no_progress"])
    cfg = run_or_fail(training_loop.resolve_config, cfg, opts["debug"])
    if paper and os.environ.get("RANK", "0") == "0":  # once under torchrun
        click.echo(train_summary(ctx, cfg, paper), err=True)
    bf16_slow = bf16_cpu_warning(cfg["precision"], cfg["device"])
    if bf16_slow and os.environ.get("RANK", "0") == "0":
        click.echo(f"warning: {to_flags(bf16_slow)}", err=True)
    if opts["dry_run"]:
        click.echo(json.dumps(cfg, indent=2))
        return
    result = run_or_fail(training_loop.run, cfg, opts["debug"])
    if result["interrupted"]:
        sys.exit(128 + int(result["interrupted"]))


if __name__ == "__main__":
    main()
