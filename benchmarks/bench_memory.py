"""Peak memory of one no-grad whole-image denoiser call: patch prior vs whole-image prior vs size.

    python benchmarks/bench_memory.py --arch ddpmpp --sizes 128,256,512 --batch 5 --threads 1

Each (prior, size) runs in a **fresh subprocess**: build the network (``--arch ddpmpp``: the
paper's 54 M-parameter DDPM++, img_resolution 384, 1 channel, random weights), make a noisy
S x S image, record the process' peak resident set (CPU: ``ru_maxrss``; CUDA:
``max_memory_allocated``) before and after one call under ``torch.inference_mode``.

- ``patch``: ``PatchPrior`` with psize ``--psize`` (56) and the pad that makes that psize tile
  the size (P = S//psize + 1 patches per axis, pad = P*psize - S: 128 -> 40, 256 -> 24,
  512 -> 48), ``--batch`` patches per network call (the paper size: 25 patches, chunks of 5);
- ``whole``: ``WholeImagePrior`` (the whole image in one call, zero-padded to a multiple of 4).

``call MB`` = peak after - peak before (what the call itself adds: activations and
workspace); ``peak MB`` = the absolute peak (including torch, the network and the input).
``MB/Mpx`` = call MB per million image pixels: constant when the cost grows linearly with the
pixels. Before running a configuration, its need is estimated from the same prior's largest
measured smaller size (call MB scaled by the pixel ratio, times ``--safety``); it is skipped
when that estimate exceeds ``--max-gb`` (recorded as skipped, with the estimate).
Prints a table and writes JSON (``benchmarks/results/bench_memory.json`` or ``--out``).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def patch_pad(size: int, psize: int) -> int:
    """The pad with which psize tiles ``size``: P*psize - size, P = size//psize + 1."""
    return (size // psize + 1) * psize - size


def _peak_mb(device) -> float:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(spec: dict) -> dict:
    import torch

    from inverse.prior import PatchPrior, WholeImagePrior
    from training.networks import build_network

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    net = build_network(spec["arch"], img_resolution=384, image_channels=1).eval().requires_grad_(False).to(device)
    size = spec["size"]
    if spec["prior"] == "patch":
        prior = PatchPrior(net, pad=patch_pad(size, spec["psize"]), psize=spec["psize"], batch=spec["batch"],
                           precision=spec["precision"])
    else:
        prior = WholeImagePrior(net, precision=spec["precision"])
    gen = torch.Generator().manual_seed(0)
    x = (0.5 + 0.5 * torch.randn(1, 1, size, size, generator=gen)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = _peak_mb(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = prior(x, 0.5, gen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    sec = time.perf_counter() - t0
    after = _peak_mb(device)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    return dict(before_mb=before, peak_mb=after, call_mb=after - before, seconds=sec, calls=prior.calls,
                pixels=size * size)


def estimate_mb(rows: list[dict], prior: str, size: int, safety: float) -> float | None:
    """Call MB of ``prior`` at ``size`` from its largest measured smaller size (linear in pixels)."""
    done = [r for r in rows if r["prior"] == prior and "call_mb" in r and r["size"] < size]
    if not done:
        return None
    r = max(done, key=lambda r: r["size"])
    return r["before_mb"] + r["call_mb"] * (size / r["size"]) ** 2 * safety


def format_table(rows: list[dict]) -> str:
    lines = [f"{'prior':<7}{'size':>6}{'calls':>6}{'seconds':>9}{'call MB':>10}{'peak MB':>10}{'MB/Mpx':>9}"]
    for r in rows:
        if "call_mb" not in r:
            lines.append(f"{r['prior']:<7}{r['size']:>6}  {r.get('skipped') or r.get('error')}")
            continue
        lines.append(f"{r['prior']:<7}{r['size']:>6}{r['calls']:>6}{r['seconds']:>9.1f}{r['call_mb']:>10.0f}"
                     f"{r['peak_mb']:>10.0f}{r['call_mb'] / (r['pixels'] / 1e6):>9.0f}")
    return "\n".join(lines)


@click.command(context_settings=dict(show_default=True))
@click.option("--arch", default="ddpmpp", type=click.Choice(["ddpmpp", "small", "tiny"]), help="Random network size")
@click.option("--sizes", default="128,256,512", help="Comma list of image sides, pixels")
@click.option("--priors", default="patch,whole", help="Comma list of patch, whole")
@click.option("--psize", default=56, type=int, help="Patch side of the patch prior")
@click.option("--batch", default=5, type=int, help="Patch prior: max patches per network call")
@click.option("--precision", default="fp32", type=click.Choice(["fp32", "bf16", "fp16"]))
@click.option("--max-gb", default=12.0, type=float, help="Skip a configuration estimated to need more")
@click.option("--safety", default=1.5, type=float, help="Factor on the linear estimate")
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--threads", default=1, type=click.IntRange(min=1), help="torch threads")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON output file [default: bench_memory.json in a new out/NNNNN-bench_memory/]")
@click.option("--worker", "worker_spec", default=None, hidden=True)
def main(worker_spec, sizes, priors, out, max_gb, safety, **opts):
    """Peak memory and time of one no-grad denoiser call per prior and image size; table + JSON."""
    if worker_spec:
        print(json.dumps(worker(json.loads(worker_spec))))
        return
    from torch_utils.device import default_device
    opts["device"] = opts["device"] or default_device()
    sizes = sorted(int(s) for s in sizes.split(","))
    names = [p.strip() for p in priors.split(",") if p.strip()]
    if any(p not in ("patch", "whole") for p in names):
        raise click.BadParameter(f"{priors!r}: expected a comma list of patch, whole", param_hint="--priors")
    rows: list[dict] = []
    for prior in names:
        for size in sizes:
            row = dict(prior=prior, size=size)
            if prior == "patch":
                row.update(pad=patch_pad(size, opts["psize"]), psize=opts["psize"], batch=opts["batch"])
            est = estimate_mb(rows, prior, size, safety)
            if est is not None and est > max_gb * 1024:
                row.update(skipped=f"skipped: estimated {est / 1024:.1f} GB > --max-gb {max_gb}", estimate_mb=est)
            else:
                spec = dict(opts, prior=prior, size=size)
                proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                      text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
                if proc.returncode:
                    row.update(error=(proc.stderr.strip().splitlines() or ["?"])[-1])
                else:
                    row.update(json.loads(proc.stdout.strip().splitlines()[-1]), estimate_mb=est)
            rows.append(row)
            click.echo(format_table([row]).splitlines()[-1], err=True)
    click.echo(f"arch {opts['arch']}, device {opts['device']}, threads {opts['threads']}, precision "
               f"{opts['precision']}, one no-grad call; patch prior psize {opts['psize']}, batch {opts['batch']}")
    click.echo(format_table(rows))
    from torch_utils import misc
    out = misc.result_file(out, "bench_memory")
    from torch_utils.misc import atomic_write_json
    atomic_write_json(out, dict(config=dict(opts, sizes=sizes, priors=names, max_gb=max_gb, safety=safety),
                                rows=rows), overwrite=True)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
