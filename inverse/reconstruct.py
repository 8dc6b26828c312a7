"""Image mode: one reconstruction run over a directory of images: load, simulate or read y,
solve, save, report. (Volume mode, ``cfg.volume``, is :func:`inverse.volume.run_volume`; both
are built from the stages of :mod:`inverse.stages` and neither imports the other.)

``run(cfg)`` is what ``inverse_nodist.py``, the demo and the benchmarks call; ``cfg`` is an
:class:`inverse.config.ReconConfig` (or a dict of its fields), written to ``config.json``.
``run`` is a sequence of named stages, each below:

    start_run         resolve the defaults once, check the names (solver, baselines, prior, K),
                      torch's threads (inverse.stages)
    set_up            inputs, network (checked against the inputs' channels), patch grid, prior
                      and schedule (inverse.prior_setup.load_prior), solver, run directory
                      (:class:`Setup`)
    replay_completed  a resumed run reads back the images the earlier run finished
    solve_all         per group of images: prepare_image (measurement, baselines), solve_group,
                      score_and_save
    gather_summary    rank 0 collects every rank's :class:`Results`, writes metrics and summary

Inputs are :class:`Item` s; every finished image (fresh or replayed) goes into one
:class:`Results` accumulator.

Each image ``i`` (in sorted order) uses its own generator seeded with ``seed + i``; its
measurement noise is drawn from it, so measurements never depend on batching. With
``images_per_batch`` 1 (the default) the solver continues that same generator, so one image can
be reconstructed alone with the same result. With K > 1, consecutive images of the same size
(in sorted order, after the images a resumed run already has) are solved as one batch of up to
K images; the batch's solver randomness (noise and patch-grid offsets, one offset per call for
all its images) continues the generator of its **first** image. A batch of one image is
therefore exactly the K = 1 result, but results of images in larger batches depend on K and on
which images share the batch (the same numbers again for the same inputs, seed and K).
Per-image ``seconds`` then count an equal share of the batch's solve.

Posterior samples (``samples`` K > 1): every image of a group is repeated K times along the
batch axis (image-major: image 0's K copies first), so one solve draws K reconstructions of each
image, the patches of all of them in the same network call (``batch`` still caps the patches per
call). Their start noise and renoise noise are independent; the patch-grid offset of a call is
shared by the whole batch (as for ``images_per_batch``). ``NAME_recon`` is then the mean of the
K samples (scored as PaDIS), ``NAME_std`` the per-pixel sample standard deviation (K - 1 in the
denominator; its PNG scaled by its own maximum, recorded as ``std_max`` in NAME_metrics.json)
and, with ``save_samples``, ``NAME_samples.npy`` the samples ``(K, C, H, W)``. K = 1 is the
single-sample run exactly (no std file).
Images are (1, C, H, W) float32 in [0, 1] on ``device``.

Robustness: the output directory is checked for writability first. An input file that cannot
be read, or an image of the wrong size or channel count, is skipped and listed (file, image,
reason) in ``summary.json``'s ``failures`` and on stderr; so is an image whose solver stops on
non-finite values (``FloatingPointError``). If no input is usable the run fails before it makes
a run directory. ``resume`` (a run directory; its ``config.json`` must match ``cfg`` except in
the fields a resumed run may change, see :mod:`inverse.config`) skips images whose
``NAME_metrics.json`` marker and files are complete, reading their metrics back, redoes the
others (deleting their partial files first) and rewrites ``metrics.csv``, ``summary.json`` and
``comparison.png`` atomically at the end.

Under ``torchrun`` (``WORLD_SIZE`` > 1) rank r takes images r, r + world, ...; rank 0 makes the
run directory, every rank writes its own per-image files, and rank 0 gathers the metrics and
writes ``metrics.csv``, ``summary.json`` and ``comparison.png``.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from inverse import io as rio
from inverse import stages
from inverse.config import ReconConfig
from inverse.prior_setup import open_network
from torch_utils import distributed as ddp
from torch_utils import misc

PADIS = stages.PADIS  # method name of our reconstruction in metrics.csv / summary.json
STD = rio.STD_COLUMN  # comparison-figure column of the posterior std (not a method: not scored)


class Item(NamedTuple):
    """One input image."""

    index: int  # position in sorted input order; its generator is seeded with seed + index
    name: str  # image name (file stem, or stem + index inside a stack)
    source: str  # the file it came from
    data: np.ndarray  # (C, H, W) ground truth, or the measurement when there is none


def image_batches(items: list, k: int, key: Callable) -> list[list]:
    """Split ``items`` (in order) into runs of consecutive items with equal ``key(item)``, each
    cut into batches of at most ``k``."""
    stages.check_images_per_batch(k)
    batches: list[list] = []
    for item in items:
        last = batches[-1] if batches else None
        if last is not None and len(last) < k and key(last[-1]) == key(item):
            last.append(item)
        else:
            batches.append([item])
    return batches


def grey_rgb_to_single(items: list[Item], channels: int) -> tuple[list[Item], list[str]]:
    """For a 1-channel network, images stored as RGB with three equal channels become
    1-channel; returns (items, names converted)."""
    if channels != 1:
        return items, []
    out, converted = [], []
    for item in items:
        grey = rio.grey_from_rgb(item.data)
        if grey is not None:
            item = item._replace(data=grey)
            converted.append(item.name)
        out.append(item)
    return out, converted


def field_of_view_warning(items: list[Item], operator: Callable) -> str | None:
    """One line if some ground-truth images have content the operator does not see from every
    view (fan beam, ``op.fov_warning``): the first such image, how many, and the remedy."""
    hits = []
    for item in items:
        check = getattr(operator(tuple(item.data.shape[1:])), "fov_warning", None)
        message = check(item.data) if check else None
        if message:
            hits.append((item.name, message))
    if not hits:
        return None
    more = f" and {len(hits) - 1} more of {len(items)} images" if len(hits) > 1 else ""
    return f"{hits[0][0]}{more}: {hits[0][1]}"


def check_channels(images: list[tuple[str, np.ndarray]], channels: int, source: str) -> None:
    for name, x in images:
        if x.shape[0] != channels:
            raise ValueError(f"{source}: image {name!r} has {x.shape[0]} channel(s) but the network "
                             f"denoises {channels}-channel images (use matching data or another network)")


def _keep_valid(items: list[Item], failures: list[dict], check: Callable) -> list[Item]:
    """Items for which ``check(item)`` raises no ValueError; the others go to ``failures``.
    If none is left, the first failure is raised (one line)."""
    kept, first = [], len(failures)
    for item in items:
        try:
            check(item)
            kept.append(item)
        except ValueError as exc:
            failures.append(rio.failure_record(item.source, str(exc), image=item.name))
    if not kept and len(failures) > first:
        raise ValueError(rio.failure_line(failures[first]))
    return kept


def _make_run_dir(cfg: ReconConfig, rank: int) -> Path:
    """Rank 0 opens the run directory (:func:`open_run_dir`); every rank gets its path."""
    run_dir = stages.open_run_dir(cfg) if rank == 0 else None
    return Path(ddp.broadcast_object(str(run_dir) if run_dir else None))


def _load_inputs(cfg: ReconConfig, failures: list[dict], ranges: dict | None = None
                 ) -> tuple[list[Item] | None, bool, set]:
    """(items, has_gt, shapes): ground-truth items with (C, H, W) images (None with
    measurements: read later, when the operator is known). Bad files go to ``failures``;
    with ``normalize`` each image's original (min, max) to ``ranges``."""
    from inverse.prior import check_prior_geometry

    size = tuple(cfg.image_size) if cfg.image_size else None
    if cfg.input is not None:
        read = rio.read_ground_truth_files(cfg.input, failures, mat_key=cfg.mat_key, normalize=cfg.normalize,
                                           max_images=cfg.max_images, hu_window=cfg.hu_window, ranges=ranges)
        items = [Item(i, name, file, x) for i, (name, x, file) in enumerate(read)]

        def check_size(item: Item) -> None:
            x = item.data
            if size is not None and tuple(x.shape[1:]) != size:
                raise ValueError(f"{item.source}: image {item.name!r} is {x.shape[1]}x{x.shape[2]}, "
                                 f"expected image_size {size[0]}x{size[1]} (images are not resized)")
            check_prior_geometry(cfg.prior, cfg.pad, cfg.psize, {tuple(x.shape[1:])})

        items = _keep_valid(items, failures, check_size)
        return items, True, {tuple(it.data.shape[1:]) for it in items}
    if size is None:
        raise ValueError("image_size is required with measurements (the size of the images to reconstruct)")
    check_prior_geometry(cfg.prior, cfg.pad, cfg.psize, {size})
    return None, False, {size}


def run_baselines(op, y: torch.Tensor, cfg: ReconConfig, device: torch.device) -> tuple[dict, dict]:
    """``cfg.baselines`` on one measurement: ({name: (C, H, W) image}, {name: seconds}).

    With ``parallel_baselines`` the run calls this in a worker thread while the solver works on
    the same images (with their own operator instance; ASTRA calls are serialised by
    odlstuff.geometry.ASTRA_LOCK), so the baselines use the core the network leaves idle; the
    results are the same. Their seconds are then wall times while sharing the machine with the
    solve, and the solve's while sharing it with them; without it (the default) each method's
    seconds are its own."""
    from inverse.baselines import method_label

    images, seconds = stages.solve_baselines(op, y, cfg, device)
    label = {b: method_label(b, cfg.problem) for b in images}  # 'pinv' outside CT
    return ({label[b]: x[0].detach().float().cpu().numpy() for b, x in images.items()},
            {label[b]: t for b, t in seconds.items()})


# ----------------------------------------------------------------------------------------
# The stages of run()


def run(cfg: ReconConfig | dict) -> dict:
    """Reconstruct every input image; write the run directory; return the summary dict."""
    cfg = stages.start_run(cfg)
    if cfg.volume:
        raise ValueError("volume=True: volumes are reconstructed by inverse.volume.run_volume(cfg) "
                         "(inverse_nodist.py --volume), not inverse.reconstruct.run")
    own_pg = not ddp.is_initialized()
    try:
        setup = set_up(cfg)
        results = Results()
        pending = replay_completed(setup, results)
        solve_all(setup, pending, results)
        return gather_summary(setup, results)
    finally:
        if own_pg and ddp.is_initialized():
            ddp.shutdown()


@dataclass
class Setup:
    """What the stages after set_up share: the final config and everything built from it."""

    cfg: ReconConfig  # resolved, with run_dir, patch_range and grid set
    device: torch.device
    rank: int
    world: int
    verbose: bool  # rank 0 with progress: bars, notes and the results table
    items: list[Item]  # every usable input (all ranks)
    has_gt: bool  # items hold ground truth (else measurements)
    shapes: set  # image sizes (H, W) of the items
    failures: list[dict]  # inputs skipped before any work
    input_ranges: dict  # image name -> its (min, max) before normalize scaled it to [0, 1]
    channels: int  # image channels of the network
    prior: Any  # the whole-image denoiser (inverse.prior)
    sampler: Callable  # inverse.samplers.SAMPLERS[cfg.solver]
    solver_kwargs: dict  # the options it takes
    sigmas: torch.Tensor  # the noise schedule
    writer: rio.ResultWriter  # per-image files in the run directory
    methods: list[str]  # baselines then PADIS
    ops: dict = field(default_factory=dict)  # (shape, user) -> operator

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def tags(self) -> dict[str, str]:
        """Method -> file tag of its image (NAME_<tag>.npy)."""
        return stages.method_tags(self.methods)

    @property
    def sample_tags(self) -> list[str]:
        """File tags of the posterior-sample outputs (NAME_std, NAME_samples) of this run."""
        k = self.cfg.samples
        return (["std"] if k > 1 else []) + (["samples"] if k > 1 and self.cfg.save_samples else [])

    def operator(self, shape: tuple[int, int], user: str = "solver"):
        """The operator for ``shape``; the baselines' thread gets an instance of its own."""
        from inverse.operators import make_operator
        if (shape, user) not in self.ops:
            self.ops[shape, user] = make_operator(self.cfg.problem, shape, channels=self.channels,
                                                  device=self.device, **self.cfg.problem_kwargs)
        return self.ops[shape, user]

    def image_shape(self, item: Item) -> tuple[int, int]:
        return tuple(item.data.shape[1:]) if self.has_gt else next(iter(self.shapes))


def set_up(cfg: ReconConfig) -> Setup:
    """Stage 2: output directory, inputs, network, prior and operators are all checked before
    any work; a bad input file is recorded in ``failures`` and the others still run. Makes the
    run directory and writes config.json last."""
    from inverse.baselines import method_label

    device = ddp.init(cfg.device)
    rank, world = ddp.rank(), ddp.world_size()
    if rank == 0:
        misc.check_writable(cfg.resume if cfg.resume else cfg.outdir)
    failures: list[dict] = []
    ranges: dict = {}
    items, has_gt, shapes = _load_inputs(cfg, failures, ranges)
    network = open_network(cfg.network, device, cfg.prior)
    if has_gt:
        items = _match_channels(items, network.channels, failures, rank)
        shapes = {tuple(it.data.shape[1:]) for it in items}
    cfg, loaded = stages.load_run_prior(cfg, network, shapes, device)
    if rank == 0:
        stages.print_lines(loaded.messages())
    setup = Setup(cfg=cfg, device=device, rank=rank, world=world, verbose=rank == 0 and cfg.progress,
                  items=items, has_gt=has_gt, shapes=shapes, failures=failures, input_ranges=ranges,
                  channels=network.channels, prior=loaded.prior,
                  sampler=None, solver_kwargs={}, sigmas=loaded.sigmas, writer=None,
                  methods=[method_label(b, cfg.problem) for b in cfg.baselines] + [PADIS])  # 'pinv' outside CT
    if not has_gt:
        setup.items = _read_measurements(setup)
    if rank == 0:
        _report_inputs(setup)
    setup.sampler, setup.solver_kwargs = stages.set_up_solver(cfg, setup.verbose)
    _open_run_dir(setup)
    return setup


def _match_channels(items: list[Item], channels: int, failures: list[dict], rank: int) -> list[Item]:
    """Grey images stored as RGB become 1-channel for a 1-channel network (a note on rank 0 says
    so); images of another channel count than the network's go to ``failures``."""
    items, converted = grey_rgb_to_single(items, channels)
    if converted and rank == 0:
        print(f"note: {len(converted)} grey image(s) stored as RGB ({', '.join(converted[:3])}"
              f"{', ...' if len(converted) > 3 else ''}) read as 1 channel for this 1-channel network",
              file=sys.stderr)
    return _keep_valid(items, failures, lambda it: check_channels([(it.name, it.data)], channels, it.source))


def _report_inputs(setup: Setup) -> None:
    """The skipped inputs and the field-of-view warning (stderr)."""
    for f in setup.failures:
        print(f"skipped {rio.failure_line(f)}", file=sys.stderr)
    fov = field_of_view_warning(setup.items, setup.operator) if setup.has_gt else None
    if fov:
        print(f"warning: {fov}", file=sys.stderr)


def _read_measurements(setup: Setup) -> list[Item]:
    """Items of the measurement files, checked against the operator's measurement shape."""
    cfg = setup.cfg
    shape = next(iter(setup.shapes))
    read = rio.read_measurement_files(cfg.measurements, (setup.channels, *setup.operator(shape).measurement_shape),
                                      max_images=cfg.max_images, failures=setup.failures)
    return [Item(i, name, file, y) for i, (name, y, file) in enumerate(read)]


def _open_run_dir(setup: Setup) -> None:
    """The run directory (new, or resume's); config.json of a new run; the result writer."""
    run_dir = _make_run_dir(setup.cfg, setup.rank)
    setup.cfg = setup.cfg.replace(run_dir=str(run_dir))
    if setup.rank == 0 and not setup.cfg.resume:
        misc.atomic_write_json(run_dir / "config.json", setup.cfg.to_dict())
    setup.writer = rio.ResultWriter(run_dir, sinogram=setup.cfg.problem.startswith("ct"))


@dataclass
class Results:
    """Everything a rank finished (solved now or read back from the run being resumed)."""

    rows: list[dict] = field(default_factory=list)  # metrics.csv rows: one per image and method
    comparison: list[dict] = field(default_factory=list)  # comparison.png rows (the first images)
    calls: list[int] = field(default_factory=list)  # denoiser calls per image
    seconds: list[float] = field(default_factory=list)  # seconds per image (all methods)
    failures: list[dict] = field(default_factory=list)  # images whose solve failed
    resumed: int = 0  # images read back from the run being resumed

    def add(self, item: Item, rows: list[dict], calls: int, seconds: float, images: Callable[[], dict],
            has_gt: bool) -> None:
        """One finished image; ``images()`` gives {method: (C, H, W)} for the comparison figure."""
        self.rows.extend(rows)
        self.calls.append(calls)
        self.seconds.append(seconds)
        if item.index < rio.COMPARISON_MAX_ROWS:
            self.comparison.append(dict(index=item.index, name=item.name, gt=item.data if has_gt else None,
                                        images=images(), psnr={r["method"]: r["psnr"] for r in rows}))


def replay_completed(setup: Setup, results: Results) -> list[Item]:
    """Stage 3: this rank's items; those a resumed run already finished go into ``results``
    (read back from their files), the others are returned, in order."""
    mine = setup.items[setup.rank::setup.world]
    if not setup.cfg.resume:
        return mine
    pending = []
    for item in mine:
        record = setup.writer.completed(item.name)
        if record is None:
            pending.append(item)
            continue
        results.resumed += 1
        results.add(item, record["rows"], record["calls"], record["seconds"], has_gt=setup.has_gt,
                    images=lambda name=item.name: _read_back_images(setup, name))
    return pending


def _read_back_images(setup: Setup, name: str) -> dict:
    """{method: image} (and 'std' with samples) of a completed image, from its files."""
    images = {m: np.load(setup.run_dir / f"{name}_{t}.npy") for m, t in setup.tags.items()}
    if "std" in setup.sample_tags:
        images[STD] = np.load(setup.run_dir / f"{name}_std.npy")
    return images


class Prepared(NamedTuple):
    """An image ready for the solve."""

    item: Item
    y: torch.Tensor  # (1, ...) its measurement
    generator: torch.Generator  # seeded with seed + index; drew the measurement noise
    baselines: Future  # -> ({method: image}, {method: seconds})
    seconds: float  # spent preparing it (simulation, saving y)
    noise_std: float  # std of its measurement noise in y's units (from cfg.noise; 0: none)


def solve_all(setup: Setup, pending: list[Item], results: Results) -> None:
    """Stage 4: the pending items, in groups of up to K images of one size."""
    outer = tqdm(total=len(pending) + results.resumed, initial=results.resumed, desc="images", unit="img",
                 disable=not setup.verbose, position=0)
    pool = None  # parallel_baselines: the baselines run in one worker thread, overlapping the solve
    if setup.cfg.parallel_baselines and setup.cfg.baselines:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baselines")
    try:  # close the bar on errors too: the one-line error must start its own line
        for group in image_batches(pending, setup.cfg.images_per_batch, setup.image_shape):
            prepared = [prepare_image(setup, item, pool) for item in group]
            solved = solve_group(setup, prepared, results)
            if solved is not None:
                samples, solve_seconds = solved
                for k, p in enumerate(prepared):
                    score_and_save(setup, p, samples[k], solve_seconds / len(prepared), results)
                    if setup.verbose and setup.has_gt:
                        outer.set_postfix_str(f"{p.item.name}: PSNR {results.rows[-1]['psnr']:.2f} dB")
                    outer.update(1)
            else:
                outer.update(len(group))
    finally:
        outer.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)


def prepare_image(setup: Setup, item: Item, pool: ThreadPoolExecutor | None) -> Prepared:
    """Its measurement (simulated from the ground truth with its own generator, or given),
    saved; its baselines started (in ``pool``) or done."""
    cfg, device = setup.cfg, setup.device
    op = setup.operator(setup.image_shape(item))
    if cfg.resume:
        setup.writer.remove_partial(item.name, [*setup.tags.values(), *setup.sample_tags])
    gen = torch.Generator(device=device).manual_seed(cfg.seed + item.index)
    t_start = time.perf_counter()
    with torch.no_grad():
        if setup.has_gt:
            y = op.A(torch.from_numpy(item.data)[None].to(device))
            noise_std = stages.measurement_noise_std(op, y, cfg.noise, cfg.noise_absolute)
            if cfg.noise:
                y = op.noise(y, cfg.noise, gen, absolute=cfg.noise_absolute)
        else:
            y = torch.from_numpy(item.data)[None].to(device)
            noise_std = stages.measurement_noise_std(op, y, cfg.noise, cfg.noise_absolute)
    setup.writer.save_measurement(item.name, y[0].detach().cpu().numpy())
    seconds = time.perf_counter() - t_start  # the baselines' own seconds are added later
    if pool:
        baselines = pool.submit(run_baselines, setup.operator(setup.image_shape(item), "baselines"), y, cfg, device)
    else:  # in this thread, before the solve: every method's seconds are its own
        baselines = Future()
        baselines.set_result(run_baselines(op, y, cfg, device))
    return Prepared(item, y, gen, baselines, seconds, noise_std)


def solve_group(setup: Setup, prepared: list[Prepared], results: Results) -> tuple[torch.Tensor, float] | None:
    """One solve for the group (each image ``samples`` times), its randomness continuing its
    first image's generator: (samples (n, K, C, H, W), seconds), or None if it diverged (its
    images then go to ``results.failures``)."""
    group = [p.item for p in prepared]
    op = setup.operator(setup.image_shape(group[0]))
    k = setup.cfg.samples
    y = torch.cat([p.y for p in prepared])
    if k > 1:
        y = y.repeat_interleave(k, dim=0)
    label = group[0].name if len(group) == 1 else f"{group[0].name} +{len(group) - 1}"
    noise_std = float(np.sqrt(np.mean([p.noise_std ** 2 for p in prepared])))  # the group's rms
    options = stages.with_noise_std(setup.sampler, setup.solver_kwargs, noise_std)
    bar = tqdm(total=len(setup.sigmas), desc=label, unit="step", leave=False, disable=not setup.verbose,
               position=1)
    setup.prior.reset_calls()
    try:
        x, seconds = misc.timed(lambda: setup.sampler(setup.prior, op, y, setup.sigmas, prepared[0].generator,
                                                      callback=lambda *_a, **_k: bar.update(1),
                                                      **options), setup.device)
        return x.reshape(len(group), k, *x.shape[1:]), seconds
    except FloatingPointError as exc:  # this solve diverged: record its images, go on with the others
        together = f" (solved together with {len(group) - 1} other image(s))" if len(group) > 1 else ""
        for item in group:
            failure = rio.failure_record(item.source, f"reconstruction stopped: {exc}{together}", image=item.name)
            results.failures.append(failure)
            print(f"failed {rio.failure_line(failure)}", file=sys.stderr)
        return None
    finally:
        bar.close()


def summarize_samples(samples: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """(mean, per-pixel std with K - 1 in the denominator) of K samples (K, C, H, W) as float32
    (C, H, W) arrays; K = 1: (that sample, None)."""
    samples = samples.detach().float().cpu()
    if samples.shape[0] == 1:
        return samples[0].numpy(), None
    return samples.mean(0).numpy(), samples.std(0, correction=1).numpy()


def save_samples(setup: Setup, name: str, samples: torch.Tensor, std: np.ndarray | None) -> dict:
    """NAME_std (and with save_samples NAME_samples.npy); the std record for NAME_metrics.json."""
    if std is None:
        return {}
    setup.writer.save_std(name, std)
    if setup.cfg.save_samples:
        setup.writer.save_samples(name, samples.detach().float().cpu().numpy())
    return dict(samples=int(samples.shape[0]), std_max=float(std.max()), std_mean=float(std.mean()))


def score_and_save(setup: Setup, p: Prepared, samples: torch.Tensor, solve_seconds: float, results: Results) -> None:
    """Save every method's image (PaDIS: the mean of the K samples, and their std), score it
    against the ground truth, mark the image complete."""
    from inverse.metrics import psnr, ssim

    item, t_start = p.item, time.perf_counter()
    images, secs = p.baselines.result()
    images[PADIS], std = summarize_samples(samples)
    secs[PADIS] = solve_seconds
    extra = save_samples(setup, item.name, samples, std)
    rows = []
    for method, img in images.items():
        setup.writer.save_image(item.name, setup.tags[method], img)
        ps = ss = None
        if setup.has_gt:
            ps, ss = float(psnr(img, item.data)), float(ssim(img, item.data))
        rows.append(dict(index=item.index, image=item.name, method=method, psnr=ps, ssim=ss, seconds=secs[method]))
    seconds = p.seconds + sum(secs.values()) + time.perf_counter() - t_start
    if item.name in setup.input_ranges:
        extra["input_range"] = list(setup.input_ranges[item.name])
    setup.writer.finish_image(item.name, dict(index=item.index, image=item.name, source=item.source, rows=rows,
                                              calls=setup.prior.calls, seconds=seconds, **extra))
    figure = dict(images, **({STD: std} if std is not None else {}))
    results.add(item, rows, setup.prior.calls, seconds, images=lambda: figure, has_gt=setup.has_gt)


def gather_summary(setup: Setup, results: Results) -> dict:
    """Stage 5: rank 0 gathers every rank's results and writes metrics.csv, summary.json and
    comparison.png; every rank returns the summary."""
    gathered = ddp.all_gather_object(results)
    summary = None
    if setup.rank == 0:
        rows = sorted((r for g in gathered for r in g.rows), key=lambda r: r["index"])
        comparison = sorted((c for g in gathered for c in g.comparison), key=lambda c: c["index"])
        calls = [c for g in gathered for c in g.calls]
        seconds = [t for g in gathered for t in g.seconds]
        summary = summarize(rows, setup.methods, calls, seconds, setup.cfg, setup.has_gt)
        summary["failures"] = setup.failures + [f for g in gathered for f in g.failures]
        summary["resumed_images"] = sum(g.resumed for g in gathered)
        setup.writer.write_metrics(rows)
        setup.writer.write_summary(summary)
        setup.writer.write_comparison(comparison, setup.methods)
        if setup.verbose:
            print(format_table(summary))
            print(f"results in {setup.run_dir}")
    return ddp.broadcast_object(summary)


def summarize(rows: list[dict], methods: list[str], calls: list[int], total_secs: list[float],
              cfg: ReconConfig, has_gt: bool) -> dict:
    """summary.json content: per method mean/std of PSNR (dB), SSIM and seconds per image."""
    per = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        per[m] = dict(psnr=rio.mean_std([r["psnr"] for r in mine]) if has_gt else None,
                      ssim=rio.mean_std([r["ssim"] for r in mine]) if has_gt else None,
                      seconds_per_image=rio.mean_std([r["seconds"] for r in mine]))
    return dict(n_images=len(total_secs), problem=cfg.problem, solver=cfg.solver,
                prior=cfg.prior, ground_truth=has_gt, methods=per,
                denoiser_calls_per_image=rio.mean_std(calls),
                seconds_per_image=rio.mean_std(total_secs), run_dir=cfg.run_dir, config=cfg.to_dict())


def format_table(summary: dict) -> str:
    """Plain-text table of a summary: method, PSNR, SSIM (mean +- std), seconds per image."""
    lines = [f"{'method':<10} {'PSNR [dB]':>16} {'SSIM':>16} {'s/image':>9}"]
    for m, s in summary["methods"].items():
        def ms(d, f):
            return "-" if not d or not d["n"] else f"{d['mean']:{f}} +- {d['std']:{f}}"
        lines.append(f"{m:<10} {ms(s['psnr'], '.2f'):>16} {ms(s['ssim'], '.4f'):>16} "
                     f"{s['seconds_per_image']['mean']:>9.2f}")
    return "\n".join(lines)
