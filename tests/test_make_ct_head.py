"""datasets/make_ct_head.py on a tiny fake .inv3 (and, when installed, on the real Cranium.inv3)."""

from __future__ import annotations

import importlib.util
import io
import json
import plistlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image

from training.ct_window import HU_MAX, HU_MIN, hu_to_unit

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_ct_head", ROOT / "datasets" / "make_ct_head.py")
mch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mch)

SLICES, ROWS, COLS = 40, 12, 10  # odd sizes catch transposed axes


def fake_volume() -> np.ndarray:
    """(40, 12, 10) int16 HU: air, a soft-tissue block in slices 3..36, a bone marker at row 0."""
    vol = np.full((SLICES, ROWS, COLS), -1024, dtype=np.int16)
    vol[3:37, 2:10, 2:8] = 40  # 48 / 120 pixels = 40 % tissue
    vol[3:37, 0, 0] = 1500  # marker in the first stored row (the head rest side)
    vol[37, 5, 5] = 40  # one pixel only: not "with tissue"
    return vol


def write_inv3(path: Path, vol: np.ndarray, plist: bytes | None = None, raw: bytes | None = None) -> Path:
    meta = {
        "format_version": 1,
        "modality": "CT",
        "name": "fake",
        "matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(vol.shape)},
        "scalar_range": [-1024, 3033],
        "spacing": [0.9, 0.9, 1.5],
    }
    files = {
        "tmpabc/main.plist": plistlib.dumps(meta) if plist is None else plist,
        "tmpabc/matrix.dat": vol.astype("<i2").tobytes() if raw is None else raw,
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def inv3(tmp_path: Path) -> Path:
    return write_inv3(tmp_path / "Cranium.inv3", fake_volume())


def test_window_mapping():
    hu = np.array([-2000, -1024, -1000, 0, 500, 2000, 3000])
    unit = hu_to_unit(hu)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [0, 0, 0, 1 / 3, 0.5, 1, 1], atol=1e-6)
    np.testing.assert_allclose(hu_to_unit(np.array([-100, 100]), -100, 100), [0, 1])
    with pytest.raises(ValueError, match="hu_min < hu_max"):
        hu_to_unit(hu, 100, 100)


def test_read_inv3_and_orientation(inv3: Path):
    vol, meta = mch.read_inv3(inv3)
    np.testing.assert_array_equal(vol, fake_volume())
    assert meta["modality"] == "CT"
    up = mch.orient_upright(vol)
    assert up.shape == (SLICES, ROWS, COLS)
    assert up[10, ROWS - 1, 0] == 1500 and up[10, 0, 0] == -1024  # first stored row ends at the bottom
    np.testing.assert_array_equal(up[:, :, ::-1][:, ::-1], vol[:, :, ::-1])  # rows only, columns kept


def test_tissue_selection():
    np.testing.assert_array_equal(mch.tissue_slices(fake_volume()), np.arange(3, 37))
    assert len(mch.tissue_slices(fake_volume(), min_fraction=0.5)) == 0


FAKE_SLABS = dict(test_slabs=((8, 11), (30, 33)), tune_slabs=((20, 20),), gap=2)  # tissue is 3..36


def test_split_slabs_with_gaps():
    idx = np.arange(3, 37)
    parts = mch.split_indices(idx, **FAKE_SLABS)
    np.testing.assert_array_equal(parts["test"], [8, 9, 10, 11, 30, 31, 32, 33])
    np.testing.assert_array_equal(parts["tune"], [20])
    np.testing.assert_array_equal(parts["gap"], [6, 7, 12, 13, 18, 19, 21, 22, 28, 29, 34, 35])
    np.testing.assert_array_equal(np.sort(np.concatenate(list(parts.values()))), idx)  # a partition
    held = np.concatenate([parts["test"], parts["tune"]])
    assert np.abs(parts["train"][:, None] - held[None, :]).min() > FAKE_SLABS["gap"]  # no near-duplicates


@pytest.mark.parametrize("kwargs, match", [
    (dict(test_slabs=((1, 4),), tune_slabs=()), "test slab 1-4 must be a range of tissue slices"),
    (dict(test_slabs=((8, 11),), tune_slabs=((13, 13),), gap=2), "more than gap=2"),
    (dict(test_slabs=((8, 11), (10, 12)), tune_slabs=()), "must not overlap"),
    (dict(test_slabs=((3, 36),), tune_slabs=()), "no training slice"),
    (dict(test_slabs=(), tune_slabs=()), "at least one test slab"),
])
def test_split_rejects_bad_slabs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mch.split_indices(np.arange(3, 37), **kwargs)


def test_parse_slabs():
    assert mch._parse_slabs("20-29, 82-91", "--test-slabs") == ((20, 29), (82, 91))
    assert mch._parse_slabs("55", "--tune-slabs") == ((55, 55),) and mch._parse_slabs("", "x") == ()
    with pytest.raises(ValueError, match="--tune-slabs: 'a-b'"):
        mch._parse_slabs("a-b", "--tune-slabs")


def test_build_outputs(inv3: Path, tmp_path: Path):
    out, ship = tmp_path / "out", tmp_path / "ship"
    rec = mch.build(source=inv3.parent, outdir=out, ship=ship, **FAKE_SLABS)
    train, test, tune = rec["train_indices"], rec["test_indices"], rec["tune_indices"]
    assert test == [8, 9, 10, 11, 30, 31, 32, 33] and tune == [20]
    assert sorted(train + test + tune + rec["gap_indices"]) == list(range(3, 37))

    mat = scipy.io.loadmat(out / "train.mat")
    images = mat["images"]
    assert images.shape == (ROWS, COLS, len(train)) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    expected = hu_to_unit(mch.orient_upright(fake_volume()))
    np.testing.assert_array_equal(images, expected[train].transpose(1, 2, 0))  # training only

    npz = np.load(out / "test.npz")
    np.testing.assert_array_equal(npz["slice_indices"], test)
    np.testing.assert_array_equal(npz["images"], expected[test])
    assert sorted(p.name for p in (out / "test").iterdir()) == [f"slice_{i:03d}.png" for i in test]
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"slice_{i:03d}.png" for i in train]
    assert sorted(p.name for p in (ship / "tune").iterdir()) == ["slice_020.png"]
    np.testing.assert_array_equal(np.load(ship / "tune.npz")["images"], expected[tune])
    png = np.array(Image.open(out / "test" / f"slice_{test[0]:03d}.png"))
    assert png.dtype == np.uint16
    np.testing.assert_allclose(png / 65535.0, expected[test[0]], atol=1 / 65535)

    split = json.loads((out / "split.json").read_text())
    assert split["window"]["hu_min"] == HU_MIN and split["window"]["hu_max"] == HU_MAX
    assert len(split["source"]["sha256"]) == 64
    assert (ship / "test.npz").read_bytes() == (out / "test.npz").read_bytes()
    assert not (ship / "train").exists() and not (ship / "train.mat").exists()


def test_deterministic(inv3: Path, tmp_path: Path):
    runner = CliRunner()
    for name in ("a", "b"):
        res = runner.invoke(mch.main, ["--source", str(inv3), "--outdir", str(tmp_path / name),
                                       "--test-slabs", "8-11,30-33", "--tune-slabs", "20", "--gap", "2"])
        assert res.exit_code == 0, res.output
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 + 34 - 12  # train.mat, 2 npz, split.json and one png per non-gap tissue slice
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    res = runner.invoke(mch.main, ["--source", str(inv3), "--outdir", str(tmp_path / "a"),
                                   "--test-slabs", "8-11,30-33", "--tune-slabs", "20", "--gap", "2"])
    assert res.exit_code != 0 and "already exists" in res.output
    res = runner.invoke(mch.main, ["--source", str(inv3), "--outdir", str(tmp_path / "c")])  # default slabs
    assert res.exit_code == 1 and "test slab 82-91 must be a range of tissue slices" in res.output


def test_missing_source(tmp_path: Path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="Cranium.inv3 not found"):
        mch.find_inv3(tmp_path)
    monkeypatch.setattr(mch, "SEARCH_ROOTS", (str(tmp_path / "nowhere"),))
    res = CliRunner().invoke(mch.main, ["--outdir", str(tmp_path / "o")])
    assert res.exit_code == 1 and "invesalius-examples" in res.output


def test_deb_tree_is_searched(inv3: Path, tmp_path: Path):
    deb = tmp_path / "deb" / "usr" / "share" / "doc" / "invesalius-examples" / "examples"
    deb.mkdir(parents=True)
    (deb / "Cranium.inv3").write_bytes(inv3.read_bytes())
    assert mch.find_inv3(tmp_path / "deb") == deb / "Cranium.inv3"


@pytest.mark.parametrize(
    "plist, raw, match",
    [
        (b"<plist><dict><key>matrix</key>", None, "malformed main.plist"),
        (plistlib.dumps({"name": "no matrix"}), None, "malformed main.plist"),
        (None, b"\x00" * 10, "bytes"),
        (None, fake_volume().astype(">i2").tobytes(), "scalar_range"),  # wrong byte order
    ],
)
def test_malformed(tmp_path: Path, plist, raw, match):
    path = write_inv3(tmp_path / "bad.inv3", fake_volume(), plist=plist, raw=raw)
    with pytest.raises(ValueError, match=match) as err:
        mch.read_inv3(path)
    assert str(path) in str(err.value)


def test_not_a_tar(tmp_path: Path):
    path = tmp_path / "Cranium.inv3"
    path.write_text("hello")
    with pytest.raises(ValueError, match="not a readable gzipped tar"):
        mch.read_inv3(path)


def _real_source() -> Path | None:
    try:
        return mch.find_inv3()
    except FileNotFoundError:
        return None


@pytest.mark.skipif(_real_source() is None, reason="Debian package invesalius-examples not installed")
def test_real_cranium(tmp_path: Path):
    vol, meta = mch.read_inv3(_real_source())
    assert vol.shape == (108, 256, 256) and vol.dtype == np.int16
    assert meta["matrix"]["shape"] == [108, 256, 256]
    rec = mch.build(outdir=tmp_path / "ct")
    assert rec["test_indices"] == list(range(20, 30)) + list(range(82, 92)) and rec["tune_indices"] == [55, 56]
    assert len(rec["train_indices"]) == 54 and np.abs(np.subtract.outer(rec["train_indices"], rec["test_indices"])).min() > 4
    for name in ("test.npz", "tune.npz", "split.json"):  # the committed held-out split is what the script makes
        shipped = ROOT / "datasets" / "ct_head" / name
        assert shipped.read_bytes() == (tmp_path / "ct" / name).read_bytes(), name


def test_small_train_subset(inv3: Path, tmp_path: Path):
    rec = mch.build(source=inv3.parent, outdir=tmp_path, small_train=(5,), **FAKE_SLABS)
    sub = rec["train_5_indices"]
    assert len(sub) == 5 and set(sub) <= set(rec["train_indices"])
    assert sub[0] == rec["train_indices"][0] and sub[-1] == rec["train_indices"][-1]  # spread end to end
    images = scipy.io.loadmat(tmp_path / "train_5.mat")["images"]
    full = scipy.io.loadmat(tmp_path / "train.mat")["images"]
    pos = [rec["train_indices"].index(i) for i in sub]
    np.testing.assert_array_equal(images, full[:, :, pos])
    with pytest.raises(ValueError, match="--small-train"):
        mch.build(source=inv3.parent, outdir=tmp_path / "x", small_train=(10_000,), **FAKE_SLABS)
