"""The paper's ablations at CPU scale: patch size of the stitched prior, position channels, data
efficiency (10 vs all training slices, patch vs whole-image), all on 20-view parallel-beam CT.

    python benchmarks/bench_ablation.py --threads 1 \\
        --psizes 16:16,32:32,56:24,96:32 \\
        --model "patch, 89 slices=runs/default/00000-ct_head-small/network-snapshot-001295.safetensors" \\
        --model "whole, 89 slices=runs/ablation/00001-whole/network-snapshot-000400.safetensors@whole" ...

Every row reconstructs the same held-out test slices from the same
measurements with the default solver of ``bench_quality.py`` (DiffPIR, 20 levels; ``--method`` to
change it) through ``inverse.reconstruct.run``. ``--psizes`` (``PSIZE:PAD`` pairs, one row each)
sweeps the patch size of the stitched prior for ``--network``; each ``--model
"LABEL=PATH[@whole]"`` adds one row for another network (``@whole``: the whole-image prior),
at the paper's psize 56 / pad 24. The training record of each network (steps, patches or
images seen, training images, position channels) is read from its snapshot's JSON sidecar
or the run's ``config.json`` where present.

Writes ``ablation.json`` and ``ablation.md`` into a new ``OUTDIR/NNNNN-ablation/``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import click
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import bench_quality as bq  # noqa: E402

from torch_utils import misc  # noqa: E402
from torch_utils.device import default_device  # noqa: E402

PROBLEM = "ct_parbeam_20"


def parse_psizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            psize, pad = (int(v) for v in part.split(":"))
        except ValueError:
            raise click.BadParameter(f"{part!r}: expected PSIZE:PAD, e.g. 56:24", param_hint="'--psizes'") from None
        out.append((psize, pad))
    return out


def parse_model(text: str) -> tuple[str, str, str]:
    label, sep, rest = text.partition("=")
    if not sep or not label.strip() or not rest.strip():
        raise click.BadParameter(f"{text!r}: expected LABEL=PATH[@whole]", param_hint="'--model'")
    path, _, prior = rest.strip().partition("@")
    prior = prior or "patch"
    if prior not in ("patch", "whole"):
        raise click.BadParameter(f"{text!r}: prior must be 'patch' or 'whole', got {prior!r}", param_hint="'--model'")
    if not Path(path).is_file():
        raise click.BadParameter(f"{path}: no such checkpoint", param_hint="'--model'")
    return label.strip(), path, prior


def training_record(path: str) -> dict:
    """Steps, kimg, training images and position channels of a checkpoint, where recorded."""
    rec: dict = {}
    snap = Path(path)
    m = re.search(r"network-snapshot-(\d+)", snap.name)
    if m:
        rec["step"] = int(m.group(1))
    sidecar = snap.with_suffix(".json")
    if sidecar.exists():
        meta = json.loads(sidecar.read_text())
        extra = meta.get("extra") or {}
        for key in ("kimg", "step", "cur_nimg"):
            if key in extra:
                rec[key] = extra[key]
        kwargs = meta.get("init_kwargs") or meta.get("kwargs") or {}
        if "img_channels" in kwargs and "out_channels" in kwargs:
            rec["position_channels"] = kwargs["img_channels"] - kwargs["out_channels"] > 0
    config = snap.parent / "config.json"
    if config.exists():
        c = json.loads(config.read_text())
        rec.update(data=c.get("data"), max_images=c.get("max_images"), patch_sizes=c.get("patch_sizes"),
                   positional=c.get("positional", c.get("patch_sizes") != ["whole"]))
        stats = snap.parent / "stats.jsonl"
        if stats.exists() and "step" in rec:  # wall time to this step: sum of the ticks up to it
            ticks = {}
            for line in stats.read_text().splitlines():
                s = json.loads(line)
                ticks[s["tick"]] = s  # a resumed run repeats ticks: keep the last
            done = [s for s in ticks.values() if s["step"] <= rec["step"]]
            if done:
                rec["train_seconds"] = sum(s["sec_per_tick"] for s in done)
                rec["kimg"] = max(s["kimg"] for s in done)
    return rec


def run_row(bench: Path, label: str, network: str, prior: str, psize: int, pad: int, files, device, seed,
            method: str, steps: int | None = None) -> dict:
    from inverse.reconstruct import run
    inputs = bq.stage_images(files, bench / "inputs")
    cfg = bq.cell_config(PROBLEM, method, dict(patch=network, whole=network), inputs, bench / "runs", device, seed,
                         dict(pad=pad, psize=psize, steps=steps))
    cfg = cfg.replace(prior=prior, baselines=[], network=network)
    t0 = time.perf_counter()
    summary = run(cfg)
    s = summary["methods"]["padis"]
    return dict(label=label, network=network, prior=prior, psize=psize if prior == "patch" else None,
                pad=pad if prior == "patch" else None, n_images=summary["n_images"], psnr=s["psnr"],
                ssim=s["ssim"], seconds_per_image=s["seconds_per_image"],
                calls_per_image=summary["denoiser_calls_per_image"], run_dir=summary["run_dir"],
                wall_seconds=time.perf_counter() - t0, training=training_record(network))


def ablation_table(rows: list[dict]) -> str:
    lines = ["| row | prior | psize / pad | training | n | PSNR [dB] | SSIM | s/image |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["training"]
        parts = []
        if t.get("step") is not None:
            parts.append(f"step {t['step']}")
        if t.get("kimg") is not None:
            parts.append(f"{t['kimg']:.1f} k{'img' if t.get('patch_sizes') == ['whole'] else ' patches'}")
        if t.get("train_seconds") is not None:
            parts.append(f"{t['train_seconds'] / 60:.0f} min")
        geo = "-" if r["psize"] is None else f"{r['psize']} / {r['pad']}"
        lines.append(f"| {r['label']} | {r['prior']} | {geo} | {', '.join(parts) or '-'} | {r['n_images']} | "
                     f"{bq._ms(r['psnr'], '.2f')} | {bq._ms(r['ssim'], '.4f')} | "
                     f"{r['seconds_per_image']['mean']:.1f} |")
    return "\n".join(lines)


@click.command()
@click.option("--network", default=str(REPO / "checkpoints/ct_head_small.safetensors"), show_default=True,
              type=click.Path(exists=True, dir_okay=False), help="Network of the --psizes sweep.")
@click.option("--psizes", default="16:16,32:32,56:24", show_default=True,
              help="PSIZE:PAD pairs of the patch-size sweep ('' = none).")
@click.option("--model", "models", multiple=True, help="LABEL=PATH[@whole]: one more row (psize 56, pad 24).")
@click.option("--images", default=str(REPO / "datasets/ct_head/test"), show_default=True,
              type=click.Path(exists=True, file_okay=False))
@click.option("--exclude", default="", show_default=True,
              help="Comma list of slices to skip (the tuning slices live apart, in datasets/ct_head/tune).")
@click.option("--slices", default=None, type=click.IntRange(min=1), help="Slices per row [default: all].")
@click.option("--method", default=bq.DEFAULT_METHOD, show_default=True,
              type=click.Choice([m for m, s in bq.METHODS.items() if not s.get("baseline")]))
@click.option("--outdir", default=str(REPO / "benchmarks/results/ablation"), show_default=True,
              type=click.Path(file_okay=False))
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--threads", default=0, type=click.IntRange(min=0), help="torch CPU threads (0: default).")
@click.option("--seed", default=0, type=int, show_default=True)
@click.option("--smoke", is_flag=True, help="2 levels only (tests).")
def main(network, psizes, models, images, exclude, slices, method, outdir, device, threads, seed, smoke):
    """Run the ablations (see the module docstring)."""
    if threads:
        torch.set_num_threads(threads)
    sweep = parse_psizes(psizes)
    extra = [parse_model(m) for m in models]
    if not sweep and not extra:
        raise click.UsageError("nothing to run: give --psizes and/or --model")
    device = device or default_device()
    files = bq.select_images(Path(images), [e.strip() for e in exclude.split(",") if e.strip()], slices)
    bench = misc.new_run_dir(outdir, "ablation")
    click.echo(f"ablation directory {bench}; {len(files)} image(s)")
    jobs = [(f"psize {p}", network, "patch", p, pad) for p, pad in sweep]
    jobs += [(label, path, prior, bq.PAPER["psize"], bq.PAPER["pad"]) for label, path, prior in extra]
    rows = []
    for label, path, prior, p, pad in jobs:
        rows.append(run_row(bench, label, path, prior, p, pad, files, device, seed, method,
                            steps=2 if smoke else None))
        r = rows[-1]
        click.echo(f"{label}: PSNR {bq._ms(r['psnr'], '.2f')} dB, {r['seconds_per_image']['mean']:.1f} s/image")
        table = ablation_table(rows)
        misc.atomic_write_json(bench / "ablation.json",
                               dict(meta=dict(problem=PROBLEM, method=method, images=images, device=device,
                                              threads=torch.get_num_threads(), seed=seed, smoke=smoke,
                                              command=" ".join(sys.argv), machine=bq.machine()), rows=rows),
                               overwrite=True)
        misc.atomic_write_text(bench / "ablation.md", table + "\n", overwrite=True)
    click.echo("\n" + table)
    click.echo(f"\n{bench / 'ablation.md'}")


if __name__ == "__main__":
    main()
