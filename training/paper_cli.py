"""The options of the paper's own ``train.py``, on ours (:data:`TRAIN_OPTIONS`); the
machinery is ``dnnlib.paper_cli``."""

from __future__ import annotations

from typing import Any

import click

from dnnlib.paper_cli import PaperOption, apply_paper_options, given, only, refuse, set_option


def _set(key: str, value: Any, flag: str):
    """``apply`` that sets our option ``key`` to ``value`` when the paper option is true."""
    def apply(given_value, opts, ctx):
        if given_value:
            set_option(opts, ctx, key, value, flag)
    return apply


def _precond(value, opts, ctx):
    if value == "edm":
        set_option(opts, ctx, "no_pos", True, "--precond=edm")
    elif value != "pedm":
        refuse("--precond", value, "padis implements EDM preconditioning only: pedm (the paper's patch "
               "denoiser, the default) or edm (no position channels: --no-pos)")


def _implicit_mlp(value, opts, ctx):
    opts["paper_arch_overrides"]["implicit_mlp"] = bool(value)


TRAIN_OPTIONS = [
    PaperOption("--cond", click.BOOL, only("--cond", False, "padis trains unconditional priors (its solvers "
                                           "pass no class labels); use --cond=0")),
    PaperOption("--precond", click.Choice(["vp", "ve", "edm", "pedm"]), _precond),
    PaperOption("--padding", click.BOOL, only("--padding", True, "the paper's code marks training without "
                                              "padding 'THIS SHOULD NEVER RUN'; padis always pads by --pad-width "
                                              "(0: none; --patch-sizes whole for whole images)")),
    PaperOption("--augment", click.FloatRange(0, 1), only("--augment", 0, "padis has no augmentation pipeline "
                                                          "(the paper's README commands use --augment=0)")),
    PaperOption("--fp16", click.BOOL, _set("precision", "fp16", "--fp16")),
    PaperOption("--ls", click.FloatRange(min=0, min_open=True), only("--ls", 1, "loss scaling is automatic here "
                                                                     "(a GradScaler with --precision fp16)")),
    PaperOption("--bench", click.BOOL, lambda value, opts, ctx: opts.update(paper_cudnn_benchmark=bool(value))),
    PaperOption("--cache", click.BOOL, only("--cache", True, "padis always holds the training images in "
                                            "memory; drop it")),
    PaperOption("--nosubdir", None, lambda value, opts, ctx: refuse(
        "--nosubdir", None, "padis writes every run into a new OUTDIR/NNNNN-DESC directory so that nothing "
        "is overwritten; name it with --desc"), is_flag=True),
    PaperOption("--train_on_latents", click.BOOL, only("--train_on_latents", False, "latent-space training "
                                                       "(an autoencoder) is not part of padis; train on pixels")),
    PaperOption("--progressive", click.BOOL, only("--progressive", False, "progressive patch sizes are not "
                                                  "implemented; choose them with --patch-sizes")),
    PaperOption("--four_channels", int, only("--four_channels", 1, "only the paper's 2 position channels are "
                                             "implemented (its code: 'Always keep as 1')")),
    PaperOption("--hash_channels", int, only("--hash_channels", 1, "only the paper's 2 position channels are "
                                             "implemented (its code: 'Always keep as 1')")),
    PaperOption("--implicit_mlp", click.BOOL, _implicit_mlp),
]


def apply_train_options(ctx: click.Context, opts: dict) -> list[str]:
    """Map the paper's train.py options onto ours (see :data:`TRAIN_OPTIONS`). In a paper
    command --ema is the paper's Mimg (ours: kimg) and --workers the paper's loader processes
    (none here). Leaves ``paper_arch_overrides`` and ``paper_cudnn_benchmark`` in ``opts``."""
    opts["paper_arch_overrides"] = {}
    opts["paper_cudnn_benchmark"] = None
    used = apply_paper_options(ctx, opts, TRAIN_OPTIONS)
    if used:
        if given(ctx, "ema"):
            opts["ema"] = opts["ema"] * 1000
        if given(ctx, "workers"):
            opts["workers"] = 0
    return used


def train_summary(ctx: click.Context, cfg: dict, used: list[str]) -> str:
    """The line a paper command prints: what trains, and the names whose meaning differs."""
    net = "EDMPrecond" if not cfg["positional"] else "Patch_EDMPrecond"
    notes = [f"--ema read in Mimg as in the paper (half-life {cfg['ema_halflife_kimg']:g} kimg)"] if given(ctx, "ema") else []
    if given(ctx, "workers"):
        notes.append("--workers ignored (the paper's loader processes; padis holds the images in memory)")
    return (f"paper command ({', '.join(used)}): training {net} (--arch {cfg['arch']}) on patches "
            f"{cfg['patch_sizes']} of images zero-padded by {cfg['pad_width']}; " + "".join(n + "; " for n in notes)
            + "options not given take padis' defaults (README: From the paper's code)")
