"""Volumes on one device: projector per slab, cone beam, the ||A|| cache, a volume reconstruction.

    python benchmarks/bench_volume.py --device cuda --slices 16 --size 256 --out vol.json
    python benchmarks/bench_volume.py --device cpu --slices 4 --size 64 --steps 2     # smoke run

Rows (one table, JSON with ``--out``):

- ``A+AT per slab``: seconds of one forward and one back projection of a slab of ``--slices``
  slices (``--size``², 20-view parallel beam, 512 detector pixels), median of ``--repeats``, for
  the per-slice projector (odlstuff.geometry.Projector: host copies, one ASTRA call per slice)
  and, on CUDA, the volume projector (odlstuff.geometry.VolumeProjector: one 3D ASTRA call on
  torch memory); with each one's measured adjoint mismatch.
- ``cone A+AT``: the same for ``ct_cone`` (CUDA only; on CPU the row says why not).
- ``||A|| first / cached``: seconds of ``op.norm()`` on a fresh geometry (power iteration) and on
  a second operator of the same geometry (inverse.operators.NORM_CACHE).
- ``volume recon``: ``inverse_nodist.py --volume`` on the first held-out CT head slab
  (``datasets/ct_head/test``: adjacent slices, at most ``--slices``; the shipped prior unless
  ``--network``), one slab, dds with
  ``--steps`` levels, with and without ``--z-coupling``: solve seconds, slices/s, volume PSNR.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inverse.operators import NORM_CACHE, make_operator  # noqa: E402  (after the path insert)
from odlstuff import geometry as geo  # noqa: E402
from torch_utils.device import default_device  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_a_at(op, slices: int, repeats: int) -> float:
    """Median seconds of A then AT on a random slab (slices, 1, H, W)."""
    x = torch.rand(slices, 1, *op.image_shape, generator=torch.Generator().manual_seed(0)).to(op.device)
    op.AT(op.A(x))  # warm-up (ASTRA set-up, CUDA context)
    times = []
    for _ in range(repeats):
        _sync(op.device)
        t0 = time.perf_counter()
        op.AT(op.A(x))
        _sync(op.device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def projector_rows(device: torch.device, size: int, slices: int, repeats: int) -> list[dict]:
    rows = []
    op = make_operator("ct_parbeam", (size, size), device=device, views=20)
    per_slice = make_operator("ct_parbeam", (size, size), device="cpu", views=20)
    rows.append(dict(row="A+AT per slab", variant="per-slice (CPU)", device="cpu",
                     value=time_a_at(per_slice, slices, repeats), unit="s",
                     adjoint_error=per_slice.projector.adjoint_mismatch()))
    if device.type == "cuda":
        proj = op.projector
        kind = "volume (3D CUDA)" if isinstance(proj, geo.VolumeProjector) else f"fallback {proj.impl}"
        err = proj.adjoint_mismatch(slices) if isinstance(proj, geo.VolumeProjector) else proj.adjoint_mismatch()
        rows.append(dict(row="A+AT per slab", variant=kind, device=str(device), value=time_a_at(op, slices, repeats),
                         unit="s", adjoint_error=err))
        cone = make_operator("ct_cone", (size, size), device=device, views=20, slices=slices)
        rows.append(dict(row="cone A+AT", variant="ct_cone (3D CUDA)", device=str(device),
                         value=time_a_at(cone, slices, repeats), unit="s", adjoint_error=cone.adjoint_error))
    else:
        try:
            make_operator("ct_cone", (size, size), device=device, slices=slices)
        except ValueError as exc:
            rows.append(dict(row="cone A+AT", variant="not run", device=str(device), value=None, unit="",
                             note=str(exc)))
    return rows


def norm_rows(device: torch.device, size: int) -> list[dict]:
    NORM_CACHE.clear()
    out = []
    for label in ("first (power iteration)", "cached (second operator)"):
        op = make_operator("ct_parbeam", (size, size), device=device, views=20)
        _sync(device)
        t0 = time.perf_counter()
        n = op.norm()
        _sync(device)
        out.append(dict(row="||A||", variant=label, device=str(device), value=time.perf_counter() - t0, unit="s",
                        norm=n))
    return out


def first_slab(files: list[Path], most: int) -> list[Path]:
    """The first run of adjacent slices (slice_NNN.png with consecutive NNN), at most ``most``."""
    out = files[:1]
    for f in files[1:most]:
        if int(f.stem.split("_")[-1]) != int(out[-1].stem.split("_")[-1]) + 1:
            break
        out.append(f)
    return out


def recon_rows(device: torch.device, network: str | None, slices: int, steps: int, z_coupling: float,
               workdir: Path) -> list[dict]:
    src = first_slab(sorted((REPO / "datasets/ct_head/test").glob("slice_*.png")), slices)
    vol_dir = workdir / "slab"
    vol_dir.mkdir()
    for f in src:
        (vol_dir / f.name).write_bytes(f.read_bytes())
    rows = []
    for w in (0.0, z_coupling):
        out = workdir / f"out_{w:g}"
        cmd = [sys.executable, str(REPO / "inverse_nodist.py"), "--input", str(vol_dir), "--volume",
               "--slab", str(slices), "--problem", "ct_parbeam", "--views", "20", "--steps", str(steps),
               "--baseline", "fbp", "--z-coupling", str(w), "--device", str(device), "--outdir", str(out)]
        if network:
            cmd += ["--network", network]
        subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
        (summary,) = [json.loads(p.read_text()) for p in out.glob("*/summary.json")]
        padis, fbp = summary["methods"]["padis"], summary["methods"]["fbp"]
        secs = padis["seconds_per_volume"]["mean"]
        rows.append(dict(row="volume recon", variant=f"dds {steps}, z-coupling {w:g}", device=str(device),
                         value=secs, unit="s", slices_per_s=len(src) / secs, psnr=padis["psnr"]["mean"],
                         ssim=padis["ssim"]["mean"], fbp_psnr=fbp["psnr"]["mean"], slices=len(src)))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'measurement':<16} {'variant':<28} {'device':<7} {'value':>9}  extra"]
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.4f} {r['unit']}"
        extra = {k: v for k, v in r.items() if k not in ("row", "variant", "device", "value", "unit")}
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items())
        lines.append(f"{r['row']:<16} {r['variant']:<28} {r['device']:<7} {value:>9}  {text}")
    return "\n".join(lines)


@click.command()
@click.option("--device", default=None, help="[default: cuda if available, else cpu]")
@click.option("--size", default=256, type=click.IntRange(min=16), help="Slice side, pixels (operator rows)")
@click.option("--slices", default=16, type=click.IntRange(min=1), help="Slices per slab")
@click.option("--repeats", default=5, type=click.IntRange(min=1), help="Timed repeats (median)")
@click.option("--steps", default=3, type=click.IntRange(min=1), help="dds levels of the volume reconstruction")
@click.option("--z-coupling", default=0.01, type=float, help="Coupled run's --z-coupling")
@click.option("--network", default=None, help="Checkpoint [default: the shipped one]")
@click.option("--skip-recon", is_flag=True, help="Operators only")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the rows as JSON here")
def main(device, size, slices, repeats, steps, z_coupling, network, skip_recon, out):
    """Time the volume path's operators and one volume reconstruction; print one table."""
    device = torch.device(device or default_device())
    rows = projector_rows(device, size, slices, repeats) + norm_rows(device, size)
    if not skip_recon:
        with tempfile.TemporaryDirectory() as tmp:
            rows += recon_rows(device, network, slices, steps, z_coupling, Path(tmp))
    print(format_table(rows))
    if out:
        Path(out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
