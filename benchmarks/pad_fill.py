"""The patch prior's canvas outside the image: zeros against noise of std sigma, on the tuning slices.

    flock /tmp/heavy.lock nice -n 19 python benchmarks/pad_fill.py --threads 1

``PatchPrior`` pads the noisy image before cutting the patches; ``pad_fill`` 'zeros' leaves
that canvas at exact zeros, 'noise' fills it with Gaussian noise of the call's sigma, as every
training patch's padding was (training/patch_loss.py) and as the paper's samplers, whose state
is the whole canvas, keep it. This runs every problem of bench_quality's ``PROBLEMS`` (CT
parallel beam 20 and 8 views, fan beam 40, limited angle 120 degrees, 9x9 uniform deblurring,
4x super-resolution; their noise and tuned ``lam``) with every solver of ``SOLVERS`` and both
fills on the tuning slices (datasets/ct_head/tune: 055 and 056, never scored elsewhere), with the
shipped prior at the paper's grid (pad 24, psize 56). Each image's measurement noise is drawn
from its own generator (seed + index) before the solve, as ``inverse.reconstruct`` does, so both
fills see the same measurement; the solve continues that generator (the noise fill draws from it
too, so the two fills' sampler noise differs after the first call).

Per image: PSNR and SSIM of the whole image and the RMSE of the border (pixels within
``--border`` px of the image edge, where the patches that reach into the canvas are) and of the
interior. Before the solves, the denoiser alone (``denoiser.json``): D(gt + sigma z) with
each fill from the same x and grid offset, at ``LEVELS`` from 10 to 0.01, its border and
interior RMSE; this is the fidelity check for the solvers that cannot run to convergence here. Per solver: the mean PSNR change noise - zeros over all problems and slices and its
standard error (std / sqrt(n)); noise is called better only where that mean exceeds twice its
standard error ('noise' in the verdict column), else 'zeros'.

Cost: the paper's samplers at their default schedules (dps and langevin 100 levels x 10, pc 100
levels x 2 calls) do not fit a CPU budget for 6 problems x 2 fills x 2 slices; ``SOLVERS`` gives
them 20 levels (dps 1 inner iteration, langevin 2), which the table says; at that budget dps and
langevin do not converge (below FBP), and they run on ``--expensive-slices`` (1) slice. About 35
minutes on one core of this 2-core machine. Output in a new ``OUTDIR/NNNNN-pad_fill/`` (or ``--run-dir`` to
finish one; finished cells are kept): ``cells/PROBLEM__SOLVER__FILL.json`` (per image),
``pad_fill.json`` and ``pad_fill.md``. JSON and the markdown table are also printed.
``--smoke`` (tests) caps levels and inner iterations at 2 and 1.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_quality import PROBLEMS  # noqa: E402  (after the path insert, as in the other benchmarks)

from inverse.prior import PAD_FILLS  # noqa: E402
from torch_utils import misc  # noqa: E402
from torch_utils.device import default_device  # noqa: E402

# solver -> its schedule and options here (lam: the case's tuned weight). The x0-space solvers
# run their defaults; the paper's samplers (default 100 levels; dps/langevin x 10) fewer levels.
SOLVERS = {
    "dps": dict(steps=20, sigma_max=10.0, kwargs=dict(inner=1, dc_grad="full"), tier="expensive",
                settings="20 levels x 1 from sigma 10, gradient through the net (default 100 x 10; unconverged)"),
    "langevin": dict(steps=20, sigma_max=10.0, kwargs=dict(inner=2), tier="expensive",
                     settings="20 levels x 2 from sigma 10 (default 100 x 10; unconverged)"),
    "pc": dict(steps=20, sigma_max=10.0, kwargs=dict(inner=1),
               settings="20 levels from sigma 10, 1 corrector (default 100)"),
    "ddnm": dict(steps=20, sigma_max=10.0, kwargs={}, settings="20 levels from sigma 10, eta 0.85 (default 50)"),
    "dds": dict(steps=20, sigma_max=1.0, kwargs=dict(cg_iters=5), lam="dds_lam",
                settings="20 levels from sigma 1, 5 CG, lam per problem (default)"),
    "diffpir": dict(steps=20, sigma_max=1.0, kwargs=dict(cg_iters=5), lam="lam",
                    settings="20 levels from sigma 1, 5 CG, lam per problem (default)"),
}
PAPER = dict(pad=24, psize=56)
BORDER = 16  # pixels from the image edge that count as its border
# The denoiser alone: D(gt + sigma z) at these levels (the paper's schedule spans 10 .. 0.003),
# DRAWS noise draws per slice, both fills from the same x and grid offset.
LEVELS = (10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
DRAWS = 2


def edge_mask(height: int, width: int, border: int) -> np.ndarray:
    """True within ``border`` pixels of the edge of an H x W image."""
    inner = np.zeros((height, width), dtype=bool)
    inner[border:height - border, border:width - border] = True
    return ~inner


def image_scores(x: np.ndarray, gt: np.ndarray, border: int) -> dict:
    """PSNR, SSIM, and RMSE of the border / interior of one (C, H, W) reconstruction."""
    from inverse.metrics import psnr, ssim
    edge = edge_mask(*gt.shape[1:], border)
    err = (x.astype(np.float64) - gt) ** 2
    return dict(psnr=float(psnr(x, gt)), ssim=float(ssim(x, gt)),
                border_rmse=float(np.sqrt(err[:, edge].mean())), interior_rmse=float(np.sqrt(err[:, ~edge].mean())))


def solve_cell(net, problem: str, solver: str, fill: str, images: list[tuple[str, np.ndarray]], device: str,
               seed: int, caps: dict, border: int) -> dict:
    """One (problem, solver, fill) on every image: the per-image scores and the means."""
    from inverse.operators import make_operator
    from inverse.prior import PatchPrior
    from inverse.samplers import SAMPLERS, get_sigmas_karras
    from inverse.stages import measurement_noise_std, with_noise_std

    case, spec = PROBLEMS[problem], SOLVERS[solver]
    kwargs = dict(spec["kwargs"])
    if "lam" in spec:
        kwargs["lam"] = getattr(case, spec["lam"])
    if caps.get("inner") is not None and "inner" in kwargs:
        kwargs["inner"] = min(kwargs["inner"], caps["inner"])
    steps = min(spec["steps"], caps.get("steps") or spec["steps"])
    sigmas = get_sigmas_karras(steps, 0.003, spec["sigma_max"], device=device)
    prior = PatchPrior(net, pad=caps.get("pad", PAPER["pad"]), psize=caps.get("psize", PAPER["psize"]),
                       pad_fill=fill)
    per = {}
    for index, (name, gt) in enumerate(images):
        op = make_operator(case.problem, tuple(gt.shape[1:]), channels=gt.shape[0], device=device, **case.options)
        gen = torch.Generator(device=device).manual_seed(seed + index)  # as inverse.reconstruct: y's noise, then the solve
        with torch.no_grad():
            clean = op.A(torch.from_numpy(gt)[None].to(device))
            y = op.noise(clean, case.noise, gen)
        options = with_noise_std(SAMPLERS[solver], kwargs, measurement_noise_std(op, clean, case.noise))
        prior.reset_calls()
        t0 = time.perf_counter()
        x = SAMPLERS[solver](prior, op, y, sigmas, gen, **options)[0].detach().cpu().numpy()
        per[name] = dict(image_scores(x, gt, border), seconds=time.perf_counter() - t0, calls=prior.calls)
    means = {k: float(np.mean([r[k] for r in per.values()])) for k in next(iter(per.values()))}
    return dict(problem=problem, solver=solver, pad_fill=fill, steps=steps, sigma_max=spec["sigma_max"],
                kwargs=kwargs, settings=spec["settings"], border=border, per_image=per, **means)


def denoiser_rows(net, images: list[tuple[str, np.ndarray]], device: str, seed: int, caps: dict, border: int,
                  levels=LEVELS, draws: int = DRAWS) -> list[dict]:
    """The prior alone, as every solver calls it: x = gt + sigma z, then D(x) with each fill
    (same x, same grid offset: the generator is re-seeded per fill, and the offset is its first
    draw); RMSE of D(x) against gt on the border and the interior, mean over slices and draws."""
    from inverse.prior import PatchPrior
    priors = {f: PatchPrior(net, pad=caps.get("pad", PAPER["pad"]), psize=caps.get("psize", PAPER["psize"]),
                            pad_fill=f) for f in PAD_FILLS}
    rows = []
    for sigma in levels:
        scores = {f: [] for f in PAD_FILLS}
        for index, (_, gt) in enumerate(images):
            clean = torch.from_numpy(gt)[None].to(device)
            for k in range(draws):
                g = torch.Generator(device=device).manual_seed(seed + 1000 * index + k)
                x = clean + sigma * torch.randn(clean.shape, generator=g, device=device)
                state = g.get_state()
                for f, prior in priors.items():
                    g.set_state(state)
                    with torch.inference_mode():
                        x0 = prior(x, sigma, g)[0].cpu().numpy()
                    s = image_scores(np.clip(x0, 0, 1), gt, border)
                    scores[f].append((s["border_rmse"], s["interior_rmse"]))
        row = dict(sigma=sigma, n=len(scores["zeros"]))
        for f in PAD_FILLS:
            row[f"border_rmse_{f}"] = float(np.mean([b for b, _ in scores[f]]))
            row[f"interior_rmse_{f}"] = float(np.mean([i for _, i in scores[f]]))
        rows.append(row)
    return rows


def load_cells(bench: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((bench / "cells").glob("*.json"))]


def compare(cells: list[dict]) -> dict:
    """Per (problem, solver): zeros and noise side by side with the noise - zeros changes; per
    solver: the mean PSNR change over problems and slices, its standard error and the verdict."""
    by = {(c["problem"], c["solver"], c["pad_fill"]): c for c in cells}
    rows, changes = [], {}
    for problem in PROBLEMS:
        for solver in SOLVERS:
            z, n = by.get((problem, solver, "zeros")), by.get((problem, solver, "noise"))
            if z is None or n is None:
                continue
            shared = sorted(set(z["per_image"]) & set(n["per_image"]))
            d = [n["per_image"][i]["psnr"] - z["per_image"][i]["psnr"] for i in shared]
            changes.setdefault(solver, []).extend(d)
            rows.append(dict(problem=problem, solver=solver, n=len(shared), settings=z["settings"],
                             **{f"{k}_{f}": c[k] for f, c in (("zeros", z), ("noise", n))
                                for k in ("psnr", "ssim", "border_rmse", "interior_rmse", "seconds")},
                             d_psnr=float(np.mean(d)), d_ssim=n["ssim"] - z["ssim"],
                             border_ratio=n["border_rmse"] / z["border_rmse"] if z["border_rmse"] else None))
    solvers = {}
    for solver, d in changes.items():
        mean = float(np.mean(d))
        se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
        border = [r["border_ratio"] for r in rows if r["solver"] == solver and r["border_ratio"]]
        solvers[solver] = dict(n=len(d), d_psnr=mean, se=se, wins=sum(v > 0 for v in d),
                               border_ratio=float(np.exp(np.mean(np.log(border)))) if border else None,
                               verdict="noise" if len(d) > 1 and mean > 2 * se else "zeros")
    return dict(rows=rows, solvers=solvers)


def denoiser_markdown(rows: list[dict]) -> str:
    lines = ["| sigma | n | border RMSE zeros | border RMSE noise | noise / zeros | interior RMSE zeros | "
             "interior RMSE noise |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sigma']:g} | {r['n']} | {r['border_rmse_zeros']:.4f} | {r['border_rmse_noise']:.4f} | "
                     f"{r['border_rmse_noise'] / r['border_rmse_zeros']:.3f} | {r['interior_rmse_zeros']:.4f} | "
                     f"{r['interior_rmse_noise']:.4f} |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The per-cell table and the per-solver summary."""
    lines = ["| problem | solver | n | PSNR zeros | PSNR noise | Δ PSNR | SSIM zeros | SSIM noise | "
             "border RMSE zeros | border RMSE noise | interior RMSE zeros | interior RMSE noise | s/image | settings |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['problem']} | {r['solver']} | {r['n']} | {r['psnr_zeros']:.2f} | {r['psnr_noise']:.2f} | "
                     f"{r['d_psnr']:+.2f} | {r['ssim_zeros']:.4f} | {r['ssim_noise']:.4f} | "
                     f"{r['border_rmse_zeros']:.4f} | {r['border_rmse_noise']:.4f} | "
                     f"{r['interior_rmse_zeros']:.4f} | {r['interior_rmse_noise']:.4f} | "
                     f"{r['seconds_zeros']:.1f} | {r['settings']} |")
    lines += ["", "| solver | n | mean Δ PSNR (noise - zeros) | standard error | noise better | "
              "border RMSE noise / zeros (geometric mean) | verdict |", "|---|---|---|---|---|---|---|"]
    for solver, s in result["solvers"].items():
        ratio = "-" if s["border_ratio"] is None else f"{s['border_ratio']:.3f}"
        lines.append(f"| {solver} | {s['n']} | {s['d_psnr']:+.3f} | {s['se']:.3f} | {s['wins']}/{s['n']} | "
                     f"{ratio} | {s['verdict']} |")
    if result.get("denoiser"):
        lines += ["", "The denoiser alone, D(gt + sigma z) clipped to [0, 1] against gt (same x and grid offset "
                  "for both fills):", "", denoiser_markdown(result["denoiser"])]
    return "\n".join(lines)


def write_report(bench: Path, meta: dict | None = None) -> tuple[dict, str]:
    old = json.loads((bench / "pad_fill.json").read_text()) if (bench / "pad_fill.json").exists() else {}
    meta = dict(old.get("meta", {}), **(meta or {}))
    result = compare(load_cells(bench))
    if (bench / "denoiser.json").exists():
        result["denoiser"] = json.loads((bench / "denoiser.json").read_text())
    table = markdown(result)
    misc.atomic_write_json(bench / "pad_fill.json", dict(meta=meta, **result), overwrite=True)
    misc.atomic_write_text(bench / "pad_fill.md", table + "\n", overwrite=True)
    return result, table


def _names(text: str | None, allowed, option: str) -> list[str]:
    if text is None:
        return list(allowed)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise click.BadParameter(f"unknown {bad[0]!r}; expected some of {', '.join(allowed)}", param_hint=option)
    return names


def relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


@click.command()
@click.option("--network", default=str(REPO / "checkpoints/ct_head_small.safetensors"), show_default=True,
              type=click.Path(exists=True, dir_okay=False), help="The patch prior.")
@click.option("--images", default=str(REPO / "datasets/ct_head/tune"), show_default=True,
              type=click.Path(exists=True), help="Ground-truth tuning slices (file or directory).")
@click.option("--slices", default=2, show_default=True, type=click.IntRange(min=1), help="The first N slices.")
@click.option("--expensive-slices", default=1, show_default=True, type=click.IntRange(min=1),
              help="The first N slices for dps and langevin.")
@click.option("--problems", default=None, help=f"Comma list of {', '.join(PROBLEMS)} [default: all].")
@click.option("--solvers", default=None, help=f"Comma list of {', '.join(SOLVERS)} [default: all].")
@click.option("--fills", default=",".join(PAD_FILLS), show_default=True, help="Comma list of canvas fills.")
@click.option("--border", default=BORDER, show_default=True, type=click.IntRange(min=1),
              help="Border width in pixels for the border RMSE.")
@click.option("--pad", default=PAPER["pad"], show_default=True, type=click.IntRange(min=1))
@click.option("--psize", default=PAPER["psize"], show_default=True, type=click.IntRange(min=1))
@click.option("--outdir", default=str(REPO / "benchmarks/results/pad_fill"), show_default=True,
              type=click.Path(file_okay=False), help="Parent of the new benchmark directory.")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="Finish this earlier benchmark directory (its finished cells are kept).")
@click.option("--report", "report_only", default=None, type=click.Path(exists=True, file_okay=False),
              help="Only rebuild pad_fill.md/json of this benchmark directory.")
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--threads", default=0, type=click.IntRange(min=0), help="torch CPU threads (0: default).")
@click.option("--seed", default=0, show_default=True, type=int, help="Image i uses seed + i.")
@click.option("--smoke", is_flag=True, help="Caps: 2 levels, 1 inner iteration (tests).")
def main(network, images, slices, expensive_slices, problems, solvers, fills, border, pad, psize, outdir, run_dir, report_only,
         device, threads, seed, smoke):
    """Zeros against noise of std sigma in the patch prior's canvas (see the module docstring)."""
    if report_only:
        result, table = write_report(Path(report_only))
        click.echo(json.dumps(result["solvers"], indent=2))
        click.echo(table)
        return
    from torch_utils.persistence import load_network
    from training.dataset import read_images

    if threads:
        torch.set_num_threads(threads)
    problems = _names(problems, PROBLEMS, "'--problems'")
    solvers = _names(solvers, SOLVERS, "'--solvers'")
    fills = _names(fills, PAD_FILLS, "'--fills'")
    device = device or default_device()
    caps = dict(pad=pad, psize=psize, **(dict(steps=2, inner=1) if smoke else {}))
    picked = read_images(images, max_images=max(slices, expensive_slices))
    bench = Path(run_dir) if run_dir else misc.new_run_dir(outdir, "pad_fill")
    (bench / "cells").mkdir(parents=True, exist_ok=True)
    click.echo(f"benchmark directory {bench}", err=True)
    net = load_network(network, device=device)
    meta = dict(network=relative(Path(network)), images=relative(Path(images)), slices=[n for n, _ in picked],
                slices_per_tier=dict(cheap=slices, expensive=expensive_slices), border=border, caps=caps, seed=seed, device=device, threads=torch.get_num_threads(), smoke=smoke,
                command="python benchmarks/pad_fill.py " + " ".join(sys.argv[1:]))
    t_start = time.perf_counter()
    if not (bench / "denoiser.json").exists():
        levels, draws = (LEVELS[::3], 1) if smoke else (LEVELS, DRAWS)
        rows = denoiser_rows(net, picked[:slices], device, seed, caps, border, levels, draws)
        misc.atomic_write_json(bench / "denoiser.json", rows, overwrite=True)
        click.echo(denoiser_markdown(rows), err=True)
    for problem in problems:
        for solver in solvers:
            for fill in fills:
                path = bench / "cells" / f"{problem}__{solver}__{fill}.json"
                if path.exists():
                    continue
                t_cell = time.perf_counter()
                n = expensive_slices if SOLVERS[solver].get("tier") == "expensive" else slices
                cell = solve_cell(net, problem, solver, fill, picked[:n], device, seed, caps, border)
                cell["wall_seconds"] = time.perf_counter() - t_cell
                misc.atomic_write_json(path, cell, overwrite=True)
                click.echo(f"{problem} / {solver} / {fill}: PSNR {cell['psnr']:.2f} dB, border RMSE "
                           f"{cell['border_rmse']:.4f}, {cell['seconds']:.1f} s/image", err=True)
    meta["seconds_this_run"] = time.perf_counter() - t_start
    result, table = write_report(bench, meta)
    click.echo(json.dumps(dict(meta=meta, solvers=result["solvers"]), indent=2))
    click.echo(table)


if __name__ == "__main__":
    main()
