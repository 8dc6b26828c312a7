"""training.dicom.read_dicom on small DICOM files written with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from training.ct_window import HU_MAX, HU_MIN
from training.dicom import read_dicom

H, W = 6, 5  # odd sizes catch transposed axes


def write_ct(path: Path, pixels: np.ndarray, slope: float | None = 1.0, intercept: float | None = -1024.0,
             instance: int | None = None, z: float | None = None, syntax=ExplicitVRLittleEndian,
             signed: bool = True, **extra) -> Path:
    """A minimal CT image: pixels (H, W) or (frames, H, W) stored as 16-bit integers."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if instance is not None:
        ds.InstanceNumber = instance
    if z is not None:
        ds.ImagePositionPatient = [0.0, 0.0, z]
    for key, value in extra.items():
        setattr(ds, key, value)
    if syntax.is_compressed:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS"])
    elif "PixelData" not in extra:
        ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(lo: int, hi: int) -> np.ndarray:
    return np.linspace(lo, hi, H * W).round().astype(np.int32).reshape(H, W)


def test_hu_conversion_and_window(tmp_path: Path):
    stored = ramp(0, 4000)
    write_ct(tmp_path / "a.dcm", stored, slope=1.0, intercept=-1024.0, signed=False)
    (name, img), = read_dicom(tmp_path / "a.dcm")
    hu = stored - 1024.0
    assert name == "a" and img.shape == (1, H, W) and img.dtype == np.float32
    np.testing.assert_allclose(img[0], np.clip((hu - HU_MIN) / (HU_MAX - HU_MIN), 0, 1), atol=1e-6)
    assert img.min() == 0 and img.max() == 1  # both ends of the window are reached and clipped

    write_ct(tmp_path / "b.dcm", ramp(-500, 500), slope=2.0, intercept=-10.0)  # HU = 2 v - 10
    (_, img), = read_dicom(tmp_path / "b.dcm", hu_window=(-100, 100))
    np.testing.assert_allclose(img[0], np.clip((2.0 * ramp(-500, 500) - 10 + 100) / 200, 0, 1), atol=1e-6)

    write_ct(tmp_path / "c.dcm", ramp(-1000, 2000), slope=None)  # no rescale: values are HU already
    (_, img), = read_dicom(tmp_path / "c.dcm")
    np.testing.assert_allclose(img[0], (ramp(-1000, 2000) + 1000) / 3000, atol=1e-6)


def test_order_by_instance_then_position(tmp_path: Path):
    for name, instance, value in [("a", 3, 300), ("b", 1, 100), ("c", 2, 200)]:
        write_ct(tmp_path / f"{name}.dcm", np.full((H, W), value), instance=instance, z=-instance)
    assert [n for n, _ in read_dicom(tmp_path)] == ["b", "c", "a"]

    other = tmp_path / "positions"
    other.mkdir()
    for name, z in [("x", 7.5), ("y", -3.0), ("z", 1.5)]:
        write_ct(other / f"{name}.dcm", np.zeros((H, W)), z=z)
    (other / "notes.txt").write_text("not a .dcm file, ignored")
    assert [n for n, _ in read_dicom(other)] == ["y", "z", "x"]


def test_multiframe(tmp_path: Path):
    frames = np.stack([np.full((H, W), v) for v in (0, 1000, 2000)])
    group = Dataset()
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = 1.0, -1000.0
    group.PixelValueTransformationSequence = [transform]
    write_ct(tmp_path / "m.dcm", frames, slope=None, SharedFunctionalGroupsSequence=[group])
    out = read_dicom(tmp_path / "m.dcm")
    assert [n for n, _ in out] == ["m_0000", "m_0001", "m_0002"]
    assert all(img.shape == (1, H, W) for _, img in out)
    np.testing.assert_allclose([img.mean() for _, img in out], [0, 1 / 3, 2 / 3], atol=1e-6)


def test_missing_and_empty(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_dicom(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no .dcm"):
        read_dicom(tmp_path)


def test_not_dicom(tmp_path: Path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"just some text, no preamble")
    with pytest.raises(ValueError, match=r"bad\.dcm: not a DICOM file"):
        read_dicom(tmp_path)


def test_no_pixel_data(tmp_path: Path):
    path = write_ct(tmp_path / "nopix.dcm", np.zeros((H, W)))
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ValueError, match=r"nopix\.dcm: no pixel data"):
        read_dicom(path)


def test_compressed_syntax(tmp_path: Path):
    path = write_ct(tmp_path / "jls.dcm", np.zeros((H, W)), syntax=JPEGLSLossless)
    with pytest.raises(ValueError, match=r"jls\.dcm: cannot decode compressed transfer syntax JPEG-LS") as err:
        read_dicom(path)
    assert "\n" not in str(err.value)


def test_bad_window(tmp_path: Path):
    path = write_ct(tmp_path / "a.dcm", np.zeros((H, W)))
    with pytest.raises(ValueError, match="hu_min < hu_max"):
        read_dicom(path, hu_window=(500, -500))


def test_same_default_window_as_make_ct_head():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_ct_head", Path(__file__).resolve().parents[1] / "datasets" / "make_ct_head.py")
    mch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mch)
    assert (mch.HU_MIN, mch.HU_MAX) == (HU_MIN, HU_MAX)
    assert read_dicom.__defaults__ == ((HU_MIN, HU_MAX),)


def test_bare_dataset_without_preamble(tmp_path: Path):
    import pydicom

    path = write_ct(tmp_path / "bare.dcm", ramp(0, 3000), intercept=-1000.0)
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(path, implicit_vr=True, little_endian=True)  # old ACR-NEMA style: no 'DICM' header
    assert path.read_bytes()[128:132] != b"DICM"
    (_, img), = read_dicom(path)
    np.testing.assert_allclose(img[0], ramp(0, 3000) / 3000, atol=1e-6)
