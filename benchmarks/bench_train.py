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
``net/step`` = seconds of the network's pure forward + backward on inputs of the same shape
(nothing else) / seconds of a full training step (patch sampling, loss, backward, Adam, EMA
update, as ``training_loop`` does them); target >= 0.9.

Throughput only: ``--skip-whole`` drops the (expensive) whole-image configuration (no ratio),
``--patch-sizes`` picks patch sizes, ``--patches`` overrides the patches per step, and
``--precision fp32,bf16`` (a comma list) runs every configuration once per precision (the loss
under ``torch.autocast``, as in ``train.py --precision``). With ``--repeats R`` the
(configuration, precision) runs go round-robin R times (A, B, A, B, ...: a shared machine's
drift hits all alike) and the median seconds per step is reported; ``vs first`` = patches/s
relative to the first precision of the same configuration.

    python benchmarks/bench_train.py --arch small --steps 3 --device cpu
    python benchmarks/bench_train.py --arch ddpmpp --patch-sizes 64 --patches 4 --skip-whole \
        --precision fp32,bf16 --steps 2 --repeats 2 --threads 1
"""

from __future__ import annotations

import copy
import json
import resource
import statistics
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
    from training.patch_loss import WHOLE, PatchEDMLoss, patch_shape
    from training.training_loop import _update_ema

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

    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["precision"]]

    ema = copy.deepcopy(net).eval().requires_grad_(False)
    nimg = 0

    def step():  # what training_loop does per step: sample patches, loss, backward, Adam, EMA
        nonlocal nimg
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net, images, psize, gen)
        loss.float().mean().backward()
        opt.step()
        nimg += spec["patches"]
        _update_ema(ema, net, nimg, spec["patches"], 0.5, 0.05)

    # The network alone on inputs of the same shape: forward + backward, nothing else.
    h, w = patch_shape(psize, (res, res), pad)
    x_in = torch.randn(spec["patches"], 1, h, w, device=device)
    sigma_in = torch.rand(spec["patches"], device=device) + 0.1
    pos_in = None if whole else torch.rand(spec["patches"], 2, h, w, device=device) * 2 - 1

    def pure():
        net.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x_in, sigma_in, pos_in)
        out.float().square().mean().backward()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    def seconds_per_call(fn) -> float:
        fn()  # warm-up (allocator, Adam state); counted in memory, not in time
        t0 = time.perf_counter()
        for _ in range(spec["steps"]):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) / spec["steps"]

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sec = seconds_per_call(step)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss1 - rss0
    pure_sec = seconds_per_call(pure)
    return dict(sec_per_step=sec, patches_per_s=spec["patches"] / sec, pure_sec_per_step=pure_sec, train_mem_mb=mem,
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
@click.option("--patch-sizes", default="16,32,64", help="Comma list of patch sizes.")
@click.option("--patches", type=click.IntRange(min=1), default=None,
              help="Patches per step for every patch size (default: batch x the paper's batch_mul).")
@click.option("--skip-whole", is_flag=True, help="No whole-image configuration (throughput only; no ratio).")
@click.option("--precision", default="fp32", help="Comma list of fp32, bf16, fp16 (autocast of the loss).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, help="Round-robin repeats; median reported.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON output file [default: bench_train.json in a new out/NNNNN-bench_train/]")
@click.option("--worker", default=None, hidden=True, help="Internal: JSON spec of one configuration.")
def main(arch, steps, batch, whole_batch, resolution, pad, device, threads, patch_sizes, patches, skip_whole,
         precision, repeats, out, worker):
    """Patches/s and peak memory per patch size vs whole-image training."""
    if worker is not None:
        print(json.dumps(_measure(json.loads(worker))))
        return
    if device is None:
        from torch_utils.device import default_device
        device = default_device()
    from training.patch_loss import WHOLE, batch_multipliers

    precisions = [p.strip() for p in precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in ("fp32", "bf16", "fp16")]
    if bad or not precisions:
        raise click.BadParameter(f"{precision!r}: expected a comma list of fp32, bf16, fp16", param_hint="--precision")
    if "fp16" in precisions and device != "cuda":
        raise click.BadParameter("fp16 needs a CUDA device; use bf16 on CPU", param_hint="--precision")
    sizes = [int(p) for p in patch_sizes.split(",") if p.strip()]
    mul = batch_multipliers(sizes)
    whole_batch = whole_batch or batch * mul[max(sizes)]
    configs = [(f"patch-{p}", p, patches or batch * mul[p]) for p in sizes]
    if not skip_whole:
        configs.append(("whole", WHOLE, whole_batch))
    runs = [(c, prec) for c in configs for prec in precisions]
    secs: dict[tuple, list[float]] = {}
    pures: dict[tuple, list[float]] = {}
    results: dict[tuple, dict] = {}
    for r in range(repeats):
        for (name, psize, count), prec in runs:
            spec = dict(arch=arch, steps=steps, psize=psize, patches=count, resolution=resolution, pad=pad,
                        device=device, threads=threads, precision=prec)
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                  text=True, cwd=REPO)
            if proc.returncode:
                raise click.ClickException(f"{name} {prec} failed: {proc.stderr.strip().splitlines()[-1]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            secs.setdefault((name, prec), []).append(res["sec_per_step"])
            pures.setdefault((name, prec), []).append(res["pure_sec_per_step"])
            results[(name, prec)] = res
            click.echo(f"repeat {r + 1} {name} {prec}: {res['sec_per_step']:.3f} s/step", err=True)
    rows = []
    for (name, psize, count), prec in runs:
        res = dict(results[(name, prec)])
        res["sec_per_step"] = statistics.median(secs[(name, prec)])
        res["patches_per_s"] = count / res["sec_per_step"]
        res["pure_sec_per_step"] = statistics.median(pures[(name, prec)])
        res["efficiency"] = res["pure_sec_per_step"] / res["sec_per_step"]  # target >= 0.9
        rows.append(dict(config=name, patch=str(psize), precision=prec, patches_per_step=count, batch_images=batch,
                         sec_per_step_all=secs[(name, prec)], **res))
    whole_rows = [r for r in rows if r["config"] == "whole"]
    for row in rows:
        first = next(r for r in rows if r["config"] == row["config"])
        row["speed_vs_first"] = row["patches_per_s"] / first["patches_per_s"]
        ref = next((w["train_mem_mb"] for w in whole_rows if w["precision"] == row["precision"]), None)
        row["mem_ratio_vs_whole"] = row["train_mem_mb"] / ref if ref else None
    head = (f"{'config':<10}{'prec':>5}{'patches/step':>13}{'patches/s':>11}{'s/step':>9}{'vs first':>9}"
            f"{'train MB':>10}{'peak MB':>9}{'ratio':>7}{'net/step':>9}")
    lines = [f"arch={arch} device={device} image={resolution} pad={pad} batch={batch} steps={steps} "
             f"threads={threads} repeats={repeats} (interleaved; median) params={rows[0]['params_m']:.2f}M", head]
    for r in rows:
        ratio = "-" if r["mem_ratio_vs_whole"] is None else f"{r['mem_ratio_vs_whole']:.3f}"
        lines.append(f"{r['config']:<10}{r['precision']:>5}{r['patches_per_step']:>13}{r['patches_per_s']:>11.2f}"
                     f"{r['sec_per_step']:>9.3f}{r['speed_vs_first']:>9.2f}{r['train_mem_mb']:>10.0f}"
                     f"{r['peak_total_mb']:>9.0f}{ratio:>7}{r['efficiency']:>9.2f}")
    ok = None
    if whole_rows:
        ok = all(r["mem_ratio_vs_whole"] <= 0.25 for r in rows if r["config"] != "whole")
        lines.append(f"target (patch memory <= 1/4 of whole at the paper's batch settings): "
                     f"{'met' if ok else 'NOT met'}")
    click.echo("\n".join(lines))
    from torch_utils import misc
    out = misc.result_file(out, "bench_train")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(arch=arch, device=device, resolution=resolution, pad=pad, batch=batch,
                                   steps=steps, threads=threads, precisions=precisions, repeats=repeats,
                                   rows=rows, target_met=ok), indent=2) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
