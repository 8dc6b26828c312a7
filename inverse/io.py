"""Read reconstruction inputs and write reconstruction results.

Inputs are either ground-truth images (read by ``training.dataset.read_images``: each a
``(C, H, W)`` float32 array in [0, 1]) from which measurements are simulated, or a directory of
``.npy`` measurement arrays (no ground truth: reconstruct only).

Every output file is written atomically through ``torch_utils.misc`` and never overwrites an
existing file. Per image ``NAME``:

- ``NAME_recon.png`` / ``NAME_recon.npy``: the PaDIS reconstruction. PNGs are **8-bit**
  (grayscale ``L`` or ``RGB``) of the image clipped to [0, 1]; the ``.npy`` holds the full
  float32 ``(C, H, W)`` array in [0, 1] (not clipped), so nothing is lost to quantisation.
- ``NAME_measurement.npy``: the measurement ``y`` exactly as the operator returns it (batch
  axis dropped), plus ``NAME_measurement.png``: the measurement clipped to [0, 1] for
  image-domain problems, or the sinogram min-max scaled to [0, 1] for CT.
- ``NAME_<baseline>.png`` / ``.npy`` for each baseline (``fbp``, ``tv``).
- With K > 1 posterior samples (``samples``): ``NAME_recon`` is their mean, ``NAME_std.npy``
  the per-pixel std (float32 ``(C, H, W)``) and ``NAME_std.png`` it scaled by its own maximum
  (black 0, white the maximum); with ``save_samples`` also ``NAME_samples.npy`` ``(K, C, H, W)``.
- ``NAME_metrics.json``, written **last**: the image's metrics rows, denoiser calls, seconds and
  the list of its files. It marks the image complete: a resumed run (``--resume``) skips an
  image whose marker and listed files all exist and reads its metrics back from here.

Per run: ``metrics.csv``, ``summary.json`` and ``comparison.png`` (see ``ResultWriter``): the
only files ever replaced (atomically, when a resumed run rewrites them at its end).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from torch_utils import misc

COMPARISON_MAX_ROWS = 8  # images shown in comparison.png
MARKER_SUFFIX = "_metrics.json"  # NAME_metrics.json: written last, marks an image complete
STD_COLUMN = "std"  # comparison.png column of the posterior std (images key of a row)


# ----------------------------------------------------------------------------------------
# Inputs


def read_ground_truth(path: str | Path, mat_key: str = "images", normalize: bool = False,
                      max_images: int | None = None, hu_window: tuple[float, float] | None = None
                      ) -> list[tuple[str, np.ndarray]]:
    """Ground-truth images as ``[(name, (C, H, W) float32 in [0, 1])]`` (sorted by file).

    Thin wrapper over ``training.dataset.read_images`` (the loader training uses), which gives
    one clear error line naming the file for a missing/empty directory or unreadable data.
    """
    from training.dataset import read_images

    return read_images(path, mat_key=mat_key, normalize=normalize, max_images=max_images, hu_window=hu_window)


def _image_sources(path: Path) -> list[Path]:
    """The units ``read_images`` reads independently: each file, or a directory that is one
    DICOM series (read as a whole, ordered by InstanceNumber)."""
    from training.dataset import is_dicom, list_image_files

    files = list_image_files(path)
    if path.is_dir() and all(f.parent == path and is_dicom(f) for f in files):
        return [path]
    return files


def read_ground_truth_files(path: str | Path, failures: list[dict], mat_key: str = "images",
                            normalize: bool = False, max_images: int | None = None,
                            hu_window: tuple[float, float] | None = None,
                            ranges: dict | None = None) -> list[tuple[str, np.ndarray, str]]:
    """Like :func:`read_ground_truth`, file by file: ``[(name, image, file)]``. With
    ``normalize``, ``ranges[name]`` (if a dict is given) gets each image's original (min, max).

    A file that cannot be read (or holds bad data) is appended to ``failures`` as
    ``dict(file, reason)`` and skipped, so one bad file does not sink a directory. A missing or
    empty directory still raises; so does a directory in which every file failed (the first
    failure's line).
    """
    from training.dataset import read_images

    path = Path(path)
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be a positive integer, got {max_images}")
    out: list[tuple[str, np.ndarray, str]] = []
    seen: set[str] = set()
    first_failure = len(failures)
    for source in _image_sources(path):
        left = None if max_images is None else max_images - len(out)
        if left == 0:
            break
        found: dict = {}
        try:
            items = read_images(source, mat_key=mat_key, normalize=normalize, max_images=left,
                                hu_window=hu_window, ranges=found)
        except ValueError as exc:
            failures.append(failure_record(source, str(exc)))
            continue
        for name, image in items:
            unique, k = name, 1
            while unique in seen:
                unique, k = f"{name}_{k}", k + 1
            seen.add(unique)
            if ranges is not None and name in found:
                ranges[unique] = found[name]
            out.append((unique, image, str(source)))
    if not out:
        raise ValueError(failure_line(failures[first_failure]) if len(failures) > first_failure
                         else f"{path}: no images found")
    return out


def grey_from_rgb(image: np.ndarray) -> np.ndarray | None:
    """The (1, H, W) image of a (3, H, W) one whose three channels are equal, else None."""
    if image.ndim == 3 and image.shape[0] == 3 and np.array_equal(image[0], image[1]) \
            and np.array_equal(image[0], image[2]):
        return image[:1].copy()
    return None


# ----------------------------------------------------------------------------------------
# Volumes (reconstruction in volume mode, inverse.volume)

VOLUME_SUFFIXES = (".npy", ".nii", ".nii.gz")  # read slab by slab; other inputs are read whole


class Volume:
    """One 3-D ground truth read slab by slab: ``slab(z0, z1)`` -> ``(z1 - z0, H, W)`` float32 in
    [0, 1]. ``shape`` is ``(D, H, W)``; slices are along the first axis. ``get(z0, z1)`` returns
    the stored values of those slices and ``window`` (lo, hi) maps them linearly to [0, 1] (None:
    they must be in [0, 1] already; values outside are an error naming the file)."""

    def __init__(self, name: str, source: str, shape: tuple[int, int, int], get, window=None, hint: str = ""):
        self.name, self.source, self.shape = name, source, tuple(int(s) for s in shape)
        self._get, self.window, self._hint = get, window, hint

    def slab(self, z0: int, z1: int) -> np.ndarray:
        a = np.asarray(self._get(z0, z1))
        if a.dtype == np.uint8 and self.window is None:
            a = a.astype(np.float32) / 255.0
        elif a.dtype == np.uint16 and self.window is None:
            a = a.astype(np.float32) / 65535.0
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"{self.source}: slices {z0}-{z1 - 1} contain NaN or Inf")
        if self.window is not None:
            lo, hi = self.window
            a = np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)
        elif a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(f"{self.source}: values in [{a.min():.4g}, {a.max():.4g}] in slices {z0}-{z1 - 1}; "
                             f"expected [0, 1]{self._hint}")
        return np.ascontiguousarray(a)


def _streamed_range(get, depth: int, step: int = 16) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for z in range(0, depth, step):
        a = np.asarray(get(z, min(depth, z + step)), dtype=np.float64)
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    return lo, hi


def _volume_window(get, depth: int, normalize: bool, hu_window) -> tuple[float, float] | None:
    if hu_window is not None:
        return tuple(float(v) for v in hu_window)
    return _streamed_range(get, depth) if normalize else None


def _npy_volume(file: Path, normalize: bool, hu_window) -> Volume:
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: unreadable .npy file ({exc})") from None
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"{file}: array of shape {arr.shape}; a volume is (D, H, W) (or (D, 1, H, W))")
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype in (np.uint8, np.uint16, np.int16)):
        raise ValueError(f"{file}: data type {arr.dtype}; expected float, uint8, uint16 or int16")
    get = lambda z0, z1: arr[z0:z1]
    return Volume(file.name[:-4], str(file), arr.shape, get, _volume_window(get, arr.shape[0], normalize, hu_window),
                  " (use --normalize or --hu-window)")


def _nifti_volume(file: Path, normalize: bool, hu_window) -> Volume:
    try:
        import nibabel
    except ImportError:
        raise ValueError(f"{file}: reading NIfTI needs nibabel (pip install 'padis[nifti]')") from None
    try:
        img = nibabel.as_closest_canonical(nibabel.load(file))
        data = img.dataobj
        shape = data.shape
    except Exception as exc:  # nibabel raises several types for damaged files
        raise ValueError(f"{file}: unreadable NIfTI file ({type(exc).__name__}: {exc})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{file}: NIfTI image of shape {shape}; expected a 3-D volume")

    def get(z0, z1):  # canonical RAS axes (x, y, z) -> slices (z, y, x), anterior in the top row
        block = np.asarray(data[:, :, z0:z1] if len(data.shape) == 3 else data[:, :, z0:z1, 0])
        return np.transpose(block, (2, 1, 0))[:, ::-1, :]

    name = file.name[:-7] if file.name.lower().endswith(".nii.gz") else file.stem
    return Volume(name, str(file), (shape[2], shape[1], shape[0]), get,
                  _volume_window(get, shape[2], normalize, hu_window), " (use --hu-window for CT in HU, or --normalize)")


def _stacked_volume(source: Path, mat_key: str, normalize: bool, hu_window) -> Volume:
    images = read_ground_truth(source, mat_key=mat_key, normalize=False, hu_window=hu_window)
    shapes = {x.shape for _, x in images}
    if len(shapes) != 1 or next(iter(shapes))[0] != 1:
        raise ValueError(f"{source}: a volume needs single-channel slices of one size, got shapes {sorted(shapes)}")
    vol = np.stack([x[0] for _, x in images])
    get = lambda z0, z1: vol[z0:z1]
    stem = source.name[:-4] if source.suffix else source.name
    return Volume(stem, str(source), vol.shape, get, _streamed_range(get, len(vol)) if normalize else None)


def _volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def list_volume_sources(path: str | Path) -> list[Path]:
    """The volumes under ``path``: a file is one volume; a directory holding ``.npy``/NIfTI files
    has one volume per such file; any other directory (a DICOM series, or 2-D slices in name
    order) is one volume."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and _volume_suffix(p) and not p.name.startswith("."))
    return files or [path]


def open_volume(source: str | Path, mat_key: str = "images", normalize: bool = False,
                hu_window: tuple[float, float] | None = None) -> Volume:
    """A :class:`Volume` from a ``.npy`` (D, H, W) array (memory-mapped), a NIfTI file (nibabel,
    canonical RAS orientation, read lazily), or anything :func:`read_ground_truth` reads (a DICOM
    series directory, a ``.mat`` H x W x D stack, a directory of slices), stacked in memory.
    ``normalize`` min-max scales the whole volume; ``hu_window`` maps stored values in
    [lo, hi] to [0, 1] (DICOM: applied to HU by the DICOM reader). One clear error line otherwise."""
    source = Path(source)
    kind = _volume_suffix(source) if source.is_file() else None
    if kind == ".npy":
        return _npy_volume(source, normalize, hu_window)
    if kind in (".nii", ".nii.gz"):
        return _nifti_volume(source, normalize, hu_window)
    return _stacked_volume(source, mat_key, normalize, hu_window)


def failure_record(file: str | Path, message: str, image: str | None = None) -> dict:
    """``dict(file, image, reason)`` for summary.json; ``reason`` without a leading ``file: ``."""
    file = str(file)
    reason = message[len(file) + 2:] if message.startswith(f"{file}: ") else message
    return dict(file=file, image=image, reason=reason)


def failure_line(record: dict) -> str:
    """One line naming the file (and image) and the reason."""
    image = f" [{record['image']}]" if record.get("image") else ""
    return f"{record['file']}{image}: {record['reason']}"


def list_measurement_files(path: str | Path) -> list[Path]:
    """``.npy`` files of a measurement directory (or one ``.npy`` file), sorted by name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"measurement path {path} does not exist")
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".npy")
        if not files:
            raise FileNotFoundError(f"measurement directory {path} holds no .npy files")
    bad = [p for p in files if p.suffix.lower() != ".npy"]
    if bad:
        raise ValueError(f"{bad[0]}: measurements must be .npy arrays")
    return files


def read_measurements(path: str | Path, measurement_shape: Sequence[int],
                      max_images: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Strict :func:`read_measurement_files`: the first bad file raises; ``[(name, y)]``."""
    return [(name, y) for name, y, _ in read_measurement_files(path, measurement_shape, max_images)]


def read_measurement_files(path: str | Path, measurement_shape: Sequence[int], max_images: int | None = None,
                           failures: list[dict] | None = None) -> list[tuple[str, np.ndarray, str]]:
    """Measurements as ``[(name, float32 array of measurement_shape, file)]``.

    ``measurement_shape`` is the shape of one measurement: ``(C, *op.measurement_shape)``. An
    array with an extra leading batch axis of length 1 is accepted and squeezed, and so is one
    without the channel axis when C is 1. The
    name is the file stem with a trailing ``_measurement`` removed, so the ``NAME_measurement.npy``
    files of an earlier run can be fed back in. Errors name the file and the expected shape.
    With a ``failures`` list, a bad file is appended to it (``failure_record``) and skipped
    instead (unless every file is bad). Returns ``[(name, y, file)]``.
    """
    shape = tuple(int(s) for s in measurement_shape)
    out = []
    errors: list[dict] = []
    for file in list_measurement_files(path)[:max_images]:
        try:
            out.append(_read_measurement(file, shape))
        except ValueError as exc:
            if failures is None:
                raise
            errors.append(failure_record(file, str(exc)))
    if errors:
        if not out:
            raise ValueError(failure_line(errors[0]))
        failures.extend(errors)
    return out


def _read_measurement(file: Path, shape: tuple[int, ...]) -> tuple[str, np.ndarray, str]:
    try:
        y = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: cannot read as a .npy array ({exc})") from None
    if y.ndim == len(shape) + 1 and y.shape[0] == 1:
        y = y[0]
    elif y.ndim == len(shape) - 1 and shape[0] == 1:
        y = y[None]
    if tuple(y.shape) != shape:
        raise ValueError(f"{file}: measurement shape {tuple(y.shape)} does not match the operator's "
                         f"measurement shape {shape} (check --problem, its options and --image-size)")
    if not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
        raise ValueError(f"{file}: expected a real numeric array, got dtype {y.dtype}")
    y = y.astype(np.float32)
    if not np.isfinite(y).all():
        raise ValueError(f"{file}: measurement contains NaN or Inf")
    name = file.stem[: -len("_measurement")] if file.stem.endswith("_measurement") else file.stem
    return name, y, str(file)


# ----------------------------------------------------------------------------------------
# Outputs


def to_uint8(img: np.ndarray, scale: str = "clip") -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` float -> ``(H, W)`` or ``(H, W, C)`` uint8.

    scale='clip' clips to [0, 1] (images); 'minmax' maps [min, max] to [0, 1] (sinograms and
    other measurements not in image units).
    """
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[-1] == 3):
        raise ValueError(f"cannot view an array of shape {img.shape} as an image")
    if scale == "minmax":
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    elif scale != "clip":
        raise ValueError(f"unknown scale {scale!r}; expected 'clip' or 'minmax'")
    return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def save_png(path: str | Path, img: np.ndarray, scale: str = "clip") -> Path:
    """Write an 8-bit PNG atomically (never overwrites)."""
    pil = Image.fromarray(to_uint8(img, scale))
    return misc.atomic_write_with(path, lambda tmp: pil.save(tmp, format="PNG"))


def scaled_to_max(arr: np.ndarray) -> np.ndarray:
    """``arr / max(arr)`` (zeros stay zeros; an all-zero array stays zero): a std map's view."""
    arr = np.asarray(arr, dtype=np.float32)
    top = float(arr.max()) if arr.size else 0.0
    return arr / top if top > 0 else np.zeros_like(arr)


def save_npy(path: str | Path, arr: np.ndarray) -> Path:
    """Write a ``.npy`` array atomically (never overwrites)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(arr))
    return misc.atomic_write_with(path, write)


def image_views(arr: np.ndarray) -> np.ndarray | None:
    """Drop a batch axis and return something ``to_uint8`` can show, or None if not 2-D-like."""
    a = np.asarray(arr)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2 or (a.ndim == 3 and a.shape[0] in (1, 3)):
        return a
    return None


def mean_std(values: Sequence[float]) -> dict:
    """Mean and (population) std of the finite values, as plain floats; NaN if none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return dict(mean=float("nan"), std=float("nan"), n=0)
    return dict(mean=float(v.mean()), std=float(v.std()), n=int(v.size))


class ResultWriter:
    """Writes the files of one reconstruction run into ``run_dir`` (which must exist).

    Per image: see the module docstring. Per run:
    - ``metrics.csv``: one row per (image, method): ``image, method, psnr, ssim, seconds``
      (PSNR in dB and SSIM with data range 1; empty without ground truth; seconds of wall time).
    - ``summary.json``: per method mean and std of PSNR, SSIM and seconds per image, the number
      of images, denoiser calls per image, the run's config, and ``failures``: one
      ``dict(file, image, reason)`` per input that could not be read or reconstructed.
    - ``comparison.png``: rows = the first ``COMPARISON_MAX_ROWS`` images, columns = ground
      truth (if any) | each baseline | PaDIS | std (with posterior samples: the per-pixel
      std scaled by its maximum, given in the title), PSNR in the titles.
    """

    def __init__(self, run_dir: str | Path, sinogram: bool = False):
        self.run_dir = Path(run_dir)
        self.sinogram = sinogram  # CT: measurement PNG is a min-max scaled sinogram
        self.written: dict[str, list[str]] = {}  # per image: file names written so far

    def _record(self, name: str, *paths: Path) -> None:
        self.written.setdefault(name, []).extend(p.name for p in paths)

    def save_image(self, name: str, tag: str, img: np.ndarray) -> None:
        """``NAME_tag.png`` (8-bit, clipped) and ``NAME_tag.npy`` (float32 (C, H, W))."""
        img = np.asarray(img, dtype=np.float32)
        self._record(name, save_npy(self.run_dir / f"{name}_{tag}.npy", img),
                     save_png(self.run_dir / f"{name}_{tag}.png", img, "clip"))

    def save_std(self, name: str, std: np.ndarray) -> None:
        """``NAME_std.npy`` (float32 (C, H, W)) and ``NAME_std.png`` (std / its maximum)."""
        std = np.asarray(std, dtype=np.float32)
        self._record(name, save_npy(self.run_dir / f"{name}_std.npy", std),
                     save_png(self.run_dir / f"{name}_std.png", scaled_to_max(std), "clip"))

    def save_samples(self, name: str, samples: np.ndarray) -> None:
        """``NAME_samples.npy``: the K posterior samples, float32 (K, C, H, W)."""
        self._record(name, save_npy(self.run_dir / f"{name}_samples.npy", np.asarray(samples, dtype=np.float32)))

    def save_measurement(self, name: str, y: np.ndarray) -> None:
        """``NAME_measurement.npy`` (as given) and a PNG view when ``y`` is 2-D-like."""
        y = np.asarray(y, dtype=np.float32)
        self._record(name, save_npy(self.run_dir / f"{name}_measurement.npy", y))
        view = image_views(y)
        if view is not None:
            self._record(name, save_png(self.run_dir / f"{name}_measurement.png", view,
                                        "minmax" if self.sinogram else "clip"))

    def marker(self, name: str) -> Path:
        return self.run_dir / f"{name}{MARKER_SUFFIX}"

    def finish_image(self, name: str, record: dict) -> Path:
        """Write ``NAME_metrics.json`` (``record`` + the files written for ``name``) last."""
        return misc.atomic_write_json(self.marker(name), dict(record, files=self.written.get(name, [])))

    def completed(self, name: str) -> dict | None:
        """The marker record of ``name`` if it and every file it lists exist, else None."""
        try:
            record = json.loads(self.marker(name).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not all((self.run_dir / f).is_file() for f in record.get("files", [None])):
            return None
        return record

    def remove_partial(self, name: str, tags: Sequence[str]) -> list[Path]:
        """Delete the outputs of an image that has no complete marker (left by a killed run), so
        it can be written again; only the file names this writer makes for ``name``."""
        names = [f"{name}_{t}.{e}" for t in [*tags, "measurement"] for e in ("npy", "png")]
        removed = []
        for f in [*names, self.marker(name).name]:
            if (self.run_dir / f).is_file():
                (self.run_dir / f).unlink()
                removed.append(self.run_dir / f)
        return removed

    def write_metrics(self, rows: list[dict]) -> Path:
        """``metrics.csv`` from rows with keys image, method, psnr, ssim, seconds."""
        buf = io.StringIO()
        fields = ["image", "method", "psnr", "ssim", "seconds"]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in fields})
        return misc.atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue(), overwrite=True)

    def write_summary(self, summary: dict) -> Path:
        return misc.atomic_write_json(self.run_dir / "summary.json", summary, overwrite=True)

    def write_comparison(self, rows: list[dict], methods: Sequence[str]) -> Path | None:
        """``comparison.png``. rows: ``dict(name, gt=(C,H,W)|None, images={method: (C,H,W)},
        psnr={method: float|None})``; columns in the order ``methods`` (PaDIS last)."""
        rows = rows[:COMPARISON_MAX_ROWS]
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        has_gt = any(r.get("gt") is not None for r in rows)
        has_std = any(r["images"].get(STD_COLUMN) is not None for r in rows)
        cols = (["ground truth"] if has_gt else []) + list(methods) + ([STD_COLUMN] if has_std else [])
        fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.4 * len(cols), 2.5 * len(rows)),
                                 squeeze=False)
        for i, r in enumerate(rows):
            for j, col in enumerate(cols):
                ax = axes[i, j]
                ax.axis("off")
                img = r.get("gt") if col == "ground truth" else r["images"].get(col)
                if img is None:
                    continue
                u8 = to_uint8(scaled_to_max(img) if col == STD_COLUMN else img)
                ax.imshow(u8, cmap="gray" if u8.ndim == 2 else None, vmin=0, vmax=255)
                p = None if col == "ground truth" else r.get("psnr", {}).get(col)
                title = col if p is None or not math.isfinite(p) else f"{col} {p:.2f} dB"
                if col == STD_COLUMN:
                    title = f"std (max {float(np.max(img)):.3g})"
                ax.set_title(f"{r['name']}\n{title}" if j == 0 else title, fontsize=8)
        fig.tight_layout()
        try:
            return misc.atomic_write_with(self.run_dir / "comparison.png",
                                          lambda tmp: fig.savefig(tmp, format="png", dpi=100),
                                          overwrite=True)
        finally:
            plt.close(fig)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)
