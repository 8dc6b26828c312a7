"""One reconstruction run over a directory: load, simulate or read y, solve, save, report.

``run(cfg)`` is what ``inverse_nodist.py`` calls; ``cfg`` is the plain dict it builds (and
writes to ``config.json``). Keys (all present; ``None`` means "library default"):

    network        checkpoint path (torch_utils.persistence.load_network)
    input          ground-truth image file or directory (exclusive with measurements)
    measurements   .npy measurement file or directory (no ground truth: no metrics)
    image_size     [H, W] or None: ground truth must have this size; required with measurements
    mat_key, normalize, max_images, hu_window   passed to the image reader (hu_window: DICOM
                   [HU min, HU max] -> [0, 1]; None: training.ct_window's default)
    problem        key of inverse.operators.OPERATORS; problem_kwargs: its options
    noise          measurement noise level passed to op.noise (0: none; see inverse.operators)
    noise_absolute True: noise is the std in the measurement's own units (the paper's --sigma)
    prior          'patch' | 'whole' | 'average'; pad, psize, stride, batch: its geometry
                   (pad: int or [rows, cols]; pad/psize None: chosen per image size from the
                   network's trained patch sizes, recorded as ``grid`` {"HxW": {pad, psize,
                   chosen}} and ``patch_range`` in config.json and printed)
    precision, channels_last, compile   how the network runs (inverse.prior._PriorBase):
                   'fp32' | 'bf16' | 'fp16' autocast, channels-last layout, torch.compile
    images_per_batch   K: images of the same size solved together, their patches in one call
    parallel_baselines  run the baselines in a thread beside the solve (faster on CPU; per-method
                   seconds then overlap); results are the same either way
    solver         key of inverse.samplers.SAMPLERS; solver_kwargs: its options
    steps, sigma_min, sigma_max   EDM (rho 7) noise schedule (None: the solver's SCHEDULE_DEFAULTS)
    baselines      list of keys of inverse.baselines.BASELINES; tv_weight, tv_iters
    outdir, seed, device, progress
    resume         None, or a run directory of an earlier run with the same config to complete
    volume, slab, z_coupling   volume mode (inverse.volume): each input is one 3-D volume solved
                   in slabs of ``slab`` slices, slices coupled by ``z_coupling`` (0: not)

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
Images are (1, C, H, W) float32 in [0, 1] on ``device``.

Robustness: the output directory is checked for writability first. An input file that cannot
be read, or an image of the wrong size or channel count, is skipped and listed (file, image,
reason) in ``summary.json``'s ``failures`` and on stderr; so is an image whose solver stops on
non-finite values (``FloatingPointError``). If no input is usable the run fails before it makes
a run directory. ``resume`` (a run directory; its ``config.json`` must match ``cfg`` except
in ``RESUME_FREE_KEYS``) skips images whose ``NAME_metrics.json`` marker and files are complete,
reading their metrics back, redoes the others (deleting their partial files first) and
rewrites ``metrics.csv``, ``summary.json`` and ``comparison.png`` atomically at the end.

Under ``torchrun`` (``WORLD_SIZE`` > 1) rank r takes images r, r + world, ...; rank 0 makes the
run directory, every rank writes its own per-image files, and rank 0 gathers the metrics and
writes ``metrics.csv``, ``summary.json`` and ``comparison.png``.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from inverse import io as rio
from torch_utils import distributed as ddp
from torch_utils import misc

# Trained patch sizes (min, max) assumed for a checkpoint that does not record them (the paper's 16/32/64).
DEFAULT_PATCH_RANGE = (16, 64)
PADIS = "padis"  # method name of our reconstruction in metrics.csv / summary.json

# Keys added after the first release: a cfg (or an older run's config.json) without them means these.
RUN_DEFAULTS = dict(precision="fp32", channels_last=False, compile=False, images_per_batch=1,
                    parallel_baselines=False, volume=False, slab=16, z_coupling=0.0)
SPEED_KEYS = ("precision", "channels_last", "compile")


def _patch_prior(net, cfg, **speed):
    from inverse.prior import PatchPrior
    return PatchPrior(net, pad=cfg["pad"], psize=cfg["psize"], batch=cfg["batch"],
                      patch_sizes=cfg.get("patch_range") or DEFAULT_PATCH_RANGE, **speed)


def _whole_prior(net, cfg, **speed):
    from inverse.prior import WholeImagePrior
    return WholeImagePrior(net, **speed)


def _average_prior(net, cfg, **speed):
    from inverse.prior import OverlapAveragePrior, axis_pads
    pad, psize = cfg["pad"], cfg["psize"]
    if pad is None or psize is None:  # the grid chosen for the (first) image size: its psize, larger pad
        chosen = next(iter((cfg.get("grid") or {}).values()), None)
        if chosen is None:
            raise ValueError("prior 'average' without pad/psize needs the chosen grid (cfg['grid'])")
        pad, psize = max(axis_pads(chosen["pad"])), chosen["psize"]
    stride = cfg["stride"] if cfg["stride"] is not None else max(1, psize // 2)
    return OverlapAveragePrior(net, psize=psize, stride=stride, pad=pad, batch=cfg["batch"], **speed)


# --prior name -> builder(net, cfg). 'average' is the paper's overlapping-patch ablation.
PRIOR_BUILDERS: dict[str, Callable] = {"patch": _patch_prior, "whole": _whole_prior,
                                       "average": _average_prior}


def accepted_kwargs(fn: Callable, options: dict) -> tuple[dict, list[str]]:
    """Split ``options`` into those ``fn`` accepts (dropping None = "use fn's default") and the
    names of set options it does not take."""
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    used, ignored = {}, []
    for k, v in options.items():
        if v is None:
            continue
        if takes_any or k in params:
            used[k] = v
        else:
            ignored.append(k)
    return used, ignored


def build_prior(net: torch.nn.Module, cfg: dict):
    if cfg["prior"] not in PRIOR_BUILDERS:
        raise ValueError(f"unknown prior {cfg['prior']!r}; expected one of {sorted(PRIOR_BUILDERS)}")
    cfg = {**RUN_DEFAULTS, **cfg}
    return PRIOR_BUILDERS[cfg["prior"]](net, cfg, **{k: cfg[k] for k in SPEED_KEYS})


def image_batches(items: list, k: int, key: Callable) -> list[list]:
    """Split ``items`` (in order) into runs of consecutive items with equal ``key(item)``, each
    cut into batches of at most ``k``."""
    if k < 1:
        raise ValueError(f"images_per_batch={k}; expected a positive number of images per solve")
    batches: list[list] = []
    for item in items:
        last = batches[-1] if batches else None
        if last is not None and len(last) < k and key(last[-1]) == key(item):
            last.append(item)
        else:
            batches.append([item])
    return batches


def check_prior_geometry(cfg: dict, shapes: set[tuple[int, int]]) -> None:
    """Fail before any work if a given patch grid cannot tile an image size (ValueError); a
    grid left to choose (pad/psize None) always tiles."""
    if cfg["prior"] == "patch" and cfg["pad"] is not None and cfg["psize"] is not None:
        from inverse.prior import check_grid
        for h, w in sorted(shapes):
            check_grid(h, w, cfg["pad"], cfg["psize"])


def resolve_grids(cfg: dict, net: torch.nn.Module, shapes: set[tuple[int, int]]) -> dict:
    """The patch grid of every image size, chosen where pad/psize are unset (from the size and
    the network's trained patch sizes ``cfg['patch_range']``): {"HxW": {pad, psize, chosen}}."""
    from inverse.prior import PatchPrior
    if cfg["prior"] not in ("patch", "average"):
        return {}
    probe = PatchPrior(net, pad=cfg["pad"], psize=cfg["psize"],
                       patch_sizes=cfg.get("patch_range") or DEFAULT_PATCH_RANGE)
    grids = {}
    for h, w in sorted(shapes):
        pad, psize = probe.grid_for(h, w)
        grids[f"{h}x{w}"] = dict(pad=pad if isinstance(pad, int) else list(pad), psize=psize,
                                 chosen=cfg["pad"] is None or cfg["psize"] is None)
    return grids


def describe_grids(grids: dict, patch_range) -> list[str]:
    """Log lines naming each chosen patch grid (and how to set one)."""
    from inverse.prior import format_pad
    return [f"patch grid for {size}: pad {format_pad(g['pad'])}, psize {g['psize']} (chosen from the image size "
            f"and the network's patch sizes {patch_range[0]}-{patch_range[1]} px; set with pad/psize)"
            for size, g in grids.items() if g["chosen"]]


def network_image_channels(net: torch.nn.Module) -> int:
    """Image channels the denoiser works on (position channels excluded)."""
    return int(getattr(net, "out_channels", None) or net.img_channels)


def grey_rgb_to_single(items: list, channels: int) -> tuple[list, list[str]]:
    """For a 1-channel network, images stored as RGB with three equal channels become
    1-channel; returns (items, names converted)."""
    if channels != 1:
        return items, []
    out, converted = [], []
    for index, name, file, x in items:
        grey = rio.grey_from_rgb(x)
        if grey is not None:
            x = grey
            converted.append(name)
        out.append((index, name, file, x))
    return out, converted


def field_of_view_warning(items: list, operator: Callable) -> str | None:
    """One line if some ground-truth images have content the operator does not see from every
    view (fan beam, ``op.fov_warning``): the first such image, how many, and the remedy."""
    hits = []
    for _, name, _, x in items:
        check = getattr(operator(tuple(x.shape[1:])), "fov_warning", None)
        message = check(x) if check else None
        if message:
            hits.append((name, message))
    if not hits:
        return None
    more = f" and {len(hits) - 1} more of {len(items)} images" if len(hits) > 1 else ""
    return f"{hits[0][0]}{more}: {hits[0][1]}"


def check_channels(images: list[tuple[str, np.ndarray]], channels: int, source: str) -> None:
    for name, x in images:
        if x.shape[0] != channels:
            raise ValueError(f"{source}: image {name!r} has {x.shape[0]} channel(s) but the network "
                             f"denoises {channels}-channel images (use matching data or another network)")


def _keep_valid(items: list, failures: list[dict], check: Callable) -> list:
    """Items for which ``check(item)`` raises no ValueError; the others go to ``failures``.
    If none is left, the first failure is raised (one line)."""
    kept, first = [], len(failures)
    for item in items:
        try:
            check(item)
            kept.append(item)
        except ValueError as exc:
            failures.append(rio.failure_record(item[2], str(exc), image=item[1]))
    if not kept and len(failures) > first:
        raise ValueError(rio.failure_line(failures[first]))
    return kept


# Config keys that a resumed run (--resume RUN_DIR) may change: where and how it runs, not what.
RESUME_FREE_KEYS = ("outdir", "device", "progress", "run_dir", "resume", "compile", "parallel_baselines",
                    "grid", "patch_range")  # the last two are derived from compared keys
_PATH_KEYS = ("network", "input", "measurements")


def _comparable(cfg: dict) -> dict:
    cfg = {**RUN_DEFAULTS, **cfg}
    out = json.loads(json.dumps({k: v for k, v in cfg.items() if k not in RESUME_FREE_KEYS}, default=str))
    for k in _PATH_KEYS:
        if out.get(k) is not None:
            out[k] = os.path.abspath(out[k])
    return out


def check_resume_config(run_dir: Path, cfg: dict) -> None:
    """``run_dir/config.json`` must agree with ``cfg`` except in RESUME_FREE_KEYS (ValueError
    naming the first differing key otherwise)."""
    path = Path(run_dir) / "config.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--resume {run_dir}: cannot read {path} ({exc}); is this a reconstruction "
                         "run directory?") from None
    old, new = _comparable(old), _comparable(cfg)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise ValueError(f"--resume {run_dir}: option {key!r} was {old.get(key)!r} in that run, now "
                             f"{new.get(key)!r}; resume with the same options (or start a new run)")


def _make_run_dir(cfg: dict, rank: int) -> Path:
    """Rank 0 makes OUTDIR/NNNNN-<problem>-<solver> (or reuses --resume's); every rank gets its path."""
    run_dir = None
    if rank == 0:
        if cfg.get("resume"):
            run_dir = Path(cfg["resume"])
            check_resume_config(run_dir, cfg)
            misc.remove_stale_temps(run_dir)
        else:
            run_dir = misc.new_run_dir(cfg["outdir"], f"{cfg['problem']}-{cfg['solver']}")
    return Path(ddp.broadcast_object(str(run_dir) if run_dir else None))


def _load_inputs(cfg: dict, failures: list[dict], ranges: dict | None = None):
    """(items, has_gt, shapes). items: [(index, name, file, array)] with (C, H, W) images (None
    with --measurements: read later, when the operator is known). Bad files go to ``failures``;
    with ``normalize`` each image's original (min, max) to ``ranges``."""
    size = tuple(cfg["image_size"]) if cfg["image_size"] else None
    if cfg["input"] is not None:
        read = rio.read_ground_truth_files(cfg["input"], failures, mat_key=cfg["mat_key"],
                                           normalize=cfg["normalize"], max_images=cfg["max_images"],
                                           hu_window=cfg.get("hu_window"), ranges=ranges)
        items = [(i, name, file, x) for i, (name, x, file) in enumerate(read)]

        def check_size(item):
            x = item[3]
            if size is not None and tuple(x.shape[1:]) != size:
                raise ValueError(f"{item[2]}: image {item[1]!r} is {x.shape[1]}x{x.shape[2]}, "
                                 f"expected --image-size {size[0]}x{size[1]} (images are not resized)")
            check_prior_geometry(cfg, {tuple(x.shape[1:])})

        items = _keep_valid(items, failures, check_size)
        return items, True, {tuple(x.shape[1:]) for *_, x in items}
    if size is None:
        raise ValueError("--image-size is required with --measurements (the size of the images to reconstruct)")
    check_prior_geometry(cfg, {size})
    return None, False, {size}


def resolve_schedule(cfg: dict) -> dict:
    """steps / sigma_min / sigma_max of cfg, None filled from the solver's SCHEDULE_DEFAULTS."""
    from inverse.samplers import SCHEDULE_DEFAULTS
    defaults = SCHEDULE_DEFAULTS[cfg["solver"]]
    return {k: cfg.get(k) if cfg.get(k) is not None else defaults[k] for k in ("steps", "sigma_min", "sigma_max")}


def _seconds(fn: Callable, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def run_baselines(op, y: torch.Tensor, cfg: dict, device: torch.device) -> tuple[dict, dict]:
    """``cfg['baselines']`` on one measurement: ({name: (C, H, W) image}, {name: seconds}).

    With ``parallel_baselines`` ``run`` calls this in a worker thread while the solver works on
    the same images (with their own operator instance; ASTRA calls are serialised by
    odlstuff.geometry.ASTRA_LOCK): the baselines (TV's projector calls, single-threaded on
    ASTRA's CPU backend) then use the core the network leaves idle (``make demo``: 238 -> 209 s
    on 2 cores, the same numbers). Their seconds are then wall times while sharing the machine
    with the solve, and the solve's while sharing it with them; without it (the default) each
    method's seconds are its own."""
    from inverse.baselines import BASELINES, method_label
    results, secs = {}, {}
    for b in cfg["baselines"]:
        kw, _ = accepted_kwargs(BASELINES[b], dict(weight=cfg["tv_weight"], iters=cfg["tv_iters"]))
        label = method_label(b, cfg["problem"])
        with torch.no_grad():
            xb, secs[label] = _seconds(lambda: BASELINES[b](op, y, **kw), device)
        results[label] = xb[0].detach().float().cpu().numpy()
    return results, secs


def run(cfg: dict) -> dict:
    """Reconstruct every input; write the run directory; return the summary dict."""
    from inverse.baselines import BASELINES, method_label
    from inverse.checkpoint_info import input_warnings, prior_problem, trained_patch_range, training_info
    from inverse.metrics import psnr, ssim
    from inverse.operators import make_operator
    from inverse.samplers import SAMPLERS, get_sigmas_karras
    from torch_utils.persistence import load_network

    cfg = {**RUN_DEFAULTS, **cfg}
    if cfg["solver"] in SAMPLERS:
        cfg.update(resolve_schedule(cfg))
    for name in cfg["baselines"]:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; expected one of {sorted(BASELINES)}")
    if cfg["solver"] not in SAMPLERS:
        raise ValueError(f"unknown solver {cfg['solver']!r}; expected one of {sorted(SAMPLERS)}")
    image_batches([], cfg["images_per_batch"], len)  # checks K
    if cfg["volume"]:  # each input is one 3-D volume, solved in slabs (inverse.volume)
        from inverse.volume import run_volume
        return run_volume(cfg)
    own_pg = not ddp.is_initialized()
    device = ddp.init(cfg["device"])
    rank, world = ddp.rank(), ddp.world_size()
    own_pg = own_pg and ddp.is_initialized()
    verbose = rank == 0 and cfg.get("progress", True)

    # Output directory, inputs, network, prior and operators are all checked before any work.
    # A bad input file is recorded in ``failures`` (and the summary) and the others still run.
    if rank == 0:
        misc.check_writable(cfg["resume"] if cfg.get("resume") else cfg["outdir"])
    failures: list[dict] = []
    ranges: dict = {}
    items, has_gt, shapes = _load_inputs(cfg, failures, ranges)
    net = load_network(cfg["network"], device=device)
    info = training_info(cfg["network"])
    if prior_problem(info, cfg["prior"]):
        raise ValueError(f"{cfg['network']}: {prior_problem(info, cfg['prior'])}")
    channels = network_image_channels(net)
    if has_gt:
        items, converted = grey_rgb_to_single(items, channels)
        if converted and rank == 0:
            print(f"note: {len(converted)} grey image(s) stored as RGB ({', '.join(converted[:3])}"
                  f"{', ...' if len(converted) > 3 else ''}) read as 1 channel for this 1-channel network",
                  file=sys.stderr)
        items = _keep_valid(items, failures, lambda it: check_channels([(it[1], it[3])], channels, it[2]))
        shapes = {tuple(it[3].shape[1:]) for it in items}
    cfg["patch_range"] = list(trained_patch_range(info) or DEFAULT_PATCH_RANGE)
    cfg["grid"] = resolve_grids(cfg, net, shapes)
    if rank == 0:
        for line in describe_grids(cfg["grid"], cfg["patch_range"]):
            print(line, file=sys.stderr)
        for line in dict.fromkeys(w for s in sorted(shapes) for w in input_warnings(
                info, cfg["prior"], s, (cfg["grid"].get(f"{s[0]}x{s[1]}") or {}).get("psize"))):
            print(f"warning: {line}", file=sys.stderr)
    prior = build_prior(net, cfg)
    ops: dict[tuple[tuple[int, int], str], Any] = {}

    def operator(shape: tuple[int, int], user: str = "solver"):
        """The operator for ``shape``; the baselines' thread gets an instance of its own."""
        if (shape, user) not in ops:
            ops[shape, user] = make_operator(cfg["problem"], shape, channels=channels, device=device,
                                             **cfg["problem_kwargs"])
        return ops[shape, user]

    if not has_gt:
        shape = next(iter(shapes))
        read = rio.read_measurement_files(cfg["measurements"], (channels, *operator(shape).measurement_shape),
                                          max_images=cfg["max_images"], failures=failures)
        items = [(i, name, file, y) for i, (name, y, file) in enumerate(read)]
    if rank == 0:
        for f in failures:
            print(f"skipped {rio.failure_line(f)}", file=sys.stderr)
        fov = field_of_view_warning(items, operator) if has_gt else None
        if fov:
            print(f"warning: {fov}", file=sys.stderr)
    sampler = SAMPLERS[cfg["solver"]]
    solver_kwargs, ignored = accepted_kwargs(sampler, cfg["solver_kwargs"])
    if ignored and verbose:
        print(f"note: solver {cfg['solver']} does not use option(s) {', '.join(sorted(ignored))}")
    schedule = resolve_schedule(cfg)
    sigmas = get_sigmas_karras(schedule["steps"], schedule["sigma_min"], schedule["sigma_max"], device=device)

    run_dir = _make_run_dir(cfg, rank)
    cfg["run_dir"] = str(run_dir)
    if rank == 0 and not cfg.get("resume"):
        misc.atomic_write_json(run_dir / "config.json", cfg)
    writer = rio.ResultWriter(run_dir, sinogram=cfg["problem"].startswith("ct"))
    methods = [method_label(b, cfg["problem"]) for b in cfg["baselines"]] + [PADIS]  # 'pinv' outside CT
    tags = {m: "recon" if m == PADIS else m for m in methods}

    rows, comp, calls, total_secs, done_failures = [], [], [], [], []
    skipped = 0
    mine = items[rank::world]
    pending = []
    for index, name, file, arr in mine:
        record = writer.completed(name) if cfg.get("resume") else None
        if record is None:
            pending.append((index, name, file, arr))
            continue
        skipped += 1  # done by the run being resumed: read its results back
        rows.extend(record["rows"])
        calls.append(record["calls"])
        total_secs.append(record["seconds"])
        if index < rio.COMPARISON_MAX_ROWS:
            comp.append(dict(index=index, name=name, gt=arr if has_gt else None,
                             psnr={r["method"]: r["psnr"] for r in record["rows"]},
                             images={m: np.load(run_dir / f"{name}_{t}.npy") for m, t in tags.items()}))

    def image_shape(item) -> tuple[int, int]:
        return tuple(item[3].shape[1:]) if has_gt else next(iter(shapes))

    outer = tqdm(total=len(mine), initial=skipped, desc="images", unit="img", disable=not verbose, position=0)
    # parallel_baselines: the baselines run in one worker thread, overlapping the solve (run_baselines).
    pool = None
    if cfg["parallel_baselines"] and cfg["baselines"]:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baselines")
    try:  # close the bar on errors too: the one-line error must start its own line
        for group in image_batches(pending, cfg["images_per_batch"], image_shape):
            op = operator(image_shape(group[0]))
            prepared = []
            for index, name, file, arr in group:  # measurement and baselines, one image at a time
                if cfg.get("resume"):
                    writer.remove_partial(name, list(tags.values()))
                gen = torch.Generator(device=device).manual_seed(cfg["seed"] + index)
                t_start = time.perf_counter()
                with torch.no_grad():
                    if has_gt:
                        y = op.A(torch.from_numpy(arr)[None].to(device))
                        if cfg["noise"]:
                            y = op.noise(y, cfg["noise"], gen, absolute=cfg.get("noise_absolute", False))
                    else:
                        y = torch.from_numpy(arr)[None].to(device)
                writer.save_measurement(name, y[0].detach().cpu().numpy())
                prep_seconds = time.perf_counter() - t_start  # the baselines' own seconds are added later
                if pool:
                    baselines = pool.submit(run_baselines, operator(image_shape(group[0]), "baselines"), y, cfg,
                                            device)
                else:  # in this thread, before the solve: every method's seconds are its own
                    baselines = Future()
                    baselines.set_result(run_baselines(op, y, cfg, device))
                prepared.append(dict(item=(index, name, file, arr), y=y, gen=gen, baselines=baselines,
                                     seconds=prep_seconds))

            # One solve for the group; its randomness continues its first image's generator.
            y = torch.cat([p["y"] for p in prepared])
            bar = tqdm(total=len(sigmas), desc=group[0][1] if len(group) == 1 else f"{group[0][1]} +{len(group) - 1}",
                       unit="step", leave=False, disable=not verbose, position=1)
            prior.reset_calls()
            try:
                xr, solve_s = _seconds(lambda: sampler(prior, op, y, sigmas, prepared[0]["gen"],
                                                       callback=lambda *_a, **_k: bar.update(1),
                                                       **solver_kwargs), device)
            except FloatingPointError as exc:  # this solve diverged: record its images, go on with the others
                together = f" (solved together with {len(group) - 1} other image(s))" if len(group) > 1 else ""
                for _, name, file, _ in group:
                    failure = rio.failure_record(file, f"reconstruction stopped: {exc}{together}", image=name)
                    done_failures.append(failure)
                    print(f"failed {rio.failure_line(failure)}", file=sys.stderr)
                outer.update(len(group))
                continue
            finally:
                bar.close()

            for k, p in enumerate(prepared):  # save, score and report each image
                index, name, file, arr = p["item"]
                t_start = time.perf_counter()
                results, secs = p["baselines"].result()
                results[PADIS] = xr[k].detach().float().cpu().numpy()
                secs[PADIS] = solve_s / len(prepared)
                scores, image_rows = {}, []
                for method, img in results.items():
                    writer.save_image(name, tags[method], img)
                    ps = ss = None
                    if has_gt:
                        ps, ss = float(psnr(img, arr)), float(ssim(img, arr))
                    scores[method] = ps
                    image_rows.append(dict(index=index, image=name, method=method, psnr=ps, ssim=ss,
                                           seconds=secs[method]))
                seconds = p["seconds"] + sum(secs.values()) + time.perf_counter() - t_start
                extra = {"input_range": list(ranges[name])} if name in ranges else {}
                writer.finish_image(name, dict(index=index, image=name, source=file, rows=image_rows,
                                               calls=prior.calls, seconds=seconds, **extra))
                rows.extend(image_rows)
                calls.append(prior.calls)
                total_secs.append(seconds)
                if index < rio.COMPARISON_MAX_ROWS:
                    comp.append(dict(index=index, name=name, gt=arr if has_gt else None, images=results, psnr=scores))
                if verbose and has_gt:
                    outer.set_postfix_str(f"{name}: PSNR {scores[PADIS]:.2f} dB")
                outer.update(1)
    finally:
        outer.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)

    gathered = ddp.all_gather_object(dict(rows=rows, comp=comp, calls=calls, secs=total_secs,
                                          failures=done_failures, skipped=skipped))
    summary = None
    if rank == 0:
        rows = sorted((r for g in gathered for r in g["rows"]), key=lambda r: r["index"])
        comp = sorted((c for g in gathered for c in g["comp"]), key=lambda c: c["index"])
        calls = [c for g in gathered for c in g["calls"]]
        total_secs = [t for g in gathered for t in g["secs"]]
        summary = summarize(rows, methods, calls, total_secs, cfg, has_gt)
        summary["failures"] = failures + [f for g in gathered for f in g["failures"]]
        summary["resumed_images"] = sum(g["skipped"] for g in gathered)
        writer.write_metrics(rows)
        writer.write_summary(summary)
        writer.write_comparison(comp, methods)
        if verbose:
            print(format_table(summary))
            print(f"results in {run_dir}")
    summary = ddp.broadcast_object(summary)
    if own_pg:
        ddp.shutdown()
    return summary


def summarize(rows: list[dict], methods: list[str], calls: list[int], total_secs: list[float],
              cfg: dict, has_gt: bool) -> dict:
    """summary.json content: per method mean/std of PSNR (dB), SSIM and seconds per image."""
    per = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        per[m] = dict(psnr=rio.mean_std([r["psnr"] for r in mine]) if has_gt else None,
                      ssim=rio.mean_std([r["ssim"] for r in mine]) if has_gt else None,
                      seconds_per_image=rio.mean_std([r["seconds"] for r in mine]))
    return dict(n_images=len(total_secs), problem=cfg["problem"], solver=cfg["solver"],
                prior=cfg["prior"], ground_truth=has_gt, methods=per,
                denoiser_calls_per_image=rio.mean_std(calls),
                seconds_per_image=rio.mean_std(total_secs), run_dir=cfg["run_dir"], config=cfg)


def format_table(summary: dict) -> str:
    """Plain-text table of a summary: method, PSNR, SSIM (mean +- std), seconds per image."""
    lines = [f"{'method':<10} {'PSNR [dB]':>16} {'SSIM':>16} {'s/image':>9}"]
    for m, s in summary["methods"].items():
        def ms(d, f):
            return "-" if not d or not d["n"] else f"{d['mean']:{f}} +- {d['std']:{f}}"
        lines.append(f"{m:<10} {ms(s['psnr'], '.2f'):>16} {ms(s['ssim'], '.4f'):>16} "
                     f"{s['seconds_per_image']['mean']:>9.2f}")
    return "\n".join(lines)
