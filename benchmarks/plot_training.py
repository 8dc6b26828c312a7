"""Plot a training run's loss curve from its ``stats.jsonl``, or the curve of several stages.

    python benchmarks/plot_training.py runs/default/00000-ct_head-small/stats.jsonl \\
        --out checkpoints/ct_head_small_loss.png

Ticks repeated after a resume (a killed run logs the ticks since its last state twice) are
dropped: for each kimg value the last line wins. With several files (stages of one prior, each
started with ``--transfer`` from the one before) the patches count on: a stage's kimg is offset
by the last kimg of the stages before it, and a dotted line marks where each stage starts.
``--mark KIMG`` draws a line at a cumulative kimg (e.g. the snapshot that was shipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def read_stats(path: Path) -> list[dict]:
    by_kimg: dict[float, dict] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        by_kimg[row["kimg"]] = row
    if not by_kimg:
        raise click.ClickException(f"{path}: no stats lines")
    return [by_kimg[k] for k in sorted(by_kimg)]


def join_stages(paths: list[Path]) -> tuple[list[float], list[float], list[float]]:
    """(cumulative kimg, loss, kimg where each stage after the first starts) over the stages."""
    kimg, loss, starts, offset = [], [], [], 0.0
    for i, path in enumerate(paths):
        rows = read_stats(path)
        if i:
            starts.append(offset)
        kimg += [offset + r["kimg"] for r in rows]
        loss += [r["loss"] for r in rows]
        offset = kimg[-1]
    return kimg, loss, starts


@click.command()
@click.argument("stats", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--smooth", default=10, type=click.IntRange(min=1), help="Moving-average window, ticks.")
@click.option("--mark", "marks", multiple=True, type=float, help="Cumulative kimg to mark (repeatable).")
def main(stats: tuple[Path, ...], out: Path, smooth: int, marks: tuple[float, ...]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kimg, loss, starts = (np.array(v) for v in join_stages(list(stats)))
    kernel = np.ones(min(smooth, len(loss))) / min(smooth, len(loss))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(kimg, loss, lw=0.6, alpha=0.4, label="per tick")
    ax.plot(kimg[len(kernel) - 1:], np.convolve(loss, kernel, mode="valid"), lw=1.5,
            label=f"mean of {len(kernel)} ticks")
    for k in starts:
        ax.axvline(k, color="0.4", ls=":", lw=1)
    for k in marks:
        ax.axvline(k, color="C3", ls="--", lw=1, label=f"{k:.0f} kimg")
    ax.set_xlabel("training patches (thousands)")
    ax.set_ylabel("EDM loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    name = stats[0].parent.name if len(stats) == 1 else f"{len(stats)} stages"
    ax.set_title(f"{name}: {len(loss)} ticks, {kimg[-1]:.0f} kimg, final loss {loss[-10:].mean():.4f}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
