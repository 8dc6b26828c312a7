"""Unconditional whole-image samples from a patch prior (library half of ``generate.py``).

The whole-image denoiser stitched from patches (``PatchPrior`` and friends, a fresh random
grid offset at every call) is plugged into EDM's sampler (Karras et al. 2022, Algorithm 2) on
the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``:

- ``euler``: first order, deterministic;
- ``heun``: second order (Heun's correction, except on the last step to sigma 0);
- ``stochastic``: Heun with EDM's churn (noise added back, S_churn / S_tmin / S_tmax / S_noise).

Images are (B, C, H, W) float32 in [0, 1] (plus noise during sampling); any H, W the prior can
tile. Shows what the prior learned; no operator is involved.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from inverse import io as rio
from inverse.prior_setup import load_prior, prior_options
from inverse.ranks import RankGroup, joined
from torch_utils import misc

EDM_METHODS = ("euler", "heun", "stochastic")


def _randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device)


@torch.no_grad()
def edm_sample(prior: Callable,                       # prior(x, sigma, generator) -> x0_hat
               shape: tuple[int, int, int, int],      # (B, C, H, W) of the samples
               sigmas: torch.Tensor,                  # descending noise levels (trailing 0 optional)
               generator: torch.Generator,            # CPU generator: noise and grid offsets
               method: str = "heun",                  # 'euler', 'heun' or 'stochastic'
               churn: float = 40.0,                   # S_churn (stochastic only)
               s_tmin: float = 0.05,                  # S_tmin: churn only for sigma in [S_tmin, S_tmax]
               s_tmax: float = 50.0,                  # S_tmax
               s_noise: float = 1.003,                # S_noise: scale of the added noise
               device: torch.device | str = "cpu",
               callback: Callable[[dict], None] | None = None,  # called after each step
               ) -> torch.Tensor:
    """EDM sampling from ``N(0, sigmas[0]^2)`` down to sigma 0. Returns (B, C, H, W), not clipped."""
    if method not in EDM_METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {EDM_METHODS}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
    if sigmas[-1] != 0:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    n = len(sigmas) - 1
    x = _randn(shape, generator, device) * sigmas[0].item()
    for i in range(n):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        gamma = 0.0
        if method == "stochastic" and s_tmin <= s <= s_tmax:
            gamma = min(churn / n, math.sqrt(2) - 1)
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat ** 2 - s ** 2) * s_noise * _randn(shape, generator, device)
        denoised = prior(x, s_hat, generator)
        d = (x - denoised) / s_hat
        x_next = x + (s_next - s_hat) * d
        if method != "euler" and s_next > 0:
            d2 = (x_next - prior(x_next, s_next, generator)) / s_next
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
        if callback is not None:
            callback(dict(i=i, x=x, sigma=s, sigma_hat=s_hat, denoised=denoised))
    return x


def make_grid(images: np.ndarray, cols: int | None = None, gap: int = 2) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one (C, rows*(H+gap)-gap, cols*(W+gap)-gap) image, white gaps."""
    n, c, h, w = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.ones((c, rows * (h + gap) - gap, cols * (w + gap) - gap), dtype=np.float32)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[:, r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = images[k]
    return grid


def parse_int_list(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7] (EDM's --seeds syntax)."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(part)])
        except ValueError:
            raise ValueError(f"cannot parse {text!r} as integers like '0-7' or '1,5,9'") from None
    if not out:
        raise ValueError(f"no integers in {text!r}")
    return out


def run(cfg: dict) -> Path:
    """Sample one image per seed and write ``grid.png``, ``samples.npy`` and ``config.json`` into
    a new ``OUTDIR/NNNNN-generate-HxW`` directory; returns that directory.

    cfg keys: network, size [H, W], seeds (list), steps, sigma_min, sigma_max, method, churn,
    prior, pad, psize (None: chosen, recorded as ``grid``), stride, batch, pad_fill ('zeros' if
    absent), outdir, device, progress; the prior is ``inverse.prior_setup.load_prior``'s.

    Under torchrun (:mod:`inverse.ranks`) rank 0 makes the one run directory, rank r samples
    seeds r, r + world, ... of the list and prints one line naming them (stderr); rank 0
    gathers the samples and writes the files (in seed-list order). Each seed has its own
    generator, so the files equal those of one process exactly; every rank returns the directory.
    """
    with joined(cfg["device"]) as ranks:
        return _run(cfg, ranks)


def _run(cfg: dict, ranks: RankGroup) -> Path:
    h, w = cfg["size"]
    device = ranks.device
    progress = cfg.get("progress", True) and ranks.rank == 0
    loaded = load_prior(cfg["network"], {(h, w)}, device=device, **prior_options(cfg))
    cfg = dict(cfg, patch_range=loaded.grids.patch_range, grid=loaded.grids.grid)
    if ranks.rank == 0:
        for line in loaded.messages():
            print(line, file=sys.stderr)
    prior, channels, sigmas = loaded.prior, loaded.channels, loaded.sigmas

    def open_run_dir() -> str:
        run_dir = misc.new_run_dir(cfg["outdir"], f"generate-{h}x{w}")
        misc.atomic_write_json(run_dir / "config.json", dict(cfg, run_dir=str(run_dir)))
        return str(run_dir)

    run_dir = Path(ranks.on_rank0(open_run_dir))
    cfg = dict(cfg, run_dir=str(run_dir))
    mine = ranks.share(list(enumerate(cfg["seeds"])))  # (position in the seed list, seed)
    if ranks.world > 1:
        print(f"rank {ranks.rank} of {ranks.world}: {len(mine)} of {len(cfg['seeds'])} seed(s): "
              f"{', '.join(str(seed) for _, seed in mine) or 'none'}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()

    def sample_mine() -> list[tuple[int, np.ndarray]]:
        out = []
        for k, seed in tqdm(mine, desc="seeds", unit="img", disable=not progress):
            gen = torch.Generator().manual_seed(seed)
            x = edm_sample(prior, (1, channels, h, w), sigmas, gen, method=cfg["method"], churn=cfg["churn"],
                           device=device)
            out.append((k, x[0].cpu().numpy()))
        return out

    parts = ranks.on_every_rank(sample_mine)

    def write_files() -> None:
        ordered = sorted((pair for part in parts for pair in part), key=lambda pair: pair[0])
        samples = np.clip(np.stack([x for _, x in ordered]), 0, 1).astype(np.float32)
        rio.save_npy(run_dir / "samples.npy", samples)
        rio.save_png(run_dir / "grid.png", make_grid(samples))
        if progress:
            print(f"{len(samples)} samples in {time.perf_counter() - t0:.1f} s -> {run_dir / 'grid.png'}")

    ranks.on_rank0(write_files)
    return run_dir
