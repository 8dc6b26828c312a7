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
under ``torch.autocast``, as in ``train.py --precision``).

``--variants`` (a comma list) instead runs every configuration once per *variant* of the same
training step, the base step being ``--precision`` (one value) on ``--threads`` threads:
``base`` (that step unchanged) or a ``+`` list of modifications, e.g. ``bf16+channels_last``:

- ``channels_last``: the network's weights and its inputs (noisy patches, position channels)
  in the channels-last memory format;
- ``compile``: the network through ``torch.compile`` (forward and backward); compiling happens
  in the untimed warm-up step, whose seconds are reported (``warm-up s``) but not counted in
  patches/s. If compiling fails the row says why and has no timings;
- ``fp32`` / ``bf16`` / ``fp16``: this autocast precision instead of the base one;
- ``threadsN``: N CPU threads instead of ``--threads``.

None of these is a ``train.py`` option (the measurement decides which become one).

Every run is a fresh subprocess with the same seeds (network initialisation, images, patch
draws), one untimed warm-up step, then ``--steps`` timed steps. With ``--repeats R`` the
(configuration, precision or variant) runs go round-robin R times (A, B, A, B, ...: a shared
machine's drift hits all alike) and the median seconds per step is reported. ``vs base`` =
patches/s relative to the ``base`` variant of the same configuration (without one, or with
``--precision`` alone: the first in the list), measured in the same invocation.

    python benchmarks/bench_train.py --arch small --steps 3 --device cpu
    python benchmarks/bench_train.py --arch ddpmpp --patch-sizes 64 --patches 4 --skip-whole \
        --precision fp32,bf16 --steps 2 --repeats 2 --threads 1
    python benchmarks/bench_train.py --arch small --patch-sizes 64 --skip-whole --threads 1 --repeats 3 \
        --variants base,channels_last,compile,bf16,threads2
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


PRECISION_NAMES = ("fp32", "bf16", "fp16")
VARIANT_HELP = "base, or a '+' list of channels_last, compile, fp32, bf16, fp16, threadsN (e.g. bf16+channels_last)"


def parse_variant(spec: str, precision: str, threads: int) -> dict:
    """One ``--variants`` entry as the modifications of the base step (``precision`` on
    ``threads`` threads): dict(name, precision, channels_last, compile, threads)."""
    name = spec.strip()
    v = dict(name=name, precision=precision, channels_last=False, compile=False, threads=threads)
    if name == "base":
        return v
    seen = set()
    for part in name.split("+"):
        kind = "threads" if part.startswith("threads") else "precision" if part in PRECISION_NAMES else part
        if kind in seen:
            raise click.BadParameter(f"{name!r} sets {kind} twice; expected {VARIANT_HELP}", param_hint="--variants")
        seen.add(kind)
        if part in ("channels_last", "compile"):
            v[part] = True
        elif part in PRECISION_NAMES:
            v["precision"] = part
        elif part.startswith("threads") and part[len("threads"):].isdigit() and int(part[len("threads"):]) >= 1:
            v["threads"] = int(part[len("threads"):])
        else:
            raise click.BadParameter(f"{name!r}: unknown part {part!r}; expected {VARIANT_HELP}",
                                     param_hint="--variants")
    return v


def _measure(spec: dict) -> dict:
    """Run one configuration and variant in this process; returns its numbers."""
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
    if spec["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    loss_fn = PatchEDMLoss(pad_width=pad)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(spec["patches"], 1, res, res, device=device)

    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["precision"]]

    ema = copy.deepcopy(net).eval().requires_grad_(False)
    nimg = 0
    network = torch.compile(net) if spec["compile"] else net

    def model(x, sigma, pos):  # the network as the loss calls it, inputs in the variant's layout
        if spec["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
            pos = None if pos is None else pos.contiguous(memory_format=torch.channels_last)
        return network(x, sigma, pos)

    def step():  # what training_loop does per step: sample patches, loss, backward, Adam, EMA
        nonlocal nimg
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model, images, psize, gen)
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
            out = model(x_in, sigma_in, pos_in)
        out.float().square().mean().backward()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)

    def seconds_per_call(fn) -> tuple[float, float]:
        """(seconds of the untimed warm-up call: allocator, Adam state, compiling; seconds per
        timed call). The warm-up is counted in memory, not in time."""
        t0 = time.perf_counter()
        fn()
        sync()
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(spec["steps"]):
            fn()
        sync()
        return warm, (time.perf_counter() - t0) / spec["steps"]

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if spec["compile"]:
        try:
            warm, sec = seconds_per_call(step)
        except Exception as exc:  # no C++ compiler, an unsupported op, ...: reported, not fatal
            lines = str(exc).strip().splitlines()
            return dict(compile_failure=f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300])
    else:
        warm, sec = seconds_per_call(step)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss1 - rss0
    _, pure_sec = seconds_per_call(pure)
    return dict(sec_per_step=sec, warmup_s=warm, patches_per_s=spec["patches"] / sec, pure_sec_per_step=pure_sec,
                train_mem_mb=mem, peak_total_mb=(mem if device.type == "cuda" else rss1),
                params_m=sum(p.numel() for p in net.parameters()) / 1e6, compile_failure=None)


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


@click.command()
@click.option("--arch", default="small", help="training.networks.ARCHS name (ddpmpp = paper size).")
@click.option("--steps", type=click.IntRange(min=1), default=3, help="Timed steps per configuration.")
@click.option("--batch", type=click.IntRange(min=1), default=1, help="Base batch (paper: 1).")
@click.option("--whole-batch", type=click.IntRange(min=1), default=None,
              help="Images per whole-image step (default: batch x batch_mul(64), as many as patch-64).")
@click.option("--resolution", type=int, default=256, help="Image side (pixels).")
@click.option("--pad", type=int, default=64, help="Zero padding per side for patch training.")
@click.option("--device", default=None, help="cpu | cuda (default: cuda if available).")
@click.option("--threads", type=click.IntRange(min=1), default=1, help="CPU threads per run (the base step's).")
@click.option("--patch-sizes", default="16,32,64", help="Comma list of patch sizes.")
@click.option("--patches", type=click.IntRange(min=1), default=None,
              help="Patches per step for every patch size (default: batch x the paper's batch_mul).")
@click.option("--skip-whole", is_flag=True, help="No whole-image configuration (throughput only; no ratio).")
@click.option("--precision", default="fp32", help="Comma list of fp32, bf16, fp16 (autocast of the loss); "
              "with --variants one value, the base step's.")
@click.option("--variants", default=None, help=f"Comma list of variants of the base step: {VARIANT_HELP}.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, help="Round-robin repeats; median reported.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON output file [default: bench_train.json in a new out/NNNNN-bench_train/]")
@click.option("--worker", default=None, hidden=True, help="Internal: JSON spec of one configuration.")
def main(arch, steps, batch, whole_batch, resolution, pad, device, threads, patch_sizes, patches, skip_whole,
         precision, variants, repeats, out, worker):
    """Patches/s and peak memory per patch size vs whole-image training, per precision or variant."""
    if worker is not None:
        print(json.dumps(_measure(json.loads(worker))))
        return
    if device is None:
        from torch_utils.device import default_device
        device = default_device()
    from training.patch_loss import WHOLE, batch_multipliers

    precisions = [p.strip() for p in precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISION_NAMES]
    if bad or not precisions:
        raise click.BadParameter(f"{precision!r}: expected a comma list of fp32, bf16, fp16", param_hint="--precision")
    if variants is None:
        steps_run = [dict(name=p, precision=p, channels_last=False, compile=False, threads=threads) for p in precisions]
    else:
        if len(precisions) != 1:
            raise click.BadParameter(f"{precision!r}: with --variants give the base step's one precision "
                                     "(a variant such as bf16 adds another)", param_hint="--precision")
        names = [v.strip() for v in variants.split(",") if v.strip()]
        if not names or len(set(names)) != len(names):
            raise click.BadParameter(f"{variants!r}: expected distinct variants, each {VARIANT_HELP}",
                                     param_hint="--variants")
        steps_run = [parse_variant(v, precisions[0], threads) for v in names]
    if any(v["precision"] == "fp16" for v in steps_run) and device != "cuda":
        raise click.BadParameter("fp16 needs a CUDA device; use bf16 on CPU",
                                 param_hint="--precision" if variants is None else "--variants")
    sizes = [int(p) for p in patch_sizes.split(",") if p.strip()]
    mul = batch_multipliers(sizes)
    whole_batch = whole_batch or batch * mul[max(sizes)]
    configs = [(f"patch-{p}", p, patches or batch * mul[p]) for p in sizes]
    if not skip_whole:
        configs.append(("whole", WHOLE, whole_batch))
    runs = [(c, v) for c in configs for v in steps_run]
    secs: dict[tuple, list[float]] = {}
    pures: dict[tuple, list[float]] = {}
    warms: dict[tuple, list[float]] = {}
    results: dict[tuple, dict] = {}
    for r in range(repeats):
        for (name, psize, count), v in runs:
            spec = dict(arch=arch, steps=steps, psize=psize, patches=count, resolution=resolution, pad=pad,
                        device=device, threads=v["threads"], precision=v["precision"],
                        channels_last=v["channels_last"], compile=v["compile"])
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                  text=True, cwd=REPO)
            if proc.returncode:
                raise click.ClickException(f"{name} {v['name']} failed: {proc.stderr.strip().splitlines()[-1]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            key = (name, v["name"])
            results[key] = res
            if res.get("sec_per_step") is None:
                click.echo(f"repeat {r + 1} {name} {v['name']}: {res['compile_failure']}", err=True)
                continue
            secs.setdefault(key, []).append(res["sec_per_step"])
            pures.setdefault(key, []).append(res["pure_sec_per_step"])
            warms.setdefault(key, []).append(res["warmup_s"])
            click.echo(f"repeat {r + 1} {name} {v['name']}: {res['sec_per_step']:.3f} s/step "
                       f"(warm-up {res['warmup_s']:.2f} s)", err=True)
    rows = []
    for (name, psize, count), v in runs:
        key = (name, v["name"])
        res = dict(results[key])
        if key in secs:
            res["sec_per_step"] = statistics.median(secs[key])
            res["patches_per_s"] = count / res["sec_per_step"]
            res["pure_sec_per_step"] = statistics.median(pures[key])
            res["warmup_s"] = statistics.median(warms[key])
            res["efficiency"] = res["pure_sec_per_step"] / res["sec_per_step"]  # target >= 0.9
        else:  # compiling failed in every repeat
            res = dict(sec_per_step=None, warmup_s=None, patches_per_s=None, pure_sec_per_step=None,
                       train_mem_mb=None, peak_total_mb=None, params_m=None, efficiency=None,
                       compile_failure=res["compile_failure"])
        rows.append(dict(config=name, patch=str(psize), variant=v["name"], precision=v["precision"],
                         channels_last=v["channels_last"], compile=v["compile"], threads=v["threads"],
                         patches_per_step=count, batch_images=batch, sec_per_step_all=secs.get(key, []),
                         warmup_s_all=warms.get(key, []), **res))
    whole_rows = [r for r in rows if r["config"] == "whole"]
    for row in rows:
        same = [r for r in rows if r["config"] == row["config"]]
        base = next((r for r in same if r["variant"] == "base"), same[0])
        ok = row["patches_per_s"] is not None and base["patches_per_s"] is not None
        row["speed_vs_base"] = row["patches_per_s"] / base["patches_per_s"] if ok else None
        ref = next((w["train_mem_mb"] for w in whole_rows if w["variant"] == row["variant"]), None)
        row["mem_ratio_vs_whole"] = row["train_mem_mb"] / ref if ref and row["train_mem_mb"] is not None else None
    width = max(8, *(len(r["variant"]) + 1 for r in rows))
    head = (f"{'config':<10}{'variant':>{width}}{'patches/step':>13}{'patches/s':>11}{'s/step':>9}{'vs base':>9}"
            f"{'warm-up s':>10}{'train MB':>10}{'peak MB':>9}{'ratio':>7}{'net/step':>9}")
    params = next((r["params_m"] for r in rows if r["params_m"] is not None), None)
    lines = [f"arch={arch} device={device} image={resolution} pad={pad} batch={batch} steps={steps} "
             f"threads={threads} repeats={repeats} (interleaved; median) params={_num(params, '.2f')}M", head]
    for r in rows:
        line = f"{r['config']:<10}{r['variant']:>{width}}{r['patches_per_step']:>13}"
        if r["patches_per_s"] is None:
            lines.append(f"{line}  compile failed: {r['compile_failure']}")
            continue
        lines.append(f"{line}{r['patches_per_s']:>11.2f}{r['sec_per_step']:>9.3f}{r['speed_vs_base']:>9.2f}"
                     f"{r['warmup_s']:>10.2f}{r['train_mem_mb']:>10.0f}{r['peak_total_mb']:>9.0f}"
                     f"{_num(r['mem_ratio_vs_whole'], '.3f'):>7}{r['efficiency']:>9.2f}")
    ok = None
    if whole_rows:
        ratios = [r["mem_ratio_vs_whole"] for r in rows if r["config"] != "whole"]
        ok = all(m is not None and m <= 0.25 for m in ratios)
        lines.append(f"target (patch memory <= 1/4 of whole at the paper's batch settings): "
                     f"{'met' if ok else 'NOT met'}")
    click.echo("\n".join(lines))
    from torch_utils import misc
    out = misc.result_file(out, "bench_train")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(arch=arch, device=device, resolution=resolution, pad=pad, batch=batch,
                                   steps=steps, threads=threads, precisions=precisions,
                                   variants=[v["name"] for v in steps_run] if variants is not None else None,
                                   repeats=repeats, rows=rows, target_met=ok), indent=2) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
