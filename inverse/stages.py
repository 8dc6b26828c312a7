"""The stages image mode (:mod:`inverse.reconstruct`) and volume mode (:mod:`inverse.volume`)
are both built from, so that neither mode imports the other:

    start_run          the config with its defaults resolved once and its names checked
                       (:func:`validate`), then torch's CPU threads
    load_run_prior     the prior for the run's image sizes (inverse.prior_setup.load_prior), the
                       chosen grids recorded in the config
    set_up_solver      the sampler and the options of ``solver_kwargs`` it takes
    open_run_dir       a new run directory, or the resumed one checked against the config
    solve_baselines    ``cfg.baselines`` on one measurement
    with_noise_std     the solver's options plus the measurement-noise std (measurement_noise_std)
                       for the solvers that take it

The mode is chosen above both: ``inverse_nodist.py`` calls ``inverse.volume.run_volume`` for
``--volume`` and ``inverse.reconstruct.run`` otherwise.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Callable

import torch

from inverse.config import RECORDED_PAD_FILL, ReconConfig
from inverse.prior_setup import LoadedPrior, Network, load_prior, prior_options
from torch_utils import misc

PADIS = "padis"  # method name of our reconstruction in metrics.csv / summary.json


def method_tags(methods: list[str]) -> dict[str, str]:
    """Method -> file tag of its image (NAME_<tag>.npy): ``recon`` for PaDIS, the others' names."""
    return {m: "recon" if m == PADIS else m for m in methods}


# ----------------------------------------------------------------------------------------
# The config


def check_images_per_batch(k: int) -> None:
    if k < 1:
        raise ValueError(f"images_per_batch={k}; expected a positive number of images per solve")


def check_samples(k: int, volume: bool = False) -> None:
    if k < 1:
        raise ValueError(f"samples={k}; expected a positive number of samples per image")
    if volume and k > 1:
        raise ValueError(f"samples={k} with volume: posterior samples are drawn for images only (use samples=1)")


def validate(cfg: ReconConfig | dict) -> ReconConfig:
    """The config with its defaults resolved (once); unknown names are a ValueError."""
    from inverse.baselines import BASELINES
    from inverse.prior import check_prior_name
    from inverse.samplers import SAMPLERS

    cfg = ReconConfig.from_dict(cfg).resolved()
    for name in cfg.baselines:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; expected one of {sorted(BASELINES)}")
    if cfg.solver not in SAMPLERS:
        raise ValueError(f"unknown solver {cfg.solver!r}; expected one of {sorted(SAMPLERS)}")
    check_images_per_batch(cfg.images_per_batch)
    check_samples(cfg.samples, cfg.volume)
    check_prior_name(cfg.prior)
    return cfg


def start_run(cfg: ReconConfig | dict) -> ReconConfig:
    """:func:`validate`, then torch's CPU threads from ``cfg.threads`` (0: torch's default)."""
    cfg = validate(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return cfg


# ----------------------------------------------------------------------------------------
# Prior and solver


def load_run_prior(cfg: ReconConfig, network: Network, shapes: set, device: torch.device
                   ) -> tuple[ReconConfig, LoadedPrior]:
    """The run's prior for ``shapes`` (``load_prior`` with the config's prior options and
    schedule); the config with the trained patch sizes and the chosen grids recorded."""
    loaded = load_prior(network, shapes, device=device, **prior_options(cfg))
    return cfg.replace(patch_range=loaded.grids.patch_range, grid=loaded.grids.grid), loaded


def print_lines(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def accepted_kwargs(fn: Callable, options: dict) -> tuple[dict, list[str]]:
    """Split ``options`` into those ``fn`` accepts (dropping None = "use fn's default") and the
    names of set options it does not take."""
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    used, ignored = {}, []
    for k, v in options.items():
        if v is None:
            continue
        if takes_any or k in params:
            used[k] = v
        else:
            ignored.append(k)
    return used, ignored


def set_up_solver(cfg: ReconConfig, verbose: bool) -> tuple[Callable, dict]:
    """(sampler, the options of ``cfg.solver_kwargs`` it takes); with ``verbose`` a note names
    the options it does not take."""
    from inverse.samplers import SAMPLERS

    sampler = SAMPLERS[cfg.solver]
    options, ignored = accepted_kwargs(sampler, cfg.solver_kwargs)
    if ignored and verbose:
        print(f"note: solver {cfg.solver} does not use option(s) {', '.join(sorted(ignored))}")
    return sampler, options


def measurement_noise_std(op, y: torch.Tensor, noise: float | None, absolute: bool = False) -> float:
    """The std of the noise that level ``noise`` adds to ``y`` (``op.noise_std`` of the clean y;
    ``absolute``: ``noise`` is that std), in y's units; for given measurements the std the
    assumed level means."""
    if not noise:
        return 0.0
    if absolute:
        return float(noise)
    std = torch.as_tensor(op.noise_std(y, noise)).detach().float()
    return float(std.pow(2).mean().sqrt())  # one image: its std; a slab of slices: their rms


def with_noise_std(sampler, options: dict, noise_std: float) -> dict:
    """``options`` plus ``noise_std`` for a solver that takes it (DiffPIR, DDNM+), unless set."""
    if "noise_std" in inspect.signature(sampler).parameters and "noise_std" not in options:
        return dict(options, noise_std=noise_std)
    return dict(options)


# ----------------------------------------------------------------------------------------
# Baselines


def tv_options(cfg: ReconConfig) -> dict:
    """The baselines' keyword arguments from ``cfg`` (None: the baseline's default; see accepted_kwargs)."""
    return dict(weight=cfg.tv_weight, iters=cfg.tv_iters, tol=cfg.tv_tol)


def solve_baselines(op, y: torch.Tensor, cfg: ReconConfig, device: torch.device
                    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """``cfg.baselines`` on the measurement batch ``y``: ({baseline: its images (n, C, H, W)},
    {baseline: seconds}), keyed by the baselines' own names."""
    from inverse.baselines import BASELINES

    images, seconds = {}, {}
    for b in cfg.baselines:
        kw, _ = accepted_kwargs(BASELINES[b], tv_options(cfg))
        with torch.no_grad():
            images[b], seconds[b] = misc.timed(lambda: BASELINES[b](op, y, **kw), device)
    return images, seconds


# ----------------------------------------------------------------------------------------
# The run directory


def check_resume_config(run_dir: Path, cfg: ReconConfig | dict) -> None:
    """``run_dir/config.json`` must agree with ``cfg`` except in the fields a resumed run may
    change (ValueError naming the first differing option otherwise)."""
    from inverse.baselines import TV_WEIGHT, default_tv_weight

    path = Path(run_dir) / "config.json"
    try:
        old = ReconConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"resume={run_dir}: cannot read {path} ({exc}); is this a reconstruction "
                         "run directory?") from None
    if old.tv_weight is None:  # written before the per-problem default: its TV ran at the old global default
        old = old.replace(tv_weight=TV_WEIGHT)
    if old.pad_fill is None:  # written before the option: its canvas was zeros
        old = old.replace(pad_fill=RECORDED_PAD_FILL)
    new = ReconConfig.from_dict(cfg)
    if new.tv_weight is None:
        new = new.replace(tv_weight=default_tv_weight(new.problem))
    if new.pad_fill is None:  # not chosen: a resumed run keeps its own (ReconConfig.resolved)
        new = new.replace(pad_fill=old.pad_fill)
    old_values, new_values = old.comparable(), new.comparable()
    for key in sorted(set(old_values) | set(new_values)):
        if old_values.get(key) != new_values.get(key):
            raise ValueError(f"resume={run_dir}: option {key!r} was {old_values.get(key)!r} in that run, now "
                             f"{new_values.get(key)!r}; resume with the same options (or start a new run)")


def open_run_dir(cfg: ReconConfig, suffix: str = "") -> Path:
    """A new OUTDIR/NNNNN-<problem>-<solver><suffix>, or resume's directory once its config.json
    was checked against ``cfg`` and the temporaries a killed run left were removed."""
    if not cfg.resume:
        return misc.new_run_dir(cfg.outdir, f"{cfg.problem}-{cfg.solver}{suffix}")
    run_dir = Path(cfg.resume)
    check_resume_config(run_dir, cfg)
    misc.remove_stale_temps(run_dir)
    return run_dir
