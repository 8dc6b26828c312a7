"""The options of the paper's own ``train.py`` and ``inverse_nodist.py``, on ours.

A paper user's command runs as typed: every option of the paper's two CLIs is accepted with
the paper's meaning (mapped onto our options) or refused with one line saying why and what to
use instead. Our option names stay the primary ones: the paper's spellings are hidden options
(absent from ``--help``), and its underscore spellings (``--image_size``, ``--pad_width``,
``--sigma_min``, ...) reach our hyphenated options through click's ``token_normalize_func``.

A command that uses an option only the paper has is a *paper command*; then the CLI prints one
line saying what runs (solver and step semantics), because some shared names mean something
else here (README, "From the paper's code").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import click
from click.core import ParameterSource

# Context setting for both CLIs: '--image_size' == '--image-size' (option names only).
NORMALIZE = dict(token_normalize_func=lambda name: name.replace("_", "-"))
PREFIX = "paper_"  # click parameter names of the hidden paper options


@dataclass(frozen=True)
class PaperOption:
    """One option that only the paper's CLI has: its flag (hyphenated; the underscore spelling
    matches too), click type, and ``apply(value, opts, ctx)`` that maps a given value onto
    our options (``opts``: the click values by parameter name) or raises :func:`refuse`."""

    flag: str
    type: Any
    apply: Callable[[Any, dict, click.Context], None]
    is_flag: bool = False

    @property
    def name(self) -> str:
        return PREFIX + self.flag.lstrip("-").replace("-", "_").lower()


def refuse(flag: str, value: Any, why: str) -> None:
    """One-line usage error for a paper option value padis does not take."""
    shown = "" if value is None else f"={int(value) if isinstance(value, bool) else value}"
    raise click.UsageError(f"{flag}{shown} (the paper's option): {why}")


def paper_options(specs: list[PaperOption]):
    """Decorator adding ``specs`` as hidden click options (default None = not given)."""
    def decorate(f):
        for spec in reversed(specs):
            kw = dict(is_flag=True, default=None) if spec.is_flag else dict(type=spec.type, default=None)
            f = click.option(spec.flag, spec.name, hidden=True, **kw)(f)
        return f
    return decorate


def given(ctx: click.Context, name: str) -> bool:
    """Was parameter ``name`` set on the command line (or by environment), not defaulted?"""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def apply_paper_options(ctx: click.Context, opts: dict, specs: list[PaperOption]) -> list[str]:
    """Pop the hidden paper options from ``opts`` and apply the given ones; returns their
    flags (empty: not a paper command)."""
    used = []
    for spec in specs:
        value = opts.pop(spec.name)
        if value is not None:
            spec.apply(value, opts, ctx)
            used.append(spec.flag)
    return used


def set_option(opts: dict, ctx: click.Context, key: str, value: Any, paper_flag: str) -> None:
    """Set our option ``key`` from a paper option, unless ours was given with another value."""
    if given(ctx, key) and opts[key] != value:
        raise click.UsageError(f"{paper_flag} (the paper's option) sets --{key.replace('_', '-')} to {value}, "
                               f"but --{key.replace('_', '-')} {opts[key]} was given too; give one of them")
    opts[key] = value


def only(flag: str, allowed: Any, why: str) -> Callable[[Any, dict, click.Context], None]:
    """``apply`` for a paper option padis takes only at the value ``allowed`` (no effect there)."""
    def apply(value, opts, ctx):
        if value != allowed:
            refuse(flag, value, why)
    return apply


# ----------------------------------------------------------------------------------------
# train.py


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


def _workers(value, opts, ctx):
    """The paper's --workers counts DataLoader processes; padis holds the images in memory and
    has none, so in a paper command --workers only means that (nothing to set)."""


TRAIN_OPTIONS = [
    PaperOption("--cond", click.BOOL, only("--cond", False, "padis trains unconditional priors (its solvers "
                                           "pass no class labels); use --cond=0")),
    PaperOption("--precond", click.Choice(["vp", "ve", "edm", "pedm"]), _precond),
    PaperOption("--padding", click.BOOL, only("--padding", True, "the paper's code marks training without "
                                              "padding 'THIS SHOULD NEVER RUN'; padis always pads by --pad-width "
                                              "(0: none; --patch-sizes whole for whole images)")),
    PaperOption("--augment", click.FloatRange(0, 1), only("--augment", 0, "padis has no augmentation pipeline "
                                                          "(the paper's README commands use --augment=0)")),
    PaperOption("--xflip", click.BOOL, only("--xflip", False, "dataset x-flips are not implemented; drop it")),
    PaperOption("--fp16", click.BOOL, _set("precision", "fp16", "--fp16")),
    PaperOption("--ls", click.FloatRange(min=0, min_open=True), only("--ls", 1, "loss scaling is automatic here "
                                                                     "(a GradScaler with --precision fp16)")),
    PaperOption("--bench", click.BOOL, lambda value, opts, ctx: opts.update(paper_cudnn_benchmark=bool(value))),
    PaperOption("--cache", click.BOOL, only("--cache", True, "padis always holds the training images in "
                                            "memory; drop it")),
    PaperOption("--nosubdir", None, lambda value, opts, ctx: refuse(
        "--nosubdir", None, "padis writes every run into a new OUTDIR/NNNNN-DESC directory so that nothing "
        "is overwritten; name it with --desc"), is_flag=True),
    PaperOption("--train-on-latents", click.BOOL, only("--train_on_latents", False, "latent-space training "
                                                       "(an autoencoder) is not part of padis; train on pixels")),
    PaperOption("--progressive", click.BOOL, only("--progressive", False, "progressive patch sizes are not "
                                                  "implemented; choose them with --patch-sizes")),
    PaperOption("--four-channels", int, only("--four_channels", 1, "only the paper's 2 position channels are "
                                             "implemented (its code: 'Always keep as 1')")),
    PaperOption("--hash-channels", int, only("--hash_channels", 1, "only the paper's 2 position channels are "
                                             "implemented (its code: 'Always keep as 1')")),
    PaperOption("--implicit-mlp", click.BOOL, _implicit_mlp),
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


class HintChoice(click.Choice):
    """A click.Choice whose refused values may carry a reason: ``HintChoice(choices, value=why)``."""

    def __init__(self, choices, **hints: str):
        super().__init__(choices)
        self.hints = hints

    def convert(self, value, param, ctx):
        if value in self.hints:
            self.fail(f"{value!r}: {self.hints[value]}", param, ctx)
        return super().convert(value, param, ctx)
