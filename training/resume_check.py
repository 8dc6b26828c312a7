"""Why a training state does not fit the network being resumed: the first config field that
defines the network and differs, else the first differing parameter name or shape."""

from __future__ import annotations

from typing import Any

import torch

# Config fields (train.py's config, plus what the data gave) that shape the network.
NETWORK_FIELDS = ("arch", "arch_overrides", "transfer", "positional", "patch_sizes", "pad_width",
                  "image_channels", "image_resolution")


def _canon(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in sorted(value.items())}
    return value


def config_difference(saved: dict | None, current: dict) -> str | None:
    """'field X was A in the saved run, now B' for the first NETWORK_FIELDS entry that differs
    (fields the saved config lacks are not compared), or None."""
    for key in NETWORK_FIELDS:
        if saved is None or key not in saved or key not in current:
            continue
        if _canon(saved[key]) != _canon(current[key]):
            return f"config field {key!r} was {saved[key]!r} in the saved run, now {current[key]!r}"
    return None


def state_dict_difference(saved: dict[str, torch.Tensor], module: torch.nn.Module, what: str) -> str | None:
    """The first parameter/buffer name missing on either side, or with another shape, or None."""
    own = module.state_dict()
    for key in own:
        if key not in saved:
            return f"{what}: parameter {key!r} of this network is not in the saved state"
    for key, value in saved.items():
        if key not in own:
            return f"{what}: the saved state has parameter {key!r}, which this network lacks"
        if tuple(value.shape) != tuple(own[key].shape):
            return (f"{what}: parameter {key!r} has shape {list(value.shape)} in the saved state, "
                    f"{list(own[key].shape)} in this network")
    return None


def state_mismatch(state: dict, current: dict, net: torch.nn.Module, ema: torch.nn.Module) -> str | None:
    """One clause saying what differs between a training ``state`` (with its ``config``) and
    the network built from ``current`` (config + image_channels/image_resolution), or None."""
    return (config_difference(state.get("config"), current)
            or state_dict_difference(state["net"], net, "net")
            or state_dict_difference(state["ema"], ema, "ema"))
