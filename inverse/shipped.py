"""Where the shipped prior and held-out slices are: in a checkout (``checkpoints/``,
``datasets/ct_head/``) or, after a non-editable ``pip install .``, in the package data
``padis_checkpoints`` / ``padis_ct_head`` (pyproject.toml maps those directories)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shipped_dir(checkout_path: str, package: str) -> Path | None:
    """``REPO/checkout_path`` if it is a directory, else the installed ``package``'s directory,
    else None."""
    local = REPO / checkout_path
    if local.is_dir():
        return local
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def checkpoints_dir() -> Path | None:
    return shipped_dir("checkpoints", "padis_checkpoints")


def ct_head_dir() -> Path | None:
    return shipped_dir("datasets/ct_head", "padis_ct_head")
