"""Training augmentation and benchmark shifts (training.augment) and their use in the patch loss."""

from __future__ import annotations

import pytest
import torch

from training.augment import AugmentSpec, augmented_patches, draw_params, rewindow, warp_images
from training.networks import build_network
from training.patch_loss import PatchEDMLoss, sample_patches


def _images(b=3, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, 1, h, w), generator=g)


def _identity(b):
    one, zero = torch.ones(b, dtype=torch.float64), torch.zeros(b, dtype=torch.float64)
    return dict(angle=zero, zoom=one, gain=one, offset=zero)


def test_identity_params_reproduce_the_plain_crop():
    images = _images()
    y, _, offsets = sample_patches(images, 8, 4, torch.Generator().manual_seed(1))
    got = augmented_patches(images, offsets, (8, 8), 4, _identity(3))
    assert torch.allclose(got, y, atol=1e-5)


def test_quarter_turn_and_zoom_geometry():
    img = _images(1, 16, 16)
    # a quarter turn about the centre is an exact pixel permutation
    assert torch.allclose(warp_images(img, 90, 1.0)[0, 0], torch.rot90(img[0, 0], -1), atol=1e-5)
    assert torch.allclose(warp_images(img, -90, 1.0)[0, 0], torch.rot90(img[0, 0], 1), atol=1e-5)
    # zoom 0.5 shrinks the field: the corners fall outside the image and read air (0)
    small = warp_images(torch.ones(1, 1, 17, 17), 0, 0.5)
    assert small[0, 0, 0, 0] == 0 and small[0, 0, 8, 8] == pytest.approx(1.0)


def test_rewindow_is_clipped_affine():
    x = torch.tensor([0.0, 0.5, 0.9])
    assert torch.allclose(rewindow(x, 1.2, 0.01), torch.tensor([0.01, 0.61, 1.0]))
    per_image = rewindow(torch.ones(2, 1, 2, 2) * 0.5, torch.tensor([1.0, 2.0]), torch.tensor([0.0, -0.5]))
    assert per_image[0].unique().item() == 0.5 and per_image[1].unique().item() == 0.5


def test_draw_params_ranges_probability_and_seed():
    spec = AugmentSpec(p=0.5, rotate=30, zoom_min=0.7, zoom_max=1.4, gain=1.25, offset=0.01)
    a = draw_params(spec, 2000, torch.Generator().manual_seed(3))
    b = draw_params(spec, 2000, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    on = a["zoom"] != 1
    assert 0.45 < on.double().mean() < 0.55
    assert a["angle"].abs().max() <= torch.pi / 6 + 1e-12
    assert a["zoom"].min() >= 0.7 - 1e-12 and a["zoom"].max() <= 1.4 + 1e-12
    assert a["gain"].min() >= 1 / 1.25 - 1e-12 and a["offset"].abs().max() <= 0.01
    assert torch.all(a["angle"][~on] == 0) and torch.all(a["gain"][~on] == 1)


@pytest.mark.parametrize("bad", [dict(p=2), dict(rotate=200), dict(zoom_min=1.5, zoom_max=1.2),
                                 dict(gain=0.5), dict(offset=-0.1), dict(flip=True)])
def test_bad_spec_is_refused(bad):
    with pytest.raises((ValueError, TypeError), match="augment|unexpected"):
        AugmentSpec(**bad)


def test_inactive_augment_leaves_the_loss_bit_identical():
    torch.manual_seed(0)
    net = build_network("tiny", img_resolution=16, image_channels=1)
    images = _images(2, 16, 16)
    plain = PatchEDMLoss(pad_width=4)(net, images, 8, torch.Generator().manual_seed(5))
    off = PatchEDMLoss(pad_width=4, augment=dict(p=0.0, rotate=90))(net, images, 8, torch.Generator().manual_seed(5))
    assert torch.equal(plain, off)
    on = PatchEDMLoss(pad_width=4, augment=dict(p=1.0, rotate=90))(net, images, 8, torch.Generator().manual_seed(5))
    assert on.shape == plain.shape and torch.isfinite(on).all() and not torch.equal(on, plain)
