"""Training loop of the patch prior: data, DDP, EMA, snapshots, exact resume, stats.

``run(cfg)`` takes a :class:`training.config.TrainConfig` or a dict of its fields (the one
``train.py`` builds).

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
import inspect
import json
import os
import re
import resource
import signal
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from torch_utils import distributed as dist
from torch_utils import misc
from training.config import TrainConfig
from training.dataset import ImageDataset
from training.networks import PRECISIONS, build_network
from training.patch_loss import (
    WHOLE,
    PatchEDMLoss,
    batch_multipliers,
    patch_probabilities,
    patch_shape,
    sample_patch_size,
)
from training.resume_check import state_mismatch

_STATE_RE = re.compile(r"^training-state-(\d+)\.pt$")
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
    runs = sorted((p for p in outdir.iterdir() if p.is_dir() and misc.RUN_DIR_RE.match(p.name)
                   and (suffix is None or p.name[5:] == suffix)),
                  key=lambda p: int(misc.RUN_DIR_RE.match(p.name).group(1)), reverse=True)
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


def resolve_config(cfg: dict | TrainConfig | None = None, **kwargs) -> dict:
    """Defaults + cfg + kwargs, checked and with defaults that need no data filled
    (``TrainConfig.resolved``), as a dict: what ``train.py --dry-run`` prints."""
    return _resolve(cfg, kwargs).to_dict()


def _resolve(cfg: dict | TrainConfig | None, kwargs: dict) -> TrainConfig:
    values = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg or {})
    values.update(kwargs)
    return TrainConfig.from_dict(values).resolved()


# ----------------------------------------------------------------------------------------
# The loop


def run(cfg: dict | TrainConfig | None = None, **kwargs) -> dict:
    """Train; returns ``dict(run_dir, step, nimg, interrupted)``. See the module docstring."""
    c = _resolve(cfg, kwargs)
    device = dist.init(c.device)
    threads = torch.get_num_threads()
    if c.workers:
        torch.set_num_threads(int(c.workers))
    try:
        return _run(c, device)
    finally:
        torch.set_num_threads(threads)


@dataclass
class Progress:
    """Where training stands; saved in and restored from the training state as one object
    (its fields are top-level keys of the state, plus ``kimg`` for readers)."""

    step: int = 0  # optimizer updates
    nimg: int = 0  # training images (patches) seen
    tick: int = 0  # ticks completed
    tick_start_nimg: int = 0  # nimg when the current tick began
    nonfinite_total: int = 0  # steps skipped for a non-finite loss

    def to_state(self) -> dict:
        return dict(step=self.step, nimg=self.nimg, kimg=self.nimg / 1000, tick=self.tick,
                    tick_start_nimg=self.tick_start_nimg, nonfinite_total=self.nonfinite_total)

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        return cls(**{f.name: int(state[f.name]) for f in fields(cls)})


@dataclass
class _TickStats:
    """What the current tick accumulated (reset when a tick ends)."""

    steps: int = 0
    loss: float = 0.0
    patches: int = 0
    skips: int = 0
    t0: float = field(default_factory=time.time)


@dataclass
class _Training:
    """Everything the steps and ticks of one run share."""

    c: TrainConfig  # resolved, with batch set
    device: torch.device
    rank: int
    world: int
    rounds: int  # microbatches per step (gradient accumulation)
    batch_gpu: int  # base images per microbatch
    images: torch.Tensor  # this rank's shard of the training images, on the device
    sizes: list
    probs: list[float]
    batch_mul: dict
    net: torch.nn.Module
    ema: torch.nn.Module
    loss_fn: PatchEDMLoss
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    size_gen: torch.Generator  # patch size of each step (CPU, the same on every rank)
    data_gen: torch.Generator  # indices, crops, sigmas, noise (device, per rank)
    ddp: torch.nn.Module = None  # net, or its DistributedDataParallel wrapper
    writer: _Writer = None
    log: _Logger = None
    lr: float = 0.0  # learning rate of the last update
    nonfinite_run: int = 0  # non-finite losses in a row

    def gather_state(self, progress: Progress) -> dict:
        """The training state (collective: every rank contributes its random-stream states)."""
        mine = dict(data=self.data_gen.get_state().cpu(), cpu=torch.get_rng_state(),
                    cuda=torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)
        streams = dist.all_gather_object(mine)
        return dict(net=self.net.state_dict(), ema=self.ema.state_dict(), optimizer=self.opt.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    **progress.to_state(),
                    rng=dict(size=self.size_gen.get_state(), data=[s["data"] for s in streams],
                             cpu=[s["cpu"] for s in streams], cuda=[s["cuda"] for s in streams]))


def _run(c: TrainConfig, device: torch.device) -> dict:
    rank, world = dist.rank(), dist.world_size()
    batch, rounds, batch_gpu = _batch_geometry(c, world)
    c = c.replace(batch=batch)
    resume_path, reuse_dir = _resume_source(c, rank)
    if rank == 0:  # fail before any work if the outputs cannot be written
        misc.check_writable(reuse_dir or c.outdir)
    dataset = ImageDataset(c.data, mat_key=c.mat_key, normalize=c.normalize, max_images=c.max_images,
                           xflip=c.xflip)
    t = _set_up_training(c, device, rank, world, rounds, batch_gpu, dataset)
    progress = _restore(t, resume_path, dataset) if resume_path is not None else Progress()
    run_dir, cfg_out = _open_run_dir(t, dataset, reuse_dir, resume_path, progress)
    if world > 1:
        t.ddp = _wrap_ddp(t.net, device)
    dataset_kwargs = dict(class_name="training.dataset.ImageDataset", **dataset.kwargs,
                          resolution=list(dataset.resolution), channels=dataset.channels)
    t.writer = _Writer(run_dir, rank == 0, t.ema, t.loss_fn, dataset_kwargs, cfg_out)
    interrupted = _train(t, progress)
    if progress.step > 0 or interrupted:  # interrupted too: the state first (what resume needs), then the network
        t.writer.state(t.gather_state(progress))
        if progress.step > 0:
            t.writer.snapshot(progress.step, progress.nimg)
    if interrupted:
        t.log(f"stopped by signal {int(interrupted)} at step {progress.step}; training state"
              f"{' and network snapshot' if progress.step > 0 else ''} written")
    else:
        t.log(f"done: step {progress.step}, {progress.nimg / 1000:.3f} kimg, {progress.nonfinite_total} "
              "non-finite steps skipped")
    debug_dir = os.environ.get(DEBUG_CHECKSUM_ENV)
    if debug_dir:
        misc.atomic_write_json(Path(debug_dir) / f"params-rank{rank}.json",
                               dict(rank=rank, step=progress.step, net=_param_checksum(t.net),
                                    ema=_param_checksum(t.ema)))
    dist.barrier()
    dist.shutdown()
    return dict(run_dir=run_dir, step=progress.step, nimg=progress.nimg, interrupted=int(interrupted))


def _batch_geometry(c: TrainConfig, world: int) -> tuple[int, int, int]:
    """(base batch over all processes: ``c.batch``, or one per process if None; microbatches
    per step; base images per microbatch). ``c`` is not changed."""
    batch = world if c.batch is None else c.batch
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    if batch % world:
        raise ValueError(f"batch={batch} is not divisible by the {world} processes")
    batch_rank = batch // world
    batch_gpu = c.batch_gpu or batch_rank
    if batch_rank % batch_gpu:
        raise ValueError(f"batch_gpu={batch_gpu} does not divide the per-process batch {batch_rank}")
    return batch, batch_rank // batch_gpu, batch_gpu


def _resume_source(c: TrainConfig, rank: int) -> tuple[Path | None, Path | None]:
    """(training state to resume from, run directory to continue in) for ``c.resume``."""
    if c.resume == "auto":
        desc = c.desc or _default_desc(c)
        found = dist.broadcast_object(str(find_latest_state(c.outdir, desc) or "") if rank == 0 else None)
        if found:
            return Path(found), Path(found).parent
        return None, None
    if c.resume:
        path = Path(c.resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume={path}: training state not found")
        return path, None
    return None, None


def _set_up_training(c: TrainConfig, device: torch.device, rank: int, world: int, rounds: int, batch_gpu: int,
                     dataset: ImageDataset) -> _Training:
    """Patch geometry, network (identical initialisation on every rank), EMA, loss, optimizer
    and the random streams, seeded."""
    height, width = dataset.resolution
    pad, sizes = c.pad_width, c.patch_sizes
    canvas = (height + 2 * pad, width + 2 * pad)
    probs = patch_probabilities(len(sizes), c.real_p)
    batch_mul = batch_multipliers(sizes, canvas=max(canvas), base=c.batch_mul_base)
    images = dataset.shard(rank, world).images.to(device)
    torch.manual_seed(c.seed)
    positional = c.positional and sizes != [WHOLE]
    if c.transfer:
        net = transfer_network(c.transfer, c.arch_overrides, dataset.channels, positional).to(device)
    else:
        net = build_network(c.arch, img_resolution=max(canvas), image_channels=dataset.channels,
                            positional=positional, **c.arch_overrides).to(device)
    _check_patch_shapes(net, sizes, (height, width), pad)
    net.train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    loss_fn = PatchEDMLoss(pad_width=pad, augment=c.augment, **c.loss_kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=c.lr, betas=tuple(c.adam_betas), eps=c.adam_eps)
    scaler = torch.amp.GradScaler("cuda", enabled=(c.precision == "fp16" and device.type == "cuda"))
    size_gen = torch.Generator().manual_seed(c.seed)
    data_gen = torch.Generator(device=device).manual_seed(c.seed * 1_000_003 + 7919 * (rank + 1))
    torch.manual_seed(c.seed + 1 + rank)
    if device.type == "cuda":
        torch.cuda.manual_seed(c.seed + 1 + rank)
    return _Training(c=c, device=device, rank=rank, world=world, rounds=rounds, batch_gpu=batch_gpu,
                     images=images, sizes=sizes, probs=probs, batch_mul=batch_mul, net=net, ema=ema, ddp=net,
                     loss_fn=loss_fn, opt=opt, scaler=scaler, size_gen=size_gen, data_gen=data_gen, lr=c.lr)


def _check_patch_shapes(net: torch.nn.Module, sizes: list, image_hw: tuple[int, int], pad: int) -> None:
    levels = len(net.init_kwargs["channel_mult"])
    factor = 2 ** (levels - 1)
    for s in sizes:
        h, w = patch_shape(s, image_hw, pad)
        if h % factor or w % factor:
            raise ValueError(f"patch size {s} gives {h}x{w} patches; with {levels} "
                             f"network levels both sides must be divisible by {factor}")


def _restore(t: _Training, path: Path, dataset: ImageDataset) -> Progress:
    """Network, EMA, optimizer, scaler and random streams from the training state ``path``
    (which must fit this network, config and data: training.resume_check)."""
    state = _load_state(path)
    current = dict(t.c.to_dict(), image_channels=dataset.channels, image_resolution=list(dataset.resolution))
    why = state_mismatch(state, current, t.net, t.ema)
    if why:
        raise ValueError(f"{path}: training state does not match this network/config: {why}")
    try:
        t.net.load_state_dict(state["net"])
        t.ema.load_state_dict(state["ema"])
        t.opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: training state does not match this network/config "
                         f"({str(exc).splitlines()[0]})") from None
    if state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    t.size_gen.set_state(rng["size"])
    if len(rng["data"]) == t.world:
        t.data_gen.set_state(rng["data"][t.rank])
        torch.set_rng_state(rng["cpu"][t.rank])
        if t.device.type == "cuda" and rng["cuda"][t.rank] is not None:
            torch.cuda.set_rng_state(rng["cuda"][t.rank], t.device)
    else:
        warnings.warn(f"{path}: saved with {len(rng['data'])} processes, now {t.world}; "
                      "per-process random streams restart from the seed")
    return Progress.from_state(state)


def _open_run_dir(t: _Training, dataset: ImageDataset, reuse_dir: Path | None, resume_path: Path | None,
                  progress: Progress) -> tuple[Path, dict]:
    """Rank 0 makes the run directory (or continues in the resumed one) and writes the config;
    every rank learns its path. Starts the log. Returns (run_dir, the config written)."""
    c, rank = t.c, t.rank
    run_dir = None
    if rank == 0:
        run_dir = reuse_dir if reuse_dir is not None else misc.new_run_dir(c.outdir, c.desc or _default_desc(c))
    run_dir = Path(dist.broadcast_object(str(run_dir) if run_dir else None))
    height, width = dataset.resolution
    cfg_out = dict(c.to_dict(), run_dir=str(run_dir), world_size=t.world, resumed_from=str(resume_path or ""),
                   image_resolution=[height, width], image_channels=dataset.channels,
                   batch_mul={str(k): v for k, v in t.batch_mul.items()}, patch_probs=t.probs)
    if rank == 0:
        name = "config.json" if reuse_dir is None else f"config-resume-{progress.step:06d}.json"
        if not (run_dir / name).exists():
            misc.atomic_write_json(run_dir / name, cfg_out)
    t.log = log = _Logger(run_dir if rank == 0 else None)
    log(f"run directory {run_dir}; {len(dataset)} images {dataset.channels}x{height}x{width}, "
        f"{t.world} process(es) on {t.device}; patch sizes {t.sizes} p={[round(p, 3) for p in t.probs]} "
        f"batch_mul {t.batch_mul}; pad {c.pad_width}")
    if resume_path is not None:
        log(f"resumed from {resume_path} at step {progress.step}, {progress.nimg / 1000:.3f} kimg")
    if rank == 0 and reuse_dir is not None:
        for tmp in misc.remove_stale_temps(run_dir):
            log(f"removed {tmp.name}, a temporary file left by an interrupted write")
    return run_dir, cfg_out


def _train(t: _Training, progress: Progress) -> int:
    """Steps until the duration is reached or a signal arrives (then the signal number, else 0);
    a tick ends every ``tick_kimg``, at the end and when stopping."""
    c = t.c
    total_nimg = int(round(c.duration_mimg * 1e6))
    pbar = None
    if t.rank == 0 and c.progress:
        from tqdm import tqdm
        pbar = tqdm(total=total_nimg / 1000, initial=min(progress.nimg, total_nimg) / 1000, unit="kimg",
                    bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}]")
    tick, interrupted = _TickStats(), 0
    with _StopFlag() as stop:
        while True:
            done = progress.nimg >= total_nimg
            stopping = dist.any_true(stop.signum != 0, t.device) if t.world > 1 else stop.signum != 0
            if stopping and not interrupted:
                interrupted = stop.signum or signal.SIGTERM
            tick_due = progress.nimg >= progress.tick_start_nimg + c.tick_kimg * 1000
            if tick.steps and (tick_due or done or stopping):
                _end_tick(t, progress, tick)
                tick = _TickStats()
            if done or stopping:
                break
            _train_step(t, progress, tick)
            if pbar is not None:
                pbar.update(min(progress.nimg, total_nimg) / 1000 - pbar.n)
    if pbar is not None:
        pbar.close()
    return interrupted


def _train_step(t: _Training, progress: Progress, tick: _TickStats) -> None:
    """One optimizer step (the same patch size on every rank), or, if the loss is not finite,
    a skipped one (no update, not counted; an error after ``max_nonfinite`` in a row)."""
    c, device = t.c, t.device
    psize = sample_patch_size(t.sizes, t.probs, t.size_gen)
    mul = t.batch_mul[psize]
    autocast = PRECISIONS[c.precision]
    t.opt.zero_grad(set_to_none=True)
    step_loss = torch.zeros((), device=device)
    for r in range(t.rounds):
        idx = torch.randint(len(t.images), (t.batch_gpu * mul,), generator=t.data_gen, device=device)
        sync = contextlib.nullcontext() if (t.world == 1 or r == t.rounds - 1) else t.ddp.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = t.loss_fn(t.ddp, t.images[idx], psize, t.data_gen)
            loss = loss.float().mean() / t.rounds
            t.scaler.scale(loss).backward()
        step_loss += loss.detach()
    finite = bool(torch.isfinite(step_loss).item())
    if t.world > 1:
        finite = not dist.any_true(not finite, device)
    if not finite:
        progress.nonfinite_total += 1
        t.nonfinite_run += 1
        tick.skips += 1
        warnings.warn(f"non-finite loss at step {progress.step} (patch size {psize}); update skipped "
                      f"({t.nonfinite_run} in a row)")
        t.opt.zero_grad(set_to_none=True)
        if t.nonfinite_run >= c.max_nonfinite:
            raise RuntimeError(f"training diverged: {t.nonfinite_run} non-finite losses in a row "
                               f"at step {progress.step} (limit max_nonfinite={c.max_nonfinite}); "
                               f"try lr={c.lr / 10:g} or precision=fp32")
        return
    t.nonfinite_run = 0
    images_step = c.batch * mul
    ramp = c.lr_rampup_kimg * 1000
    t.lr = c.lr * (min((progress.nimg + images_step) / ramp, 1.0) if ramp > 0 else 1.0)
    for group in t.opt.param_groups:
        group["lr"] = t.lr
    t.scaler.step(t.opt)
    t.scaler.update()
    progress.nimg += images_step
    progress.step += 1
    _update_ema(t.ema, t.net, progress.nimg, images_step, c.ema_halflife_kimg, c.ema_rampup_ratio)
    if t.world > 1:
        step_loss = step_loss.clone()
        torch.distributed.all_reduce(step_loss)
        step_loss /= t.world
    tick.steps += 1
    tick.loss += float(step_loss)
    tick.patches += images_step


def _end_tick(t: _Training, progress: Progress, tick: _TickStats) -> None:
    """Log the tick's stats; every ``snap_ticks`` a snapshot, every ``dump_ticks`` a training state."""
    c, now = t.c, time.time()
    stats = dict(kimg=round(progress.nimg / 1000, 4), step=progress.step, tick=progress.tick,
                 loss=tick.loss / max(tick.steps, 1), patches_per_s=tick.patches / max(now - tick.t0, 1e-9),
                 sec_per_tick=now - tick.t0, lr=t.lr, peak_mem_mb=round(_peak_memory_mb(t.device), 1),
                 nonfinite=tick.skips, time=now)
    t.log(f"tick {progress.tick} kimg {stats['kimg']:.3f} step {progress.step} loss {stats['loss']:.4f} "
          f"patches/s {stats['patches_per_s']:.1f} sec/tick {stats['sec_per_tick']:.1f} "
          f"lr {t.lr:.3g} peak_mem {stats['peak_mem_mb']:.0f} MB", stats=stats)
    progress.tick += 1
    progress.tick_start_nimg = progress.nimg  # the state dumped below starts the next tick
    if c.snap_ticks and progress.tick % c.snap_ticks == 0:
        t.writer.snapshot(progress.step, progress.nimg)
    if c.dump_ticks and progress.tick % c.dump_ticks == 0:
        t.writer.state(t.gather_state(progress))


def _wrap_ddp(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP without per-forward buffer syncs (the buffers are constant resampling filters, equal
    on every rank) and with gradients as views of the reduction buckets (no copy, so no "grad
    strides do not match bucket view strides" warning from each rank). Newer torch names the
    buffer option ``forward_sync_buffers`` and warns on ``broadcast_buffers``."""
    DDP = torch.nn.parallel.DistributedDataParallel
    sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
            else "broadcast_buffers")
    return DDP(net, device_ids=[device] if device.type == "cuda" else None, gradient_as_bucket_view=True,
               **{sync: False})


def _default_desc(c: TrainConfig) -> str:
    data = Path(c.data).stem or "data"
    sizes = "-".join(str(s) for s in c.patch_sizes)
    arch = f"from-{Path(c.transfer).stem}" if c.transfer else c.arch
    return f"{data}-{arch}-p{sizes}-pad{c.pad_width}-b{c.batch}"


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
