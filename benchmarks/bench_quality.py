"""Quality benchmark: the paper's comparisons at CPU scale, on the held-out CT head slices.

    python benchmarks/bench_quality.py --network checkpoints/ct_head_small.safetensors \\
        --whole-network runs/ablation/00001-whole/network-snapshot-000599.safetensors \\
        --outdir benchmarks/results/quality --threads 1

For every problem of ``PROBLEMS`` (CT parallel beam 20 and 8 views, fan beam 40 views,
limited angle 120 degrees, 9x9 uniform deblurring, 4x super-resolution) and every method of
``METHODS`` (FBP/pinv, TV run to convergence, PaDIS with each solver, whole-image diffusion,
overlapping-patch averaging) this runs ``inverse.reconstruct.run`` -- the same code path as
``inverse_nodist.py``, so every cell can be reproduced from its ``config.json`` -- on the
held-out test slices (``--exclude`` skips some; the tuning slices live in datasets/ct_head/tune: TV weights and
the solvers' ``lam`` were chosen on it). Each image's measurement noise is seeded by its index, so
all methods of a problem see the same measurements.

Output, in a new directory ``OUTDIR/NNNNN-quality/`` (or ``--run-dir``, to add cells to or
finish an earlier benchmark: cells already there are skipped): one sub-run per cell, each
cell's summary in ``cells/PROBLEM__METHOD.json``, and from all cells ``quality.json``,
``quality.md`` (mean and std of PSNR/SSIM, seconds and network calls per image) and
``psnr_vs_seconds.png`` (CT 20 views: PSNR against seconds per image for every solver setting,
the default marked). ``--report DIR`` only rebuilds the table and plot.

Cost: the paper-setting solvers (``dps``, ``dps_x0``, ``langevin``: 100 levels x 10 inner
iterations, ~1000 network calls per image) and the K-sample means (``diffpir_k2/4/8``, ``dds_k2/4``: K
times the patches per call) and the 30- and 50-level settings run on ``--expensive-slices`` slices of CT 20
views only, unless ``--expensive-problems`` says otherwise; everything else runs on
``--slices`` slices. ``--smoke`` (the test suite's version) caps steps, inner iterations and
TV iterations so a tiny network finishes in seconds.
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

from inverse.baselines import TV_TOL  # noqa: E402  (after the path insert, as in the other benchmarks)
from inverse.cases import CASES, EVAL_SLICES, Case, stage_images  # noqa: E402
from inverse.config import ReconConfig  # noqa: E402
from inverse.samplers import PROBLEM_SCHEDULES, schedule_defaults  # noqa: E402
from torch_utils import misc  # noqa: E402
from torch_utils.device import default_device  # noqa: E402

# problem name -> its Case (inverse.cases; the inputs are --images, not the case's source). The
# demo's cases plus 8-view CT; TV weights tuned on tuning slice 055 (benchmarks/tune_tv.py --set quality).
PROBLEMS = {
    "ct_parbeam_20": CASES["ct_parbeam_20"],
    "ct_parbeam_8": Case("ct_parbeam", EVAL_SLICES, dict(views=8), 0.005, 2e-4, 0.3, 0.01),
    **{k: CASES[k] for k in ("ct_fanbeam_40", "ct_lact_120deg", "deblur_uniform_9", "super_x4")},
}

TV_ITERS = 3000  # maximum PDHG iterations; the objective tolerance (inverse.baselines.TV_TOL) stops earlier
TV_SETTINGS = f"PDHG to objective tolerance {TV_TOL:g} (max {TV_ITERS})"
PAPER = dict(pad=24, psize=56)

def x0_solver_methods(solver: str, label: str, kwargs: dict, detail: str, ks: tuple[int, ...],
                      default: bool = False) -> dict:
    """The cells of an x0-space solver (dds, diffpir): 20 levels from sigma 1 (``solver``), the
    means of K samples of it (``solver_kK``, K in ``ks``) and 30 and 50 levels (``solverN``)."""
    base = dict(prior="patch", solver=solver, sigma_max=1.0, kwargs=kwargs)
    schedule = f"sigma_max 1, 5 CG{detail}"
    changes = [f"{p} {c['steps']}" for p, c in PROBLEM_SCHEDULES.get(solver, {}).items() if "steps" in c]
    levels = f"20 ({', '.join(changes)})" if default and changes else "20"
    return {solver: dict(base, label=label + (" (default)" if default else ""), steps=20,
                         settings=f"{levels} levels, {schedule}, lam per problem"),
            **{f"{solver}_k{k}": dict(base, label=f"{label}, mean of {k}", steps=20, samples=k,
                                      settings=f"as {solver}, mean of K = {k} samples", tier="expensive") for k in ks},
            **{f"{solver}{n}": dict(base, label=f"{label} {n}", steps=n, settings=f"{n} levels, {schedule}",
                                    tier="expensive") for n in (30, 50)}}


# method -> how it runs. 'baselines' rows come from the default method's cell (the same measurements).
# Everything else: prior, solver, schedule and solver options; 'tier' 'expensive' = ~1000 calls.
METHODS = {
    "fbp": dict(label="FBP / pinv", baseline=True, settings="filtered backprojection / pseudo-inverse"),
    "tv": dict(label="TV (PDHG)", baseline=True,
               settings=f"{TV_SETTINGS}, weight tuned on slice 055"),
    **x0_solver_methods("diffpir", "PaDIS DiffPIR", dict(cg_iters=5, zeta=1.0), ", zeta 1", ks=(2, 4, 8), default=True),
    **x0_solver_methods("dds", "PaDIS dds", dict(cg_iters=5, eta=1.0), "", ks=(2, 4)),
    "ddnm": dict(label="PaDIS DDNM", prior="patch", solver="ddnm", steps=100, sigma_max=10.0, kwargs={},
                 settings="100 levels, eta 0.85"),
    "pc": dict(label="PaDIS PC", prior="patch", solver="pc", steps=100, sigma_max=10.0, kwargs={},
               settings="100 levels, 1 corrector"),
    "langevin": dict(label="PaDIS Langevin", prior="patch", solver="langevin", steps=100, sigma_max=10.0,
                     kwargs=dict(inner=10), settings="100 levels x 10 (paper)", tier="expensive"),
    "dps": dict(label="PaDIS DPS (paper)", prior="patch", solver="dps", steps=100, sigma_max=10.0,
                kwargs=dict(inner=10, dc_grad="full"), settings="100 levels x 10, gradient through the net (paper)",
                tier="expensive"),
    "dps_x0": dict(label="PaDIS DPS x0", prior="patch", solver="dps", steps=100, sigma_max=10.0,
                   kwargs=dict(inner=10, dc_grad="x0"), settings="100 levels x 10, gradient at D(x)",
                   tier="expensive"),
    "dps_100": dict(label="PaDIS DPS 100 x 1", prior="patch", solver="dps", steps=100, sigma_max=10.0,
                    kwargs=dict(inner=1, dc_grad="full"), settings="100 levels x 1, gradient through the net"),
    "dps_x0_100": dict(label="PaDIS DPS x0 100 x 1", prior="patch", solver="dps", steps=100, sigma_max=10.0,
                       kwargs=dict(inner=1, dc_grad="x0"), settings="100 levels x 1, gradient at D(x)"),
    "whole": dict(label="whole-image diffusion", prior="whole", solver="diffpir", steps=20, sigma_max=1.0,
                  kwargs=dict(cg_iters=5, zeta=1.0), settings="whole-image network, the default solver",
                  network="whole"),
    "average": dict(label="patch averaging", prior="average", solver="diffpir", steps=20, sigma_max=1.0,
                    kwargs=dict(cg_iters=5, zeta=1.0), settings="56-px patches, stride 28, averaged; the default solver"),
}
DEFAULT_METHOD = "diffpir"
PLOT_PROBLEM = "ct_parbeam_20"


def select_images(images: Path, exclude: list[str], n: int | None) -> list[Path]:
    """Image files of ``images`` (sorted) without those whose stem is in ``exclude``; ``n`` of
    them evenly spaced over the sorted list (so both test slabs are sampled), or all."""
    from training.dataset import list_image_files
    files = [Path(f) for f in list_image_files(images) if Path(f).stem not in exclude]
    if not files:
        raise click.UsageError(f"--images {images}: no images left after --exclude {','.join(exclude)}")
    if not n or n >= len(files):
        return files
    return [files[i * len(files) // n] for i in range(n)]


def cell_config(problem: str, method: str, networks: dict, inputs: Path, outdir: Path, device: str,
                seed: int, caps: dict, tv_weight: float | None = None) -> ReconConfig:
    """The ``inverse.reconstruct.run`` config of one (problem, method) cell (``tv_weight``
    replaces the case's, e.g. the one re-tuned on the shifted tuning slices)."""
    case = PROBLEMS[problem]
    m = METHODS[method]
    kwargs = dict(m["kwargs"])
    if m["solver"] in ("dds", "diffpir"):
        kwargs["lam"] = case.dds_lam if m["solver"] == "dds" else case.lam
    steps = schedule_defaults(m["solver"], case.problem)["steps"] if method == DEFAULT_METHOD else m["steps"]
    steps = steps if caps.get("steps") is None else min(steps, caps["steps"])
    if "inner" in kwargs and caps.get("inner") is not None:
        kwargs["inner"] = min(kwargs["inner"], caps["inner"])
    return ReconConfig(network=networks[m.get("network", "patch")], input=str(inputs), problem=case.problem,
                       noise=case.noise, problem_kwargs=dict(case.options), prior=m["prior"],
                       pad=caps.get("pad", PAPER["pad"]), psize=caps.get("psize", PAPER["psize"]),
                       solver=m["solver"], steps=steps, sigma_min=0.003, sigma_max=m["sigma_max"],
                       solver_kwargs=kwargs, samples=m.get("samples", 1),
                       baselines=["fbp", "tv"] if method == DEFAULT_METHOD else [],
                       tv_weight=case.tv_weight if tv_weight is None else tv_weight, tv_iters=caps.get("tv_iters") or TV_ITERS, outdir=str(outdir),
                       seed=seed, device=device, progress=False,
                       parallel_baselines=bool(caps.get("parallel_baselines")))


def per_image(run_dir: str | Path, source: str) -> dict[str, dict] | None:
    """{image: {psnr, ssim, seconds}} of method ``source`` from a run's metrics.csv (None if gone)."""
    import csv
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        return {r["image"]: dict(psnr=float(r["psnr"]), ssim=float(r["ssim"]), seconds=float(r["seconds"]))
                for r in csv.DictReader(f) if r["method"] == source}


def cell_record(problem: str, method: str, summary: dict, source: str = "padis") -> dict:
    """What the table and plot need from one run (``source``: which method of the run)."""
    s = summary["methods"][source]
    padis = source == "padis"
    return dict(problem=problem, method=method, n_images=summary["n_images"], psnr=s["psnr"], ssim=s["ssim"],
                seconds_per_image=s["seconds_per_image"],
                calls_per_image=summary["denoiser_calls_per_image"] if padis else None,
                run_dir=summary["run_dir"], failures=len(summary.get("failures", [])),
                source=source, per_image=per_image(summary["run_dir"], source))


def run_cell(bench: Path, problem: str, method: str, networks: dict, files: list[Path], device: str,
             seed: int, caps: dict, tv_weight: float | None = None) -> list[dict]:
    """Run one cell (the default method's cell also yields the FBP and TV rows); write cells/*.json atomically."""
    from inverse.baselines import method_label
    from inverse.reconstruct import run
    inputs = stage_images(files, bench / "inputs" / f"n{len(files)}")
    cfg = cell_config(problem, method, networks, inputs, bench / "runs" / problem, device, seed, caps, tv_weight)
    t0 = time.perf_counter()
    summary = run(cfg)
    records = [cell_record(problem, method, summary)]
    if method == DEFAULT_METHOD:
        records += [cell_record(problem, b, summary, source=method_label(b, cfg.problem)) for b in ("fbp", "tv")]
    (bench / "cells").mkdir(parents=True, exist_ok=True)
    for r in records:
        r["wall_seconds"] = time.perf_counter() - t0
        r["settings"] = METHODS[r["method"]]["settings"]
        if r["method"] == "tv":
            r["tv_weight"] = cfg.tv_weight
            tuned = "re-tuned on the shifted tuning slices" if tv_weight is not None else "tuned on slice 055"
            r["settings"] = f"{TV_SETTINGS}, weight {cfg.tv_weight:g} ({tuned})"
        misc.atomic_write_json(bench / "cells" / f"{problem}__{r['method']}.json", r, overwrite=True)
    return records


TV_SHIFT_FACTORS = (0.5, 1.0, 2.0)  # the shifted benchmark re-tunes TV over these multiples of the tuned weight


def tune_tv_shifted(bench: Path, problems: list[str], tune_files: list[Path], caps: dict) -> dict[str, float]:
    """TV weight per problem re-tuned on the shifted tuning slices (best mean PSNR over
    ``TV_SHIFT_FACTORS`` x the case's weight, TV run as in the cells); cached in
    ``tv_shifted.json`` of the benchmark directory with every row."""
    from inverse.baselines import TV_TOL, tv
    from inverse.metrics import psnr, ssim
    from inverse.operators import make_operator
    from training.dataset import read_images
    path = bench / "tv_shifted.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    images = [read_images(f)[0][1] for f in tune_files]
    for problem in problems:
        if problem in record:
            continue
        case, rows = PROBLEMS[problem], []
        for factor in TV_SHIFT_FACTORS:
            w = case.tv_weight * factor
            scores = []
            for k, image in enumerate(images):
                x = torch.from_numpy(image)[None]
                op = make_operator(case.problem, tuple(image.shape[1:]), channels=image.shape[0], **case.options)
                y = op.noise(op.A(x), case.noise, torch.Generator().manual_seed(k))
                xr = tv(op, y, weight=w, iters=caps.get("tv_iters") or TV_ITERS, tol=TV_TOL)[0].numpy()
                scores.append((float(psnr(xr, image)), float(ssim(xr, image))))
            rows.append(dict(weight=w, psnr=sum(p for p, _ in scores) / len(scores),
                             ssim=sum(q for _, q in scores) / len(scores)))
            click.echo(f"  TV on shifted tuning slices, {problem}: weight {w:g} PSNR {rows[-1]['psnr']:.2f}")
        record[problem] = dict(rows=rows, best=max(rows, key=lambda r: r["psnr"])["weight"],
                               slices=[str(f.relative_to(REPO)) if f.is_relative_to(REPO) else str(f)
                                       for f in tune_files])
        misc.atomic_write_json(path, record, overwrite=True)
    return {p: record[p]["best"] for p in problems}


def load_cells(bench: Path) -> list[dict]:
    """Every cell; one written before cells kept per-image numbers gets them from its run's
    metrics.csv if that is still there (and is rewritten with them)."""
    cells = []
    for path in sorted((bench / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        if cell.get("per_image") is None:
            source = cell.get("source") or (cell["method"] if cell["method"] in ("fbp", "tv") else "padis")
            found = per_image(cell["run_dir"], source)
            if found:
                cell.update(source=source, per_image=found)
                misc.atomic_write_json(path, cell, overwrite=True)
        cells.append(cell)
    return cells


def common_images(cells: list[dict]) -> list[str]:
    """Images that every cell with per-image numbers scored (sorted); [] if any cell lacks them."""
    sets = [set(c["per_image"]) for c in cells if c.get("per_image")]
    if not sets or len(sets) < len(cells):
        return []
    return sorted(set.intersection(*sets))


def _ms(d: dict | None, fmt: str) -> str:
    return "-" if d is None or d.get("mean") is None else f"{d['mean']:{fmt}} ± {d['std']:{fmt}}"


def quality_table(cells: list[dict]) -> str:
    """Markdown: one row per problem and method, in PROBLEMS x METHODS order."""
    by = {(c["problem"], c["method"]): c for c in cells}
    lines = ["| problem | method | n | PSNR [dB] | SSIM | s/image | calls/image | settings |",
             "|---|---|---|---|---|---|---|---|"]
    for p in PROBLEMS:
        for m, spec in METHODS.items():
            c = by.get((p, m))
            if c is None:
                continue
            calls = "-" if c["calls_per_image"] is None else f"{c['calls_per_image']['mean']:.0f}"
            lines.append(f"| {p} | {spec['label']} | {c['n_images']} | {_ms(c['psnr'], '.2f')} | "
                         f"{_ms(c['ssim'], '.4f')} | {c['seconds_per_image']['mean']:.1f} | {calls} | "
                         f"{c.get('settings') or spec['settings']} |")
    return "\n".join(lines)


def plot_psnr_vs_seconds(cells: list[dict], path: Path, problem: str = PLOT_PROBLEM) -> bool:
    """PSNR against seconds per image for the diffusion methods of ``problem`` (log x), TV and
    FBP as lines; the default solver marked. Means are over the images that every method scored
    (cells run on different slice counts would otherwise not compare); without per-image numbers,
    each cell's own mean (n in the label). False if there is nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [c for c in cells if c["problem"] == problem and c["psnr"] and c["psnr"].get("mean") is not None]
    points = [c for c in mine if c["calls_per_image"] is not None]
    if not points:
        return False
    common = common_images(mine)

    def mean(c, key):
        if common:
            return sum(c["per_image"][i][key] for i in common) / len(common)
        return c["psnr" if key == "psnr" else "seconds_per_image"]["mean"]

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for c in points:
        default = c["method"] == DEFAULT_METHOD
        xy = (mean(c, "seconds"), mean(c, "psnr"))
        ax.scatter(*xy, s=80 if default else 36, marker="*" if default else "o", color="C3" if default else "C0",
                   zorder=3)
        label = METHODS[c["method"]]["label"] + ("" if common else f" (n={c['n_images']})")
        ax.annotate(label, xy, textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")  # before the baseline labels, which sit at the left edge
    for c in mine:
        if c["method"] in ("tv", "fbp"):
            ax.axhline(mean(c, "psnr"), color="gray", ls="--" if c["method"] == "tv" else ":", lw=1)
            ax.annotate(METHODS[c["method"]]["label"], (ax.get_xlim()[0], mean(c, "psnr")), fontsize=7,
                        color="gray", xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("seconds per image (2-core CPU; network calls dominate)")
    ax.set_ylabel("PSNR [dB]")
    which = f"mean over {', '.join(common)}" if common and len(common) <= 3 else (
        f"mean over the {len(common)} images all ran on" if common else "each method's own images")
    ax.set_title(f"{problem}: PSNR vs compute (star: default)\n{which}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    misc.atomic_write_with(path, lambda p: fig.savefig(p, format="png"), overwrite=True)
    plt.close(fig)
    return True


def write_report(bench: Path, meta: dict | None = None) -> str:
    cells = load_cells(bench)
    table = quality_table(cells)
    old = json.loads((bench / "quality.json").read_text()) if (bench / "quality.json").exists() else {}
    old_meta = old.get("meta", {})
    commands = list(old_meta.get("commands", [old_meta["command"]] if "command" in old_meta else []))
    if meta is not None:  # a run adds its command line to those that filled this directory
        commands.append(meta.pop("command"))
    meta = dict(meta or old_meta, commands=commands)
    meta.pop("command", None)
    misc.atomic_write_json(bench / "quality.json", dict(meta=meta, cells=cells), overwrite=True)
    misc.atomic_write_text(bench / "quality.md", table + "\n", overwrite=True)
    plot_psnr_vs_seconds(cells, bench / "psnr_vs_seconds.png")
    return table


def machine() -> dict:
    import os
    import platform
    return dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), torch=torch.__version__,
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def _names(text: str | None, allowed: dict, option: str) -> list[str]:
    if text is None:
        return list(allowed)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise click.BadParameter(f"unknown {bad[0]!r}; expected some of {', '.join(allowed)}", param_hint=option)
    return names


@click.command()
@click.option("--network", default=str(REPO / "checkpoints/ct_head_small.safetensors"), show_default=True,
              type=click.Path(exists=True, dir_okay=False), help="The patch prior.")
@click.option("--whole-network", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Whole-image network for the 'whole' method (skipped without it).")
@click.option("--images", default=str(REPO / "datasets/ct_head/test"), show_default=True,
              type=click.Path(exists=True, file_okay=False), help="Held-out ground-truth slices.")
@click.option("--exclude", default="", show_default=True,
              help="Comma list of slices to skip (the tuning slices live apart, in datasets/ct_head/tune).")
@click.option("--slices", default=None, type=click.IntRange(min=1), help="Slices per cell [default: all].")
@click.option("--expensive-slices", default=2, show_default=True, type=click.IntRange(min=1),
              help="Slices for the ~1000-call solvers.")
@click.option("--expensive-problems", default=PLOT_PROBLEM, show_default=True,
              help="Problems that get the ~1000-call solvers.")
@click.option("--problems", default=None, help=f"Comma list of {', '.join(PROBLEMS)} [default: all].")
@click.option("--methods", default=None, help=f"Comma list of {', '.join(METHODS)} [default: all].")
@click.option("--outdir", default=str(REPO / "benchmarks/results/quality"), show_default=True,
              type=click.Path(file_okay=False), help="Parent of the new benchmark directory.")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="Add to / finish this earlier benchmark directory instead of making a new one.")
@click.option("--report", "report_only", default=None, type=click.Path(exists=True, file_okay=False),
              help="Only rebuild quality.md/json and the plot of this benchmark directory.")
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--threads", default=0, type=click.IntRange(min=0), help="torch CPU threads (0: default).")
@click.option("--seed", default=0, type=int, show_default=True)
@click.option("--pad", default=PAPER["pad"], show_default=True, type=click.IntRange(min=0),
              help="Patch-grid zero padding of the stitched prior.")
@click.option("--psize", default=PAPER["psize"], show_default=True, type=click.IntRange(min=1),
              help="Patch size of the stitched prior (and of patch averaging).")
@click.option("--parallel-baselines", is_flag=True,
              help="TV/FBP in a thread beside the default solve (same numbers; seconds are then shared wall times).")
@click.option("--shifted", is_flag=True,
              help="The shifted benchmark: every slice rotated, zoomed, re-windowed and textured (benchmarks/shifts.py), "
                   "TV re-tuned on the equally shifted tuning slices.")
@click.option("--tune-images", default=str(REPO / "datasets/ct_head/tune"), show_default=True,
              type=click.Path(exists=True, file_okay=False), help="Tuning slices (--shifted re-tunes TV on them, shifted).")
@click.option("--smoke", is_flag=True, help="Caps: 2 levels, 1 inner iteration, 3 TV iterations (tests).")
def main(network, whole_network, images, exclude, slices, expensive_slices, expensive_problems, problems,
         methods, outdir, run_dir, report_only, device, threads, seed, pad, psize, parallel_baselines, shifted,
         tune_images, smoke):
    """Run the quality benchmark (see the module docstring)."""
    if report_only:
        click.echo(write_report(Path(report_only)))
        return
    if threads:
        torch.set_num_threads(threads)
    problems = _names(problems, PROBLEMS, "'--problems'")
    methods = _names(methods, METHODS, "'--methods'")
    expensive_problems = _names(expensive_problems, PROBLEMS, "'--expensive-problems'")
    if "whole" in methods and whole_network is None:
        methods.remove("whole")
        click.echo("no --whole-network: skipping the whole-image diffusion baseline", err=True)
    if {"fbp", "tv"} & set(methods) and DEFAULT_METHOD not in methods:
        methods.append(DEFAULT_METHOD)  # the baselines come from the default cell's run
    device = device or default_device()
    caps = dict(steps=2, inner=1, tv_iters=3) if smoke else {}
    caps.update(pad=pad, psize=psize, parallel_baselines=parallel_baselines)
    networks = dict(patch=network, whole=whole_network)
    excluded = [e.strip() for e in exclude.split(",") if e.strip()]
    bench = Path(run_dir) if run_dir else misc.new_run_dir(outdir, "quality-shifted" if shifted else "quality")
    bench.mkdir(parents=True, exist_ok=True)
    meta = dict(network=network, whole_network=whole_network, images=images, exclude=excluded, device=device,
                threads=torch.get_num_threads(), seed=seed, smoke=smoke, caps=caps, shifted=shifted,
                command=" ".join(sys.argv), machine=machine())
    click.echo(f"benchmark directory {bench}")
    tv_weights: dict[str, float] = {}
    if shifted:
        from shifts import stage_shifted
        tune = stage_shifted(select_images(Path(tune_images), [], None), bench / "inputs" / "shifted-tune", seed)
        tv_weights = tune_tv_shifted(bench, problems, tune, caps)
        meta["tv_weights_shifted"] = tv_weights
    done = {(c["problem"], c["method"]) for c in load_cells(bench)}
    for problem in problems:
        for method in methods:
            if METHODS[method].get("baseline") or (problem, method) in done:
                continue
            expensive = METHODS[method].get("tier") == "expensive"
            if expensive and problem not in expensive_problems:
                continue
            n = expensive_slices if expensive else slices
            files = select_images(Path(images), excluded, n)
            if shifted:
                files = stage_shifted(files, bench / "inputs" / "shifted-test", seed)
            click.echo(f"{problem} / {method}: {len(files)} image(s) ...")
            for r in run_cell(bench, problem, method, networks, files, device, seed, caps, tv_weights.get(problem)):
                click.echo(f"  {r['method']}: PSNR {_ms(r['psnr'], '.2f')} dB, "
                           f"{r['seconds_per_image']['mean']:.1f} s/image")
    click.echo("\n" + write_report(bench, meta))
    click.echo(f"\n{bench / 'quality.md'}")


if __name__ == "__main__":
    main()
