"""Why a TV baseline is weak or strong: objective, box, isotropy, step sizes, convergence.

    python benchmarks/tv_study.py --weights 3e-4,5e-4,7e-4,1e-3 --iters 3000 --threads 1

On a tuning slice (never a test slice) simulates 20-view parallel-beam CT (noise 0.005, seed 0,
as ``tune_tv.py``) and runs, for every weight, each PDHG variant of ``--variants``
(``iso``: isotropic + [0, 1] box, the default; ``aniso``: anisotropic; ``nobox``: no box;
``rN``: step ratio tau/sigma = N) for ``--iters`` iterations without a tolerance, recording
PSNR/SSIM and the objective every ``--every`` iterations and where the tolerance stop
(``--tols``) would have stopped. With ``--deepinv`` (if deepinv is installed) it also runs
deepinv's TV prior with FISTA on the same y (a measurement only, not a dependency), the weight
converted to deepinv's unnormalised data term. Writes JSON (``--out``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = dict(iso=dict(), aniso=dict(isotropic=False), nobox=dict(box=False))


def variant_kwargs(name: str) -> dict:
    if name in VARIANTS:
        return VARIANTS[name]
    if name.startswith("r"):
        return dict(step_ratio=float(name[1:]))
    raise click.BadParameter(f"unknown variant {name!r}; expected iso, aniso, nobox or rN", param_hint="'--variants'")


def trace_pdhg(op, y, image, weight, iters, every, tols, **kw):
    """PSNR/SSIM/objective every ``every`` iterations; where each tolerance would stop."""
    from inverse.baselines import tv
    from inverse.metrics import psnr, ssim
    trace, stops, last = [], {}, {}

    def cb(d):
        i = d["i"] + 1
        if d["objective"] is not None:
            f = float(d["objective"][0])
            for t in tols:
                if t not in stops and t in last and abs(last[t] - f) < t * abs(f):
                    xr = d["x"][0].clamp(0, 1).numpy()
                    stops[t] = dict(iters=i, psnr=float(psnr(xr, image)), ssim=float(ssim(xr, image)))
            last.update({t: f for t in tols})
        if i % every == 0:
            xr = d["x"][0].clamp(0, 1).numpy()
            trace.append(dict(i=i, objective=float(d["objective"][0]) if d["objective"] is not None else None,
                              psnr=float(psnr(xr, image)), ssim=float(ssim(xr, image))))

    t0 = time.perf_counter()
    tv(op, y, weight=weight, iters=iters, tol=0.0, callback=cb, **kw)
    return dict(trace=trace, stops={str(k): v for k, v in stops.items()}, seconds=time.perf_counter() - t0)


def fista_start(x0):
    """deepinv's FISTA state: the estimate and its extrapolation point (both x0 at the start)."""
    return {"est": [x0, x0.clone()]}


def run_deepinv(op, y, image, weight, iters, every):
    """deepinv's TVPrior + L2 with FISTA on the same y (our operator as a LinearPhysics)."""
    import deepinv as dinv
    from deepinv.optim import optim_builder
    from deepinv.optim.data_fidelity import L2
    from deepinv.optim.prior import TVPrior

    from inverse.metrics import psnr, ssim
    physics = dinv.physics.LinearPhysics(A=op.A, A_adjoint=op.AT)
    L2n = op.norm() ** 2  # our weight is relative to ||A||^2: deepinv's lambda = weight * ||A||^2
    model = optim_builder(iteration="FISTA", prior=TVPrior(n_it_max=20), data_fidelity=L2(),
                          params_algo={"stepsize": 1.0 / L2n, "lambda": weight * L2n, "a": 3}, max_iter=iters,
                          early_stop=False, custom_init=lambda y_, p_: fista_start(op.pinv(y_).clamp(0, 1)))
    t0 = time.perf_counter()
    with torch.no_grad():
        xr = model(y, physics)[0].clamp(0, 1).numpy()
    return dict(psnr=float(psnr(xr, image)), ssim=float(ssim(xr, image)), iters=iters,
                seconds=time.perf_counter() - t0)


@click.command()
@click.option("--slice", "slice_path", default=str(REPO / "datasets/ct_head/tune/slice_055.png"),
              type=click.Path(exists=True, dir_okay=False), help="Tuning image (never a test slice).")
@click.option("--views", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--noise", default=0.005, show_default=True, type=float)
@click.option("--weights", default="5e-4,1e-3", show_default=True, help="Comma list of relative TV weights.")
@click.option("--variants", default="iso,aniso,nobox", show_default=True, help="Comma list: iso, aniso, nobox, rN.")
@click.option("--iters", default=3000, show_default=True, type=click.IntRange(min=1))
@click.option("--every", default=250, show_default=True, type=click.IntRange(min=1))
@click.option("--tols", default="1e-4,3e-5,1e-5,3e-6", show_default=True)
@click.option("--deepinv", "with_deepinv", is_flag=True, help="Also deepinv's FISTA TV (needs deepinv).")
@click.option("--deepinv-iters", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=0, type=click.IntRange(min=0), help="torch CPU threads (0: default).")
@click.option("--out", default=str(REPO / "benchmarks/results/tv_study.json"), type=click.Path(dir_okay=False))
def main(slice_path, views, noise, weights, variants, iters, every, tols, with_deepinv, deepinv_iters,
         threads, out):
    from inverse.operators import make_operator
    from training.dataset import read_images

    if threads:
        torch.set_num_threads(threads)
    (_, image), = read_images(slice_path)
    x = torch.from_numpy(image)[None]
    op = make_operator("ct_parbeam", tuple(image.shape[1:]), views=views)
    y = op.noise(op.A(x), noise, torch.Generator().manual_seed(0))
    tol_list = [float(t) for t in tols.split(",") if t]
    report = dict(slice=str(slice_path), views=views, noise=noise, iters=iters, runs=[])
    for w in (float(v) for v in weights.split(",")):
        for name in variants.split(","):
            r = trace_pdhg(op, y, image, w, iters, every, tol_list, **variant_kwargs(name))
            report["runs"].append(dict(weight=w, variant=name, **r))
            last = r["trace"][-1]
            stops = " ".join(f"tol {t}: {s['iters']} it {s['psnr']:.2f}" for t, s in r["stops"].items())
            click.echo(f"w {w:<7g} {name:<6} {last['i']} it: PSNR {last['psnr']:.2f} SSIM {last['ssim']:.4f} "
                       f"({r['seconds']:.0f} s) | " + " ".join(f"{t['i']}:{t['psnr']:.2f}" for t in r["trace"])
                       + f" | {stops}")
        if with_deepinv:
            r = run_deepinv(op, y, image, w, deepinv_iters, every)
            report["runs"].append(dict(weight=w, variant="deepinv_fista", **r))
            click.echo(f"w {w:<7g} deepinv FISTA {deepinv_iters} it: PSNR {r['psnr']:.2f} SSIM {r['ssim']:.4f} "
                       f"({r['seconds']:.0f} s)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
