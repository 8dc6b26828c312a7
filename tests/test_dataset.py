"""Image readers (every format), error messages, and the in-memory training dataset."""

from __future__ import annotations

import zipfile

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from training.dataset import ImageDataset, list_image_files, read_images

H, W = 12, 10  # odd, non-square shapes catch transposed axes


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _u8(rng, *shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def test_png_8bit_gray_and_rgb(tmp_path, rng):
    g, c = _u8(rng, H, W), _u8(rng, H, W, 3)
    Image.fromarray(g).save(tmp_path / "a.png")
    Image.fromarray(c).save(tmp_path / "b.png")
    (na, a), (nb, b) = read_images(tmp_path)
    assert (na, nb) == ("a", "b")
    assert a.shape == (1, H, W) and a.dtype == np.float32
    np.testing.assert_array_equal(a[0], g / np.float32(255))
    assert b.shape == (3, H, W)
    np.testing.assert_allclose(b, c.transpose(2, 0, 1) / 255.0, atol=1e-7)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit(tmp_path, rng, ext):
    g = rng.integers(0, 65536, size=(H, W), dtype=np.uint16)
    Image.fromarray(g).save(tmp_path / f"a{ext}")
    [(_, a)] = read_images(tmp_path / f"a{ext}")
    np.testing.assert_allclose(a[0], g / 65535.0, atol=1e-7)


def test_jpg_and_tif_8bit(tmp_path):
    g = np.full((H, W), 128, np.uint8)
    Image.fromarray(g).save(tmp_path / "a.jpg", quality=100)
    Image.fromarray(g).save(tmp_path / "b.tif")
    (_, a), (_, b) = read_images(tmp_path)
    assert abs(float(a.mean()) - 128 / 255) < 2 / 255
    np.testing.assert_allclose(b[0], 128 / 255, atol=1e-7)


def test_npy_layouts_and_dtypes(tmp_path, rng):
    x = rng.random((H, W)).astype(np.float64)
    np.save(tmp_path / "one.npy", x)
    np.save(tmp_path / "stack.npy", rng.random((3, H, W)).astype(np.float32))
    np.save(tmp_path / "u16.npy", np.full((2, 1, H, W), 65535, np.uint16))
    items = read_images(tmp_path)
    names = [n for n, _ in items]
    assert names == ["one", "stack_0000", "stack_0001", "stack_0002", "u16_0000", "u16_0001"]
    np.testing.assert_allclose(items[0][1][0], x.astype(np.float32))
    assert all(img.shape == (1, H, W) for _, img in items)
    assert items[-1][1].max() == 1.0


def test_npz_key_selection(tmp_path, rng):
    np.savez(tmp_path / "a.npz", images=rng.random((2, H, W)), other=np.zeros(3))
    assert len(read_images(tmp_path / "a.npz")) == 2
    np.savez(tmp_path / "b.npz", data=rng.random((2, 3, H, W)))
    [(_, b0), _] = read_images(tmp_path / "b.npz")
    assert b0.shape == (3, H, W)
    np.savez(tmp_path / "c.npz", x=np.zeros((H, W)), y=np.zeros((H, W)))
    with pytest.raises(ValueError, match=r"c\.npz.*no array named 'images'.*--mat-key"):
        read_images(tmp_path / "c.npz")
    assert len(read_images(tmp_path / "c.npz", mat_key="y")) == 1


def test_mat_v5_hwn(tmp_path, rng):
    stack = rng.random((H, W, 4))
    scipy.io.savemat(tmp_path / "d.mat", {"images": stack, "other": 1.0})
    items = read_images(tmp_path / "d.mat")
    assert [n for n, _ in items] == [f"d_{k:04d}" for k in range(4)]
    for k, (_, img) in enumerate(items):
        np.testing.assert_allclose(img[0], stack[:, :, k].astype(np.float32))


def test_mat_v73_hdf5_transposed(tmp_path, rng):
    stack = rng.random((H, W, 3))
    path = tmp_path / "d73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:  # MATLAB v7.3: 512-byte header + HDF5
        f.create_dataset("images", data=stack.T)  # MATLAB writes column-major: axes reversed
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: test".ljust(124) + b"\x00\x02IM")
    items = read_images(path)
    assert len(items) == 3
    for k, (_, img) in enumerate(items):
        np.testing.assert_allclose(img[0], stack[:, :, k].astype(np.float32))
    with pytest.raises(ValueError, match=r"d73\.mat.*no variable 'x'.*\['images'\]"):
        read_images(path, mat_key="x")


def test_mat_missing_variable_lists_names(tmp_path):
    scipy.io.savemat(tmp_path / "m.mat", {"slices": np.zeros((H, W)), "meta": 1.0})
    with pytest.raises(ValueError, match=r"m\.mat: no variable 'images'; it has \['meta', 'slices'\]"):
        read_images(tmp_path / "m.mat")
    assert read_images(tmp_path / "m.mat", mat_key="slices")[0][1].shape == (1, H, W)


def test_zip_of_images(tmp_path, rng):
    buf = tmp_path / "x.png"
    Image.fromarray(_u8(rng, H, W)).save(buf)
    np.save(tmp_path / "y.npy", rng.random((2, H, W)))
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as z:
        z.write(buf, "imgs/x.png")
        z.write(tmp_path / "y.npy", "y.npy")
        z.writestr("readme.txt", "not an image")
    items = read_images(tmp_path / "data.zip")
    assert [n for n, _ in items] == ["imgs_x", "y_0000", "y_0001"]


def test_max_images_and_unique_names(tmp_path, rng):
    np.save(tmp_path / "a.npy", rng.random((5, H, W)))
    Image.fromarray(_u8(rng, H, W)).save(tmp_path / "a_0000.png")
    assert len(read_images(tmp_path, max_images=3)) == 3
    names = [n for n, _ in read_images(tmp_path)]
    assert len(names) == len(set(names)) == 6
    with pytest.raises(ValueError, match="--max-images"):
        read_images(tmp_path, max_images=0)


def test_normalize(tmp_path):
    np.save(tmp_path / "hu.npy", np.linspace(-1000, 3000, H * W).reshape(H, W))
    with pytest.raises(ValueError, match=r"hu\.npy.*values in \[-1000, 3000\].*--normalize"):
        read_images(tmp_path)
    [(_, img)] = read_images(tmp_path, normalize=True)
    assert img.min() == 0 and img.max() == 1


def test_errors_missing_empty_unknown(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: directory has no files"):
        list_image_files(tmp_path / "empty")
    (tmp_path / "scan.xyz").write_bytes(b"DICM")
    with pytest.raises(ValueError, match=r"scan\.xyz: unsupported file type '\.xyz'; supported: .*\.dcm.*\.png"):
        read_images(tmp_path / "scan.xyz")
    with pytest.raises(ValueError, match=r"only files of type \['\.xyz'\]"):
        read_images(tmp_path)


def test_errors_unreadable_channels_nonfinite(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bad\.png: unreadable image file"):
        read_images(tmp_path / "bad.png")
    Image.fromarray(np.zeros((H, W, 4), np.uint8)).save(tmp_path / "rgba.png")
    with pytest.raises(ValueError, match=r"rgba\.png: image mode RGBA has transparent pixels"):
        read_images(tmp_path / "rgba.png")
    np.save(tmp_path / "two.npy", np.zeros((1, 2, H, W)))
    with pytest.raises(ValueError, match=r"two\.npy.*2 channels; expected 1 or 3"):
        read_images(tmp_path / "two.npy")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"g\.png: 1 channels; expected 3"):
        read_images(tmp_path / "g.png", channels=3)
    x = np.zeros((H, W))
    x[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match=r"nan\.npy: contains NaN or Inf"):
        read_images(tmp_path / "nan.npy", normalize=True)
    np.save(tmp_path / "i32.npy", np.zeros((H, W), np.int32))
    with pytest.raises(ValueError, match=r"i32\.npy: data type int32; expected float in \[0, 1\], uint8 or uint16"):
        read_images(tmp_path / "i32.npy")


def test_image_dataset_and_shards(tmp_path, rng):
    np.save(tmp_path / "s.npy", rng.random((5, 3, H, W)).astype(np.float32))
    ds = ImageDataset(tmp_path)
    assert len(ds) == 5 and ds.channels == 3 and ds.resolution == (H, W)
    assert isinstance(ds[0], torch.Tensor) and ds[0].shape == (3, H, W)
    s0, s1 = ds.shard(0, 2), ds.shard(1, 2)
    assert len(s0) == 3 and len(s1) == 2
    torch.testing.assert_close(s1.images, ds.images[1::2])
    assert s1.names == ["s_0001", "s_0003"]
    with pytest.raises(ValueError, match="5 images cannot be split over 6 processes"):
        ds.shard(0, 6)
    np.save(tmp_path / "t.npy", rng.random((H + 1, W)))
    with pytest.raises(ValueError, match=r"image 't' has shape \(1, 13, 10\).*needs one size"):
        ImageDataset(tmp_path)


def test_xflip_doubles_with_mirror_images():
    images = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    ds = ImageDataset(images=images, names=["a", "b"], xflip=True)
    assert len(ds) == 4 and ds.names == ["a", "b", "a-xflip", "b-xflip"]
    torch.testing.assert_close(ds[2], images[0].flip(-1))
    torch.testing.assert_close(ds[1], images[1])
    assert ds.kwargs["xflip"] is True
    assert len(ImageDataset(images=images)) == 2
