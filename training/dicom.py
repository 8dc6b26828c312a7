"""Read CT slices from DICOM files as [0, 1] images (pydicom).

Stored values are converted to Hounsfield units with the Modality LUT (RescaleSlope and
RescaleIntercept, also from the functional groups of enhanced multi-frame objects, or a Modality
LUT Sequence) and windowed linearly into [0, 1] with ``training.ct_window`` (default
[-1000, 2000] HU, the window of ``datasets/make_ct_head.py``), so DICOM slices and the shipped CT
head data share one intensity scale. Rows are kept as stored (DICOM's row 0 is the top of the
displayed image).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from training.ct_window import HU_MAX, HU_MIN, hu_to_unit

DICOM_SUFFIXES = (".dcm", ".dicom")
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def has_dicom_preamble(path: str | os.PathLike) -> bool:
    """True for a DICOM Part 10 file: 128 preamble bytes, then ``DICM`` (whatever its name, e.g.
    the extensionless ``IM0001`` of many exports). ``DICOMDIR`` (an index, no image) is not."""
    path = Path(path)
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_name_or_header(path: str | os.PathLike, other_suffixes=()) -> bool:
    """A ``.dcm``/``.dicom`` file, or one whose suffix is not in ``other_suffixes`` (the
    other readers' extensions) and that starts with the DICOM preamble."""
    path = Path(path)
    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix not in other_suffixes and has_dicom_preamble(path))


def list_dicom_files(path: str | os.PathLike) -> list[Path]:
    """``path`` itself, or the DICOM files directly in the directory ``path`` (sorted):
    ``*.dcm``/``*.dicom`` and files of any other name with the DICOM preamble (``IM0001``).

    FileNotFoundError if the path is missing or the directory holds no such file.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such DICOM file or directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and is_dicom_name_or_header(p))
    if not files:
        raise FileNotFoundError(f"{path}: directory holds no {'/'.join(DICOM_SUFFIXES)} files")
    return files


def _rescale(ds: pydicom.Dataset, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(slope, intercept) per frame, each (frames,): top level, shared or per-frame groups, else (1, 0)."""
    def pair(item) -> tuple[float, float] | None:
        if "RescaleSlope" in item or "RescaleIntercept" in item:
            return float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))
        seq = item.get("PixelValueTransformationSequence")
        return pair(seq[0]) if seq else None

    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    common = pair(ds) or (pair(shared[0]) if shared else None)
    pairs = [common or (pair(per_frame[k]) if k < len(per_frame) else None) or (1.0, 0.0) for k in range(frames)]
    slope, intercept = np.array(pairs, dtype=np.float64).T
    return slope, intercept


def _read_hu(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    """(dataset, HU (frames, H, W) float64) of one DICOM file; ValueError naming the file otherwise."""
    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:  # no preamble/'DICM': accept a bare data set if it has an image in it
            ds = pydicom.dcmread(path, force=True)
            if "Rows" not in ds or not any(k in ds for k in PIXEL_KEYWORDS):
                raise InvalidDicomError from None
            if "TransferSyntaxUID" not in ds.file_meta:  # the pixel decoder needs it: use the encoding read
                implicit, little = ds.original_encoding
                ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    except InvalidDicomError:
        raise ValueError(f"{path}: not a DICOM file (no 'DICM' header and no image elements)") from None
    except Exception as e:  # truncated or corrupt files fail in many ways inside pydicom
        raise ValueError(f"{path}: unreadable DICOM file ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise ValueError(f"{path}: no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')}); expected a CT image")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"{path}: SamplesPerPixel {ds.SamplesPerPixel} (colour); expected a grayscale CT image")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        arr = ds.pixel_array
    except Exception as e:  # missing decoder plugins raise RuntimeError, broken streams other types
        reason = " ".join(str(e).split()) or type(e).__name__
        if syntax is not None and syntax.is_compressed:
            raise ValueError(
                f"{path}: cannot decode compressed transfer syntax {syntax.name} ({syntax}): {reason} "
                f"(install a pydicom decoder plugin such as pylibjpeg or gdcm, or decompress with gdcmconv --raw)"
            ) from None
        raise ValueError(f"{path}: cannot read pixel data: {reason}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    arr = arr.reshape(frames, int(ds.Rows), int(ds.Columns))
    if "ModalityLUTSequence" in ds:
        hu = np.stack([np.asarray(apply_modality_lut(a, ds), dtype=np.float64) for a in arr])
    else:
        slope, intercept = _rescale(ds, frames)
        hu = arr.astype(np.float64) * slope[:, None, None] + intercept[:, None, None]
    if not np.isfinite(hu).all():
        raise ValueError(f"{path}: pixel data holds NaN or Inf")
    return ds, hu


def _sort_key(ds: pydicom.Dataset, path: Path) -> tuple[float, float, str]:
    """InstanceNumber, then ImagePositionPatient z, then the file name (missing values sort last)."""
    number = ds.get("InstanceNumber")
    position = ds.get("ImagePositionPatient")
    return (float(number) if number not in (None, "") else np.inf,
            float(position[2]) if position is not None and len(position) == 3 else np.inf,
            path.name)


def read_dicom(path: str | os.PathLike, hu_window: tuple[float, float] = (HU_MIN, HU_MAX)
               ) -> list[tuple[str, np.ndarray]]:
    """Read a DICOM file or a directory of DICOM files (see :func:`list_dicom_files`) as CT
    images in [0, 1].

    Returns ``[(name, image), ...]`` with each image (1, H, W) float32 in [0, 1]:
    ``clip((HU - hu_min) / (hu_max - hu_min), 0, 1)``, HU = stored value * RescaleSlope +
    RescaleIntercept. Files are ordered by InstanceNumber, then ImagePositionPatient z, then name;
    ``name`` is the file stem, ``stem_NNNN`` for the frames of a multi-frame file (kept in order).
    Files without the preamble and 'DICM' header (bare ACR-NEMA-style data sets) are read if they
    hold an image.

    Errors (one line naming the file): FileNotFoundError for a missing path or a directory
    without DICOM files; ValueError for a non-DICOM file, no pixel data, colour images, a
    compressed transfer syntax no installed plugin decodes, NaN/Inf, or a bad ``hu_window``.
    """
    hu_min, hu_max = hu_window
    hu_to_unit(np.zeros(1), hu_min, hu_max)  # validate the window before reading anything
    slices = []
    for p in list_dicom_files(path):
        ds, hu = _read_hu(p)
        slices.append((_sort_key(ds, p), p, hu))
    images = []
    for _, p, hu in sorted(slices, key=lambda item: item[0]):
        unit = hu_to_unit(hu, hu_min, hu_max)
        if len(unit) == 1:
            images.append((p.stem, unit))
        else:
            images.extend((f"{p.stem}_{k:04d}", frame[None]) for k, frame in enumerate(unit))
    return images
