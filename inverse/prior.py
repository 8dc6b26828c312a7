"""Whole-image denoisers assembled from a position-aware patch network (PaDIS, Hu et al. 2024).

All priors share one interface: ``prior(x, sigma, generator) -> x0_hat`` with ``x`` a noisy
image batch ``(B, C, H, W)`` (clean images in [0, 1] plus Gaussian noise of std ``sigma``),
``sigma`` a float or a ``(B,)`` tensor, and ``x0_hat`` of the same shape. ``prior.calls``
counts batched network calls (``reset_calls()`` sets it to 0).

Gradients: the priors never change the grad mode. Under ``torch.no_grad()`` or
``torch.inference_mode()`` they cost no autograd memory; DPS calls them with gradients enabled
and backpropagates through them. Cached tensors (canvas grid, overlap counts) are always made
outside inference mode, so one prior serves both kinds of solver.

Speed options (all priors, keyword-only): ``precision`` 'fp32' | 'bf16' | 'fp16' runs the
network call (only it) under ``torch.autocast`` with that dtype (bf16 on CPU or CUDA, fp16 on
CUDA only); the prior's output is float32 in every case. ``channels_last`` converts the network
(in place) and its inputs to the channels-last memory format. ``compile`` runs the network
through ``torch.compile``; if compiling fails (no C++ compiler, an unsupported op), a
``RuntimeWarning`` says why and the network runs eagerly from then on.

Canvas fill (all priors, keyword-only ``pad_fill``): the pixels a prior adds around the image
(its canvas padding) are ``'zeros'`` (the default) or ``'noise'``: Gaussian noise of std
``sigma``, the call's noise level, drawn from the call's ``generator`` (after the grid
offset), so the padding looks like the noisy zero padding of training (every training patch,
pad pixels included, gets noise of std sigma: training/patch_loss.py). The image pixels of the
canvas are the input's, untouched. With ``'zeros'`` nothing is drawn: outputs and the
generator's stream are those of a prior without the option.

The cut/stitch helpers below are pure functions (no state, no randomness), tested by an exact
extract -> stitch round trip.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from training.networks import PRECISIONS, position_grid

# ----------------------------------------------------------------------------------------
# Pure grid helpers


def patches_per_axis(size: int, psize: int) -> int:
    """P = size // psize + 1 patches along one axis (docs/ARCHITECTURE.md, Priors)."""
    return size // psize + 1


def valid_psizes(size: int, pad: int) -> list[int]:
    """All patch sizes for which the shifted grid covers an image side of ``size`` pixels and
    stays on its canvas of ``size + 2*pad`` pixels: size + pad <= P*psize <= size + pad + 1."""
    return [p for p in range(1, size + 2 * pad + 1)
            if size + pad <= patches_per_axis(size, p) * p <= size + pad + 1]


def axis_pads(pad) -> tuple[int, int]:
    """``pad`` as (rows, columns): an int pads both axes alike, a pair each its own."""
    if isinstance(pad, (int, float)):
        return int(pad), int(pad)
    rows, cols = pad
    return int(rows), int(cols)


def pads_for(size: int, psize: int) -> list[int]:
    """The pads (>= 1) with which ``psize`` tiles a side of ``size`` pixels: P*psize - size
    and one less (see :func:`valid_psizes`)."""
    top = patches_per_axis(size, psize) * psize - size
    return [p for p in (top - 1, top) if p >= 1]


# The paper's 256 x 256 configuration: psize 56, pad 24. Automatic grids keep this ratio.
PAPER_PSIZE_PER_PAD = 56 / 24


def grid_candidates(height: int, width: int, psizes: list[int]) -> list[tuple[float, object, int]]:
    """Every working (pad, psize) for an H x W image with psize in ``psizes``, best first:
    ``[(score, pad, psize)]`` where pad is an int (both axes) or a (rows, columns) pair and
    score = sum over the axes of |log(psize/pad) - log(56/24)| (0 for the paper's 256², 24, 56).
    Ties go to one pad for both axes, then to the larger psize (fewer patches per call)."""
    ideal = math.log(PAPER_PSIZE_PER_PAD)
    out = []
    for p in psizes:
        for ph in pads_for(height, p):
            for pw in pads_for(width, p):
                score = abs(math.log(p / ph) - ideal) + abs(math.log(p / pw) - ideal)
                out.append((round(score, 9), ph != pw, -p, ph, pw))
    out.sort()
    return [(s, ph if ph == pw else (ph, pw), -neg_p) for s, _, neg_p, ph, pw in out]


def candidate_psizes(patch_sizes: tuple[int, int] = (16, 64), multiple: int = 1) -> list[int]:
    """Patch sizes from the smallest to the largest trained one that the network accepts
    (multiples of ``multiple``, the U-Net's 2**(levels-1)); at least the smallest such
    multiple >= the smallest trained size."""
    lo, hi = patch_sizes
    first = -(-lo // multiple) * multiple
    return list(range(first, max(hi, first) + 1, multiple))


def choose_grid(height: int, width: int, patch_sizes: tuple[int, int] = (16, 64), multiple: int = 1,
                pad=None, psize: int | None = None) -> tuple[object, int]:
    """(pad, psize) for an H x W image: the best of :func:`grid_candidates` over the trained
    patch-size range ``patch_sizes`` (min, max), pixels; a given ``pad`` or ``psize`` is kept
    and only the other one chosen. 256 x 256 gives the paper's (24, 56). ValueError (from
    :func:`check_grid`) when a given pad leaves no psize in that range."""
    if pad is not None and psize is not None:
        return pad, psize
    psizes = [psize] if psize is not None else candidate_psizes(patch_sizes, multiple)
    found = [(pd, p) for _, pd, p in grid_candidates(height, width, psizes)
             if pad is None or axis_pads(pd) == axis_pads(pad)]
    if not found:
        check_grid(height, width, pad, psizes[-1])  # raises, listing what works
    return found[0]


def format_pad(pad) -> str:
    rows, cols = axis_pads(pad)
    return str(rows) if rows == cols else f"{rows},{cols}"


def check_grid(height: int, width: int, pad, psize: int) -> tuple[int, int]:
    """Return (P_h, P_w) for an H x W image, or raise a ValueError naming working values:
    the psize values for this pad and (pad, psize) pairs. ``pad``: int or (rows, columns)."""
    pads = axis_pads(pad)
    if min(pads) < 1:
        raise ValueError(f"PatchPrior: pad={format_pad(pad)}; the random grid offset is drawn from [0, pad-1], "
                         "so pad must be >= 1 (the paper uses pad 24 with psize 56 for 256 x 256)")
    counts = []
    for name, size, p_ax in (("height", height, pads[0]), ("width", width, pads[1])):
        n = patches_per_axis(size, psize)
        if not size + p_ax <= n * psize <= size + p_ax + 1:
            good = [p for p in valid_psizes(height, pads[0]) if p in valid_psizes(width, pads[1])]
            pairs = grid_candidates(height, width, candidate_psizes())[:4]
            raise ValueError(
                f"PatchPrior: psize={psize} with pad={format_pad(pad)} does not tile image {name} {size}: need "
                f"{size + p_ax} <= P*psize <= {size + p_ax + 1} with P = {size}//psize + 1 = {n} "
                f"(P*psize = {n * psize}); valid psize values for {height}x{width} and pad {format_pad(pad)}: "
                f"{good if good else 'none (change pad)'}; working (pad, psize) pairs: "
                + ", ".join(f"({format_pad(pd)}, {p})" for _, pd, p in pairs)
                + " (a pad 'rows,cols' pads each axis on its own; leave pad and psize unset to choose "
                "automatically, or use prior 'average', which tiles any size)")
        counts.append(n)
    return counts[0], counts[1]


def extract_patches(region: torch.Tensor, psize: int) -> torch.Tensor:
    """Cut a region ``(B, C, P_h*psize, P_w*psize)`` into non-overlapping patches.

    Returns ``(B*P_h*P_w, C, psize, psize)``, ordered image-major, then patch row, then patch
    column. One reshape/permute, no loop.
    """
    b, c, h, w = region.shape
    if h % psize or w % psize:
        raise ValueError(f"extract_patches: region {h}x{w} is not a multiple of psize {psize}")
    ph, pw = h // psize, w // psize
    patches = region.reshape(b, c, ph, psize, pw, psize).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b * ph * pw, c, psize, psize)


def stitch_patches(patches: torch.Tensor, batch: int, ph: int, pw: int) -> torch.Tensor:
    """Inverse of :func:`extract_patches`: ``(B*P_h*P_w, C, p, p) -> (B, C, P_h*p, P_w*p)``."""
    n, c, p, _ = patches.shape
    if n != batch * ph * pw:
        raise ValueError(f"stitch_patches: {n} patches for batch {batch} x {ph} x {pw}")
    out = patches.reshape(batch, ph, pw, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(batch, c, ph * p, pw * p)


def grid_region(canvas: torch.Tensor, a: int, b: int, ph: int, pw: int, psize: int) -> torch.Tensor:
    """The part of a canvas ``(B, C, N_h, N_w)`` covered by the grid that starts at row ``a``,
    column ``b``: ``(B, C, P_h*psize, P_w*psize)`` (a view)."""
    return canvas[:, :, a:a + ph * psize, b:b + pw * psize]


def _sigma_vector(sigma, batch: int, like: torch.Tensor) -> torch.Tensor:
    """sigma (float, 0-d or (B,) tensor) as a (B,) tensor of x's dtype and device (a Python
    float is filled on the device: no host-to-device copy)."""
    if isinstance(sigma, (int, float)):
        return torch.full((batch,), float(sigma), dtype=like.dtype, device=like.device)
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device).reshape(-1)
    if s.numel() not in (1, batch):
        raise ValueError(f"sigma has {s.numel()} values for a batch of {batch} images")
    return s.expand(batch)


PAD_FILLS = ("zeros", "noise")  # what the canvas outside the image holds (see the module docstring)


def check_pad_fill(pad_fill: str) -> str:
    if pad_fill not in PAD_FILLS:
        raise ValueError(f"pad_fill={pad_fill!r}; expected one of {', '.join(map(repr, PAD_FILLS))}")
    return pad_fill


def draw_pad_noise(x: torch.Tensor, pads: tuple[int, int, int, int], sigma,
                   generator: torch.Generator | None) -> torch.Tensor:
    """Noise for the canvas of ``x`` (B, C, H, W) padded by ``pads`` (left, right, top, bottom,
    as ``F.pad``): std ``sigma`` (float or (B,)) outside the image, exactly 0 on it; drawn on
    the generator's device (one draw of the whole canvas), moved to x's. Add it to
    ``F.pad(x, pads)``."""
    if generator is None:
        raise ValueError("pad_fill='noise' needs a torch.Generator to draw the canvas noise (no global RNG)")
    left, right, top, bottom = pads
    bsz, chans, height, width = x.shape
    z = torch.randn((bsz, chans, height + top + bottom, width + left + right), generator=generator,
                    device=generator.device, dtype=x.dtype).to(x.device)
    z[:, :, top:top + height, left:left + width] = 0
    return z * _sigma_vector(sigma, bsz, x).reshape(-1, 1, 1, 1)


def fill_canvas(x: torch.Tensor, pads: tuple[int, int, int, int], noise: torch.Tensor | None) -> torch.Tensor:
    """``x`` padded by ``pads`` (left, right, top, bottom) with zeros, plus ``noise`` (from
    :func:`draw_pad_noise`, 0 on the image) where given."""
    canvas = F.pad(x, pads)
    return canvas if noise is None else canvas + noise


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None for fp32), or a ValueError for
    an unknown name or fp16 off CUDA (CPU autocast in fp16 is slow and loses accuracy)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {sorted(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (this network is on {device}); "
                         "use bf16 on CPU")
    return PRECISIONS[precision]


def _network_device(net: torch.nn.Module) -> torch.device:
    param = next(iter(net.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


class CompiledNetwork:
    """``torch.compile(net)`` with an eager fallback: the first exception from compiling or
    from a compiled call is turned into one ``RuntimeWarning`` and the network runs without
    compiling from then on (a genuine error in the call then surfaces from the eager run)."""

    def __init__(self, net: torch.nn.Module):
        self.net = net
        self.compiled = None
        self.failure: str | None = None
        try:
            self.compiled = torch.compile(net)
        except Exception as exc:  # torch.compile itself may refuse (unsupported platform/Python)
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        self.failure = f"{type(exc).__name__}: {first}"
        self.compiled = None
        warnings.warn(f"compile: torch.compile failed ({self.failure}); running the network without "
                      "compiling", RuntimeWarning, stacklevel=3)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:
                self._fall_back(exc)
        return self.net(*args)


def autograd_denoise(prior, x: torch.Tensor, sigma, generator: torch.Generator | None,
                     loss: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D(x), d loss(D(x)) / dx)`` by one autograd pass through any prior callable."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        x0 = prior(xg, sigma, generator)
        g = torch.autograd.grad(loss(x0), xg)[0]
    return x0.detach(), g


class _PriorBase:
    """Call counting, chunked network calls, precision/layout/compile of the network call and
    the cached canvas position grid."""

    def __init__(self, net: torch.nn.Module, batch: int | None = None, *,
                 precision: str = "fp32",      # fp32 | bf16 | fp16: autocast dtype of the network call.
                 channels_last: bool = False,  # Network and inputs in channels-last memory format.
                 compile: bool = False,        # torch.compile the network (eager fallback, warning).
                 pad_fill: str = "zeros",      # canvas outside the image: 'zeros' | 'noise' (std sigma).
                 ):
        if batch is not None and batch < 1:
            raise ValueError(f"batch={batch}; expected a positive number of patches per call or None")
        self.net = net
        self.batch = batch
        self.precision = precision
        self.pad_fill = check_pad_fill(pad_fill)
        self.autocast_dtype = autocast_dtype(precision, _network_device(net))
        self.channels_last = bool(channels_last)
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        self.forward = CompiledNetwork(net) if compile else net
        self.calls = 0
        self._grid_key = None
        self._grid = None

    def reset_calls(self) -> None:
        self.calls = 0

    def pad_noise(self, x: torch.Tensor, pads: tuple[int, int, int, int], sigma,
                  generator: torch.Generator | None) -> torch.Tensor | None:
        """The canvas noise of one call (:func:`draw_pad_noise`), or None with pad_fill 'zeros'
        or no padding (then nothing is drawn)."""
        if self.pad_fill == "zeros" or not any(pads):
            return None
        return draw_pad_noise(x, pads, sigma, generator)

    @property
    def positional(self) -> bool:
        return getattr(self.net, "pos_channels", 0) > 0

    def canvas_grid(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """Position channels ``(1, 2, height, width)`` of the canvas, built once per size."""
        key = (height, width, like.device, like.dtype)
        if self._grid_key != key:
            with torch.inference_mode(False):  # a normal tensor: usable by DPS's autograd later
                self._grid = position_grid(height, width, device=like.device, dtype=like.dtype)
            self._grid_key = key
        return self._grid

    def network_call(self, x: torch.Tensor, sigma: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """One network call on ``(n, C, h, w)`` inputs in the prior's precision and memory
        format; returns float32 ``(n, C, h, w)``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            pos = None if pos is None else pos.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = self.forward(x, sigma, pos)
        self.calls += 1
        return out.float()

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """Run the network on ``(n, C, h, w)`` patches, ``batch`` patches per call at most."""
        n = x.shape[0]
        step = n if self.batch is None else self.batch
        outs = [self.network_call(x[start:start + step], sigma[start:start + step],
                                  None if pos is None else pos[start:start + step])
                for start in range(0, n, step)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)


class PatchPrior(_PriorBase):
    """PaDIS whole-image denoiser from non-overlapping patches on a randomly shifted grid.

    The H x W image is padded by ``pad`` (canvas ``(H + 2*pad) x (W + 2*pad)``; a pair pads
    rows and columns each by its own amount) with zeros or, with ``pad_fill='noise'``, noise of
    std sigma drawn after the offset (module docstring); a grid of P_h x P_w patches of ``psize``
    pixels (P = size // psize + 1 per axis) starts at row ``a``, column ``b``, drawn uniformly
    from [0, pad_rows-1] and [0, pad_cols-1] with ``generator`` at every call (paper Sec. 3.2,
    Fig. 2). All patches of all images are denoised in one batched call (or chunks of
    ``batch`` patches), each with its position channels cropped from the canvas grid, and put
    back by the inverse reshape; the output's canvas outside the image is discarded. Paper:
    256 x 256 images, pad 24, psize 56, P 5. With ``pad`` and ``psize`` None the grid of each
    image size is :func:`choose_grid` over ``patch_sizes`` (see :meth:`grid_for`).
    """

    def __init__(self,
                 net: torch.nn.Module,      # D(x, sigma, pos) patch denoiser.
                 pad=None,                  # Canvas padding per side, pixels: int or (rows, cols); None: chosen.
                 psize: int | None = None,  # Patch side, pixels; None: chosen per image size.
                 batch: int | None = None,  # Max patches per network call; None = all at once.
                 patch_sizes: tuple[int, int] = (16, 64),  # Trained patch sizes (min, max) for the choice.
                 **speed,                   # precision, channels_last, compile, pad_fill (see _PriorBase).
                 ):
        super().__init__(net, batch, **speed)
        self.pad = None if pad is None else (int(pad) if isinstance(pad, (int, float)) else axis_pads(pad))
        self.psize = None if psize is None else int(psize)
        self.patch_sizes = tuple(patch_sizes)
        model = getattr(net, "model", None)
        self.multiple = 2 ** (getattr(model, "num_levels", 1) - 1)
        self._chosen: dict[tuple[int, int], tuple[object, int]] = {}

    def grid_for(self, height: int, width: int) -> tuple[object, int]:
        """(pad, psize) used for H x W images: the given ones, the missing one(s) chosen by
        :func:`choose_grid` (once per size)."""
        if self.pad is not None and self.psize is not None:
            return self.pad, self.psize
        if (height, width) not in self._chosen:
            self._chosen[height, width] = choose_grid(height, width, self.patch_sizes, self.multiple,
                                                      pad=self.pad, psize=self.psize)
        return self._chosen[height, width]

    def draw_offset(self, generator: torch.Generator | None, pad=None) -> tuple[int, int]:
        """Grid offset (a, b), uniform in [0, pad_rows-1] x [0, pad_cols-1], drawn on the
        generator's device (``pad``: default the prior's)."""
        if generator is None:
            raise ValueError("PatchPrior needs a torch.Generator to draw the grid offset (no global RNG)")
        rows, cols = axis_pads(self.pad if pad is None else pad)
        if rows == cols:
            a, b = torch.randint(0, rows, (2,), generator=generator, device=generator.device).tolist()
            return a, b
        a = torch.randint(0, rows, (1,), generator=generator, device=generator.device).item()
        b = torch.randint(0, cols, (1,), generator=generator, device=generator.device).item()
        return a, b

    def canvas_pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding of the canvas of an H x W image (as ``F.pad``)."""
        rows, cols = axis_pads(self.grid_for(height, width)[0])
        return cols, cols, rows, rows

    def _grid_inputs(self, x: torch.Tensor, sigma, offset: tuple[int, int], pad_noise: torch.Tensor | None = None):
        """Network inputs of the grid at ``offset``: patches, position crops (or None) and one
        sigma per patch, plus the grid shape (P_h, P_w). ``pad_noise``: the call's canvas noise
        (:meth:`pad_noise`; None: zeros)."""
        bsz, _, height, width = x.shape
        pad, p = self.grid_for(height, width)
        ph, pw = check_grid(height, width, pad, p)
        rows, cols = axis_pads(pad)
        a, b = offset
        canvas = fill_canvas(x, (cols, cols, rows, rows), pad_noise)
        patches = extract_patches(grid_region(canvas, a, b, ph, pw, p), p)
        pos = None
        if self.positional:
            grid = self.canvas_grid(height + 2 * rows, width + 2 * cols, x)
            pos = extract_patches(grid_region(grid, a, b, ph, pw, p), p).repeat(bsz, 1, 1, 1)
        sig = _sigma_vector(sigma, bsz, x).repeat_interleave(ph * pw)
        return patches, pos, sig, ph, pw

    def _to_image(self, patches: torch.Tensor, bsz: int, ph: int, pw: int, offset: tuple[int, int],
                  height: int, width: int) -> torch.Tensor:
        """Stitch per-patch outputs and crop the image: it starts at (pad_rows - a, pad_cols - b)
        inside the grid region; the rest is canvas and is discarded."""
        rows, cols = axis_pads(self.grid_for(height, width)[0])
        a, b = offset
        out = stitch_patches(patches, bsz, ph, pw)
        return out[:, :, rows - a:rows - a + height, cols - b:cols - b + width]

    def __call__(self, x: torch.Tensor, sigma, generator: torch.Generator | None = None,
                 offset: tuple[int, int] | None = None, pad_noise: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) noisy images; sigma: float or (B,). Returns x0_hat (B, C, H, W).
        ``offset`` fixes (a, b) instead of drawing it (tests, debugging); with ``offset`` given
        the canvas noise of pad_fill 'noise' is ``pad_noise`` (None: drawn from ``generator``)."""
        bsz, _, height, width = x.shape
        pad, psize = self.grid_for(height, width)
        check_grid(height, width, pad, psize)
        if offset is None:
            offset = self.draw_offset(generator, pad)
        if pad_noise is None:
            pad_noise = self.pad_noise(x, self.canvas_pads(height, width), sigma, generator)
        patches, pos, sig, ph, pw = self._grid_inputs(x, sigma, offset, pad_noise)
        return self._to_image(self.denoise(patches, sig, pos), bsz, ph, pw, offset, height, width)

    def denoise_with_grad(self, x: torch.Tensor, sigma, generator: torch.Generator | None,
                          loss: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``x0 = D(x)`` and ``g = d loss(x0) / dx`` (DPS's gradient through the network).

        Without ``batch`` (or when all patches fit in one call) this is one autograd pass. With
        ``batch`` the graph of only one chunk of patches is alive at a time: a no-grad pass gives
        x0 and ``v = d loss / d x0``; then each chunk is run again with autograd and its
        vector-Jacobian product with ``v``'s patches is put back by the same stitching (the
        patches do not overlap, so the image gradient is the stitched patch gradients). Cost: one
        extra forward per call; peak memory: one chunk's activations. Both passes use the same
        grid offset and canvas noise (drawn from ``generator`` as by a plain call)."""
        bsz, channels, height, width = x.shape
        pad, p = self.grid_for(height, width)
        ph, pw = check_grid(height, width, pad, p)
        n = bsz * ph * pw
        if self.batch is None or n <= self.batch:
            return autograd_denoise(self, x, sigma, generator, loss)
        a, b = offset = self.draw_offset(generator, pad)
        rows, cols = axis_pads(pad)
        x = x.detach()
        noise = self.pad_noise(x, self.canvas_pads(height, width), sigma, generator)
        with torch.no_grad():
            x0 = self(x, sigma, offset=offset, pad_noise=noise)
        with torch.enable_grad():
            x0_leaf = x0.requires_grad_(True)
            v = torch.autograd.grad(loss(x0_leaf), x0_leaf)[0]
        x0 = x0.detach()
        v_region = x.new_zeros(bsz, channels, ph * p, pw * p)
        v_region[:, :, rows - a:rows - a + height, cols - b:cols - b + width] = v  # adjoint of the crop
        v_patches = extract_patches(v_region, p)
        patches, pos, sig, _, _ = self._grid_inputs(x, sigma, offset, noise)
        grads = torch.empty_like(patches)
        for start in range(0, n, self.batch):
            part = slice(start, start + self.batch)
            with torch.enable_grad():
                pin = patches[part].detach().requires_grad_(True)
                out = self.network_call(pin, sig[part], None if pos is None else pos[part])
                grads[part] = torch.autograd.grad(out, pin, v_patches[part])[0]
        return x0, self._to_image(grads, bsz, ph, pw, offset, height, width)


class WholeImagePrior(_PriorBase):
    """Whole-image denoiser with the prior interface (ablation / baseline).

    The image is padded (centred; zeros, or noise of std sigma with ``pad_fill='noise'``) to
    the next size the U-Net accepts (sides divisible by 2**(levels-1)) and cropped back; a size
    the U-Net accepts is not padded (nothing drawn). A position-aware network gets the grid of
    that canvas.
    """

    def __init__(self, net: torch.nn.Module, **speed):
        super().__init__(net, None, **speed)
        model = getattr(net, "model", None)
        self.multiple = 2 ** (getattr(model, "num_levels", 1) - 1)

    def __call__(self, x: torch.Tensor, sigma, generator: torch.Generator | None = None) -> torch.Tensor:
        bsz, _, height, width = x.shape
        m = self.multiple
        eh, ew = -height % m, -width % m
        top, left = eh // 2, ew // 2
        pads = (left, ew - left, top, eh - top)
        canvas = fill_canvas(x, pads, self.pad_noise(x, pads, sigma, generator)) if eh or ew else x
        pos = None
        if self.positional:
            pos = self.canvas_grid(canvas.shape[-2], canvas.shape[-1], x).expand(bsz, -1, -1, -1)
        out = self.denoise(canvas, _sigma_vector(sigma, bsz, x), pos)
        return out[:, :, top:top + height, left:left + width]


class OverlapAveragePrior(_PriorBase):
    """Overlapping patches at ``stride``, denoised outputs averaged per pixel (the paper's
    "patch averaging" ablation). Deterministic with pad_fill 'zeros' (``generator`` unused);
    'noise' draws the canvas noise from it.

    The image is padded by ``pad`` and then, centred, by the few extra pixels needed for the
    stride to end exactly on the canvas (zeros, or noise of std sigma); position channels come
    from that canvas's grid.
    """

    def __init__(self,
                 net: torch.nn.Module,      # D(x, sigma, pos) patch denoiser.
                 psize: int,                # Patch side, pixels.
                 stride: int,               # Step between patch corners, pixels (< psize overlaps).
                 pad: int = 0,              # Canvas padding on each side of the image, pixels.
                 batch: int | None = None,  # Max patches per network call; None = all at once.
                 **speed,                   # precision, channels_last, compile, pad_fill (see _PriorBase).
                 ):
        if not 1 <= stride <= psize:
            raise ValueError(f"OverlapAveragePrior: stride={stride}; expected 1 <= stride <= psize={psize}")
        if pad < 0:
            raise ValueError(f"OverlapAveragePrior: pad={pad}; expected >= 0")
        super().__init__(net, batch, **speed)
        self.psize = int(psize)
        self.stride = int(stride)
        self.pad = int(pad)
        self._count_key = None
        self._count = None

    def _canvas_side(self, size: int) -> int:
        n = max(size + 2 * self.pad, self.psize)
        steps = -(-(n - self.psize) // self.stride)  # ceil
        return steps * self.stride + self.psize

    def __call__(self, x: torch.Tensor, sigma, generator: torch.Generator | None = None) -> torch.Tensor:
        bsz, chans, height, width = x.shape
        nh, nw = self._canvas_side(height), self._canvas_side(width)
        top, left = (nh - height) // 2, (nw - width) // 2
        pads = (left, nw - width - left, top, nh - height - top)
        canvas = fill_canvas(x, pads, self.pad_noise(x, pads, sigma, generator))
        p, s = self.psize, self.stride
        cols = F.unfold(canvas, p, stride=s)  # (B, C*p*p, L)
        n_per = cols.shape[-1]
        patches = cols.transpose(1, 2).reshape(bsz * n_per, chans, p, p)
        pos = None
        if self.positional:
            grid = self.canvas_grid(nh, nw, x)
            pcols = F.unfold(grid, p, stride=s)
            pos = pcols.transpose(1, 2).reshape(n_per, 2, p, p).repeat(bsz, 1, 1, 1)
        sig = _sigma_vector(sigma, bsz, x).repeat_interleave(n_per)
        out = self.denoise(patches, sig, pos)
        out = out.reshape(bsz, n_per, chans * p * p).transpose(1, 2)
        summed = F.fold(out, (nh, nw), p, stride=s)
        key = (nh, nw, x.device, x.dtype)
        if self._count_key != key:
            with torch.inference_mode(False):  # a normal tensor: usable by DPS's autograd later
                ones = torch.ones(1, 1, nh, nw, device=x.device, dtype=x.dtype)
                self._count = F.fold(F.unfold(ones, p, stride=s), (nh, nw), p, stride=s)
            self._count_key = key
        return (summed / self._count)[:, :, top:top + height, left:left + width]


# ----------------------------------------------------------------------------------------
# Building a prior by name, and its patch grid per image size

# Trained patch sizes (min, max) assumed for a checkpoint that does not record them (the paper's 16/32/64).
DEFAULT_PATCH_RANGE = (16, 64)


def _patch_prior(net, *, pad, psize, stride, batch, patch_range, grid, **speed):
    return PatchPrior(net, pad=pad, psize=psize, batch=batch, patch_sizes=patch_range or DEFAULT_PATCH_RANGE,
                      **speed)


def _whole_prior(net, *, pad, psize, stride, batch, patch_range, grid, **speed):
    return WholeImagePrior(net, **speed)


def _average_prior(net, *, pad, psize, stride, batch, patch_range, grid, **speed):
    if pad is None or psize is None:  # the grid chosen for the (first) image size: its psize, larger pad
        chosen = next(iter((grid or {}).values()), None)
        if chosen is None:
            raise ValueError("prior 'average' without pad/psize needs the chosen grid (grid)")
        pad, psize = max(axis_pads(chosen["pad"])), chosen["psize"]
    stride = stride if stride is not None else max(1, psize // 2)
    return OverlapAveragePrior(net, psize=psize, stride=stride, pad=pad, batch=batch, **speed)


# prior name -> builder. 'average' is the paper's overlapping-patch ablation.
PRIOR_BUILDERS: dict[str, Callable] = {"patch": _patch_prior, "whole": _whole_prior, "average": _average_prior}


def check_prior_name(prior: str) -> None:
    if prior not in PRIOR_BUILDERS:
        raise ValueError(f"unknown prior {prior!r}; expected one of {sorted(PRIOR_BUILDERS)}")


def build_prior(net: torch.nn.Module, prior: str = "patch", *, pad=None, psize: int | None = None,
                stride: int | None = None, batch: int | None = None, patch_range=None, grid: dict | None = None,
                precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                pad_fill: str = "zeros") -> _PriorBase:
    """The whole-image denoiser ``prior`` ('patch' | 'whole' | 'average') around ``net``.

    pad, psize, batch: the patch grid (None: chosen per image size from ``patch_range``, the
    network's trained patch sizes; default :data:`DEFAULT_PATCH_RANGE`); stride: of 'average'
    (None: psize // 2), which without pad/psize takes them from ``grid`` (:func:`resolve_grids`);
    precision, channels_last, compile: how the network runs (:class:`_PriorBase`); pad_fill: the
    canvas outside the image, 'zeros' or 'noise' (module docstring)."""
    check_prior_name(prior)
    return PRIOR_BUILDERS[prior](net, pad=pad, psize=psize, stride=stride, batch=batch, patch_range=patch_range,
                                 grid=grid, precision=precision, channels_last=channels_last, compile=compile,
                                 pad_fill=pad_fill)


def check_prior_geometry(prior: str, pad, psize: int | None, shapes) -> None:
    """Fail before any work if a given patch grid cannot tile an image size of ``shapes``
    (ValueError); a grid left to choose (pad/psize None) always tiles."""
    if prior == "patch" and pad is not None and psize is not None:
        for h, w in sorted(shapes):
            check_grid(h, w, pad, psize)


def resolve_grids(prior: str, net: torch.nn.Module, pad, psize: int | None, patch_range, shapes) -> dict:
    """The patch grid of every image size of ``shapes``, chosen where pad/psize are None (from
    the size and the network's trained patch sizes ``patch_range``): {"HxW": {pad, psize, chosen}}."""
    if prior not in ("patch", "average"):
        return {}
    probe = PatchPrior(net, pad=pad, psize=psize, patch_sizes=patch_range or DEFAULT_PATCH_RANGE)
    grids = {}
    for h, w in sorted(shapes):
        p, s = probe.grid_for(h, w)
        grids[f"{h}x{w}"] = dict(pad=p if isinstance(p, int) else list(p), psize=s,
                                 chosen=pad is None or psize is None)
    return grids


def describe_grids(grids: dict, patch_range) -> list[str]:
    """Log lines naming each chosen patch grid (and how to set one)."""
    return [f"patch grid for {size}: pad {format_pad(g['pad'])}, psize {g['psize']} (chosen from the image size "
            f"and the network's patch sizes {patch_range[0]}-{patch_range[1]} px; set with pad/psize)"
            for size, g in grids.items() if g["chosen"]]


def network_image_channels(net: torch.nn.Module) -> int:
    """Image channels the denoiser works on (position channels excluded)."""
    return int(getattr(net, "out_channels", None) or net.img_channels)
