"""Images per second against ``--images-per-batch K`` (several images' patches in one network call).

    python benchmarks/bench_batch.py --ks 1,2,4,8 --images 8 --steps 5
    python benchmarks/bench_batch.py --arch ddpmpp --ks 1,4,8 --images 8 --steps 3   # paper size

Each K runs ``inverse.reconstruct.run`` -- the code path of ``inverse_nodist.py
--images-per-batch K`` -- on the same ``--images`` held-out CT head slices (256 x 256, 20-view
parallel-beam CT, noise 0.5 %), ``dds`` with ``--steps`` noise levels, the patch prior at the
paper's grid (pad 24, psize 56: 25 patches per image, so K images make 25 K patches per call),
no baselines. Network: ``--network`` (default: the shipped prior), or ``--arch NAME`` for a
randomly initialised ``training.networks.ARCHS`` network (``ddpmpp``: the paper's 54 M
parameters), saved to a temporary checkpoint.

Reported per K: solve seconds (the sum of the run's per-image seconds: network, operator and
solver, not loading or writing), images/s, speed-up over K = 1, network calls per image, mean
PSNR (a check that batching changes the noise draws, not the quality) and the peak memory of the solve (CUDA: ``max_memory_allocated``; CPU: not measured, printed as
-). A warm-up run (one image) goes first so that start-up costs (CUDA context, cuDNN
autotuning, ASTRA set-up) are not charged to K = 1. Prints a table, writes JSON (``--out``).
What it measured: notes/speed.md (section 3); batching is meant for GPUs
(``benchmarks/gpu_check.sh`` runs this).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "benchmarks"))

import bench_quality as bq  # noqa: E402  (after the path inserts)

from inverse.cases import HELD_OUT, eval_slice_files, stage_images  # noqa: E402
from inverse.config import ReconConfig  # noqa: E402


def run_config(network: str, inputs: Path, outdir: Path, k: int, steps: int, device: str) -> ReconConfig:
    """``inverse.reconstruct.run`` config: the quality benchmark's 20-view CT dds cell with
    ``steps`` levels, K images per call and no baselines."""
    cfg = bq.cell_config("ct_parbeam_20", "dds", dict(patch=network), inputs, outdir, device, 0, {})
    return cfg.replace(steps=steps, images_per_batch=k, baselines=[])


def measure(cfg: ReconConfig, device: torch.device) -> dict:
    """Run once; solve seconds, calls per image and peak memory (CUDA) of the run."""
    from inverse.reconstruct import run
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    summary = run(cfg)
    n = summary["n_images"]
    seconds = summary["methods"]["padis"]["seconds_per_image"]["mean"] * n
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return dict(k=cfg.images_per_batch, images=n, solve_seconds=seconds, images_per_s=n / seconds,
                calls_per_image=summary["denoiser_calls_per_image"]["mean"],
                psnr=summary["methods"]["padis"]["psnr"]["mean"], peak_mib=peak)


def format_table(rows: list[dict]) -> str:
    base = rows[0]["images_per_s"] if rows and rows[0]["k"] == 1 else None
    lines = ["| K | images | solve s | images/s | speed-up vs K=1 | calls/image | PSNR dB | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        up = f"{r['images_per_s'] / base:.2f}" if base else "-"
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        lines.append(f"| {r['k']} | {r['images']} | {r['solve_seconds']:.2f} | {r['images_per_s']:.3f} | {up} | "
                     f"{r['calls_per_image']:.0f} | {r['psnr']:.2f} | {peak} |")
    return "\n".join(lines)


def _ks(text: str) -> list[int]:
    try:
        ks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated positive integers", param_hint="'--ks'")
    if not ks or min(ks) < 1:
        raise click.BadParameter(f"{text!r}: expected comma-separated positive integers", param_hint="'--ks'")
    return ks


@click.command(context_settings=dict(show_default=True))
@click.option("--network", default=str(REPO / "checkpoints" / "ct_head_small.safetensors"),
              type=click.Path(dir_okay=False), help="Checkpoint (ignored with --arch)")
@click.option("--arch", default=None, help="Random network of this training.networks.ARCHS size instead")
@click.option("--ks", "ks_text", default="1,2,4,8", help="Images per batch to compare")
@click.option("--images", "n_images", default=8, type=click.IntRange(min=1),
              help="Held-out slices reconstructed per K (tuning slice excluded)")
@click.option("--steps", default=5, type=click.IntRange(min=1), help="dds noise levels")
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--threads", default=0, type=int, help="torch CPU threads (0: torch default)")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON output file [default: bench_batch.json in a new out/NNNNN-bench_batch/]")
def main(network, arch, ks_text, n_images, steps, device, threads, out):
    from torch_utils.persistence import save_network
    from training.networks import build_network

    ks = _ks(ks_text)
    if threads:
        torch.set_num_threads(threads)
    from torch_utils.device import default_device
    device = torch.device(device or default_device())
    files = eval_slice_files()[:n_images]
    if len(files) < n_images:
        raise click.BadParameter(f"{n_images}: only {len(files)} held-out slices in {HELD_OUT}",
                                 param_hint="'--images'")
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        tmp = Path(tmp)
        if arch:
            network = str(tmp / f"random_{arch}.safetensors")
            save_network(build_network(arch, img_resolution=384, image_channels=1), network)
        inputs = stage_images(files, tmp / "inputs")
        warm = stage_images(files[:1], tmp / "warm")
        measure(run_config(network, warm, tmp / "runs", 1, 1, str(device)), device)
        rows = []
        for k in ks:
            row = measure(run_config(network, inputs, tmp / "runs", k, steps, str(device)), device)
            rows.append(row)
            click.echo(f"K={k}: {row['images_per_s']:.3f} images/s", err=True)
    meta = dict(device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda"
                else "cpu", threads=torch.get_num_threads(), network=arch or str(network), steps=steps,
                problem="ct_parbeam views=20", image="256x256", pad=24, psize=56)
    from torch_utils import misc
    out = misc.result_file(out, "bench_batch")
    Path(out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    click.echo(f"images/s vs --images-per-batch K ({meta['device_name']}, {meta['network']}, dds {steps} levels, "
               f"256x256, 25 patches per image)")
    click.echo(format_table(rows))
    click.echo(f"JSON: {out}")


if __name__ == "__main__":
    main()
