"""Where does reconstruction time go? Network vs operator vs everything else, per solver.

    python benchmarks/bench_recon.py --arch small --iters 2
    python benchmarks/bench_recon.py --arch ddpmpp --solvers dds --iters 1

Setting: sparse-view parallel-beam CT (``ct_parbeam``, 20 views) of a 256 x 256 Shepp-Logan
phantom, ``PatchPrior`` with pad 24 / psize 56 (25 patches per denoiser call), a randomly
initialised network (``--arch ddpmpp``: the paper's 54 M-parameter DDPM++, img_resolution 384,
1 image channel; ``--arch small``: the shipped size). Each solver runs ``--iters`` noise levels
(with ``inner=1`` where the solver has inner iterations) in a fresh subprocess, so the peak
memory is its own (CPU: peak RSS from ``resource.getrusage``; CUDA: ``max_memory_allocated``).

Reported per solver:
- seconds for the run split into network (forward + backward through it), operator (A, AT,
  pinv and their backward) and everything else; denoiser calls (one call = all 25 patches in
  one batched network call);
- ``ratio`` = total / (calls x one reference denoiser call of the same kind: forward only, or
  forward + backward where the solver differentiates through the network); target <= 1.10;
- ``t/net`` = total / network seconds inside the same run: the overhead ratio without the
  call-to-call drift of a shared machine (the reference call is timed separately);
- seconds per denoiser call without and with gradient (reference calls);
- extrapolated seconds per image at the paper's settings: seconds per level x 100 levels x
  the solver's default inner iterations per level (DPS: 10, as in the paper; langevin 10,
  pc 1 + 1 predictor call is already in the per-level time; others 1).
Operator time includes ``op.norm()`` (the power iteration the solvers use for step sizes).
Prints a table and writes JSON (``benchmarks/results/bench_recon.json`` or ``--out``).
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
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER_LEVELS = 100


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Mark(torch.autograd.Function):
    """Identity whose backward records the time (start/end of a block's backward pass)."""

    @staticmethod
    def forward(ctx, x, box, key, device):
        ctx.box, ctx.key, ctx.device = box, key, device
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _sync(ctx.device)
        now = time.perf_counter()
        if ctx.key == "out":
            ctx.box["t_out"] = now
        else:
            ctx.box["stats"]["bwd"] += now - ctx.box.get("t_out", now)
        return grad, None, None, None


def _timed(fn, stats: dict, device: torch.device, x: torch.Tensor, *args):
    """Run fn(x, *args), adding its forward time to stats['fwd'] and, through marks, the time
    of its backward pass to stats['bwd']."""
    box = dict(stats=stats)
    track = torch.is_grad_enabled() and x.requires_grad
    if track:
        x = _Mark.apply(x, box, "in", device)
    _sync(device)
    t0 = time.perf_counter()
    out = fn(x, *args)
    _sync(device)
    stats["fwd"] += time.perf_counter() - t0
    stats["n"] += 1
    if track and out.requires_grad:
        out = _Mark.apply(out, box, "out", device)
    return out


class TimedNet(torch.nn.Module):
    """Wraps the denoiser network; same attributes the priors read."""

    def __init__(self, net, stats, device):
        super().__init__()
        self.inner = net
        self.stats, self.device = stats, device
        for attr in ("pos_channels", "out_channels", "img_channels", "img_resolution", "model"):
            if hasattr(net, attr):
                object.__setattr__(self, attr, getattr(net, attr))

    def forward(self, x, sigma, pos=None):
        return _timed(lambda v: self.inner(v, sigma, pos), self.stats, self.device, x)


class TimedOp:
    """Delegates to an operator, timing A, AT and pinv (forward and backward)."""

    def __init__(self, op, stats, device):
        self._op, self._stats, self._device = op, stats, device

    def __getattr__(self, name):
        return getattr(self._op, name)

    def A(self, x):
        return _timed(self._op.A, self._stats, self._device, x)

    def AT(self, y):
        return _timed(self._op.AT, self._stats, self._device, y)

    def pinv(self, y):
        return _timed(self._op.pinv, self._stats, self._device, y)

    def norm(self, *args, **kwargs):
        _sync(self._device)
        t0 = time.perf_counter()
        out = self._op.norm(*args, **kwargs)
        _sync(self._device)
        self._stats["fwd"] += time.perf_counter() - t0
        return out


def phantom(size: int) -> torch.Tensor:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize
    img = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    return torch.from_numpy(img).float().clamp(0, 1)[None, None]


def reference_call(prior, x, sigma, gen, grad: bool, device) -> float:
    """Seconds of one whole-image denoiser call (forward, or forward + backward)."""
    x = x.detach().clone().requires_grad_(grad)
    _sync(device)
    t0 = time.perf_counter()
    if grad:  # as DPS takes it: PatchPrior.denoise_with_grad (chunk by chunk with --batch)
        prior.denoise_with_grad(x, sigma, gen, lambda out: out.square().sum())
    else:
        with torch.no_grad():
            prior(x, sigma, gen)
    _sync(device)
    return time.perf_counter() - t0


def worker(cfg: dict) -> dict:
    """One solver in this process; returns the measurements."""
    from inverse.operators import make_operator
    from inverse.prior import PatchPrior
    from inverse.samplers import SAMPLERS, get_sigmas_karras, sampler_options
    from inverse.stages import accepted_kwargs
    from training.networks import build_network

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    net = build_network(cfg["arch"], img_resolution=384, image_channels=1).eval().requires_grad_(False).to(device)
    params = sum(p.numel() for p in net.parameters())
    net_stats, op_stats = dict(fwd=0.0, bwd=0.0, n=0), dict(fwd=0.0, bwd=0.0, n=0)
    prior = PatchPrior(TimedNet(net, net_stats, device), pad=cfg["pad"], psize=cfg["psize"], batch=cfg["batch"],
                       precision=cfg["precision"], channels_last=cfg["channels_last"])
    size = cfg["size"]
    op = make_operator("ct_parbeam", (size, size), views=cfg["views"], device=device)
    gen = torch.Generator().manual_seed(0)
    x = phantom(size).to(device)
    with torch.no_grad():
        y = op.noise(op.A(x), 0.005, gen)
    sampler = SAMPLERS[cfg["solver"]]
    kwargs, _ = accepted_kwargs(sampler, dict(inner=1))
    sigmas = get_sigmas_karras(cfg["iters"], cfg["sigma_min"], cfg["sigma_max"], device=device)

    # Warm-up on one patch (allocator, kernels), not counted.
    patch = torch.rand(1, 1, cfg["psize"], cfg["psize"], device=device, requires_grad=True)
    pos = torch.zeros(1, 2, cfg["psize"], cfg["psize"], device=device)
    net(patch, torch.ones(1, device=device), pos).sum().backward()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    timed_op = TimedOp(op, op_stats, device)
    prior.reset_calls()
    _sync(device)
    t0 = time.perf_counter()
    sampler(prior, timed_op, y, sigmas, gen, **kwargs)
    _sync(device)
    total = time.perf_counter() - t0
    calls = prior.calls
    grad = net_stats["bwd"] > 0
    network = net_stats["fwd"] + net_stats["bwd"]
    operator = op_stats["fwd"] + op_stats["bwd"]

    # Peak of the solve itself (CPU max RSS is monotonic: read it before the reference calls).
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    sigma = float(sigmas[0])
    ref_fwd = reference_call(prior, x, sigma, gen, False, device)
    ref_grad = reference_call(prior, x, sigma, gen, True, device) if grad else None
    ref = ref_grad if grad else ref_fwd
    inner = sampler_options(cfg["solver"]).get("inner", 1)  # the solver's default (dps: 10, as the paper)
    levels = max(1, cfg["iters"])
    return dict(solver=cfg["solver"], arch=cfg["arch"], params=params, device=str(device), iters=cfg["iters"],
                seconds=total, network_s=network, operator_s=operator, other_s=total - network - operator,
                calls=calls, operator_calls=op_stats["n"], grad=grad, ratio=total / (calls * ref) if calls else None,
                overhead=total / network if network else None,
                s_per_call_nograd=ref_fwd, s_per_call_grad=ref_grad,
                paper_levels=PAPER_LEVELS, paper_inner=inner,
                extrapolated_s_per_image=total / levels * PAPER_LEVELS * inner,
                peak_mem_mib=peak, peak_mem_kind="cuda_max_allocated" if device.type == "cuda" else "cpu_max_rss")


def format_table(results: list[dict]) -> str:
    head = (f"{'solver':<9}{'iters':>6}{'total s':>9}{'net s':>9}{'op s':>8}{'other s':>9}{'calls':>6}"
            f"{'grad':>5}{'ratio':>7}{'t/net':>7}{'s/call':>8}{'s/call+g':>9}{'paper s/img':>12}{'peak MiB':>10}")
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append(f"{r['solver']:<9} failed: {r['error']}")
            continue
        g = "-" if r["s_per_call_grad"] is None else f"{r['s_per_call_grad']:.3f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(f"{r['solver']:<9}{r['iters']:>6}{r['seconds']:>9.2f}{r['network_s']:>9.2f}"
                     f"{r['operator_s']:>8.2f}{r['other_s']:>9.2f}{r['calls']:>6}{'yes' if r['grad'] else 'no':>5}"
                     f"{ratio:>7}{r['overhead']:>7.3f}{r['s_per_call_nograd']:>8.3f}{g:>9}{r['extrapolated_s_per_image']:>12.1f}"
                     f"{r['peak_mem_mib']:>10.0f}")
    return "\n".join(lines)


@click.command(context_settings=dict(show_default=True))
@click.option("--arch", default="ddpmpp", type=click.Choice(["ddpmpp", "small", "tiny"]), help="Random network size")
@click.option("--solvers", default=None, help="Comma list [default: all of SAMPLERS]")
@click.option("--iters", default=2, type=click.IntRange(min=1), help="Noise levels run per solver")
@click.option("--size", default=256, type=int, help="Image side, pixels")
@click.option("--views", default=20, type=int, help="CT views")
@click.option("--pad", default=24, type=int)
@click.option("--psize", default=56, type=int)
@click.option("--batch", default=None, type=int, help="Max patches per network call [default: all]")
@click.option("--precision", default="fp32", type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Autocast of the network call (fp16: CUDA only)")
@click.option("--channels-last", is_flag=True, help="Channels-last network and inputs")
@click.option("--sigma-min", default=0.003, type=float)
@click.option("--sigma-max", default=10.0, type=float)
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--threads", default=0, type=int, help="torch threads (0: torch default)")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON output file [default: bench_recon.json in a new out/NNNNN-bench_recon/]")
@click.option("--worker", "worker_cfg", default=None, hidden=True)
def main(worker_cfg, solvers, out, **opts):
    """Time each solver on sparse-view CT with a patch prior; print a table, write JSON."""
    if worker_cfg:
        print(json.dumps(worker(json.loads(worker_cfg))))
        return
    from inverse.samplers import SAMPLERS
    names = sorted(SAMPLERS) if not solvers else [s.strip() for s in solvers.split(",") if s.strip()]
    bad = [s for s in names if s not in SAMPLERS]
    if bad:
        raise click.BadParameter(f"unknown solver {bad[0]!r}; expected {sorted(SAMPLERS)}", param_hint="--solvers")
    from torch_utils.device import default_device
    opts["device"] = opts["device"] or default_device()
    results = []
    for name in names:
        cfg = dict(opts, solver=name)
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                              text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                  filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))))
        if proc.returncode:
            err = (proc.stderr.strip().splitlines() or ["?"])[-1]
            results.append(dict(solver=name, error=err))
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        click.echo(format_table(results[-1:]).splitlines()[-1], err=True)
    click.echo(f"ct_parbeam {opts['views']} views, {opts['size']}x{opts['size']}, pad {opts['pad']} psize "
               f"{opts['psize']}, arch {opts['arch']}, device {opts['device']}, precision {opts['precision']}"
               f"{' channels-last' if opts['channels_last'] else ''}, {opts['iters']} level(s) per solver")
    click.echo(format_table(results))
    from torch_utils import misc
    out = misc.result_file(out, "bench_recon")
    from torch_utils.misc import atomic_write_json
    atomic_write_json(out, dict(config=opts, results=results), overwrite=True)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
