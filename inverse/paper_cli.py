"""The options of the paper's own ``inverse_nodist.py``, on ours (:data:`RECON_OPTIONS`); the
machinery is ``dnnlib.paper_cli``, the paper's ``train.py`` options are ``training.paper_cli``."""

from __future__ import annotations

from typing import Any, Callable

import click

from dnnlib.paper_cli import PaperOption, apply_paper_options, given, only, refuse, set_option

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
