"""Seconds per whole-image denoiser call, interleaved across precision / layout / compile variants.

    python benchmarks/bench_speed.py --arch ddpmpp --variants fp32,bf16,fp32+cl,bf16+cl --repeats 2 --threads 1
    python benchmarks/bench_speed.py --arch small --variants fp32,fp32+nograd,bf16,fp32+compile --repeats 5
    python benchmarks/bench_speed.py --arch ddpmpp --variants fp32,bf16,fp16 --images 8 --repeats 5   # CUDA

One process, one randomly initialised network (``--arch ddpmpp``: the paper's 54 M-parameter
DDPM++, img_resolution 384, 1 channel), ``--images`` 256 x 256 Shepp-Logan phantoms plus noise of
std ``--sigma``, ``PatchPrior`` pad 24 / psize 56 (25 patches per image, all in one network call,
or chunks of ``--batch``; ``--images K`` is K x 25 patches per call, the batch sizes where reduced
precision and compile pay on a GPU). A variant is a precision (``fp32``, ``bf16``, ``fp16``) with optional ``+cl``
(channels-last network and inputs), ``+compile`` (torch.compile, warmed up before timing) and
``+nograd`` (``torch.no_grad`` instead of the default ``torch.inference_mode``); each variant
has its own copy of the same weights. A random network's output convolution is zero (EDM
initialisation), so its output is exactly c_skip * x and ``max |diff|`` is ~0 whatever the
precision; pass ``--network`` (a trained checkpoint) to see the precision's effect. After one untimed warm-up call per variant, the variants
are timed round-robin (A, B, C, A, B, C, ...) ``--repeats`` times with the same grid offset
and the median is reported, so slow drifts of a shared machine hit all variants alike.
``speedup`` = median of the first variant / median of this one; ``max |diff|`` = largest
absolute difference of this variant's output from the first variant's (images in [0, 1]).

Hardware use: the FLOPs of one call are counted once, by ``torch.utils.flop_counter.FlopCounterMode``
around the first variant's untimed warm-up (convolutions and matrix products, which are all but a
negligible part of the network's arithmetic; not counted when the first variant is compiled), and
each row reports ``GFLOP/s`` = FLOPs / median seconds. ``--gemm-peak`` (default on) times a square
matrix product of ``--gemm-size`` in each precision in the same process, after the rounds (the
best of 3): ``% GEMM`` is the row's GFLOP/s as a share of that practical ceiling of its precision
(notes/speed.md compares both with the CPU's theoretical peak).
Prints a table and writes JSON (``benchmarks/results/bench_speed.json`` or ``--out``).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAGS = ("cl", "compile", "nograd")


def parse_variant(spec: str) -> dict:
    """'bf16+cl' -> dict(name='bf16+cl', precision='bf16', cl=True, compile=False, nograd=False)."""
    from training.networks import PRECISIONS
    precision, *flags = spec.strip().split("+")
    if precision not in PRECISIONS or any(f not in FLAGS for f in flags):
        raise click.BadParameter(f"{spec!r}: expected PRECISION[+{'][+'.join(FLAGS)}] with PRECISION one of "
                                 f"{sorted(PRECISIONS)}", param_hint="--variants")
    return dict(name=spec.strip(), precision=precision, **{f: f in flags for f in FLAGS})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(opts: dict) -> dict:
    from benchmarks.bench_recon import phantom
    from inverse.prior import PatchPrior, check_grid
    from training.networks import build_network

    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    device = torch.device(opts["device"])
    variants = [parse_variant(v) for v in opts["variants"].split(",") if v.strip()]
    torch.manual_seed(0)
    if opts["network"]:
        from torch_utils.persistence import load_network
        net = load_network(opts["network"], device=device)
    else:
        net = build_network(opts["arch"], img_resolution=384, image_channels=1).eval().requires_grad_(False).to(device)
    params = sum(p.numel() for p in net.parameters())
    gen = torch.Generator().manual_seed(0)
    x = phantom(opts["size"]).to(device).expand(opts["images"], -1, -1, -1)
    x = x + opts["sigma"] * torch.randn(x.shape, generator=gen).to(device)
    priors = [PatchPrior(copy.deepcopy(net), pad=opts["pad"], psize=opts["psize"], batch=opts["batch"],
                         precision=v["precision"], channels_last=v["cl"], compile=v["compile"]) for v in variants]
    offset = (opts["pad"] // 2, opts["pad"] // 3)

    def call(v, prior, mode=None):
        ctx = torch.no_grad() if v["nograd"] else torch.inference_mode()
        with ctx, mode or contextlib.nullcontext():
            _sync(device)
            t0 = time.perf_counter()
            out = prior(x, opts["sigma"], offset=offset)
            _sync(device)
        return out, time.perf_counter() - t0

    counter = None if variants[0]["compile"] else FlopCounterMode(display=False)
    warm = []
    for k, (v, prior) in enumerate(zip(variants, priors)):
        out, sec = call(v, prior, counter if k == 0 else None)
        warm.append(sec)
        click.echo(f"warm-up {v['name']}: {sec:.2f} s", err=True)
        v["out"] = out.clone()
    times: list[list[float]] = [[] for _ in variants]
    for r in range(opts["repeats"]):
        for k, (v, prior) in enumerate(zip(variants, priors)):
            _, sec = call(v, prior)
            times[k].append(sec)
            click.echo(f"repeat {r + 1} {v['name']}: {sec:.2f} s", err=True)
    flops = counter.get_total_flops() if counter is not None else None
    peaks = {p: gemm_gflops(p, opts["gemm_size"], device) for p in {v["precision"] for v in variants}
             } if opts["gemm_peak"] else {}
    ref_out = variants[0]["out"]
    ref = statistics.median(times[0])
    rows = []
    for v, prior, t, w in zip(variants, priors, times, warm):
        med = statistics.median(t)
        gflops = flops / med / 1e9 if flops else None
        peak = peaks.get(v["precision"])
        rows.append(dict(variant=v["name"], precision=v["precision"], channels_last=v["cl"], compile=v["compile"],
                         grad_mode="no_grad" if v["nograd"] else "inference_mode", seconds=t, median_s=med,
                         warmup_s=w, speedup=ref / med, gflops=gflops, gemm_gflops=peak,
                         percent_of_gemm=100 * gflops / peak if gflops and peak else None,
                         max_abs_diff=float((v["out"] - ref_out).abs().max()),
                         output_dtype=str(v["out"].dtype).replace("torch.", ""),
                         compile_failure=getattr(prior.forward, "failure", None)))
    ph, pw = check_grid(opts["size"], opts["size"], opts["pad"], opts["psize"])
    patches = opts["images"] * ph * pw
    return dict(config=dict(opts, params=params, patches=patches, flops_per_call=flops,
                            patches_per_call=patches if opts["batch"] is None else min(opts["batch"], patches)),
                rows=rows)


GEMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def gemm_gflops(precision: str, n: int, device: torch.device, tries: int = 3) -> float:
    """GFLOP/s of the best of ``tries`` n x n matrix products in ``precision`` (2 n^3 FLOPs each)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, GEMM_DTYPES[precision]) for _ in range(2))
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(tries):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def format_table(result: dict) -> str:
    c = result["config"]
    flops = f"{c['flops_per_call'] / 1e9:.0f} GFLOP/call" if c["flops_per_call"] else "FLOPs not counted"
    lines = [f"{'network ' + c['network'] if c['network'] else 'arch ' + c['arch']} ({c['params'] / 1e6:.1f} M params), "
             f"{c['images']} x {c['size']}x{c['size']} ({c['patches']} patches, {flops}), pad {c['pad']} psize "
             f"{c['psize']}, device {c['device']}, threads {c['threads'] or 'default'}, repeats {c['repeats']} "
             "(interleaved; median)",
             f"{'variant':<18}{'median s/call':>14}{'speedup':>9}{'GFLOP/s':>9}{'% GEMM':>8}{'max |diff|':>12}"
             f"{'warm-up s':>11}  all s"]

    def num(value, fmt):
        return format(value, fmt) if value is not None else "-"
    for r in result["rows"]:
        fail = f"  (compile failed: {r['compile_failure']})" if r["compile_failure"] else ""
        lines.append(f"{r['variant']:<18}{r['median_s']:>14.3f}{r['speedup']:>9.2f}{num(r['gflops'], '>9.1f')}"
                     f"{num(r['percent_of_gemm'], '>8.1f')}{r['max_abs_diff']:>12.2e}"
                     f"{r['warmup_s']:>11.2f}  {', '.join(f'{s:.2f}' for s in r['seconds'])}{fail}")
    peaks = {r["precision"]: r["gemm_gflops"] for r in result["rows"] if r["gemm_gflops"]}
    if peaks:
        lines.append(f"GEMM {c['gemm_size']}^3 GFLOP/s (same process, best of 3): "
                     + ", ".join(f"{p} {g:.1f}" for p, g in sorted(peaks.items())))
    return "\n".join(lines)


@click.command(context_settings=dict(show_default=True))
@click.option("--arch", default="ddpmpp", type=click.Choice(["ddpmpp", "small", "tiny"]), help="Random network size")
@click.option("--network", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A trained checkpoint instead of a random --arch (then max |diff| means something)")
@click.option("--variants", default="fp32,bf16", help="Comma list of PRECISION[+cl][+compile][+nograd]; the first is the reference")
@click.option("--repeats", default=3, type=click.IntRange(min=1), help="Timed calls per variant (interleaved)")
@click.option("--size", default=256, type=int, help="Image side, pixels")
@click.option("--images", default=1, type=click.IntRange(min=1), help="Images per call (25 patches each at the default size)")
@click.option("--pad", default=24, type=int)
@click.option("--psize", default=56, type=int)
@click.option("--batch", default=None, type=int, help="Max patches per network call [default: all]")
@click.option("--sigma", default=0.5, type=float, help="Noise level of the input and of the call")
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--threads", default=0, type=int, help="torch threads (0: torch default)")
@click.option("--gemm-peak/--no-gemm-peak", default=True, help="Time a matrix product per precision as the ceiling")
@click.option("--gemm-size", default=4096, type=click.IntRange(min=16), help="Side of the --gemm-peak matrices")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON output file [default: bench_speed.json in a new out/NNNNN-bench_speed/]")
def main(out, **opts):
    """Median seconds per denoiser call for each variant, timed interleaved; table + JSON."""
    for v in opts["variants"].split(","):
        parse_variant(v)
    from torch_utils.device import default_device
    opts["device"] = opts["device"] or default_device()
    with contextlib.redirect_stdout(sys.stderr):
        result = run(opts)
    click.echo(format_table(result))
    from torch_utils import misc
    out = misc.result_file(out, "bench_speed")
    from torch_utils.misc import atomic_write_json
    atomic_write_json(out, result, overwrite=True)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
