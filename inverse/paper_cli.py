"""The options of the paper's own ``train.py`` and ``inverse_nodist.py``, on ours.

A paper user's command runs as typed: every option of the paper's two CLIs is accepted with
the paper's meaning (mapped onto our options) or refused with one line saying why and what to
use instead. Our option names stay the primary ones: the paper's spellings are hidden options
(absent from ``--help``), and its underscore spellings (``--image_size``, ``--pad_width``,
``--sigma_min``, ...) reach our hyphenated options (:class:`PaperCommand`).

A command that uses an option only the paper has is a *paper command*; then the CLI prints one
line saying what runs (solver and step semantics), because some shared names mean something
else here (README, "From the paper's code").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import click
from click.core import ParameterSource

PREFIX = "paper_"  # click parameter names of the hidden paper options


def hyphenate(token: str) -> str:
    """'--image_size=256' -> '--image-size=256': underscores of a long option's name only."""
    if not token.startswith("--"):
        return token
    name, eq, value = token.partition("=")
    return name.replace("_", "-") + eq + value


class PaperCommand(click.Command):
    """A click command that also takes the paper's underscore spellings of its long options
    (``--image_size`` for ``--image-size``); values are left as typed."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        return super().parse_args(ctx, [hyphenate(a) for a in args[:end]] + args[end:])


@dataclass(frozen=True)
class PaperOption:
    """One option that only the paper's CLI has: its flag as the paper spells it (the hyphen
    spelling matches too), click type, and ``apply(value, opts, ctx)`` that maps a given value onto
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
            f = click.option(hyphenate(spec.flag), spec.name, hidden=True, **kw)(f)
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


def set_option(opts: dict, ctx: click.Context, key: str, value: Any, paper_flag: str,
               ours: str | None = None) -> None:
    """Set our option ``key`` (flag ``ours``) from a paper option, unless ours was given with
    another value."""
    ours = ours or "--" + key.replace("_", "-")
    if given(ctx, key) and opts[key] != value:
        raise click.UsageError(f"{paper_flag} (the paper's option) sets {ours} to {value}, "
                               f"but {ours} {opts[key]} was given too; give one of them")
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


class HintChoice(click.Choice):
    """A click.Choice whose refused values may carry a reason: ``HintChoice(choices, value=why)``."""

    def __init__(self, choices, **hints: str):
        super().__init__(choices)
        self.hints = hints

    def convert(self, value, param, ctx):
        if value in self.hints:
            self.fail(f"{value!r}: {self.hints[value]}", param, ctx)
        return super().convert(value, param, ctx)


# ----------------------------------------------------------------------------------------
# inverse_nodist.py

PAPER_PROBLEMS = {"ct_parbeam": "ct_parbeam", "ct_fanbeam": "ct_fanbeam", "lact": "ct_lact", "denoise": "denoise",
                  "deblur_uniform": "deblur_uniform", "super": "super"}  # the paper's --name -> our --problem
NO_EFFECT = "has no effect (the paper's dps ignores it too)"  # the EDM sampler knobs S_churn ... S_noise


def _to(flag: str, key: str, ours: str, convert: Callable[[Any], Any] = lambda v: v):
    """``apply`` that sets our option ``key`` (shown as ``ours``) from paper option ``flag``."""
    def apply(value, opts, ctx):
        set_option(opts, ctx, key, convert(value), flag, ours)
    return apply


def _if_problem(flag: str, prefix: str, key: str, ours: str):
    """The paper passes --blursize/--scale whatever the problem; they set ours where they apply."""
    def apply(value, opts, ctx):
        if (opts["problem"] or "").startswith(prefix):
            set_option(opts, ctx, key, value, flag, ours)
    return apply


def _sigma(value, opts, ctx):
    set_option(opts, ctx, "noise", value, "--sigma", "--noise")
    opts["paper_noise_absolute"] = True


def _note(text: str):
    def apply(value, opts, ctx):
        opts["paper_notes"].append(text)
    return apply


def _unusable(flag: str):
    why = ("the paper's inverse_nodist.py hands it to its dps(), which takes no such argument (a TypeError "
           "there); padis' schedule is EDM's with rho 7, set by --steps/--sigma-min/--sigma-max")
    return lambda value, opts, ctx: refuse(flag, value, why)


RECON_OPTIONS = [
    PaperOption("--image_dir", click.Path(exists=True), _to("--image_dir", "input_", "--input")),
    PaperOption("--name", click.Choice(sorted(PAPER_PROBLEMS)), _to("--name", "problem", "--problem", PAPER_PROBLEMS.get)),
    PaperOption("--sigma", click.FloatRange(min=0), _sigma),
    PaperOption("--blursize", click.IntRange(min=1), _if_problem("--blursize", "deblur", "kernel_size", "--kernel-size")),
    PaperOption("--scale", click.IntRange(min=1), _if_problem("--scale", "super", "factor", "--factor")),
    PaperOption("--channels", click.IntRange(min=1), _note("--channels: padis takes the channel count from the "
                                                           "network (the images must have it)")),
    PaperOption("--class", click.IntRange(min=0), lambda value, opts, ctx: refuse(
        "--class", value, "padis priors are unconditional (label_dim 0), as the paper's CT prior; drop it")),
    PaperOption("--rho", click.FloatRange(min=0, min_open=True), only("--rho", 7, "padis' noise schedule is "
                                                                      "EDM's with rho 7 (the paper's default)")),
    *(PaperOption(flag, float, _note(f"{flag} {NO_EFFECT}"))
      for flag in ("--S_churn", "--S_min", "--S_max", "--S_noise")),
    *(PaperOption(flag, str, _unusable(flag)) for flag in ("--disc", "--schedule", "--scaling")),
]
SOLVER_HINTS = dict(euler="the paper's --solver euler|heun is an ODE-solver ablation its dps never uses; here "
                          "--solver picks the inverse solver (dps is the paper's)")
SOLVER_HINTS["heun"] = SOLVER_HINTS["euler"]


def apply_recon_options(ctx: click.Context, opts: dict) -> list[str]:
    """Map the paper's inverse_nodist.py options onto ours (:data:`RECON_OPTIONS`). In a paper
    command the paper's solver and step run unless ours are given: --solver dps, --dc-step
    paper, measurement noise an absolute std (--sigma, default 0), baseline fbp. Leaves
    ``paper_noise_absolute`` and ``paper_notes`` in ``opts``."""
    opts["paper_noise_absolute"] = False
    opts["paper_notes"] = []
    used = apply_paper_options(ctx, opts, RECON_OPTIONS)
    if not used:
        return used
    if not given(ctx, "solver"):
        opts["solver"] = "dps"
    if opts["solver"] == "dps" and opts["dc_step"] is None:
        opts["dc_step"] = "paper"
    if opts["noise"] is None:
        opts["noise"], opts["paper_noise_absolute"] = 0.0, True
    if not given(ctx, "baselines"):
        opts["baselines"] = ["fbp"]
    return used


def recon_summary(cfg: dict, used: list[str], notes: list[str]) -> str:
    """The line a paper command prints: the solver and step semantics that run."""
    from inverse.samplers import SCHEDULE_DEFAULTS, ZETA_DEFAULTS, sampler_options

    kw = {**sampler_options(cfg["solver"]), **cfg["solver_kwargs"]}
    sched = {k: cfg[k] if cfg[k] is not None else v for k, v in SCHEDULE_DEFAULTS[cfg["solver"]].items()}
    if cfg["solver"] == "dps" and kw["dc_step"] == "paper":
        zeta = kw["zeta"] if kw["zeta"] is not None else ZETA_DEFAULTS["paper"]
        solver = (f"solver dps with the paper's step (x -= {zeta:g} * grad ||y - A D(x)||, then (t^2/4) score "
                  f"+ t/sqrt2 z; start clamp(pinv(y)); {kw['inner']} inner iterations)")
    elif cfg["solver"] == "dps":
        solver = "solver dps with padis' Landweber step (--zeta is a fraction of 1/||A||^2)"
    else:
        solver = f"solver {cfg['solver']} (not the paper's)"
    noise = (f"measurement noise std {cfg['noise']:g} (absolute, --sigma)" if cfg.get("noise_absolute")
             else f"measurement noise level {cfg['noise']:g} (--noise)")
    return (f"paper command ({', '.join(used)}): {solver}, {sched['steps']} levels {sched['sigma_max']:g} -> "
            f"{sched['sigma_min']:g}, {noise}; " + "".join(n + "; " for n in notes)
            + "padis' own default is --solver diffpir (README: From the paper's code)")
