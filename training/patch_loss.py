"""EDM loss on random patches of zero-padded images (Patch-Diffusion / PaDIS training).

Each training step (paper, Sec. 3.1 and its code):

1. draws one patch size for the whole step (:func:`sample_patch_size`) from the sizes
   ``(16, 32, 64)`` with probabilities ``((1 - real_p) * 2/5, (1 - real_p) * 3/5, real_p)``;
2. zero-pads every image by ``pad_width`` on each side (canvas ``H + 2*pad_width`` by
   ``W + 2*pad_width``; paper: 64) and cuts one patch per image at a uniformly random offset
   on the canvas (:func:`sample_patches`; one gather, no loop over the batch);
3. adds the two position channels: the same crop of
   ``training.networks.position_grid`` over the whole padded canvas (x = column, then y);
4. applies the EDM loss (Karras et al. 2022, Eq. 2 with Table 1): ``ln sigma ~ N(P_mean,
   P_std^2)``, weight ``(sigma^2 + sigma_data^2) / (sigma * sigma_data)^2``.

Batch multiplier (the paper's code): a step with patch size ``p`` draws
``batch * batch_mul(p)`` patches, ``batch_mul(p) = base * round(max(sizes) / p)`` with
``base`` 16 by default, i.e. 64 for 16, 32 for 32 and 16 for 64 — smaller patches, larger
batch (paper: ``--batch 1`` gives 16 patches of 64x64 per step). ``base`` is an option
(``--batch-mul-base``; 1 gives 4/2/1). The size ``'whole'`` means the whole padded canvas (use
``pad_width=0`` for the whole-image baseline); it always has ``batch_mul`` 1. Images are in [0, 1] (docs/ARCHITECTURE.md); zero padding is black.
"""

from __future__ import annotations

from typing import Sequence

import torch

from torch_utils import persistence
from training.augment import AugmentSpec, augmented_patches, draw_params
from training.networks import position_grid

WHOLE = "whole"

PatchSize = int | str  # an int, or WHOLE


def parse_patch_sizes(spec: str | Sequence[PatchSize]) -> list[PatchSize]:
    """``"16,32,64"`` / ``"whole"`` / a list -> sorted list (ints ascending, ``'whole'`` last)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    sizes: list[PatchSize] = []
    for item in items:
        item = item.strip().lower() if isinstance(item, str) else item
        if item == WHOLE:
            sizes.append(WHOLE)
            continue
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"--patch-sizes: {item!r} is neither a positive integer nor 'whole'") from None
        if value < 1:
            raise ValueError(f"--patch-sizes: {value} is not a positive integer")
        sizes.append(value)
    if not sizes or len(set(sizes)) != len(sizes):
        raise ValueError(f"--patch-sizes: {spec!r}; expected distinct sizes like '16,32,64' or 'whole'")
    return sorted(sizes, key=lambda s: (s == WHOLE, s if s != WHOLE else 0))


def patch_probabilities(num_sizes: int, real_p: float = 0.5) -> list[float]:
    """Probability of each (ascending) patch size: the largest gets ``real_p``.

    Three sizes: the paper's ``((1-real_p)*2/5, (1-real_p)*3/5, real_p)``; one size: ``[1]``;
    otherwise the smaller sizes share ``1 - real_p`` equally.
    """
    if not 0 <= real_p <= 1:
        raise ValueError(f"--real-p must lie in [0, 1], got {real_p}")
    if num_sizes == 1:
        return [1.0]
    if num_sizes == 3:
        return [(1 - real_p) * 2 / 5, (1 - real_p) * 3 / 5, real_p]
    return [(1 - real_p) / (num_sizes - 1)] * (num_sizes - 1) + [real_p]


def batch_multipliers(sizes: Sequence[PatchSize], canvas: int | None = None,
                      base: int = 16) -> dict[PatchSize, int]:
    """Patches per step relative to ``--batch``: ``base * round(largest / p)``, largest = the
    biggest int size, or ``canvas`` (the padded canvas' longer side) when 'whole' is among the
    sizes; 'whole' itself -> 1. The default base 16 gives the paper's 64/32/16 for 16/32/64."""
    ints = [s for s in sizes if s != WHOLE]
    largest = canvas if (WHOLE in sizes and canvas) else max(ints, default=1)
    mul: dict[PatchSize, int] = {s: base * max(1, round(largest / s)) for s in ints}
    if WHOLE in sizes:
        mul[WHOLE] = 1
    return mul


def sample_patch_size(sizes: Sequence[PatchSize], probs: Sequence[float],
                      generator: torch.Generator) -> PatchSize:
    """Draw one patch size with ``probs`` from ``generator`` (a CPU generator shared by all
    DDP ranks, so every rank uses the same size and the same number of backward passes)."""
    p = torch.as_tensor(list(probs), dtype=torch.float64)
    idx = int(torch.multinomial(p, 1, generator=generator).item())
    return sizes[idx]


def patch_shape(psize: PatchSize, image_hw: tuple[int, int], pad_width: int) -> tuple[int, int]:
    """(h, w) of a patch of ``psize`` on the canvas of an ``image_hw`` image padded by ``pad_width``."""
    ch, cw = image_hw[0] + 2 * pad_width, image_hw[1] + 2 * pad_width
    if psize == WHOLE:
        return ch, cw
    if psize > ch or psize > cw:
        raise ValueError(f"patch size {psize} does not fit the padded canvas {ch}x{cw} "
                         f"(image {image_hw[0]}x{image_hw[1]} + 2*pad_width {pad_width})")
    return int(psize), int(psize)


def crop_patches(images: torch.Tensor, offsets: torch.Tensor, shape: tuple[int, int],
                 pad_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut one patch per image at given canvas offsets.

    images: (B, C, H, W) in [0, 1]; offsets: (B, 2) long, (row, column) of each patch's
    top-left corner on the canvas padded by ``pad_width``; shape: (h, w).
    Returns patches (B, C, h, w) and position channels (B, 2, h, w) in [-1, 1] (the same crop
    of the canvas grid). One advanced-indexing gather, no loop over the batch.
    """
    b, _, height, width = images.shape
    h, w = shape
    canvas = torch.nn.functional.pad(images, (pad_width,) * 4) if pad_width else images
    grid = position_grid(height + 2 * pad_width, width + 2 * pad_width, device=images.device,
                         dtype=images.dtype)
    offsets = offsets.to(images.device)
    rows = (offsets[:, 0, None] + torch.arange(h, device=images.device))[:, :, None]  # (B, h, 1)
    cols = (offsets[:, 1, None] + torch.arange(w, device=images.device))[:, None, :]  # (B, 1, w)
    batch = torch.arange(b, device=images.device)[:, None, None]
    patches = canvas.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)    # (B, C, h, w)
    pos = grid[0].permute(1, 2, 0)[rows, cols].permute(0, 3, 1, 2)                   # (B, 2, h, w)
    return patches.contiguous(), pos.contiguous()


def sample_patches(images: torch.Tensor, psize: PatchSize, pad_width: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random patches: offsets uniform over all positions where the patch fits on the canvas.

    Returns (patches (B, C, h, w), pos (B, 2, h, w), offsets (B, 2) long (row, column)).
    ``generator`` lives on ``images.device``.
    """
    h, w = patch_shape(psize, tuple(images.shape[-2:]), pad_width)
    ch, cw = images.shape[-2] + 2 * pad_width, images.shape[-1] + 2 * pad_width
    b = images.shape[0]
    dev = generator.device
    rows = torch.randint(0, ch - h + 1, (b,), generator=generator, device=dev)
    cols = torch.randint(0, cw - w + 1, (b,), generator=generator, device=dev)
    offsets = torch.stack([rows, cols], dim=1)
    patches, pos = crop_patches(images, offsets, (h, w), pad_width)
    return patches, pos, offsets


@persistence.persistent_class
class PatchEDMLoss:
    """EDM loss on random patches; ``loss_fn(net, images, psize, generator)`` -> per-pixel
    weighted loss (B, C, h, w). ``net`` is ``D(x, sigma, pos)``. With an active ``augment``
    each patch is cut at the same canvas offset from its own rotated / zoomed / re-windowed
    image (``training.augment``); its position channels are those of the canvas offset."""

    def __init__(self,
                 P_mean: float = -1.2,      # Mean of ln(sigma) of the training noise.
                 P_std: float = 1.2,        # Std of ln(sigma).
                 sigma_data: float = 0.5,   # Expected std of the data (EDM preconditioning).
                 pad_width: int = 64,       # Zero padding on each side of the image (pixels).
                 augment: dict | None = None):  # training.augment.AugmentSpec fields; None: off.
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.pad_width = pad_width
        self.augment = dict(augment or {})  # plain dict: snapshot pickles hold built-in types only

    def __call__(self, net, images: torch.Tensor, psize: PatchSize,
                 generator: torch.Generator) -> torch.Tensor:
        """images: (B, C, H, W) in [0, 1]. Returns weighted squared error (B, C, h, w)."""
        y, pos, offsets = sample_patches(images, psize, self.pad_width, generator)
        spec = AugmentSpec.from_dict(self.augment)
        if spec.active:
            params = draw_params(spec, y.shape[0], generator)
            y = augmented_patches(images, offsets, tuple(y.shape[-2:]), self.pad_width, params)
        dev = generator.device
        rnd_normal = torch.randn((y.shape[0], 1, 1, 1), generator=generator, device=dev)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        n = torch.randn(y.shape, generator=generator, device=dev) * sigma
        denoised = net(y + n, sigma.flatten(), pos)
        return weight * (denoised.float() - y) ** 2
