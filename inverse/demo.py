"""`make demo`: the shipped default prior on the shipped held-out CT head slices.

    python -m inverse.demo [--network checkpoints/ct_head_small.safetensors] [--outdir out]

Runs ``inverse.reconstruct.run`` once per case below (20-view CT on every fourth slice of the
test slabs, the other problems on one test slice) into one new directory
``OUTDIR/NNNNN-demo/`` (each case gets its own sub-run with metrics.csv, summary.json and
comparison.png), then prints one table (FBP/pinv, TV, PaDIS: PSNR, SSIM, seconds per image)
and writes it as ``demo.md`` and ``demo.json`` beside the runs.

Settings are the CLI's defaults (the ``diffpir`` solver, 20 noise levels, see ``DEMO_SOLVER``),
not the paper's DPS with 100 levels x 10 inner iterations (~1000 network calls per image);
README.md says what that costs. TV weights were chosen on the tuning slices with
``benchmarks/tune_tv.py``; TV runs at most ``TV_ITERS`` PDHG iterations, in a thread beside the PaDIS
solve (``parallel_baselines``: faster on CPU, the same results), so the table's seconds are
wall times while the two share the CPU. The cases and their tuned settings: inverse.cases.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from inverse.cases import CASES, EVAL_SLICES, stage_eval_slices
from inverse.config import ReconConfig
from inverse.samplers import schedule_defaults
from torch_utils import misc
from torch_utils.device import default_device

# The solver settings of the demo (those of the CLI default): DiffPIR-style, 20 levels (limited
# angle 50: inverse.samplers.PROBLEM_SCHEDULES) from
# pinv(y) + noise at sigma_max, a CG data-proximal step whose pull towards the denoised estimate
# (rho = lam noise²/sigma²) grows as the noise level falls, fresh noise between levels, no
# backpropagation through the network.
DEMO_SOLVER = dict(solver="diffpir", steps=20, sigma_min=0.003, sigma_max=1.0,
                   solver_kwargs=dict(cg_iters=5, zeta=1.0, init="pinv"))
TV_ITERS = 500


def case_config(name: str, network: str, outdir: Path, device: str, seed: int, pad: int, psize: int) -> ReconConfig:
    """The run config of demo case ``name`` (inverse.cases.CASES)."""
    case = CASES[name]
    source = case.source
    if source == EVAL_SLICES:
        source = stage_eval_slices(Path(outdir) / "inputs")
    solver_kwargs = dict(DEMO_SOLVER["solver_kwargs"], lam=case.lam)
    return ReconConfig(network=network, input=str(source), problem=case.problem, noise=case.noise,
                       problem_kwargs=dict(case.options), prior="patch", pad=pad, psize=psize,
                       baselines=["fbp", "tv"], tv_weight=case.tv_weight, tv_iters=TV_ITERS,
                       parallel_baselines=True, outdir=str(outdir), seed=seed, device=device,
                       solver=DEMO_SOLVER["solver"], steps=demo_steps(case.problem), sigma_min=DEMO_SOLVER["sigma_min"],
                       sigma_max=DEMO_SOLVER["sigma_max"], solver_kwargs=solver_kwargs)


def demo_steps(problem: str) -> int:
    """The CLI default's levels for ``problem`` (DEMO_SOLVER's 20, or the per-problem change)."""
    return schedule_defaults(DEMO_SOLVER["solver"], problem)["steps"]


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
    device = device or default_device()
    demo_dir = misc.new_run_dir(outdir, "demo")
    click.echo(f"network {network}; device {device}; writing to {demo_dir}")
    results, t0 = {}, time.perf_counter()
    for name in names:
        click.echo(f"\n== {name}")
        cfg = case_config(name, network, demo_dir, device, seed, pad, psize).replace(progress=False)
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
