"""Seconds per whole-image denoiser call, interleaved across precision / layout / compile variants.

    python benchmarks/bench_speed.py --arch ddpmpp --variants fp32,bf16,fp32+cl,bf16+cl --repeats 2 --threads 1
    python benchmarks/bench_speed.py --arch small --variants fp32,fp32+nograd,bf16,fp32+compile --repeats 5

One process, one randomly initialised network (``--arch ddpmpp``: the paper's 54 M-parameter
DDPM++, img_resolution 384, 1 channel), one 256 x 256 Shepp-Logan phantom plus noise of std
``--sigma``, ``PatchPrior`` pad 24 / psize 56 (25 patches in one network call, or chunks of
``--batch``). A variant is a precision (``fp32``, ``bf16``, ``fp16``) with optional ``+cl``
(channels-last network and inputs), ``+compile`` (torch.compile, warmed up before timing) and
``+nograd`` (``torch.no_grad`` instead of the default ``torch.inference_mode``); each variant
has its own copy of the same weights. A random network's output convolution is zero (EDM
initialisation), so its output is exactly c_skip * x and ``max |diff|`` is ~0 whatever the
precision; pass ``--network`` (a trained checkpoint) to see the precision's effect. After one untimed warm-up call per variant, the variants
are timed round-robin (A, B, C, A, B, C, ...) ``--repeats`` times with the same grid offset
and the median is reported, so slow drifts of a shared machine hit all variants alike.
``speedup`` = median of the first variant / median of this one; ``max |diff|`` = largest
absolute difference of this variant's output from the first variant's (images in [0, 1]).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAGS = ("cl", "compile", "nograd")


def parse_variant(spec: str) -> dict:
    """'bf16+cl' -> dict(name='bf16+cl', precision='bf16', cl=True, compile=False, nograd=False)."""
    from inverse.prior import PRECISIONS
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
    from inverse.prior import PatchPrior
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
    x = phantom(opts["size"]).to(device)
    x = x + opts["sigma"] * torch.randn(x.shape, generator=gen).to(device)
    priors = [PatchPrior(copy.deepcopy(net), pad=opts["pad"], psize=opts["psize"], batch=opts["batch"],
                         precision=v["precision"], channels_last=v["cl"], compile=v["compile"]) for v in variants]
    offset = (opts["pad"] // 2, opts["pad"] // 3)

    def call(v, prior):
        ctx = torch.no_grad() if v["nograd"] else torch.inference_mode()
        with ctx:
            _sync(device)
            t0 = time.perf_counter()
            out = prior(x, opts["sigma"], offset=offset)
            _sync(device)
        return out, time.perf_counter() - t0

    warm = []
    for v, prior in zip(variants, priors):
        out, sec = call(v, prior)
        warm.append(sec)
        click.echo(f"warm-up {v['name']}: {sec:.2f} s", err=True)
        v["out"] = out.clone()
    times: list[list[float]] = [[] for _ in variants]
    for r in range(opts["repeats"]):
        for k, (v, prior) in enumerate(zip(variants, priors)):
            _, sec = call(v, prior)
            times[k].append(sec)
            click.echo(f"repeat {r + 1} {v['name']}: {sec:.2f} s", err=True)
    ref_out = variants[0]["out"]
    ref = statistics.median(times[0])
    rows = []
    for v, prior, t, w in zip(variants, priors, times, warm):
        med = statistics.median(t)
        rows.append(dict(variant=v["name"], precision=v["precision"], channels_last=v["cl"], compile=v["compile"],
                         grad_mode="no_grad" if v["nograd"] else "inference_mode", seconds=t, median_s=med,
                         warmup_s=w, speedup=ref / med,
                         max_abs_diff=float((v["out"] - ref_out).abs().max()),
                         output_dtype=str(v["out"].dtype).replace("torch.", ""),
                         compile_failure=getattr(prior.forward, "failure", None)))
    return dict(config=dict(opts, params=params, patches_per_call=25 if opts["batch"] is None else opts["batch"]),
                rows=rows)


def format_table(result: dict) -> str:
    c = result["config"]
    lines = [f"{'network ' + c['network'] if c['network'] else 'arch ' + c['arch']} ({c['params'] / 1e6:.1f} M params), {c['size']}x{c['size']}, pad {c['pad']} psize "
             f"{c['psize']}, device {c['device']}, threads {c['threads'] or 'default'}, repeats {c['repeats']} "
             "(interleaved; median)",
             f"{'variant':<18}{'median s/call':>14}{'speedup':>9}{'max |diff|':>12}{'warm-up s':>11}  all s"]
    for r in result["rows"]:
        fail = f"  (compile failed: {r['compile_failure']})" if r["compile_failure"] else ""
        lines.append(f"{r['variant']:<18}{r['median_s']:>14.3f}{r['speedup']:>9.2f}{r['max_abs_diff']:>12.2e}"
                     f"{r['warmup_s']:>11.2f}  {', '.join(f'{s:.2f}' for s in r['seconds'])}{fail}")
    return "\n".join(lines)


@click.command(context_settings=dict(show_default=True))
@click.option("--arch", default="ddpmpp", type=click.Choice(["ddpmpp", "small", "tiny"]), help="Random network size")
@click.option("--network", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A trained checkpoint instead of a random --arch (then max |diff| means something)")
@click.option("--variants", default="fp32,bf16", help="Comma list of PRECISION[+cl][+compile][+nograd]; the first is the reference")
@click.option("--repeats", default=3, type=click.IntRange(min=1), help="Timed calls per variant (interleaved)")
@click.option("--size", default=256, type=int, help="Image side, pixels")
@click.option("--pad", default=24, type=int)
@click.option("--psize", default=56, type=int)
@click.option("--batch", default=None, type=int, help="Max patches per network call [default: all]")
@click.option("--sigma", default=0.5, type=float, help="Noise level of the input and of the call")
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--threads", default=0, type=int, help="torch threads (0: torch default)")
@click.option("--out", default=str(ROOT / "benchmarks" / "results" / "bench_speed.json"), type=click.Path())
def main(out, **opts):
    """Median seconds per denoiser call for each variant, timed interleaved; table + JSON."""
    for v in opts["variants"].split(","):
        parse_variant(v)
    opts["device"] = opts["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    with contextlib.redirect_stdout(sys.stderr):
        result = run(opts)
    click.echo(format_table(result))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    from torch_utils.misc import atomic_write_json
    atomic_write_json(out, result, overwrite=True)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
