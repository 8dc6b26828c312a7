"""Image readers for every supported format, and an in-memory torch Dataset for training.

Everything returned here is ``float32`` in **[0, 1]** with shape ``(C, H, W)``, C = 1
(grayscale) or 3 (RGB); reconstruction uses :func:`read_images` too.

Formats (by extension, see ``READERS``):

- ``.png .jpg .jpeg .tif .tiff .bmp``: 8-bit (/255) or 16-bit (/65535) grayscale or RGB
  (pillow); RGBA / grey+alpha only when fully opaque (the alpha band is dropped). Every frame
  of a multi-page TIFF is one image.
- ``.npy``: ``(H, W)`` one grayscale image; ``(N, H, W)`` N grayscale images;
  ``(N, C, H, W)`` N images of C channels. Float data must lie in [0, 1]; uint8/uint16 are
  scaled by 255/65535; bool gives 0/1.
- ``.npz``: the array named ``mat_key`` if present, else the only array in the archive; the
  same layouts as ``.npy``.
- ``.mat`` (v5 via scipy, v7.3 via h5py, whose axes are stored reversed): variable
  ``mat_key`` (default ``images``), ``H x W`` (one image), ``H x W x N`` (N grayscale images,
  the paper's layout) or ``H x W x C x N``.
- ``.zip``: every member with one of the extensions above (not nested zips).
- ``.dcm .dicom``, and files of other names with the DICOM header (``IM0001``): CT slices via ``training.dicom.read_dicom`` (HU from RescaleSlope/Intercept,
  then the window ``hu_window``, default ``training.ct_window`` [-1000, 2000] HU -> [0, 1]);
  a directory holding only DICOM files is read as one series, ordered by InstanceNumber.

Bad input raises one line naming the file and what was expected: ``FileNotFoundError`` for a
missing path, ``ValueError`` otherwise.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

# ----------------------------------------------------------------------------------------
# Raw readers: each yields (name, array) with array (C, H, W) in its stored dtype.

Raw = Iterator[tuple[str, np.ndarray]]


def _pil_to_array(img, label: str) -> np.ndarray:
    """One pillow frame -> (C, H, W) float32 in [0, 1]."""
    mode = img.mode
    if mode in ("1", "L"):
        arr = np.asarray(img.convert("L"), dtype=np.float32)[None] / 255.0
    elif mode == "P":
        arr = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    elif mode == "RGB":
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    elif mode.startswith("I;16") or mode == "I":
        raw = np.asarray(img).astype(np.float64)
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise ValueError(f"{label}: 32-bit integer image with values outside [0, 65535]; "
                             "expected 8- or 16-bit data")
        arr = (raw / 65535.0).astype(np.float32)[None]
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)[None]
    elif mode in ("RGBA", "LA", "PA"):  # accepted when fully opaque: the alpha band is dropped
        alpha = np.asarray(img.getchannel("A"))
        if alpha.size and alpha.min() < 255:
            raise ValueError(f"{label}: image mode {mode} has transparent pixels (alpha down to "
                             f"{int(alpha.min())}/255); expected an opaque image (flatten it onto a background)")
        return _pil_to_array(img.convert("L" if mode == "LA" else "RGB"), label)
    else:
        bands = len(img.getbands())
        raise ValueError(f"{label}: image mode {mode} with {bands} channels; expected 1 (grayscale) "
                         "or 3 (RGB) channels")
    return arr


def _read_pil(source, label: str, stem: str, mat_key: str) -> Raw:
    from PIL import Image, ImageSequence

    try:
        img = Image.open(source)
        img.load()
    except Exception as exc:  # pillow raises several unrelated types for corrupt files
        reason = str(exc).replace(f" '{source}'", "").replace(str(source), "the file")  # name the path once
        raise ValueError(f"{label}: unreadable image file ({type(exc).__name__}: {reason})") from None
    frames = getattr(img, "n_frames", 1)
    if frames == 1:
        yield stem, _pil_to_array(img, label)
        return
    for k, frame in enumerate(ImageSequence.Iterator(img)):
        yield f"{stem}_{k:04d}", _pil_to_array(frame, f"{label} (frame {k})")


def _stack_nchw(arr: np.ndarray, label: str, layout: str) -> np.ndarray:
    """(H,W) / (N,H,W) / (N,C,H,W) -> (N, C, H, W)."""
    if arr.ndim == 2:
        return arr[None, None]
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        return arr
    raise ValueError(f"{label}: array of shape {arr.shape}; expected {layout}")


def _yield_stack(stack: np.ndarray, stem: str) -> Raw:
    if stack.shape[0] == 1:
        yield stem, stack[0]
        return
    for k in range(stack.shape[0]):
        yield f"{stem}_{k:04d}", stack[k]


_NPY_LAYOUT = "(H, W), (N, H, W) or (N, C, H, W)"


def _read_npy(source, label: str, stem: str, mat_key: str) -> Raw:
    try:
        arr = np.load(source, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{label}: unreadable .npy file ({type(exc).__name__}: {exc})") from None
    yield from _yield_stack(_stack_nchw(np.asarray(arr), label, _NPY_LAYOUT), stem)


def _read_npz(source, label: str, stem: str, mat_key: str) -> Raw:
    try:
        with np.load(source, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if mat_key in keys:
                arr = archive[mat_key]
            elif len(keys) == 1:
                arr = archive[keys[0]]
            else:
                raise KeyError(keys)
    except KeyError as exc:
        raise ValueError(f"{label}: no array named {mat_key!r}; it has {exc.args[0]} "
                         "(choose one with --mat-key)") from None
    except Exception as exc:
        raise ValueError(f"{label}: unreadable .npz file ({type(exc).__name__}: {exc})") from None
    yield from _yield_stack(_stack_nchw(np.asarray(arr), label, _NPY_LAYOUT), stem)


def _load_mat(source, label: str, mat_key: str) -> np.ndarray:
    """Return variable ``mat_key`` in MATLAB axis order (H, W, ...)."""
    import scipy.io

    if _is_hdf5(source):
        return _load_mat73(source, label, mat_key)
    try:
        data = scipy.io.loadmat(source)
    except NotImplementedError:  # v7.3 files are HDF5
        return _load_mat73(source, label, mat_key)
    except Exception as exc:
        raise ValueError(f"{label}: unreadable .mat file ({type(exc).__name__}: {exc})") from None
    if mat_key not in data:
        names = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{label}: no variable {mat_key!r}; it has {names} (choose one with --mat-key)")
    return np.asarray(data[mat_key])


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(source) -> bool:
    """HDF5 files carry their signature at offset 0, 512, 1024, ... (MATLAB v7.3 uses 512)."""
    if hasattr(source, "seek"):
        source.seek(0)
        head = source.read(4096)
        source.seek(0)
    else:
        with open(source, "rb") as f:
            head = f.read(4096)
    return any(head[o:o + 8] == _HDF5_SIGNATURE for o in (0, 512, 1024, 2048))


def _load_mat73(source, label: str, mat_key: str) -> np.ndarray:
    import h5py

    if hasattr(source, "seek"):
        source.seek(0)
    try:
        with h5py.File(source, "r") as f:
            if mat_key not in f or not isinstance(f[mat_key], h5py.Dataset):
                names = sorted(k for k in f.keys() if isinstance(f[k], h5py.Dataset) and not k.startswith("#"))
                raise ValueError(f"{label}: no variable {mat_key!r}; it has {names} "
                                 "(choose one with --mat-key)")
            arr = f[mat_key][()]
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{label}: unreadable .mat (v7.3/HDF5) file ({type(exc).__name__}: {exc})") from None
    return np.asarray(arr).T  # HDF5 stores MATLAB's column-major axes reversed


def _read_mat(source, label: str, stem: str, mat_key: str) -> Raw:
    arr = _load_mat(source, label, mat_key)
    if arr.ndim == 2:
        stack = arr[None, None]
    elif arr.ndim == 3:
        stack = arr.transpose(2, 0, 1)[:, None]
    elif arr.ndim == 4:
        stack = arr.transpose(3, 2, 0, 1)
    else:
        raise ValueError(f"{label}: variable {mat_key!r} has shape {arr.shape}; expected H x W, "
                         "H x W x N or H x W x C x N")
    yield from _yield_stack(stack, stem)


_ZIPPABLE: dict[str, Callable] = {}


def _read_zip(source, label: str, stem: str, mat_key: str) -> Raw:
    try:
        archive = zipfile.ZipFile(source)
    except Exception as exc:
        raise ValueError(f"{label}: unreadable zip archive ({type(exc).__name__}: {exc})") from None
    with archive:
        members = sorted(m for m in archive.namelist()
                         if not m.endswith("/") and not m.startswith("__MACOSX/")
                         and not Path(m).name.startswith(".") and Path(m).suffix.lower() in _ZIPPABLE)
        if not members:
            raise ValueError(f"{label}: zip archive holds no image files; supported: "
                             f"{', '.join(sorted(_ZIPPABLE))}")
        for member in members:
            reader = _ZIPPABLE[Path(member).suffix.lower()]
            data = io.BytesIO(archive.read(member))
            member_stem = str(Path(member).with_suffix("")).replace("/", "_")
            yield from reader(data, f"{label}:{member}", member_stem, mat_key)


# Registry: extension -> reader(source, label, stem, mat_key) yielding (name, (C,H,W) array).
READERS: dict[str, Callable] = {
    ".png": _read_pil, ".jpg": _read_pil, ".jpeg": _read_pil, ".tif": _read_pil,
    ".tiff": _read_pil, ".bmp": _read_pil,
    ".npy": _read_npy, ".npz": _read_npz, ".mat": _read_mat,
}
_ZIPPABLE.update(READERS)
READERS[".zip"] = _read_zip
DICOM_SUFFIXES = (".dcm", ".dicom")
for _ext in DICOM_SUFFIXES:
    READERS[_ext] = None  # read by training.dicom with the run's HU window (see read_images)


def supported_extensions() -> list[str]:
    return sorted(READERS)


# ----------------------------------------------------------------------------------------
# Public API


def is_dicom(path: Path) -> bool:
    """A DICOM input: ``.dcm``/``.dicom``, or a file of another name (``IM0001``, ``1.2.840.5``)
    with the DICOM preamble, when its suffix is not one of the other readers'."""
    from training.dicom import is_dicom_name_or_header
    return is_dicom_name_or_header(path, [s for s in READERS if s not in DICOM_SUFFIXES])


def _readable(path: Path) -> bool:
    return path.suffix.lower() in READERS or is_dicom(path)


def list_image_files(path: str | os.PathLike) -> list[Path]:
    """Image files under ``path`` (a file, or a directory searched recursively), sorted;
    DICOM files are recognised by their header too (:func:`is_dicom`).

    Hidden files are skipped. Raises FileNotFoundError for a missing path, ValueError for an
    unsupported single file or a directory without supported files.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    exts = ", ".join(supported_extensions())
    if path.is_file():
        if not _readable(path):
            raise ValueError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; supported: {exts}, "
                             "or a file with a DICOM header")
        return [path]
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    found = [p for p in files if _readable(p)]
    if not found:
        others = sorted({p.suffix.lower() or "(none)" for p in files})
        what = f"only files of type {others}" if files else "no files"
        raise ValueError(f"{path}: directory has {what}; expected image files ({exts})")
    return found


def _to_unit_float(arr: np.ndarray, label: str, normalize: bool, channels: int | None,
                   ranges: list | None = None) -> np.ndarray:
    """Raw (C, H, W) array -> float32 in [0, 1], with the checks of docs/ARCHITECTURE.md (Data). With
    ``normalize`` the (min, max) it maps to [0, 1] is appended to ``ranges`` (if given)."""
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"{label}: image of shape {arr.shape}; expected (C, H, W) with H, W > 0")
    c = arr.shape[0]
    allowed = (channels,) if channels else (1, 3)
    if c not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise ValueError(f"{label}: {c} channels; expected {want} (1 = grayscale, 3 = RGB)")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
    else:
        raise ValueError(f"{label}: data type {arr.dtype}; expected float in [0, 1], uint8 or uint16")
    if not np.isfinite(out).all():
        raise ValueError(f"{label}: contains NaN or Inf values; expected finite values in [0, 1]")
    if normalize:
        lo, hi = out.min(), out.max()
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
        if ranges is not None:
            ranges.append((float(lo), float(hi)))
    elif out.size and (out.min() < 0 or out.max() > 1):
        raise ValueError(f"{label}: values in [{out.min():.4g}, {out.max():.4g}]; expected [0, 1] "
                         "(use --normalize to min-max scale each image)")
    return np.ascontiguousarray(out, dtype=np.float32)


def _read_dicom_file(hu_window):
    def reader(source, label: str, stem: str, mat_key: str) -> Raw:
        from training.dicom import read_dicom
        yield from read_dicom(source, hu_window)
    return reader


def read_images(path: str | os.PathLike, mat_key: str = "images", normalize: bool = False,
                max_images: int | None = None, channels: int | None = None,
                hu_window: tuple[float, float] | None = None,
                ranges: dict | None = None) -> list[tuple[str, np.ndarray]]:
    """Read every image under ``path`` (file or directory; all formats of ``READERS``).

    Returns ``[(name, image)]`` in sorted file order, image ``(C, H, W)`` float32 in [0, 1];
    ``name`` is the file stem (``stem_0003`` for the 4th image of a stack), unique and usable
    as a file name. ``normalize`` min-max scales each image to [0, 1] (for data in other
    units). ``max_images`` stops after that many images. ``channels`` (1 or 3) requires that
    channel count; by default 1 or 3 are accepted. ``hu_window`` (HU min, max) maps DICOM
    slices to [0, 1] (default: ``training.ct_window``). With ``normalize`` and a ``ranges``
    dict, ``ranges[name]`` gets each image's (min, max) before scaling (to map outputs back).
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be a positive integer, got {max_images}")
    from training.ct_window import HU_MAX, HU_MIN
    hu_window = tuple(hu_window) if hu_window is not None else (HU_MIN, HU_MAX)
    files = list_image_files(path)
    if Path(path).is_dir() and all(is_dicom(f) and f.parent == Path(path) for f in files):
        from training.dicom import read_dicom
        series = read_dicom(path, hu_window)[:max_images]  # one series: InstanceNumber / position order
        found = []
        out = [(n, _to_unit_float(x, f"{path} [{n}]", normalize, channels, found)) for n, x in series]
        if ranges is not None:
            ranges.update(zip([n for n, _ in out], found))
        return out
    out: list[tuple[str, np.ndarray]] = []
    seen: set[str] = set()
    for file in files:
        reader = READERS.get(file.suffix.lower()) if not is_dicom(file) else None
        reader = reader or _read_dicom_file(hu_window)
        for name, raw in reader(file, str(file), file.stem, mat_key):
            found: list = []
            image = _to_unit_float(np.asarray(raw), f"{file}" if name == file.stem else f"{file} [{name}]",
                                   normalize, channels, found)
            unique, k = name, 1
            while unique in seen:
                unique, k = f"{name}_{k}", k + 1
            seen.add(unique)
            if ranges is not None and found:
                ranges[unique] = found[0]
            out.append((unique, image))
            if max_images is not None and len(out) >= max_images:
                return out
    if not out:
        raise ValueError(f"{path}: no images found")
    return out


# ----------------------------------------------------------------------------------------
# Training dataset


class ImageDataset(torch.utils.data.Dataset):
    """All training images in memory as one ``(N, C, H, W)`` float32 tensor in [0, 1].

    Images must share one size and channel count (a clear error names the first that does not).
    ``shard(rank, world_size)`` gives the images of one DDP rank (``images[rank::world_size]``).
    ``xflip`` appends every image mirrored left-right (``len`` doubles; mirrors named ``NAME-xflip``).
    """

    def __init__(self,
                 path: str | os.PathLike | None = None,  # File or directory of images.
                 mat_key: str = "images",                # Variable name in .mat/.npz files.
                 normalize: bool = False,                # Min-max scale each image to [0, 1].
                 max_images: int | None = None,          # Use at most this many images.
                 xflip: bool = False,                    # Also each image mirrored left-right.
                 images: torch.Tensor | None = None,     # Or: the (N, C, H, W) tensor itself.
                 names: list[str] | None = None):        # Names of the given images.
        self.kwargs = dict(path=str(path) if path is not None else None, mat_key=mat_key,
                           normalize=normalize, max_images=max_images, xflip=xflip)
        if images is None:
            if path is None:
                raise ValueError("ImageDataset: give a path or an images tensor")
            items = read_images(path, mat_key=mat_key, normalize=normalize, max_images=max_images)
            first_name, first = items[0]
            for name, img in items[1:]:
                if img.shape != first.shape:
                    raise ValueError(f"{path}: image {name!r} has shape {img.shape} (C, H, W) but "
                                     f"{first_name!r} has {first.shape}; training needs one size")
            names = [n for n, _ in items]
            images = torch.from_numpy(np.stack([img for _, img in items]))
        if images.ndim != 4:
            raise ValueError(f"ImageDataset: images of shape {tuple(images.shape)}; expected (N, C, H, W)")
        names = list(names) if names is not None else [f"{k:05d}" for k in range(len(images))]
        if xflip:  # EDM's --xflip: the data set doubled by mirror images (x = the width axis)
            images = torch.cat([images, images.flip(-1)])
            names = names + [f"{n}-xflip" for n in names]
        self.images = images
        self.names = names

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, idx: int) -> torch.Tensor:
        return self.images[idx]

    def shard(self, rank: int, world_size: int) -> "ImageDataset":
        """The images of one rank: ``images[rank::world_size]`` (error if that is empty)."""
        if len(self) < world_size:
            raise ValueError(f"{self.kwargs['path']}: {len(self)} images cannot be split over "
                             f"{world_size} processes; need at least one image per process")
        sub = ImageDataset(images=self.images[rank::world_size], names=self.names[rank::world_size])
        sub.kwargs = dict(self.kwargs)
        return sub
