"""Plot a training run's loss curve (and throughput) from its ``stats.jsonl``.

    python benchmarks/plot_training.py runs/default/00000-ct_head-small/stats.jsonl \\
        --out checkpoints/ct_head_small_loss.png

Ticks repeated after a resume (a killed run logs the ticks since its last state twice) are
dropped: for each kimg value the last line wins.
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


@click.command()
@click.argument("stats", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--smooth", default=10, type=click.IntRange(min=1), help="Moving-average window, ticks.")
def main(stats: Path, out: Path, smooth: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = read_stats(stats)
    kimg = np.array([r["kimg"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    kernel = np.ones(min(smooth, len(loss))) / min(smooth, len(loss))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(kimg, loss, lw=0.6, alpha=0.4, label="per tick")
    ax.plot(kimg[len(kernel) - 1:], np.convolve(loss, kernel, mode="valid"), lw=1.5,
            label=f"mean of {len(kernel)} ticks")
    ax.set_xlabel("training patches (thousands)")
    ax.set_ylabel("EDM loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{stats.parent.name}: {len(rows)} ticks, final loss {loss[-10:].mean():.4f}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
