"""From a checkpoint to a whole-image prior and its noise schedule: :func:`load_prior`.

Image mode (:mod:`inverse.reconstruct`), volume mode (:mod:`inverse.volume`), unconditional
sampling (:mod:`inverse.generate`) and the DeepInverse adapters all build their prior here,
through the same named stages:

    check_request   the prior's name, and a given pad/psize against every image size
    open_network    the network (torch_utils.persistence.load_network), its image channels and
                    the training record beside it (inverse.checkpoint_info)
    check_network   refuse a prior the network cannot serve (a patch prior on a whole-image network)
    choose_grids    the network's trained patch sizes, the patch grid of every image size (chosen
                    where pad/psize are unset), the lines that name the chosen grids, and the
                    warnings about image sizes the training did not cover
    build_prior     inverse.prior.build_prior with those grids
    schedule        EDM's noise levels (inverse.samplers.get_sigmas_karras), when steps is given

Nothing is printed: the caller shows :meth:`LoadedPrior.messages` where it wants them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch

from inverse.checkpoint_info import input_warnings, prior_problem, trained_patch_range, training_info
from inverse.prior import (
    DEFAULT_PATCH_RANGE,
    build_prior,
    check_prior_geometry,
    check_prior_name,
    describe_grids,
    network_image_channels,
    resolve_grids,
)
from inverse.samplers import get_sigmas_karras
from torch_utils.persistence import load_network

# load_prior's keyword arguments that a run's settings give (ReconConfig fields, generate's cfg keys).
PRIOR_OPTIONS = ("prior", "pad", "psize", "stride", "batch", "pad_fill", "precision", "channels_last", "compile",
                 "steps", "sigma_min", "sigma_max")


class Network(NamedTuple):
    """A loaded checkpoint."""

    path: str  # the checkpoint file
    net: torch.nn.Module  # in eval mode, on the run's device
    info: dict  # its training record (inverse.checkpoint_info.training_info; {} for pickles)
    channels: int  # image channels it denoises


class Grids(NamedTuple):
    """The patch grids of a run's image sizes, and what to tell the user about them."""

    patch_range: list[int]  # [smallest, largest] trained patch side (DEFAULT_PATCH_RANGE if not recorded)
    grid: dict  # {"HxW": {pad, psize, chosen}} (inverse.prior.resolve_grids; {} for prior 'whole')
    notes: list[str]  # one line per chosen grid (inverse.prior.describe_grids)
    warnings: list[str]  # image sizes or patch sizes outside the training (inverse.checkpoint_info)


class LoadedPrior(NamedTuple):
    """What :func:`load_prior` returns."""

    network: Network
    prior: Any  # the whole-image denoiser prior(x, sigma, generator) (inverse.prior)
    grids: Grids
    sigmas: torch.Tensor | None  # the noise schedule on the device (None without steps)

    @property
    def net(self) -> torch.nn.Module:
        return self.network.net

    @property
    def channels(self) -> int:
        return self.network.channels

    def messages(self) -> list[str]:
        """The grid notes, then each warning as ``warning: ...`` (lines for stderr)."""
        return [*self.grids.notes, *(f"warning: {w}" for w in self.grids.warnings)]


def check_request(prior: str, pad, psize: int | None, shapes: set) -> None:
    """Before anything is loaded: a known prior name; a given pad/psize tiles every size (ValueError)."""
    check_prior_name(prior)
    check_prior_geometry(prior, pad, psize, shapes)


def open_network(path: str | os.PathLike, device: torch.device | str = "cpu", prior: str | None = None) -> Network:
    """The checkpoint at ``path`` on ``device`` (FileNotFoundError or CheckpointError, one line
    naming the file); with ``prior``, refused if the network cannot serve it (:func:`check_network`)."""
    net = load_network(path, device=device)
    network = Network(str(path), net, training_info(path), network_image_channels(net))
    if prior is not None:
        check_network(network, prior)
    return network


def check_network(network: Network, prior: str) -> None:
    """ValueError naming the checkpoint if ``prior`` cannot use this network."""
    problem = prior_problem(network.info, prior)
    if problem:
        raise ValueError(f"{network.path}: {problem}")


def choose_grids(network: Network, prior: str, pad, psize: int | None, shapes: set) -> Grids:
    """The patch grid of every image size of ``shapes`` and the lines that describe it."""
    patch_range = list(trained_patch_range(network.info) or DEFAULT_PATCH_RANGE)
    grid = resolve_grids(prior, network.net, pad, psize, patch_range, shapes)
    warnings = [w for s in sorted(shapes) for w in input_warnings(
        network.info, prior, s, (grid.get(f"{s[0]}x{s[1]}") or {}).get("psize"))]
    return Grids(patch_range, grid, describe_grids(grid, patch_range), list(dict.fromkeys(warnings)))


def schedule(steps: int | None, sigma_min: float, sigma_max: float, device) -> torch.Tensor | None:
    """EDM's ``steps`` noise levels from sigma_max to sigma_min on ``device`` (None: no schedule)."""
    if steps is None:
        return None
    return get_sigmas_karras(steps, sigma_min, sigma_max, device=device)


def load_prior(network: str | os.PathLike | Network,       # checkpoint path, or open_network's result
               shapes: Iterable[tuple[int, int]],          # the image sizes (H, W) the prior will see
               *,
               prior: str = "patch",                       # key of inverse.prior.PRIOR_BUILDERS
               pad=None,                                   # patch grid; None: chosen per image size
               psize: int | None = None,
               stride: int | None = None,                  # of prior 'average' (None: psize // 2)
               batch: int | None = None,                   # max patches per network call (None: all)
               pad_fill: str = "zeros",                    # canvas outside the image: 'zeros' | 'noise'
               precision: str = "fp32",                    # how the network runs (inverse.prior._PriorBase)
               channels_last: bool = False,
               compile: bool = False,
               steps: int | None = None,                   # noise levels of the schedule (None: none)
               sigma_min: float = 0.003,
               sigma_max: float = 10.0,
               device: torch.device | str = "cpu",
               ) -> LoadedPrior:
    """The whole-image prior of a checkpoint for these image sizes, in the stages of the module
    docstring. Errors are one line: a bad path or file names it, a prior the network cannot
    serve or a pad/psize that does not tile a size is a ValueError."""
    shapes = {tuple(s) for s in shapes}
    check_request(prior, pad, psize, shapes)
    if not isinstance(network, Network):
        network = open_network(network, device)
    check_network(network, prior)
    grids = choose_grids(network, prior, pad, psize, shapes)
    built = build_prior(network.net, prior, pad=pad, psize=psize, stride=stride, batch=batch,
                        patch_range=grids.patch_range, grid=grids.grid, precision=precision,
                        channels_last=channels_last, compile=compile, pad_fill=pad_fill)
    return LoadedPrior(network, built, grids, schedule(steps, sigma_min, sigma_max, device))


def prior_options(settings: Mapping | Any) -> dict:
    """The :data:`PRIOR_OPTIONS` that ``settings`` (a mapping, or an object with those
    attributes such as a ReconConfig) holds, as load_prior keyword arguments."""
    if isinstance(settings, Mapping):
        return {k: settings[k] for k in PRIOR_OPTIONS if k in settings}
    return {k: getattr(settings, k) for k in PRIOR_OPTIONS if hasattr(settings, k)}
