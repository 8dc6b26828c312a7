"""Training throughput and peak memory: patch sizes 16/32/64 vs whole-image training.

Every configuration trains the same architecture with the real loss (``PatchEDMLoss``) and
Adam for ``--steps`` steps (after one warm-up step) in a **fresh subprocess**, so memory
peaks never mix:

- ``patch-P``: 256x256 images zero-padded by 64 (canvas 384), patches P x P with position
  channels, ``batch * batch_mul(P)`` patches per step (the paper's setting: ``--batch 1``
  with batch_mul 64/32/16 for 16/32/64, i.e. 16 patches of 64x64 per step);
- ``whole``: 256x256 images, no padding, no position channels, the same number of images per
  step as the largest patch size (``batch * batch_mul(64)``; ``--whole-batch`` overrides).

Memory: CUDA ``torch.cuda.max_memory_allocated`` during the steps; CPU the growth of the
process' peak resident set (``ru_maxrss``) over its value just before the warm-up step (the
torch import, data and network are not counted; activations, gradients and Adam state are),
plus the absolute peak.
``ratio`` = training memory / that of ``whole`` (target: <= 0.25 for the patch sizes).

    python benchmarks/bench_train.py --arch small --steps 3 --device cpu
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _measure(spec: dict) -> dict:
    """Run one configuration in this process; returns its numbers."""
    import torch

    from training.networks import build_network
    from training.patch_loss import WHOLE, PatchEDMLoss

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    psize = spec["psize"]
    whole = psize == WHOLE
    pad = 0 if whole else spec["pad"]
    res = spec["resolution"]
    net = build_network(spec["arch"], img_resolution=res + 2 * pad, image_channels=1,
                        positional=not whole).to(device).train()
    loss_fn = PatchEDMLoss(pad_width=pad)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(spec["patches"], 1, res, res, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net, images, psize, gen).mean().backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()  # warm-up (allocator, Adam state); counted in memory, not in time
    t0 = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    sec = (time.perf_counter() - t0) / spec["steps"]
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss1 - rss0
    return dict(sec_per_step=sec, patches_per_s=spec["patches"] / sec, train_mem_mb=mem,
                peak_total_mb=(mem if device.type == "cuda" else rss1),
                params_m=sum(p.numel() for p in net.parameters()) / 1e6)


@click.command()
@click.option("--arch", default="small", help="training.networks.ARCHS name (ddpmpp = paper size).")
@click.option("--steps", type=click.IntRange(min=1), default=3, help="Timed steps per configuration.")
@click.option("--batch", type=click.IntRange(min=1), default=1, help="Base batch (paper: 1).")
@click.option("--whole-batch", type=click.IntRange(min=1), default=None,
              help="Images per whole-image step (default: batch x batch_mul(64), as many as patch-64).")
@click.option("--resolution", type=int, default=256, help="Image side (pixels).")
@click.option("--pad", type=int, default=64, help="Zero padding per side for patch training.")
@click.option("--device", default=None, help="cpu | cuda (default: cuda if available).")
@click.option("--threads", type=click.IntRange(min=1), default=1, help="CPU threads per run.")
@click.option("--out", type=click.Path(dir_okay=False), default=str(REPO / "benchmarks/results/bench_train.json"))
@click.option("--worker", default=None, hidden=True, help="Internal: JSON spec of one configuration.")
def main(arch, steps, batch, whole_batch, resolution, pad, device, threads, out, worker):
    """Patches/s and peak memory per patch size vs whole-image training."""
    if worker is not None:
        print(json.dumps(_measure(json.loads(worker))))
        return
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from training.patch_loss import WHOLE, batch_multipliers

    mul = batch_multipliers([16, 32, 64])
    whole_batch = whole_batch or batch * mul[64]
    configs = [(f"patch-{p}", p, batch * mul[p]) for p in (16, 32, 64)] + [("whole", WHOLE, whole_batch)]
    rows = []
    for name, psize, patches in configs:
        spec = dict(arch=arch, steps=steps, psize=psize, patches=patches, resolution=resolution, pad=pad,
                    device=device, threads=threads)
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, cwd=REPO)
        if proc.returncode:
            raise click.ClickException(f"{name} failed: {proc.stderr.strip().splitlines()[-1]}")
        rows.append(dict(config=name, patch=str(psize), patches_per_step=patches, batch_images=batch,
                         **json.loads(proc.stdout.strip().splitlines()[-1])))
    ref = rows[-1]["train_mem_mb"]
    for row in rows:
        row["mem_ratio_vs_whole"] = row["train_mem_mb"] / ref if ref > 0 else float("nan")
    head = f"{'config':<10}{'patches/step':>13}{'patches/s':>11}{'s/step':>9}{'train MB':>10}{'peak MB':>9}{'ratio':>7}"
    lines = [f"arch={arch} device={device} image={resolution} pad={pad} batch={batch} steps={steps} "
             f"threads={threads} params={rows[0]['params_m']:.2f}M", head]
    for r in rows:
        lines.append(f"{r['config']:<10}{r['patches_per_step']:>13}{r['patches_per_s']:>11.1f}"
                     f"{r['sec_per_step']:>9.3f}{r['train_mem_mb']:>10.0f}{r['peak_total_mb']:>9.0f}"
                     f"{r['mem_ratio_vs_whole']:>7.3f}")
    ok = all(r["mem_ratio_vs_whole"] <= 0.25 for r in rows[:-1])
    lines.append(f"target (patch memory <= 1/4 of whole at the paper's batch settings): {'met' if ok else 'NOT met'}")
    click.echo("\n".join(lines))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(arch=arch, device=device, resolution=resolution, pad=pad, batch=batch,
                                   steps=steps, threads=threads, rows=rows, target_met=ok), indent=2) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
