"""Build the CT head data set from the InVesalius example volume ``Cranium.inv3``.

Source: the Debian package ``invesalius-examples`` (GPL-2), file
``/usr/share/doc/invesalius-examples/examples/Cranium.inv3``. An ``.inv3`` project is a gzipped
tar holding ``main.plist`` (its ``matrix`` entry gives ``filename``, ``dtype`` and ``shape``;
``scalar_range`` gives the HU range) and the raw volume, little-endian, C order, shape
(slices, rows, cols): here 108 axial slices of 256 x 256, 0.957 mm pixels, 1.5 mm apart, int16 HU
in [-1024, 2986].

Processing (deterministic, no randomness):
1. window HU -> [0, 1] linearly, ``clip((HU - hu_min) / (hu_max - hu_min), 0, 1)``, default
   [-1000, 2000] HU (``training.ct_window``): air is 0 so zero padding is black, water 1/3,
   bone up to 2000 HU unclipped (only 0.01 % of the voxels lie above);
2. orient upright: the stored rows run from the back of the head (head rest at the top) to the
   face, so rows are flipped to put the face at the top, as CT slices are usually shown;
3. keep slices "with tissue": at least ``min_tissue`` (10 %) of the pixels above ``tissue_hu``
   (-300 HU); this drops the blurred partial-volume slices above the vertex;
4. split into contiguous slabs, so that no test slice has a training neighbour: the
   ``test_slabs`` (default slices 20-29 at the skull base and 82-91 near the vertex) are held out
   for testing, the ``tune_slabs`` (default 55-56, mid-brain) for choosing weights and solver
   settings, and ``gap`` (4) slices on each side of every held-out slab belong to no split
   (6 mm at the 1.5 mm slice spacing). The remaining tissue slices are training. Adjacent slices
   of one volume are near-duplicates, so an interleaved split would measure memorisation.
   The held-out and gap slices never enter ``train.mat`` or ``train/``.

Outputs in OUTDIR (default ``data/ct_head``, git-ignored): ``train.mat`` (variable ``images``,
H x W x N float32 in [0, 1], the paper's layout; MAT v5), ``train/slice_NNN.png`` and
``test/slice_NNN.png``, ``tune/slice_NNN.png`` (16-bit grayscale, NNN = slice index in the
volume), ``test.npz`` and ``tune.npz`` (``images`` N x H x W float32 in [0, 1], ``slice_indices``)
and ``split.json``. ``--ship DIR`` also writes the held-out slices (the same npz files, pngs and
``split.json``) into DIR,
which is how ``datasets/ct_head/`` in the repository was made::

    python datasets/make_ct_head.py --outdir data/ct_head --ship datasets/ct_head --overwrite
"""

from __future__ import annotations

import hashlib
import io
import json
import plistlib
import re
import tarfile
import zipfile
from pathlib import Path
from xml.parsers.expat import ExpatError

import click
import numpy as np
import scipy.io
from PIL import Image

from torch_utils.misc import atomic_write_bytes, atomic_write_with
from training.ct_window import HU_MAX, HU_MIN, hu_to_unit

SOURCE_NAME = "Cranium.inv3"
# Where the file lands when the Debian package is installed (searched in this order).
SEARCH_ROOTS = (
    "/usr/share/doc/invesalius-examples",
    "/usr/share/invesalius-examples",
    "/usr/local/share/doc/invesalius-examples",
    "/usr/share/invesalius",
)
TISSUE_HU = -300.0  # a pixel above this is soft tissue or bone
MIN_TISSUE = 0.10  # a slice "has tissue" if at least this fraction of its pixels does
TEST_SLABS = ((20, 29), (82, 91))  # inclusive volume slice ranges: skull base, near the vertex
TUNE_SLABS = ((55, 56),)  # mid-brain: TV weights and solver settings are chosen here, never scored
GAP = 4  # slices on each side of a held-out slab that belong to no split
MAT_HEADER = b"MATLAB 5.0 MAT-file, written by padis datasets/make_ct_head.py"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps inside .npz so outputs are byte-identical


def find_inv3(source: str | Path | None = None) -> Path:
    """Return the path of ``Cranium.inv3``.

    ``source`` may be the file itself or a directory searched recursively (e.g. the installed
    package's doc directory, or a ``.deb`` unpacked with ``dpkg -x``). Without ``source`` the
    standard install locations ``SEARCH_ROOTS`` are searched. FileNotFoundError if none has it.
    """
    roots = [Path(source)] if source is not None else [Path(r) for r in SEARCH_ROOTS]
    for root in roots:
        if root.is_file():
            return root
        if root.is_dir():
            hits = sorted(root.rglob(SOURCE_NAME))
            if hits:
                return hits[0]
    where = ", ".join(str(r) for r in roots)
    raise FileNotFoundError(
        f"{SOURCE_NAME} not found in {where}; install the Debian package invesalius-examples "
        f"or pass --source (the file, or a directory holding it, e.g. a .deb unpacked with dpkg -x)"
    )


def read_inv3(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read an InVesalius project: (volume (slices, rows, cols) of integer HU as stored, main.plist dict).

    ValueError naming the file if it is not a gzipped tar, main.plist is missing or malformed,
    or the raw volume does not match the plist's dtype/shape/scalar_range.
    """
    path = Path(path)
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            if "main.plist" not in members:
                raise ValueError(f"{path}: no main.plist inside; not an InVesalius .inv3 project")
            try:
                meta = plistlib.loads(tar.extractfile(members["main.plist"]).read())
                matrix = meta["matrix"]
                fname, dtype, shape = matrix["filename"], np.dtype(matrix["dtype"]), tuple(matrix["shape"])
            except (plistlib.InvalidFileException, ExpatError, KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{path}: malformed main.plist (need matrix.filename/dtype/shape): {type(e).__name__}: {e}"
                ) from None
            if len(shape) != 3 or dtype.kind not in "iu" or fname not in members:
                raise ValueError(
                    f"{path}: main.plist matrix must name a 3-D integer volume inside the archive, "
                    f"got filename={fname!r} dtype={dtype} shape={shape}"
                )
            raw = tar.extractfile(members[fname]).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable gzipped tar (.inv3): {e}") from None
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: {fname} has {len(raw)} bytes, main.plist shape {shape} x {dtype} needs {expected}")
    volume = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype.newbyteorder("="))
    lo, hi = meta.get("scalar_range", (volume.min(), volume.max()))
    if volume.min() < lo or volume.max() > hi:  # also catches a wrong byte order
        raise ValueError(
            f"{path}: values [{volume.min()}, {volume.max()}] outside main.plist scalar_range [{lo}, {hi}]"
        )
    return volume, meta


def orient_upright(volume: np.ndarray) -> np.ndarray:
    """Flip the rows of every slice (volume (slices, rows, cols)): face at the top, head rest below."""
    return np.ascontiguousarray(volume[:, ::-1, :])


def tissue_slices(hu: np.ndarray, tissue_hu: float = TISSUE_HU, min_fraction: float = MIN_TISSUE) -> np.ndarray:
    """Indices of the slices of ``hu`` (slices, rows, cols) with >= min_fraction pixels above tissue_hu."""
    fraction = (hu > tissue_hu).mean(axis=(1, 2))
    return np.flatnonzero(fraction >= min_fraction)


def _slab_members(indices: np.ndarray, slabs, role: str) -> np.ndarray:
    """The indices inside the inclusive ranges ``slabs``; ValueError if a slab leaves ``indices``."""
    members = []
    for lo, hi in slabs:
        if lo > hi or not set(range(lo, hi + 1)) <= set(indices.tolist()):
            raise ValueError(f"{role} slab {lo}-{hi} must be a range of tissue slices "
                             f"({indices.min()}-{indices.max()} here)")
        members.extend(range(lo, hi + 1))
    return np.array(sorted(members), dtype=indices.dtype)


def split_indices(indices: np.ndarray, test_slabs=TEST_SLABS, tune_slabs=TUNE_SLABS,
                  gap: int = GAP) -> dict[str, np.ndarray]:
    """Split tissue slice indices into contiguous slabs: {'train', 'tune', 'test', 'gap'}.

    ``test_slabs`` / ``tune_slabs``: inclusive (first, last) volume slice numbers, each inside
    ``indices``. The ``gap`` slices on each side of every held-out slab go to 'gap' (no split).
    The four sets are disjoint and sorted and cover ``indices``. ValueError when slabs overlap,
    a tune slice lies within ``gap`` of a test slice, or no training slice is left.
    """
    indices = np.asarray(indices)
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    test = _slab_members(indices, test_slabs, "test")
    tune = _slab_members(indices, tune_slabs, "tune")
    if len(test) == 0:
        raise ValueError("need at least one test slab")
    if len(set(test.tolist())) < len(test) or set(test.tolist()) & set(tune.tolist()):
        raise ValueError("test and tune slabs must not overlap")
    if len(tune) and np.abs(tune[:, None] - test[None, :]).min() <= gap:
        raise ValueError(f"every tune slice must be more than gap={gap} slices from every test slice")
    held = np.concatenate([test, tune])
    near = np.abs(indices[:, None] - held[None, :]).min(axis=1) <= gap
    gap_idx = indices[near & ~np.isin(indices, held)]
    train = indices[~near]
    if len(train) == 0:
        raise ValueError("the slabs and their gaps leave no training slice")
    return {"train": train, "tune": tune, "test": test, "gap": gap_idx}


def to_uint16(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint16 (0..65535), as stored in 16-bit pngs."""
    return np.round(np.clip(images, 0.0, 1.0) * 65535.0).astype(np.uint16)


def write_npz(path: Path, arrays: dict, overwrite: bool) -> None:
    """Write a compressed .npz with fixed zip timestamps (byte-identical on every run)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)


def write_pngs(folder: Path, images: np.ndarray, indices: np.ndarray, overwrite: bool) -> None:
    """Write images (N, H, W) in [0, 1] as 16-bit pngs folder/slice_NNN.png; drop stale slice_*.png."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {f"slice_{i:03d}.png" for i in indices}
    if overwrite:
        for old in folder.glob("slice_*.png"):
            if old.name not in names:
                old.unlink()
    for img, i in zip(to_uint16(images), indices):
        atomic_write_with(folder / f"slice_{i:03d}.png",
                          lambda p, img=img: Image.fromarray(img).save(p, format="PNG"), overwrite=overwrite)


def write_mat(path: Path, images: np.ndarray, overwrite: bool) -> None:
    """Save images (N, H, W) as MAT v5 variable ``images`` (H x W x N), with a fixed header text."""
    def writer(p: Path) -> None:
        scipy.io.savemat(p, {"images": np.ascontiguousarray(images.transpose(1, 2, 0))},
                         format="5", do_compression=True)
        with open(p, "r+b") as f:  # the 116-byte descriptive header carries a date; make it fixed
            f.write(MAT_HEADER.ljust(116))
    atomic_write_with(path, writer, overwrite=overwrite)


def _parse_slabs(text: str, option: str) -> tuple[tuple[int, int], ...]:
    """'20-29,82-91' -> ((20, 29), (82, 91)); '' -> (); ValueError naming ``option`` otherwise."""
    slabs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            slabs.append((int(lo), int(hi) if sep else int(lo)))
        except ValueError:
            raise ValueError(f"{option}: {part!r} is not a slice range like 20-29") from None
    return tuple(slabs)


def _write_held_out(folder: Path, images: np.ndarray, parts: dict, text: str, overwrite: bool) -> None:
    """The held-out slices of every role (test, tune) as pngs and npz, plus split.json, in folder."""
    for role in ("test", "tune"):
        idx = parts[role]
        write_pngs(folder / role, images[idx], idx, overwrite)
        write_npz(folder / f"{role}.npz", {"images": images[idx], "slice_indices": idx}, overwrite)
    atomic_write_bytes(folder / "split.json", text.encode(), overwrite=overwrite)


def build(source: str | Path | None = None, outdir: str | Path = "data/ct_head", hu_min: float = HU_MIN,
          hu_max: float = HU_MAX, tissue_hu: float = TISSUE_HU, min_tissue: float = MIN_TISSUE,
          test_slabs=TEST_SLABS, tune_slabs=TUNE_SLABS, gap: int = GAP, ship: str | Path | None = None,
          overwrite: bool = False, small_train: tuple[int, ...] = ()) -> dict:
    """Make the data set (see the module docstring); returns the split record written to split.json.

    ``small_train``: for each N also write ``train_N.mat`` with N training slices evenly spaced
    through the volume (the data-efficiency ablation); their indices go to split.json."""
    path = find_inv3(source)
    hu, meta = read_inv3(path)
    hu = orient_upright(hu)
    images = hu_to_unit(hu, hu_min, hu_max)  # (slices, H, W) float32 in [0, 1]
    tissue = tissue_slices(hu, tissue_hu, min_tissue)
    parts = split_indices(tissue, test_slabs, tune_slabs, gap)
    train = parts["train"]
    record = {
        "source": {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                   "package": "invesalius-examples (Debian)", "name": meta.get("name"),
                   "shape": list(hu.shape), "spacing_mm": meta.get("spacing")},
        "window": {"hu_min": hu_min, "hu_max": hu_max, "map": "clip((HU - hu_min) / (hu_max - hu_min), 0, 1)"},
        "orientation": "rows flipped: face at the top",
        "tissue": {"hu": tissue_hu, "min_fraction": min_tissue},
        "split": {"test_slabs": [list(s) for s in test_slabs], "tune_slabs": [list(s) for s in tune_slabs],
                  "gap": gap, "rule": "contiguous held-out slabs (inclusive slice ranges); the gap slices "
                                      "on each side of a held-out slab belong to no split; the rest is training"},
        "train_indices": train.tolist(),
        "tune_indices": parts["tune"].tolist(),
        "test_indices": parts["test"].tolist(),
        "gap_indices": parts["gap"].tolist(),
    }
    subsets = {}
    for n in small_train:
        if not 1 <= n <= len(train):
            raise ValueError(f"--small-train: {n} is not between 1 and the {len(train)} training slices")
        subsets[n] = train[np.round(np.linspace(0, len(train) - 1, n)).astype(int)]
        record[f"train_{n}_indices"] = subsets[n].tolist()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    write_mat(out / "train.mat", images[train], overwrite)
    for n, idx in subsets.items():
        write_mat(out / f"train_{n}.mat", images[idx], overwrite)
    write_pngs(out / "train", images[train], train, overwrite)
    text = re.sub(r"\[\s+([-\d.,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  json.dumps(record, indent=2)) + "\n"  # number lists on one line
    _write_held_out(out, images, parts, text, overwrite)
    if ship is not None:  # held-out slices only: small enough for the repository
        _write_held_out(Path(ship), images, parts, text, overwrite)
    return record


@click.command()
@click.option("--source", type=click.Path(exists=True, path_type=Path), default=None,
              help="Cranium.inv3, or a directory searched for it (default: standard install locations).")
@click.option("--outdir", type=click.Path(path_type=Path), default=Path("data/ct_head"), show_default=True)
@click.option("--hu-min", type=float, default=HU_MIN, show_default=True, help="HU mapped to 0.")
@click.option("--hu-max", type=float, default=HU_MAX, show_default=True, help="HU mapped to 1.")
@click.option("--tissue-hu", type=float, default=TISSUE_HU, show_default=True, help="Tissue pixel threshold.")
@click.option("--min-tissue", type=click.FloatRange(0, 1), default=MIN_TISSUE, show_default=True,
              help="Fraction of tissue pixels a kept slice needs.")
@click.option("--test-slabs", default=",".join(f"{a}-{b}" for a, b in TEST_SLABS), show_default=True,
              help="Held-out test slabs: inclusive volume slice ranges.")
@click.option("--tune-slabs", default=",".join(f"{a}-{b}" for a, b in TUNE_SLABS), show_default=True,
              help="Held-out tuning slabs ('' = none).")
@click.option("--gap", type=click.IntRange(min=0), default=GAP, show_default=True,
              help="Slices on each side of a held-out slab left out of every split.")
@click.option("--ship", type=click.Path(path_type=Path), default=None,
              help="Also write the held-out split here (e.g. datasets/ct_head).")
@click.option("--small-train", type=click.IntRange(min=1), multiple=True,
              help="Also write train_N.mat with N evenly spaced training slices (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def main(**kwargs) -> None:
    """Make data/ct_head (train.mat, pngs, test.npz, tune.npz, split.json) from the InVesalius Cranium CT."""
    try:
        kwargs["test_slabs"] = _parse_slabs(kwargs["test_slabs"], "--test-slabs")
        kwargs["tune_slabs"] = _parse_slabs(kwargs["tune_slabs"], "--tune-slabs")
        record = build(**kwargs)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"train {len(record['train_indices'])} slices, tune {record['tune_indices']}, "
               f"test {record['test_indices']} -> {kwargs['outdir']}")


if __name__ == "__main__":
    main()
