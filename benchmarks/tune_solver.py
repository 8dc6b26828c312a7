"""Sweep one solver's settings on the tuning slice(s) and report PSNR per setting.

    python benchmarks/tune_solver.py --network checkpoints/ct_head_small.safetensors \\
        --solver dds --grid "lam=0.01,0.03,0.1;cg_iters=5,10" --steps 20 --sigma-max 1

Every combination of the ``--grid`` values (``name=v1,v2;name2=...``; solver options or
``steps``/``sigma_max``/``sigma_min``) reconstructs each tuning image with the patch prior
(pad 24, psize 56) from the same simulated measurement (seed 0); prints PSNR/SSIM, network
calls and seconds per image, sorted by PSNR, and writes JSON (``--out``). Tune on slices that
the quality benchmark never scores (default: tuning slice 055, as for TV).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import click
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCHEDULE_KEYS = ("steps", "sigma_min", "sigma_max")


def parse_grid(spec: str) -> dict[str, list]:
    grid = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, values = part.partition("=")
        if not values:
            raise click.BadParameter(f"{part!r}: expected name=v1,v2", param_hint="'--grid'")
        grid[name.strip()] = [_number(v) for v in values.split(",")]
    return grid


def _number(text: str):
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@click.command()
@click.option("--network", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--images", default=str(REPO / "datasets/ct_head/tune/slice_055.png"),
              help="Tuning image file or directory.")
@click.option("--max-images", default=1, type=int, help="Use the first N images of --images.")
@click.option("--problem", default="ct_parbeam")
@click.option("--problem-opts", default="views=20", help="Operator options, 'name=value;...'.")
@click.option("--noise", default=0.005, type=float, help="Measurement noise level (CT: fraction of max |y|).")
@click.option("--solver", default="dds")
@click.option("--grid", default="", help="'name=v1,v2;name2=v3' over solver options and steps/sigma_*.")
@click.option("--steps", default=None, type=int)
@click.option("--sigma-max", default=None, type=float)
@click.option("--sigma-min", default=None, type=float)
@click.option("--pad", default=24, type=int)
@click.option("--psize", default=56, type=int)
@click.option("--threads", default=0, type=int, help="torch CPU threads (0: default).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON output file [default: tune_solver.json in a new out/NNNNN-tune_solver/]")
def main(network, images, max_images, problem, problem_opts, noise, solver, grid, steps, sigma_max,
         sigma_min, pad, psize, threads, out):
    from inverse.metrics import psnr, ssim
    from inverse.operators import make_operator
    from inverse.prior import PatchPrior
    from inverse.samplers import SAMPLERS, SCHEDULE_DEFAULTS, get_sigmas_karras
    from inverse.stages import measurement_noise_std, with_noise_std
    from torch_utils.persistence import load_network
    from training.dataset import read_images

    if threads:
        torch.set_num_threads(threads)
    net = load_network(network)
    prior = PatchPrior(net, pad=pad, psize=psize)
    items = read_images(images, max_images=max_images)
    opts = {k: _number(v) for k, _, v in (p.partition("=") for p in problem_opts.split(";") if p)}
    base = dict(SCHEDULE_DEFAULTS[solver])
    base.update({k: v for k, v in dict(steps=steps, sigma_max=sigma_max, sigma_min=sigma_min).items() if v is not None})
    axes = parse_grid(grid)
    rows = []
    for combo in itertools.product(*axes.values()) if axes else [()]:
        setting = dict(zip(axes, combo))
        sched = {k: setting.get(k, base[k]) for k in SCHEDULE_KEYS}
        kwargs = {k: v for k, v in setting.items() if k not in SCHEDULE_KEYS}
        sigmas = get_sigmas_karras(sched["steps"], sched["sigma_min"], sched["sigma_max"])
        scores, secs, calls = [], [], []
        for index, (name, image) in enumerate(items):
            x = torch.from_numpy(image)[None]
            op = make_operator(problem, tuple(image.shape[1:]), channels=image.shape[0], **opts)
            gen = torch.Generator().manual_seed(index)
            with torch.no_grad():
                clean = op.A(x)
                y = op.noise(clean, noise, gen)
            options = with_noise_std(SAMPLERS[solver], kwargs, measurement_noise_std(op, clean, noise))
            prior.reset_calls()
            t0 = time.perf_counter()
            xr = SAMPLERS[solver](prior, op, y, sigmas, gen, **options)[0].numpy()
            secs.append(time.perf_counter() - t0)
            calls.append(prior.calls)
            scores.append((float(psnr(xr, image)), float(ssim(xr, image))))
        row = dict(setting={**sched, **kwargs}, psnr=sum(s[0] for s in scores) / len(scores),
                   ssim=sum(s[1] for s in scores) / len(scores), calls=sum(calls) / len(calls),
                   seconds=sum(secs) / len(secs))
        rows.append(row)
        click.echo(f"{json.dumps(row['setting'])}: PSNR {row['psnr']:.2f} SSIM {row['ssim']:.4f} "
                   f"calls {row['calls']:.0f} {row['seconds']:.1f} s/img", err=False)
    rows.sort(key=lambda r: -r["psnr"])
    click.echo(f"best: {json.dumps(rows[0]['setting'])} PSNR {rows[0]['psnr']:.2f}")
    from torch_utils import misc
    out = misc.result_file(out, "tune_solver")
    Path(out).write_text(json.dumps(dict(network=str(network), images=str(images), max_images=max_images,
                                         problem=problem, problem_opts=opts, noise=noise, solver=solver,
                                         pad=pad, psize=psize, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
