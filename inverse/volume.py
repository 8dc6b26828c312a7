"""Volume mode of the reconstruction (``inverse_nodist.py --volume``): each input is one 3-D volume.

A volume ``(D, H, W)`` (inverse.io.open_volume: a DICOM series, a ``.npy``/``.mat`` stack, NIfTI)
is reconstructed in slabs of ``slab`` adjacent slices, one slab at a time, so a volume larger than
memory streams: a slab is read, measured, solved and written before the next one is read. A slab
is one batch ``(n, 1, H, W)``: all its slices' patches go through the network in one call (chunked
by ``batch`` only), and the projector maps the whole slab per call (on CUDA one 3D ASTRA call,
odlstuff.geometry.VolumeProjector; on CPU batched 2D calls). ``ct_cone`` treats each slab as a
volume of its own (its detector rows see that slab only).

``z_coupling`` w > 0 couples the slices of a slab in the data-consistency step: the solver sees
the stacked operator ``[A; sqrt(w) ||A|| D_z]`` with ``D_z`` the difference of adjacent slices
and measurement ``[y; 0]`` (:class:`SliceCoupled`), i.e. it minimises
``||A x - y||² + w ||A||² ||D_z x||²`` where it fits the data (dds/diffpir: in their CG step, solved jointly
over the slab). Slabs are solved independently (no coupling across slab borders).

Randomness: slab ``[z0, z1)`` of the volume whose first slice has global index ``i0`` (slices of
all inputs counted in order) uses a generator seeded with ``seed + i0 + z0`` for its noise and its
solve, so a slab can be redone alone.

Files per volume ``NAME`` (all written atomically; never overwritten):

- ``NAME_recon.npy`` (``D, H, W`` float32), ``NAME_<baseline>.npy`` and ``NAME_measurement.npy``
  (``D, views, det`` for CT: slice or detector row first), assembled from per-slab files
  ``NAME_zAAAA-BBBB_<tag>.npy`` and their marker ``NAME_zAAAA-BBBB_metrics.json`` (written last;
  a resumed run skips a slab whose marker exists), which are deleted once the volume is assembled;
- ``NAME_views.png``: axial, coronal and sagittal mid-planes of ground truth | baselines | PaDIS;
- ``NAME_metrics.json``: per method PSNR over the whole volume (from the summed squared error,
  data range 1), SSIM as the mean of the slices' 2-D SSIMs, seconds; marks the volume complete.

Per run: ``config.json``, ``metrics.csv`` (one row per volume and method) and ``summary.json``.

Under torchrun (``WORLD_SIZE`` > 1; :mod:`inverse.ranks`) rank 0 makes the one run directory
(or checks the resumed one) and lists the slabs still to solve over all volumes in input order;
rank r solves slabs r, r + world, ... of that list and prints one line naming them (stderr).
Once every rank finished, rank 0 assembles each volume and writes the summary. A slab's seed
does not depend on its rank, so the files equal those of one process exactly, and a run killed
midway resumes per slab with any number of ranks.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from inverse import io as rio
from inverse import stages
from inverse.config import ReconConfig
from inverse.operators import Operator
from inverse.prior_setup import open_network
from inverse.ranks import RankGroup, joined
from torch_utils import misc

PADIS = stages.PADIS


class SliceCoupled(Operator):
    """``[A; s D_z]`` for an operator ``A`` on a slab ``(n, C, H, W)``, ``s = sqrt(weight) ||A||``.

    ``D_z x`` is ``x[k+1] - x[k]`` in batch item k (zero in the last one), so A couples the batch
    (``couples_batch``). Measurements are ``(n, C, 1, M + H*W)``: A's measurement flattened, then
    s D_z x; :meth:`extend` turns A's measurement y into ``[y; 0]``. ``pinv`` is A's on the first
    part. ``norm()`` is the bound ``||A|| sqrt(1 + 4 weight)`` (``||D_z|| <= 2``).
    """

    couples_batch = True

    def __init__(self, op: Operator, weight: float):
        super().__init__(op.image_shape, op.channels, op.device)
        if not weight > 0:
            raise ValueError(f"z_coupling weight must be > 0, got {weight}")
        self.base, self.weight = op, float(weight)
        self.name = f"{op.name}+z"
        self.scale = math.sqrt(self.weight) * op.norm()
        self._m = int(np.prod(op.measurement_shape))
        self.measurement_shape = (1, self._m + self.image_shape[0] * self.image_shape[1])

    @staticmethod
    def dz(x: torch.Tensor) -> torch.Tensor:
        d = torch.zeros_like(x)
        d[:-1] = x[1:] - x[:-1]
        return d

    @staticmethod
    def dz_adjoint(d: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(d)
        out[1:] = out[1:] + d[:-1]
        out[:-1] = out[:-1] - d[:-1]
        return out

    def _A(self, x):
        return torch.cat([self.base.A(x).flatten(2), self.scale * self.dz(x).flatten(2)], dim=2)[:, :, None]

    def _split(self, y):
        b, c = y.shape[:2]
        return (y[:, :, 0, :self._m].reshape(b, c, *self.base.measurement_shape),
                y[:, :, 0, self._m:].reshape(b, c, *self.image_shape))

    def _AT(self, y):
        ya, yz = self._split(y)
        return self.base.AT(ya) + self.scale * self.dz_adjoint(yz)

    def _pinv(self, y):
        return self.base.pinv(self._split(y)[0])

    def extend(self, y: torch.Tensor) -> torch.Tensor:
        """A's measurement (n, C, *A.measurement_shape) -> (n, C, 1, M + H*W) with zeros appended."""
        zeros = y.new_zeros((*y.shape[:2], self.image_shape[0] * self.image_shape[1]))
        return torch.cat([y.flatten(2), zeros], dim=2)[:, :, None]

    def norm(self, iters: int = 200, tol: float = 1e-6) -> float:
        return self.base.norm() * math.sqrt(1.0 + 4.0 * self.weight)


def slab_bounds(depth: int, slab: int) -> list[tuple[int, int]]:
    """[(z0, z1)] covering range(depth) in runs of ``slab`` slices (the last one may be shorter)."""
    if slab < 1:
        raise ValueError(f"slab={slab}; expected a positive number of slices per slab")
    return [(z, min(depth, z + slab)) for z in range(0, depth, slab)]


def _slab_tag(z0: int, z1: int) -> str:
    return f"z{z0:04d}-{z1 - 1:04d}"


def _errors(x: np.ndarray, gt: np.ndarray) -> dict:
    """Squared-error sum and per-slice SSIM sum of a slab (n, H, W) against its ground truth."""
    from inverse.metrics import ssim
    sse = float(np.square(x.astype(np.float64) - gt).sum())
    return dict(sse=sse, voxels=int(gt.size), ssim_sum=float(sum(ssim(x[k][None], gt[k][None]) for k in range(len(gt)))),
                slices=int(len(gt)))


class VolumeContext:
    """What every slab of a run shares: network prior, sampler, schedule, operators per slab size."""

    def __init__(self, cfg: ReconConfig, device: torch.device, shapes: set[tuple[int, int]], verbose: bool = True):
        self.device = device
        network = open_network(cfg.network, device, cfg.prior)
        self.channels = network.channels
        if self.channels != 1:
            raise ValueError(f"--volume needs a single-channel network, {cfg.network} denoises "
                             f"{self.channels}-channel images")
        self.cfg, loaded = stages.load_run_prior(cfg, network, shapes, device)
        if verbose:
            stages.print_lines(loaded.messages())
        self.prior, self.sigmas = loaded.prior, loaded.sigmas
        self.sampler, self.solver_kwargs = stages.set_up_solver(self.cfg, verbose)
        self._ops: dict = {}

    def operator(self, shape: tuple[int, int], n: int) -> Operator:
        """The forward model of an n-slice slab (ct_cone: its own geometry per n)."""
        from inverse.operators import OPERATORS, make_operator
        key = (shape, n if OPERATORS[self.cfg.problem].couples_batch else None)
        if key not in self._ops:
            extra = dict(slices=n) if key[1] is not None else {}
            self._ops[key] = make_operator(self.cfg.problem, shape, channels=1, device=self.device,
                                           **self.cfg.problem_kwargs, **extra)
        return self._ops[key]


def solve_slab(ctx: VolumeContext, gt: np.ndarray, seed: int, progress=None) -> tuple[dict, np.ndarray, dict, int]:
    """Measure and reconstruct one slab (n, H, W) in [0, 1]: ({method: (n, H, W)}, measurement,
    {method: seconds}, denoiser calls)."""
    cfg, device = ctx.cfg, ctx.device
    op = ctx.operator(tuple(gt.shape[1:]), len(gt))
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        y = op.A(torch.from_numpy(gt)[:, None].to(device))
        noise_std = stages.measurement_noise_std(op, y, cfg.noise, cfg.noise_absolute)
        options = stages.with_noise_std(ctx.sampler, ctx.solver_kwargs, noise_std)
        if cfg.noise:
            y = op.noise(y, cfg.noise, gen, absolute=cfg.noise_absolute)
    images, secs = stages.solve_baselines(op, y, cfg, device)
    results = {b: x[:, 0].float().cpu().numpy() for b, x in images.items()}
    solve_op, solve_y = op, y
    if cfg.z_coupling:
        solve_op = SliceCoupled(op, cfg.z_coupling)
        solve_y = solve_op.extend(y)
    ctx.prior.reset_calls()
    xr, secs[PADIS] = misc.timed(lambda: ctx.sampler(ctx.prior, solve_op, solve_y, ctx.sigmas, gen, callback=progress,
                                                 **options), device)
    results[PADIS] = xr[:, 0].float().cpu().numpy()
    return results, y[:, 0].float().cpu().numpy(), secs, ctx.prior.calls


def _assemble(run_dir: Path, name: str, tag: str, parts: list[Path]) -> Path:
    """Concatenate slab files along the first axis into NAME_tag.npy (streamed through a memmap)."""
    shapes = [np.load(p, mmap_mode="r").shape for p in parts]
    total = (sum(s[0] for s in shapes), *shapes[0][1:])

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=total)
        z = 0
        for p, s in zip(parts, shapes):
            out[z:z + s[0]] = np.load(p, mmap_mode="r")
            z += s[0]
        out.flush()
        del out

    return misc.atomic_write_with(run_dir / f"{name}_{tag}.npy", write)


def mid_planes(vol: np.ndarray | rio.Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial, coronal and sagittal planes through the middle of a (D, H, W) volume: an array
    (a memmap reads only those planes) or a :class:`rio.Volume` (streamed slab by slab)."""
    d, h, w = vol.shape
    if not isinstance(vol, rio.Volume):
        return np.asarray(vol[d // 2]), np.asarray(vol[:, h // 2, :]), np.asarray(vol[:, :, w // 2])
    coronal, sagittal = [], []
    for z0, z1 in slab_bounds(d, 64):
        a = vol.slab(z0, z1)
        coronal.append(a[:, h // 2, :])
        sagittal.append(a[:, :, w // 2])
    return vol.slab(d // 2, d // 2 + 1)[0], np.concatenate(coronal), np.concatenate(sagittal)


def write_views(path: Path, volumes: dict[str, tuple], psnr: dict[str, float | None]) -> Path:
    """``path``: one row per volume (ground truth, baselines, PaDIS), columns its axial, coronal
    and sagittal mid-planes (``mid_planes``), grey levels [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planes = ("axial", "coronal", "sagittal")
    fig, axes = plt.subplots(len(volumes), 3, figsize=(7.5, 2.5 * len(volumes)), squeeze=False)
    for i, (label, views) in enumerate(volumes.items()):
        for j, (plane, img) in enumerate(zip(planes, views)):
            ax = axes[i, j]
            ax.imshow(np.clip(np.asarray(img), 0, 1), cmap="gray", vmin=0, vmax=1, aspect="auto" if j else "equal",
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            p = psnr.get(label)
            ax.set_title(f"{label} {plane}" + (f" {p:.2f} dB" if p is not None and math.isfinite(p) else ""),
                         fontsize=8)
    fig.tight_layout()
    try:
        return misc.atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def volume_scores(records: list[dict], methods: list[str]) -> dict:
    """{method: dict(psnr, ssim, seconds)} of a volume from its slab records."""
    out = {}
    for m in methods:
        sse = sum(r["errors"][m]["sse"] for r in records)
        voxels = sum(r["errors"][m]["voxels"] for r in records)
        mse = sse / max(voxels, 1)
        out[m] = dict(psnr=math.inf if mse == 0 else 10 * math.log10(1.0 / mse),
                      ssim=sum(r["errors"][m]["ssim_sum"] for r in records) / sum(r["errors"][m]["slices"] for r in records),
                      seconds=sum(r["seconds"][m] for r in records))
    return out


def _slab_stem(vol: rio.Volume, z0: int, z1: int) -> str:
    return f"{vol.name}_{_slab_tag(z0, z1)}"


def pending_slabs(volumes: list[rio.Volume], run_dir: Path, slab: int) -> list[tuple[int, int, int]]:
    """(volume index, z0, z1) of every slab still to solve: not in a volume whose
    ``NAME_metrics.json`` exists, and without its own marker (a resumed run); in input order."""
    out = []
    for k, vol in enumerate(volumes):
        if (run_dir / f"{vol.name}_metrics.json").is_file():
            continue
        out.extend((k, z0, z1) for z0, z1 in slab_bounds(vol.shape[0], slab)
                   if not (run_dir / f"{_slab_stem(vol, z0, z1)}_metrics.json").is_file())
    return out


def solve_slab_files(ctx: VolumeContext, vol: rio.Volume, run_dir: Path, first_index: int, z0: int, z1: int) -> dict:
    """Solve slab [z0, z1) of ``vol`` (its generator seeded with seed + first_index + z0) and
    write its files, the marker ``NAME_zAAAA-BBBB_metrics.json`` last; its record."""
    cfg = ctx.cfg
    stem, tags = _slab_stem(vol, z0, z1), _method_tags(cfg)
    for tag in [*tags.values(), "measurement"]:
        (run_dir / f"{stem}_{tag}.npy").unlink(missing_ok=True)  # partial slab of a killed run
    gt = vol.slab(z0, z1)
    results, y, secs, calls = solve_slab(ctx, gt, cfg.seed + first_index + z0)
    for m, x in results.items():
        rio.save_npy(run_dir / f"{stem}_{tags[m]}.npy", x)
    rio.save_npy(run_dir / f"{stem}_measurement.npy", y)
    record = dict(z0=z0, z1=z1, seconds=secs, calls=calls, errors={m: _errors(x, gt) for m, x in results.items()})
    misc.atomic_write_json(run_dir / f"{stem}_metrics.json", record)
    return record


def _method_tags(cfg: ReconConfig) -> dict[str, str]:
    """Method -> file tag (NAME_<tag>.npy): the baselines' names, ``recon`` for PaDIS."""
    return stages.method_tags([*cfg.baselines, PADIS])


def assemble_volume(cfg: ReconConfig, vol: rio.Volume, run_dir: Path) -> dict:
    """Once every slab of ``vol`` has its marker: the volume files, views figure and
    ``NAME_metrics.json`` (written last: the volume is complete); the slab files are deleted. Its record."""
    methods = [*cfg.baselines, PADIS]
    tags = _method_tags(cfg)
    bounds = slab_bounds(vol.shape[0], cfg.slab)
    stems = [_slab_stem(vol, z0, z1) for z0, z1 in bounds]
    missing = [s for s in stems if not (run_dir / f"{s}_metrics.json").is_file()]
    if missing:
        raise RuntimeError(f"{run_dir}: slab marker {missing[0]}_metrics.json is missing "
                           f"({len(missing)} of {len(stems)} slabs unfinished); resume={run_dir} solves them")
    records = [json.loads((run_dir / f"{s}_metrics.json").read_text()) for s in stems]
    for f in [*(f"{vol.name}_{t}.npy" for t in [*tags.values(), "measurement"]), f"{vol.name}_views.png"]:
        (run_dir / f).unlink(missing_ok=True)  # volume files of a run killed before the volume's marker
    files = {}
    for tag in [*tags.values(), "measurement"]:
        files[tag] = _assemble(run_dir, vol.name, tag, [run_dir / f"{s}_{tag}.npy" for s in stems])
    scores = volume_scores(records, methods)
    shown = {"ground truth": mid_planes(vol), **{m: mid_planes(np.load(files[tags[m]], mmap_mode="r"))
                                                 for m in methods}}
    write_views(run_dir / f"{vol.name}_views.png", shown, {m: s["psnr"] for m, s in scores.items()})
    record = dict(volume=vol.name, source=vol.source, shape=list(vol.shape), slabs=len(bounds),
                  calls=sum(r["calls"] for r in records), methods=scores,
                  files=[p.name for p in files.values()] + [f"{vol.name}_views.png"])
    misc.atomic_write_json(run_dir / f"{vol.name}_metrics.json", record)
    for s in stems:  # the volume files hold everything now
        for tag in [*tags.values(), "measurement"]:
            (run_dir / f"{s}_{tag}.npy").unlink(missing_ok=True)
        (run_dir / f"{s}_metrics.json").unlink(missing_ok=True)
    return record


def _describe_slabs(volumes: list[rio.Volume], slabs: list) -> str:
    return ", ".join(_slab_stem(volumes[k], z0, z1) for k, z0, z1 in slabs) or "none"


def run_volume(cfg: ReconConfig | dict) -> dict:
    """Reconstruct every volume of ``cfg.input`` (``cfg``: a :class:`ReconConfig` or a dict of
    its fields, run and recorded with ``volume`` True); write the run directory; return the summary.

    Under torchrun the slabs still to solve are split across the ranks (slab k of the pending
    ones on rank k mod world); rank 0 makes the one run directory and, once every rank
    finished, assembles the volumes and writes the summary; every rank returns it."""
    cfg = stages.start_run(ReconConfig.from_dict(cfg).replace(volume=True))
    with joined(cfg.device) as ranks:
        return _run_volume(cfg, ranks)


def _run_volume(cfg: ReconConfig, ranks: RankGroup) -> dict:
    from inverse.prior import check_prior_geometry

    if cfg.input is None:
        raise ValueError("--volume reconstructs ground-truth volumes: give --input (not --measurements)")
    verbose = cfg.progress and ranks.rank == 0
    misc.check_writable(cfg.resume if cfg.resume else cfg.outdir)
    volumes = [rio.open_volume(s, cfg.mat_key, cfg.normalize, cfg.hu_window)
               for s in rio.list_volume_sources(cfg.input)]
    for v in volumes:
        if cfg.image_size and list(v.shape[1:]) != list(cfg.image_size):
            raise ValueError(f"{v.source}: slices are {v.shape[1]}x{v.shape[2]}, expected --image-size "
                             f"{cfg.image_size[0]}x{cfg.image_size[1]}")
        check_prior_geometry(cfg.prior, cfg.pad, cfg.psize, {tuple(v.shape[1:])})
    slab_bounds(1, cfg.slab)
    ctx = VolumeContext(cfg, ranks.device, {tuple(v.shape[1:]) for v in volumes}, verbose)
    cfg = ctx.cfg  # with the chosen grid
    for v in volumes:  # operators (and their errors, e.g. cone beam on CPU) before any work
        for n in sorted({z1 - z0 for z0, z1 in slab_bounds(v.shape[0], cfg.slab)}):
            ctx.operator(tuple(v.shape[1:]), n)

    def open_and_plan():  # rank 0: the run directory (resume: checked, temporaries removed), the plan
        run_dir = stages.open_run_dir(cfg, "-volume")
        if not cfg.resume:
            misc.atomic_write_json(run_dir / "config.json", cfg.replace(run_dir=str(run_dir)).to_dict())
        return str(run_dir), pending_slabs(volumes, run_dir, cfg.slab)

    run_dir, pending = ranks.on_rank0(open_and_plan)
    run_dir = Path(run_dir)
    cfg = cfg.replace(run_dir=str(run_dir))
    firsts = np.cumsum([0] + [v.shape[0] for v in volumes]).tolist()  # global index of each volume's first slice
    mine = ranks.share(pending)
    if ranks.world > 1:
        print(f"rank {ranks.rank} of {ranks.world}: {len(mine)} of {len(pending)} pending slab(s): "
              f"{_describe_slabs(volumes, mine)}", file=sys.stderr, flush=True)

    def solve_mine():
        bar = tqdm(total=len(mine), desc="slabs", unit="slab", disable=not verbose or ranks.world > 1)
        try:
            for k, z0, z1 in mine:
                record = solve_slab_files(ctx, volumes[k], run_dir, firsts[k], z0, z1)
                if ranks.world > 1 and cfg.progress:
                    print(f"rank {ranks.rank}: {_slab_stem(volumes[k], z0, z1)} done in "
                          f"{sum(record['seconds'].values()):.1f} s", file=sys.stderr, flush=True)
                bar.update(1)
        finally:
            bar.close()

    ranks.on_every_rank(solve_mine)

    def assemble_and_summarize():  # rank 0, after every rank finished its slabs
        records = []
        for v in volumes:
            done = run_dir / f"{v.name}_metrics.json"
            records.append(json.loads(done.read_text()) if done.is_file() else assemble_volume(cfg, v, run_dir))
        summary = _write_summary(run_dir, records, cfg)
        if verbose:
            print(format_volume_table(summary))
            print(f"results in {run_dir}")
        return summary

    return ranks.on_rank0(assemble_and_summarize)


def _write_summary(run_dir: Path, records: list[dict], cfg: ReconConfig) -> dict:
    methods = list(cfg.baselines) + [PADIS]
    rows = [dict(image=r["volume"], method=m, psnr=r["methods"][m]["psnr"], ssim=r["methods"][m]["ssim"],
                 seconds=r["methods"][m]["seconds"]) for r in records for m in methods]
    writer = rio.ResultWriter(run_dir)
    writer.write_metrics(rows)
    per = {m: dict(psnr=rio.mean_std([r["psnr"] for r in rows if r["method"] == m]),
                   ssim=rio.mean_std([r["ssim"] for r in rows if r["method"] == m]),
                   seconds_per_volume=rio.mean_std([r["seconds"] for r in rows if r["method"] == m]))
           for m in methods}
    summary = dict(mode="volume", n_volumes=len(records), n_slices=sum(r["shape"][0] for r in records),
                   problem=cfg.problem, solver=cfg.solver, prior=cfg.prior, ground_truth=True,
                   methods=per, volumes=records, failures=[], run_dir=str(run_dir), config=cfg.to_dict())
    writer.write_summary(summary)
    return summary


def format_volume_table(summary: dict) -> str:
    """method, volume PSNR, SSIM (mean over slices), seconds per volume."""
    lines = [f"{'method':<10} {'PSNR [dB]':>10} {'SSIM':>8} {'s/volume':>9}   ({summary['n_volumes']} volume(s), "
             f"{summary['n_slices']} slices)"]
    for m, s in summary["methods"].items():
        lines.append(f"{m:<10} {s['psnr']['mean']:>10.2f} {s['ssim']['mean']:>8.4f} "
                     f"{s['seconds_per_volume']['mean']:>9.2f}")
    return "\n".join(lines)
