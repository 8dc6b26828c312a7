"""Training loop of the patch prior: data, DDP, EMA, snapshots, exact resume, stats.

``run(cfg)`` takes the config dict built by ``train.py`` (keys of :data:`DEFAULTS`).

Counting: ``nimg`` counts training images (= patches, one patch per image); a step with
patch size p draws ``batch * batch_mul(p)`` of them (``training.patch_loss``). ``--duration``
(Mimg), ``--tick`` (kimg), the lr ramp-up and the EMA half-life (kimg) are all in these units.
``step`` counts optimizer updates; a step whose loss is not finite is skipped (no update, not
counted) and retried with new random draws.

Files in the run directory (``NNNNNN`` = the 6-digit optimizer **step**, unique and
monotonic even for sub-kimg CPU runs): ``network-snapshot-NNNNNN.pkl`` (EDM layout:
``ema``, ``loss_fn``, ``augment_pipe`` None, ``dataset_kwargs``),
``network-snapshot-NNNNNN.safetensors`` + ``.json`` (EMA weights + constructor kwargs),
``training-state-NNNNNN.pt`` (everything needed to continue exactly), ``config.json``,
``stats.jsonl``, ``log.txt``. Only rank 0 writes; nothing is overwritten. Every file is
written under a temporary name and renamed, so a killed run leaves complete files only; on
resume into the same directory the temporaries it left are deleted, and a snapshot step whose
three files are not all present (killed between them) is written again.

Randomness: ``size_gen`` (CPU, seeded with ``seed``, the same on every rank) picks the patch
size of each step, so all ranks run the same number of backward passes; ``data_gen`` (on the
run's device, seeded per rank) draws image indices, crop offsets, sigmas and noise; torch's
global RNG (seeded per rank) drives dropout. All their states are saved in the training state,
so an interrupted and resumed CPU run gives bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import resource
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from torch_utils import distributed as dist
from torch_utils import misc
from training.dataset import ImageDataset
from training.networks import build_network
from training.patch_loss import (
    WHOLE,
    PatchEDMLoss,
    batch_multipliers,
    parse_patch_sizes,
    patch_probabilities,
    patch_shape,
    sample_patch_size,
)
from training.resume_check import state_mismatch

DEFAULTS: dict[str, Any] = dict(
    outdir="runs",               # Parent of the run directories.
    desc=None,                   # Run directory suffix (default: built from the config).
    data=None,                   # Training images: directory or file (training.dataset formats).
    mat_key="images",            # Variable name in .mat/.npz files.
    normalize=False,             # Min-max scale each image to [0, 1].
    xflip=False,                 # Augment: the data set doubled by left-right mirror images.
    max_images=None,             # Use at most this many images.
    arch="small",                # Name in training.networks.ARCHS.
    arch_overrides={},           # SongUNet kwargs replacing those of the arch.
    transfer=None,               # Start from this network file (its architecture; arch ignored) and fine-tune.
    batch=None,                  # Base batch over all processes (None: 1 per process); x batch_mul(p) patches.
    batch_mul_base=16,           # batch_mul(p) = base * largest/p: 64/32/16 for 16/32/64 (paper).
    batch_gpu=None,              # Per-process microbatch in base images (None: no accumulation).
    lr=2e-4,                     # Adam learning rate.
    lr_rampup_kimg=1.0,          # Linear lr warm-up (kimg); 0 = none.
    ema_halflife_kimg=0.5,       # EMA half-life (kimg).
    ema_rampup_ratio=0.05,       # EMA half-life <= this ratio * images seen (None: off).
    duration_mimg=0.01,          # Training length (Mimg).
    tick_kimg=1.0,               # Stats interval (kimg).
    snap_ticks=10,               # Network snapshot every N ticks (and at the end).
    dump_ticks=10,               # Training state every N ticks (and at the end).
    seed=0,                      # Random seed.
    real_p=0.5,                  # Probability of the largest patch size.
    pad_width=64,                # Zero padding on each side of the image (pixels).
    patch_sizes=[16, 32, 64],    # Patch sizes (ints ascending, or ['whole']).
    positional=True,             # Position channels (False: ablation; always False for 'whole').
    precision="fp32",            # fp32 | bf16 | fp16 (autocast; GradScaler for fp16 on CUDA).
    workers=0,                   # CPU threads for torch (0: torch default).
    device=None,                 # cpu | cuda (default: cuda if available).
    resume=None,                 # Training-state file, 'auto', or None.
    max_nonfinite=10,            # Stop after this many non-finite losses in a row.
    loss_kwargs=dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5),  # EDM loss settings.
    adam_betas=[0.9, 0.999],     # Adam betas.
    adam_eps=1e-8,               # Adam epsilon.
    progress=True,               # tqdm progress bar on rank 0.
)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_STATE_RE = re.compile(r"^training-state-(\d+)\.pt$")
_RUN_RE = re.compile(r"^(\d{5})-")
DEBUG_CHECKSUM_ENV = "PADIS_DEBUG_CHECKSUM_DIR"  # test-only: each rank writes a parameter checksum


# ----------------------------------------------------------------------------------------
# Helpers


def find_latest_state(outdir: str | os.PathLike, desc: str | None = None) -> Path | None:
    """Newest training state in the newest run directory under ``outdir`` that has one; with
    ``desc``, only run directories ``NNNNN-desc`` count (so ``--resume auto`` never picks up
    another experiment that shares the output directory)."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        return None
    suffix = None if desc is None else "-" + misc.clean_desc(desc)
    runs = sorted((p for p in outdir.iterdir() if p.is_dir() and _RUN_RE.match(p.name)
                   and (suffix is None or p.name[5:] == suffix)),
                  key=lambda p: int(_RUN_RE.match(p.name).group(1)), reverse=True)
    for run_dir in runs:
        states = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _STATE_RE.match(p.name))]
        if states:
            return max(states)[1]
    return None


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _param_checksum(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop writes a training state and exits at a step boundary."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def resolve_config(cfg: dict | None = None, **kwargs) -> dict:
    """Defaults + cfg + kwargs, with patch sizes parsed and values checked."""
    unknown = set(cfg or {}) | set(kwargs)
    unknown -= set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    c = copy.deepcopy(DEFAULTS)
    c.update(copy.deepcopy(cfg or {}))
    c.update(kwargs)
    if c["data"] is None:
        raise ValueError("config: 'data' (training images) is required")
    c["patch_sizes"] = parse_patch_sizes(c["patch_sizes"])
    if c["precision"] not in PRECISIONS:
        raise ValueError(f"--precision {c['precision']!r}; expected one of {sorted(PRECISIONS)}")
    for key in ("tick_kimg", "duration_mimg", "batch_mul_base"):
        if not c[key] or c[key] <= 0:
            raise ValueError(f"config: {key} must be positive, got {c[key]}")
    if c["pad_width"] < 0:
        raise ValueError(f"--pad-width must be >= 0, got {c['pad_width']}")
    patch_probabilities(len(c["patch_sizes"]), c["real_p"])
    if c["device"] is None:
        c["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return c


# ----------------------------------------------------------------------------------------
# The loop


def run(cfg: dict | None = None, **kwargs) -> dict:
    """Train; returns ``dict(run_dir, step, nimg, interrupted)``. See the module docstring."""
    c = resolve_config(cfg, **kwargs)
    device = dist.init(c["device"])
    threads = torch.get_num_threads()
    if c["workers"]:
        torch.set_num_threads(int(c["workers"]))
    try:
        return _run(c, device)
    finally:
        torch.set_num_threads(threads)


def _run(c: dict, device: torch.device) -> dict:
    rank, world = dist.rank(), dist.world_size()

    # Batch geometry.
    if c["batch"] is None:
        c["batch"] = world
    if c["batch"] <= 0:
        raise ValueError(f"--batch must be positive, got {c['batch']}")
    if c["batch"] % world:
        raise ValueError(f"--batch {c['batch']} is not divisible by the {world} processes")
    batch_rank = c["batch"] // world
    batch_gpu = c["batch_gpu"] or batch_rank
    if batch_rank % batch_gpu:
        raise ValueError(f"--batch-gpu {batch_gpu} does not divide the per-process batch {batch_rank}")
    rounds = batch_rank // batch_gpu

    # Resume source.
    resume_path: Path | None = None
    reuse_dir: Path | None = None
    if c["resume"] == "auto":
        desc = c["desc"] or _default_desc(c)
        found = dist.broadcast_object(str(find_latest_state(c["outdir"], desc) or "") if rank == 0 else None)
        if found:
            resume_path = Path(found)
            reuse_dir = resume_path.parent
    elif c["resume"]:
        resume_path = Path(c["resume"])
        if not resume_path.is_file():
            raise FileNotFoundError(f"{resume_path}: training state not found (--resume)")

    # Fail before any work if the outputs cannot be written.
    if rank == 0:
        misc.check_writable(reuse_dir or c["outdir"])

    # Data.
    dataset = ImageDataset(c["data"], mat_key=c["mat_key"], normalize=c["normalize"],
                           max_images=c["max_images"], xflip=c["xflip"])
    height, width = dataset.resolution
    local = dataset.shard(rank, world)
    images = local.images.to(device)
    pad = c["pad_width"]
    sizes = c["patch_sizes"]
    canvas = (height + 2 * pad, width + 2 * pad)
    probs = patch_probabilities(len(sizes), c["real_p"])
    batch_mul = batch_multipliers(sizes, canvas=max(canvas), base=c["batch_mul_base"])

    # Network (identical initialisation on every rank), loss, optimizer, EMA.
    torch.manual_seed(c["seed"])
    positional = c.get("positional", True) and sizes != [WHOLE]
    if c["transfer"]:
        net = transfer_network(c["transfer"], c["arch_overrides"], dataset.channels, positional).to(device)
    else:
        net = build_network(c["arch"], img_resolution=max(canvas), image_channels=dataset.channels,
                            positional=positional, **c["arch_overrides"]).to(device)
    factor = 2 ** (len(net.init_kwargs["channel_mult"]) - 1)
    for s in sizes:
        h, w = patch_shape(s, (height, width), pad)
        if h % factor or w % factor:
            raise ValueError(f"patch size {s} gives {h}x{w} patches; with {len(net.init_kwargs['channel_mult'])} "
                             f"network levels both sides must be divisible by {factor}")
    net.train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    loss_fn = PatchEDMLoss(pad_width=pad, **c["loss_kwargs"])
    opt = torch.optim.Adam(net.parameters(), lr=c["lr"], betas=tuple(c["adam_betas"]), eps=c["adam_eps"])
    scaler = torch.amp.GradScaler("cuda", enabled=(c["precision"] == "fp16" and device.type == "cuda"))
    size_gen = torch.Generator().manual_seed(c["seed"])
    data_gen = torch.Generator(device=device).manual_seed(c["seed"] * 1_000_003 + 7919 * (rank + 1))
    torch.manual_seed(c["seed"] + 1 + rank)
    if device.type == "cuda":
        torch.cuda.manual_seed(c["seed"] + 1 + rank)

    step, nimg, tick, tick_start_nimg, nonfinite_total = 0, 0, 0, 0, 0
    if resume_path is not None:
        state = _load_state(resume_path)
        current = dict(c, image_channels=dataset.channels, image_resolution=[height, width])
        why = state_mismatch(state, current, net, ema)
        if why:
            raise ValueError(f"{resume_path}: training state does not match this network/config: {why}")
        try:
            net.load_state_dict(state["net"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(f"{resume_path}: training state does not match this network/config "
                             f"({str(exc).splitlines()[0]})") from None
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, nimg, tick = int(state["step"]), int(state["nimg"]), int(state["tick"])
        tick_start_nimg, nonfinite_total = int(state["tick_start_nimg"]), int(state["nonfinite_total"])
        rng = state["rng"]
        size_gen.set_state(rng["size"])
        if len(rng["data"]) == world:
            data_gen.set_state(rng["data"][rank])
            torch.set_rng_state(rng["cpu"][rank])
            if device.type == "cuda" and rng["cuda"][rank] is not None:
                torch.cuda.set_rng_state(rng["cuda"][rank], device)
        else:
            warnings.warn(f"{resume_path}: saved with {len(rng['data'])} processes, now {world}; "
                          "per-process random streams restart from the seed")
        del state

    # Run directory (rank 0 makes it; everyone learns its path).
    run_dir = None
    if rank == 0:
        if reuse_dir is not None:
            run_dir = reuse_dir
        else:
            desc = c["desc"] or _default_desc(c)
            run_dir = misc.new_run_dir(c["outdir"], desc)
    run_dir = Path(dist.broadcast_object(str(run_dir) if run_dir else None))
    cfg_out = dict(c, run_dir=str(run_dir), world_size=world, resumed_from=str(resume_path or ""),
                   image_resolution=[height, width], image_channels=dataset.channels,
                   batch_mul={str(k): v for k, v in batch_mul.items()}, patch_probs=probs)
    if rank == 0:
        name = "config.json" if reuse_dir is None else f"config-resume-{step:06d}.json"
        if not (run_dir / name).exists():
            misc.atomic_write_json(run_dir / name, cfg_out)

    log = _Logger(run_dir if rank == 0 else None)
    log(f"run directory {run_dir}; {len(dataset)} images {dataset.channels}x{height}x{width}, "
        f"{world} process(es) on {device}; patch sizes {sizes} p={[round(p, 3) for p in probs]} "
        f"batch_mul {batch_mul}; pad {pad}")
    if resume_path is not None:
        log(f"resumed from {resume_path} at step {step}, {nimg / 1000:.3f} kimg")
    if rank == 0 and reuse_dir is not None:
        for tmp in misc.remove_stale_temps(run_dir):
            log(f"removed {tmp.name}, a temporary file left by an interrupted write")

    ddp = net
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)

    dataset_kwargs = dict(class_name="training.dataset.ImageDataset", **dataset.kwargs,
                          resolution=[height, width], channels=dataset.channels)
    writer = _Writer(run_dir, rank == 0, ema, loss_fn, dataset_kwargs, cfg_out)
    autocast_dtype = PRECISIONS[c["precision"]]
    total_nimg = int(round(c["duration_mimg"] * 1e6))
    nonfinite_run = 0
    tick_steps = tick_loss = tick_patches = tick_skips = 0
    tick_t0 = time.time()
    pbar = None
    if rank == 0 and c["progress"]:
        from tqdm import tqdm
        pbar = tqdm(total=total_nimg / 1000, initial=min(nimg, total_nimg) / 1000, unit="kimg",
                    bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}]")
    lr_now = c["lr"]
    interrupted = 0

    with _StopFlag() as stop:
        while True:
            done = nimg >= total_nimg
            stopping = dist.any_true(stop.signum != 0, device) if world > 1 else stop.signum != 0
            if stopping and not interrupted:
                interrupted = stop.signum or signal.SIGTERM
            tick_due = nimg >= tick_start_nimg + c["tick_kimg"] * 1000
            if tick_steps and (tick_due or done or stopping):
                now = time.time()
                stats = dict(kimg=round(nimg / 1000, 4), step=step, tick=tick,
                             loss=tick_loss / max(tick_steps, 1),
                             patches_per_s=tick_patches / max(now - tick_t0, 1e-9),
                             sec_per_tick=now - tick_t0, lr=lr_now,
                             peak_mem_mb=round(_peak_memory_mb(device), 1),
                             nonfinite=tick_skips, time=now)
                log(f"tick {tick} kimg {stats['kimg']:.3f} step {step} loss {stats['loss']:.4f} "
                    f"patches/s {stats['patches_per_s']:.1f} sec/tick {stats['sec_per_tick']:.1f} "
                    f"lr {lr_now:.3g} peak_mem {stats['peak_mem_mb']:.0f} MB", stats=stats)
                tick += 1
                if c["snap_ticks"] and tick % c["snap_ticks"] == 0:
                    writer.snapshot(step, nimg)
                if c["dump_ticks"] and tick % c["dump_ticks"] == 0:
                    writer.state(_gather_state(net, ema, opt, scaler, size_gen, data_gen, device, step,
                                               nimg, tick, nimg, nonfinite_total))
                tick_start_nimg, tick_t0 = nimg, time.time()
                tick_steps = tick_loss = tick_patches = tick_skips = 0
            if done or stopping:
                break

            # One optimizer step (same patch size on every rank).
            psize = sample_patch_size(sizes, probs, size_gen)
            mul = batch_mul[psize]
            opt.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            for r in range(rounds):
                idx = torch.randint(len(local), (batch_gpu * mul,), generator=data_gen, device=device)
                sync = contextlib.nullcontext() if (world == 1 or r == rounds - 1) else ddp.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                        enabled=autocast_dtype is not None):
                        loss = loss_fn(ddp, images[idx], psize, data_gen)
                    loss = loss.float().mean() / rounds
                    scaler.scale(loss).backward()
                step_loss += loss.detach()
            finite = bool(torch.isfinite(step_loss).item())
            if world > 1:
                finite = not dist.any_true(not finite, device)
            if not finite:
                nonfinite_total += 1
                nonfinite_run += 1
                tick_skips += 1
                warnings.warn(f"non-finite loss at step {step} (patch size {psize}); update skipped "
                              f"({nonfinite_run} in a row)")
                opt.zero_grad(set_to_none=True)
                if nonfinite_run >= c["max_nonfinite"]:
                    raise RuntimeError(f"training diverged: {nonfinite_run} non-finite losses in a row "
                                       f"at step {step} (limit --max-nonfinite {c['max_nonfinite']}); "
                                       "try a lower --lr or --precision fp32")
                continue
            nonfinite_run = 0
            images_step = c["batch"] * mul
            ramp = c["lr_rampup_kimg"] * 1000
            lr_now = c["lr"] * (min((nimg + images_step) / ramp, 1.0) if ramp > 0 else 1.0)
            for group in opt.param_groups:
                group["lr"] = lr_now
            scaler.step(opt)
            scaler.update()
            nimg += images_step
            step += 1
            _update_ema(ema, net, nimg, images_step, c["ema_halflife_kimg"], c["ema_rampup_ratio"])
            if world > 1:
                step_loss = step_loss.clone()
                torch.distributed.all_reduce(step_loss)
                step_loss /= world
            tick_steps += 1
            tick_loss += float(step_loss)
            tick_patches += images_step
            if pbar is not None:
                pbar.update(min(nimg, total_nimg) / 1000 - pbar.n)

    if pbar is not None:
        pbar.close()
    if step > 0 or interrupted:  # interrupted too: the state first (what resume needs), then the network
        writer.state(_gather_state(net, ema, opt, scaler, size_gen, data_gen, device, step, nimg, tick,
                                   tick_start_nimg, nonfinite_total))
        if step > 0:
            writer.snapshot(step, nimg)
    if interrupted:
        log(f"stopped by signal {int(interrupted)} at step {step}; training state"
            f"{' and network snapshot' if step > 0 else ''} written")
    else:
        log(f"done: step {step}, {nimg / 1000:.3f} kimg, {nonfinite_total} non-finite steps skipped")
    debug_dir = os.environ.get(DEBUG_CHECKSUM_ENV)
    if debug_dir:
        misc.atomic_write_json(Path(debug_dir) / f"params-rank{rank}.json",
                               dict(rank=rank, step=step, net=_param_checksum(net), ema=_param_checksum(ema)))
    dist.barrier()
    dist.shutdown()
    return dict(run_dir=run_dir, step=step, nimg=nimg, interrupted=int(interrupted))


def _default_desc(c: dict) -> str:
    data = Path(c["data"]).stem or "data"
    sizes = "-".join(str(s) for s in c["patch_sizes"])
    arch = f"from-{Path(c['transfer']).stem}" if c.get("transfer") else c["arch"]
    return f"{data}-{arch}-p{sizes}-pad{c['pad_width']}-b{c['batch']}"


def transfer_network(path: str | os.PathLike, overrides: dict, channels: int, positional: bool) -> torch.nn.Module:
    """The network of checkpoint ``path`` (any format ``load_network`` reads; its own
    architecture), rebuilt with ``overrides`` (e.g. dropout) and its weights, in train mode:
    the start of a fine-tuning run (the paper's --transfer)."""
    from torch_utils.persistence import load_network

    src = load_network(path)
    if src.out_channels != channels or bool(src.pos_channels) != positional:
        raise ValueError(f"{path}: --transfer network denoises {src.out_channels}-channel images "
                         f"{'with' if src.pos_channels else 'without'} position channels; the training data has "
                         f"{channels} channel(s) and {'with' if positional else 'without'} positions was asked")
    try:
        net = type(src)(**(src.init_kwargs | overrides))
        net.load_state_dict(src.state_dict())
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: --transfer network cannot take the overrides {sorted(overrides)} "
                         f"({str(exc).splitlines()[0]})") from None
    return net.train().requires_grad_(True)


def _update_ema(ema, net, nimg: int, images_step: int, halflife_kimg: float, rampup_ratio) -> None:
    """EDM's EMA: beta = 0.5 ** (images_step / ema_nimg), ema_nimg = half-life (optionally ramped)."""
    ema_nimg = halflife_kimg * 1000
    if rampup_ratio is not None:
        ema_nimg = min(ema_nimg, nimg * rampup_ratio)
    beta = 0.5 ** (images_step / max(ema_nimg, 1e-8))
    with torch.no_grad():
        for p_ema, p_net in zip(ema.parameters(), net.parameters()):
            p_ema.copy_(p_net.detach().lerp(p_ema, beta))
        for b_ema, b_net in zip(ema.buffers(), net.buffers()):
            b_ema.copy_(b_net)


def _gather_state(net, ema, opt, scaler, size_gen, data_gen, device, step, nimg, tick, tick_start_nimg,
                  nonfinite_total) -> dict:
    """The training state (collective: every rank contributes its random-stream states)."""
    mine = dict(data=data_gen.get_state().cpu(), cpu=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
    streams = dist.all_gather_object(mine)
    return dict(net=net.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                scaler=scaler.state_dict() if scaler.is_enabled() else None,
                step=step, nimg=nimg, kimg=nimg / 1000, tick=tick, tick_start_nimg=tick_start_nimg,
                nonfinite_total=nonfinite_total,
                rng=dict(size=size_gen.get_state(), data=[s["data"] for s in streams],
                         cpu=[s["cpu"] for s in streams], cuda=[s["cuda"] for s in streams]))


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: unreadable training state ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    missing = {"net", "ema", "optimizer", "step", "nimg", "rng"} - set(state)
    if missing:
        raise ValueError(f"{path}: not a padis training state (missing {sorted(missing)})")
    return state


class _Logger:
    """Rank-0 log: prints (tqdm-safe) and appends to log.txt; stats go to stats.jsonl."""

    def __init__(self, run_dir: Path | None):
        self.run_dir = run_dir

    def __call__(self, msg: str, stats: dict | None = None) -> None:
        if self.run_dir is None:
            return
        from tqdm import tqdm
        tqdm.write(msg)
        with open(self.run_dir / "log.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if stats is not None:
            with open(self.run_dir / "stats.jsonl", "a") as f:
                f.write(json.dumps(stats) + "\n")


class _Writer:
    """Rank-0 snapshot and training-state writer; files are never overwritten."""

    def __init__(self, run_dir: Path, active: bool, ema, loss_fn, dataset_kwargs: dict, cfg: dict):
        self.run_dir, self.active = run_dir, active
        self.ema, self.loss_fn, self.dataset_kwargs, self.cfg = ema, loss_fn, dataset_kwargs, cfg

    def snapshot(self, step: int, nimg: int) -> None:
        if not self.active:
            return
        from torch_utils import persistence

        base = self.run_dir / f"network-snapshot-{step:06d}"
        files = [base.with_suffix(s) for s in (".safetensors", ".json", ".pkl")]
        present = [f for f in files if f.exists()]
        if len(present) == len(files):
            return
        for f in present:  # an interrupted run wrote part of this step's set; resume rewrites it
            f.unlink()
        net = copy.deepcopy(self.ema).cpu().eval().requires_grad_(False)
        extra = dict(step=step, kimg=nimg / 1000, pad_width=self.loss_fn.pad_width,
                     patch_sizes=[str(s) for s in self.cfg["patch_sizes"]],
                     dataset_kwargs=self.dataset_kwargs)
        persistence.save_network(net, base.with_suffix(".safetensors"), extra=extra)
        persistence.save_pickle(base.with_suffix(".pkl"),
                                dict(ema=net, loss_fn=self.loss_fn, augment_pipe=None,
                                     dataset_kwargs=dict(self.dataset_kwargs)))

    def state(self, state: dict) -> None:
        if not self.active:
            return
        path = self.run_dir / f"training-state-{state['step']:06d}.pt"
        if path.exists():
            return
        state = dict(state, config=json.loads(json.dumps(self.cfg, default=str)))
        misc.atomic_write_with(path, lambda tmp: torch.save(state, tmp))
