"""Patch sampling, crops, position channels and the EDM patch loss."""

from __future__ import annotations

import pytest
import torch

from training.networks import build_network, position_grid
from training.patch_loss import (
    WHOLE,
    PatchEDMLoss,
    batch_multipliers,
    crop_patches,
    parse_patch_sizes,
    patch_probabilities,
    sample_patch_size,
    sample_patches,
)


def test_parse_and_probabilities():
    assert parse_patch_sizes("64, 16,32") == [16, 32, 64]
    assert parse_patch_sizes("whole") == [WHOLE]
    with pytest.raises(ValueError, match="--patch-sizes: 'x'"):
        parse_patch_sizes("16,x")
    assert patch_probabilities(3, 0.5) == pytest.approx([0.2, 0.3, 0.5])
    assert patch_probabilities(1) == [1.0]
    assert patch_probabilities(2, 0.25) == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError, match="--real-p"):
        patch_probabilities(3, 1.5)
    assert batch_multipliers([16, 32, 64]) == {16: 64, 32: 32, 64: 16}  # the paper's code
    assert batch_multipliers([16, 32, 64], base=1) == {16: 4, 32: 2, 64: 1}
    assert batch_multipliers([WHOLE]) == {WHOLE: 1}
    assert batch_multipliers([16, WHOLE], canvas=64, base=1) == {16: 4, WHOLE: 1}


def test_patch_size_frequencies_seeded():
    g = torch.Generator().manual_seed(0)
    sizes, probs = [16, 32, 64], patch_probabilities(3, 0.5)
    n = 4000
    draws = [sample_patch_size(sizes, probs, g) for _ in range(n)]
    freq = [draws.count(s) / n for s in sizes]
    # binomial std <= sqrt(0.25/4000) = 0.008; 4 sigma tolerance
    assert freq == pytest.approx(probs, abs=0.032)
    g2 = torch.Generator().manual_seed(0)
    assert [sample_patch_size(sizes, probs, g2) for _ in range(50)] == draws[:50]


def test_crops_equal_reference_and_positions():
    torch.manual_seed(0)
    b, c, h, w, pad, p = 3, 2, 12, 10, 4, 6   # non-square image, non-square canvas 20x18
    images = torch.rand(b, c, h, w)
    offsets = torch.tensor([[0, 0], [14, 12], [3, 7]])  # last-possible offsets included
    patches, pos = crop_patches(images, offsets, (p, p), pad)
    canvas = torch.zeros(b, c, h + 2 * pad, w + 2 * pad)
    canvas[:, :, pad:pad + h, pad:pad + w] = images
    grid = position_grid(h + 2 * pad, w + 2 * pad)[0]
    for k, (r, s) in enumerate(offsets.tolist()):
        torch.testing.assert_close(patches[k], canvas[k, :, r:r + p, s:s + p], rtol=0, atol=0)
        torch.testing.assert_close(pos[k], grid[:, r:r + p, s:s + p], rtol=0, atol=0)
    # x (column) channel: (j / (N - 1) - 0.5) * 2 on the 18-wide canvas
    assert pos[1, 0, 0, 0].item() == pytest.approx((12 / 17 - 0.5) * 2)
    assert pos[1, 1, 0, 0].item() == pytest.approx((14 / 19 - 0.5) * 2)
    assert patches[0, :, :pad, :].abs().sum() == 0  # zero padding


def test_sample_patches_in_range_and_deterministic():
    images = torch.rand(64, 1, 8, 8)
    patches, pos, off = sample_patches(images, 16, 8, torch.Generator().manual_seed(3))
    assert patches.shape == (64, 1, 16, 16) and pos.shape == (64, 2, 16, 16)
    assert off.min() >= 0 and off.max() <= 24 - 16
    assert len(set(map(tuple, off.tolist()))) > 10
    p2, _, off2 = sample_patches(images, 16, 8, torch.Generator().manual_seed(3))
    assert torch.equal(off, off2) and torch.equal(patches, p2)
    with pytest.raises(ValueError, match="patch size 32 does not fit the padded canvas 24x24"):
        sample_patches(images, 32, 8, torch.Generator())


def test_whole_image_mode():
    images = torch.rand(2, 1, 12, 8)
    patches, pos, off = sample_patches(images, WHOLE, 0, torch.Generator().manual_seed(0))
    assert torch.equal(patches, images) and off.abs().sum() == 0
    torch.testing.assert_close(pos, position_grid(12, 8).expand(2, -1, -1, -1))


@pytest.mark.parametrize("psize,pad,positional", [(8, 4, True), (WHOLE, 0, False)])
def test_loss_finite_and_gradient_flows(psize, pad, positional):
    torch.manual_seed(0)
    net = build_network("tiny", img_resolution=16, image_channels=1, positional=positional)
    loss_fn = PatchEDMLoss(pad_width=pad)
    images = torch.rand(4, 1, 12, 8)
    loss = loss_fn(net, images, psize, torch.Generator().manual_seed(0))
    h, w = (8, 8) if psize != WHOLE else (12, 8)
    assert loss.shape == (4, 1, h, w) and torch.isfinite(loss).all()
    loss.mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    again = loss_fn(net, images, psize, torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, again)


def test_loss_weighting_matches_edm():
    """With D = 0 the loss is weight * y^2, sigma drawn as ln sigma ~ N(-1.2, 1.2^2)."""
    images = torch.rand(5, 1, 8, 8)
    g = torch.Generator().manual_seed(1)
    zero = PatchEDMLoss(pad_width=0)(lambda x, s, p: torch.zeros_like(x), images, WHOLE, g)
    g = torch.Generator().manual_seed(1)
    torch.randint(0, 1, (5,), generator=g), torch.randint(0, 1, (5,), generator=g)  # offsets
    sigma = (torch.randn((5, 1, 1, 1), generator=g) * 1.2 - 1.2).exp()
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(zero, weight * images ** 2)
