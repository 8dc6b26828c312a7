"""Choose the TV baseline's weight per problem on a tuning slice (never a test slice).

    python benchmarks/tune_tv.py --set quality --weights 2e-4,3e-4,5e-4,7e-4,1e-3 --threads 1

For each demo case (``inverse.cases.CASES``, or bench_quality's problems with ``--set
quality``) simulates y from the slice with the case's noise level and seed 0, runs PDHG-TV
(inverse.baselines.tv: up to ``--iters`` iterations, stopped by the objective tolerance
``--tol``) for every weight of ``--weights`` and prints PSNR/SSIM and iterations per weight
plus the best one; writes JSON (``--out``). A weak TV baseline flatters PaDIS, so the
benchmarks use the weight found here and the same convergence rule.
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

from inverse.baselines import TV_ITERS, TV_TOL  # noqa: E402  (after the path insert)


@click.command()
@click.option("--slice", "slice_path", default=str(REPO / "datasets/ct_head/tune/slice_055.png"),
              type=click.Path(exists=True, dir_okay=False), help="Tuning image (excluded from evaluation).")
@click.option("--weights", default="1e-4,3e-4,1e-3,3e-3,1e-2,3e-2", help="Comma list of TV weights.")
@click.option("--iters", default=TV_ITERS, show_default=True, type=click.IntRange(min=1),
              help="Maximum PDHG iterations.")
@click.option("--tol", default=TV_TOL, show_default=True, type=click.FloatRange(min=0),
              help="Stop on this relative objective change (inverse.baselines.tv).")
@click.option("--threads", default=0, type=click.IntRange(min=0), help="torch CPU threads (0: default).")
@click.option("--cases", default=None, help="Comma list of inverse.cases.CASES names [default: all].")
@click.option("--set", "case_set", type=click.Choice(["demo", "quality"]), default="demo", show_default=True,
              help="Cases of inverse.cases.CASES, or problems of benchmarks/bench_quality.py's PROBLEMS.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON output file [default: tune_tv.json in a new out/NNNNN-tune_tv/]")
def main(slice_path, weights, iters, tol, threads, cases, case_set, out):
    from inverse.baselines import tv
    from inverse.cases import CASES
    from inverse.metrics import psnr, ssim
    from inverse.operators import make_operator
    from training.dataset import read_images

    if threads:
        torch.set_num_threads(threads)
    table = CASES
    if case_set == "quality":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_quality import PROBLEMS
        table = PROBLEMS
    names = [c for c in (cases.split(",") if cases else table)]
    ws = [float(w) for w in weights.split(",")]
    (_, image), = read_images(slice_path)
    x = torch.from_numpy(image)[None]
    report = dict(slice=str(slice_path), iters=iters, tol=tol, cases={})
    for name in names:
        case = table[name]
        op = make_operator(case.problem, tuple(image.shape[1:]), channels=image.shape[0], **case.options)
        gen = torch.Generator().manual_seed(0)
        y = op.noise(op.A(x), case.noise, gen)
        rows = []
        for w in ws:
            seen = []
            t0 = time.perf_counter()
            xr = tv(op, y, weight=w, iters=iters, tol=tol, callback=lambda d: seen.append(d["i"]))[0].numpy()
            rows.append(dict(weight=w, psnr=float(psnr(xr, image)), ssim=float(ssim(xr, image)),
                             iters=len(seen), seconds=time.perf_counter() - t0))
            click.echo(f"{name:<18} weight {w:<8g} PSNR {rows[-1]['psnr']:6.2f} SSIM {rows[-1]['ssim']:.4f} "
                       f"{len(seen)} it {rows[-1]['seconds']:.0f} s")
        best = max(rows, key=lambda r: r["psnr"])
        click.echo(f"{name:<18} best weight {best['weight']:g} ({best['psnr']:.2f} dB)")
        report["cases"][name] = dict(rows=rows, best=best)
    from torch_utils import misc
    out = misc.result_file(out, "tune_tv")
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
