"""Helpers shared by several test files (not fixtures): benchmark scripts loaded as modules,
small smooth test images."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_noise_images(folder: Path, n: int = 5, size: int = 16, seed: int = 0) -> Path:
    """``n`` uniform-noise 8-bit grey PNGs ``img{k}.png`` of ``size`` x ``size`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"img{k}.png")
    return folder


def write_smooth_images(folder: Path, n: int = 2, size: int = 32, noise: float = 0.0, seed: int = 0) -> Path:
    """``n`` smooth 8-bit grey PNGs ``img{k}.png`` (a product of sines, plus ``noise`` std) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        img = 0.5 + 0.4 * np.sin(xx / (3 + k)) * np.cos(yy / 4)
        if noise:
            img = img + noise * rng.standard_normal((size, size))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L").save(folder / f"img{k}.png")
    return folder
