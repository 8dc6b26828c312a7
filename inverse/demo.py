"""`make demo`: the shipped default prior on the shipped held-out CT head slices.

    python -m inverse.demo [--network checkpoints/ct_head_small.safetensors] [--outdir out]

Runs ``inverse.reconstruct.run`` once per case below (20-view CT on the 10 held-out slices
other than the tuning slice 004) into one new directory
``OUTDIR/NNNNN-demo/`` (each case gets its own sub-run with metrics.csv, summary.json and
comparison.png), then prints one table (FBP/pinv, TV, PaDIS: PSNR, SSIM, seconds per image)
and writes it as ``demo.md`` and ``demo.json`` beside the runs.

Settings are the CPU-budget ones (the ``dds`` solver, 20 noise levels, see ``DEMO_SOLVER``),
not the paper's DPS with 100 levels x 10 inner iterations (~1000 network calls per image);
README.md says what that costs. TV weights were chosen on held-out slice 004 with
``benchmarks/tune_tv.py``; TV runs ``TV_ITERS`` PDHG iterations, in a thread beside the PaDIS
solve (``parallel_baselines``: 238 -> 209 s for the whole demo on 2 cores, the same results), so
the table's seconds are wall times while the two share the CPU.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click
import torch

from inverse.shipped import ct_head_dir
from torch_utils import misc

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = (ct_head_dir() or REPO / "datasets" / "ct_head") / "test"  # a checkout's, or the installed copy
ONE_SLICE = HELD_OUT / "slice_049.png"
TUNING_SLICE = "slice_004"  # TV weights and dds lam were chosen on it: never evaluated
EVAL_SLICES = "held-out"  # CASES' marker for "every held-out slice except TUNING_SLICE"

# The solver settings of the demo (and of the CLI default): x0-space DDS, 20 levels from
# pinv(y) + noise at sigma_max, CG data consistency, no backpropagation through the network.
DEMO_SOLVER = dict(solver="dds", steps=20, sigma_min=0.003, sigma_max=1.0,
                   solver_kwargs=dict(cg_iters=5, eta=1.0, init="pinv"))
TV_ITERS = 500

# name -> (problem, input, problem options, noise level, TV weight, dds lam). TV weights and
# lam were chosen on held-out slice 004 (benchmarks/tune_tv.py, benchmarks/tune_solver.py).
CASES = {
    "ct_parbeam_20": ("ct_parbeam", EVAL_SLICES, dict(views=20), 0.005, 1e-3, 0.01),
    "ct_fanbeam_40": ("ct_fanbeam", ONE_SLICE, dict(views=40), 0.005, 1e-3, 0.01),
    "ct_lact_120deg": ("ct_lact", ONE_SLICE, dict(views=60, angle_range="0,2.0944"), 0.005, 3e-4, 0.003),
    "deblur_uniform_9": ("deblur_uniform", ONE_SLICE, dict(kernel_size=9), 0.01, 1e-3, 0.1),
    "super_x4": ("super", ONE_SLICE, dict(factor=4), 0.01, 3e-2, 0.01),
}


def stage_images(files, folder: Path) -> Path:
    """Copy ``files`` into ``folder`` (runs read a directory); files already there are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (folder / f.name).exists():
            shutil.copy2(f, folder / f.name)
    return folder


def stage_eval_slices(folder: Path) -> Path:
    """Copy the held-out slices except the tuning slice into ``folder``."""
    return stage_images([f for f in sorted(HELD_OUT.glob("slice_*.png")) if f.stem != TUNING_SLICE], folder)


def case_config(name: str, network: str, outdir: Path, device: str, seed: int, pad: int, psize: int) -> dict:
    problem, source, options, noise, tv_weight, lam = CASES[name]
    if source == EVAL_SLICES:
        source = stage_eval_slices(Path(outdir) / "inputs")
    cfg = dict(network=network, input=str(source), measurements=None, image_size=None, mat_key="images",
               normalize=False, max_images=None, problem=problem, noise=noise, problem_kwargs=dict(options),
               prior="patch", pad=pad, psize=psize, stride=None, batch=None,
               baselines=["fbp", "tv"], tv_weight=tv_weight, tv_iters=TV_ITERS, parallel_baselines=True,
               outdir=str(outdir), seed=seed, device=device)
    cfg.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in DEMO_SOLVER.items()})
    cfg["solver_kwargs"]["lam"] = lam
    return cfg


def demo_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per case and method."""
    lines = ["| case | images | method | PSNR [dB] | SSIM | s/image |", "|---|---|---|---|---|---|"]
    for case, summary in results.items():
        for method, s in summary["methods"].items():
            label = {"fbp": "FBP", "pinv": "pinv", "tv": "TV", "padis": "PaDIS"}.get(method, method)
            lines.append(f"| {case} | {summary['n_images']} | {label} | "
                         f"{s['psnr']['mean']:.2f} ± {s['psnr']['std']:.2f} | "
                         f"{s['ssim']['mean']:.4f} ± {s['ssim']['std']:.4f} | "
                         f"{s['seconds_per_image']['mean']:.1f} |")
    return "\n".join(lines)


@click.command()
@click.option("--network", default=None, help="Checkpoint [default: the one under checkpoints/]")
@click.option("--outdir", default="out", type=click.Path(file_okay=False), help="Parent of the demo directory")
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--seed", default=0, type=int, help="Image i of a case uses seed + i")
@click.option("--pad", default=24, type=int, help="Patch-grid zero padding (paper: 24)")
@click.option("--psize", default=56, type=int, help="Patch size of the stitched prior (paper: 56)")
@click.option("--cases", default=",".join(CASES), help=f"Comma list of {', '.join(CASES)}")
def main(network, outdir, device, seed, pad, psize, cases):
    """Reconstruct the held-out CT head slices (and one slice per other problem) with the default prior."""
    from inverse.cli import check_network
    from inverse.reconstruct import run

    names = [c.strip() for c in cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise click.BadParameter(f"unknown case {unknown[0]!r}; expected some of {', '.join(CASES)}",
                                 param_hint="'--cases'")
    network = check_network(network)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    demo_dir = misc.new_run_dir(outdir, "demo")
    click.echo(f"network {network}; device {device}; writing to {demo_dir}")
    results, t0 = {}, time.perf_counter()
    for name in names:
        click.echo(f"\n== {name}")
        cfg = case_config(name, network, demo_dir, device, seed, pad, psize)
        cfg["progress"] = False
        results[name] = run(cfg)
    table = demo_table(results)
    misc.atomic_write_text(demo_dir / "demo.md", table + "\n")
    misc.atomic_write_json(demo_dir / "demo.json", dict(network=network, device=device, seed=seed, pad=pad,
                                                        psize=psize, solver=DEMO_SOLVER, tv_iters=TV_ITERS,
                                                        wall_seconds=time.perf_counter() - t0,
                                                        cases={k: v for k, v in results.items()}))
    click.echo("\n" + table)
    click.echo("(TV/FBP ran in a thread beside PaDIS (--parallel-baselines): s/image are wall times while "
               "sharing the CPU;\n each method alone: benchmarks/bench_quality.py)")
    click.echo(f"\ntotal {time.perf_counter() - t0:.0f} s")
    for name, summary in results.items():
        click.echo(f"{name}: {Path(summary['run_dir']) / 'comparison.png'}")


if __name__ == "__main__":
    main()
