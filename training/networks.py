"""DDPM++ U-Net (SongUNet), EDM preconditioning and the position-aware patch denoiser.

Module and parameter names follow the EDM / Patch-Diffusion / PaDIS family
(``model.map_noise``, ``model.enc['64x64_block0'].conv0.weight``, ...), so the state dict
of a published PaDIS network maps onto ours one to one. Constructor arguments have the same
names and meaning as in that family, so a pickled network's ``_init_kwargs`` rebuild it.

Conventions (docs/ARCHITECTURE.md): images are ``(B, C, H, W)`` float32 in [0, 1]; the denoiser is
``D(x, sigma, pos) -> x0_hat`` with EDM preconditioning (Karras et al. 2022, Table 1) and
``sigma_data = 0.5``; ``pos`` holds two channels (x = column, then y = row) in [-1, 1].
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch.nn.functional import silu

from torch_utils import persistence

# ----------------------------------------------------------------------------------------
# Building blocks


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random initial weights; ``mode`` is one of the four EDM schemes."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}; expected xavier_uniform, xavier_normal, "
                     "kaiming_uniform or kaiming_normal")


@persistence.persistent_class
class Linear(torch.nn.Module):
    """Fully connected layer with EDM initialisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_mode: str = "kaiming_normal", init_weight: float = 1, init_bias: float = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return torch.nn.functional.linear(x, w, b)


@persistence.persistent_class
class Conv2d(torch.nn.Module):
    """Convolution with optional 2x up/down-sampling by a separable FIR filter.

    ``kernel=0`` gives a pure resampling layer without weights (used by skip connections).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter: Sequence[float] = (1, 1),
                 fused_resample: bool = False, init_mode: str = "kaiming_normal",
                 init_weight: float = 1, init_bias: float = 0):
        if up and down:
            raise ValueError("Conv2d cannot both up- and down-sample")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel,
                    fan_out=out_channels * kernel * kernel)
        self.weight = (torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans)
                                          * init_weight) if kernel else None)
        self.bias = (torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias)
                     if kernel and bias else None)
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        # The bias goes into the last convolution with weights (oneDNN adds it in the same
        # pass instead of a separate out-of-place add; notes/speed.md).
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                   stride=2, padding=max(f_pad - w_pad, 0))
            return F.conv2d(x, w, b, padding=max(w_pad - f_pad, 0))
        if self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
            return x if b is None else x.add_(b.reshape(1, -1, 1, 1))  # in place on a fresh output
        if self.up:
            x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]),
                                   groups=self.in_channels, stride=2, padding=f_pad)
        if self.down:
            x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                         stride=2, padding=f_pad)
        return F.conv2d(x, w, b, padding=w_pad) if w is not None else x


@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    """Group normalisation with at least ``min_channels_per_group`` channels per group."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype),
                                              self.bias.to(x.dtype), self.eps)


@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    """Residual block of DDPM++ with optional resampling and single-head self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0, skip_scale: float = 1,
                 eps: float = 1e-5, resample_filter: Sequence[float] = (1, 1),
                 resample_proj: bool = False, adaptive_scale: bool = True,
                 init: dict | None = None, init_zero: dict | None = None, init_attn: dict | None = None):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = float(skip_scale)  # a Python float: numpy scalars break torch.compile guards under inference_mode
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1,
                              **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = silu(self.norm1(x.add_(params)))
        # In-place adds and scalings below act on fresh convolution outputs that autograd
        # does not keep: the paper code does the same, and each out-of-place op on a
        # 25-patch activation costs a new allocation (page faults) on CPU.
        x = self.conv1(torch.nn.functional.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig).mul_(self.skip_scale)
        if self.num_heads:
            b, c, h, w = x.shape
            heads = self.num_heads
            # Channel layout of qkv follows EDM: (head, channel, [q|k|v]) interleaved last.
            q, k, v = self.qkv(self.norm2(x)).reshape(b * heads, c // heads, 3, h * w).unbind(2)
            a = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (b*heads, hw, c/heads)
            x = self.proj(a.transpose(1, 2).reshape(b, c, h, w)).add_(x).mul_(self.skip_scale)
        return x


@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding of the noise level (DDPM++)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    """Random Fourier feature embedding of the noise level (NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


# ----------------------------------------------------------------------------------------
# DDPM++ / NCSN++ U-Net (Song et al. 2021), in the EDM layout


@persistence.persistent_class
class SongUNet(torch.nn.Module):
    """DDPM++ U-Net. ``img_resolution`` only names the levels (``'64x64_block0'``); any input
    whose sides are divisible by ``2**(len(channel_mult)-1)`` works."""

    def __init__(self,
                 img_resolution: int,                    # Resolution used for level names.
                 in_channels: int,                       # Input channels (image + position).
                 out_channels: int,                      # Output channels (image).
                 label_dim: int = 0,                     # Class labels, 0 = unconditional.
                 augment_dim: int = 0,                   # Augmentation labels, 0 = none.
                 model_channels: int = 128,              # Base channel count.
                 channel_mult: Sequence[int] = (1, 2, 2, 2),  # Per-level channel multipliers.
                 channel_mult_emb: int = 4,              # Embedding width multiplier.
                 num_blocks: int = 4,                    # Residual blocks per level.
                 attn_resolutions: Sequence[int] = (16,),  # Level resolutions with attention.
                 dropout: float = 0.10,                  # Dropout probability.
                 label_dropout: float = 0,               # Label dropout (classifier-free guidance).
                 embedding_type: str = "positional",     # 'positional' (DDPM++) or 'fourier' (NCSN++).
                 channel_mult_noise: int = 1,            # Noise embedding width: 1 DDPM++, 2 NCSN++.
                 encoder_type: str = "standard",         # 'standard', 'skip' or 'residual'.
                 decoder_type: str = "standard",         # 'standard' or 'skip'.
                 resample_filter: Sequence[int] = (1, 1),  # (1,1) DDPM++, (1,3,3,1) NCSN++.
                 implicit_mlp: bool = False,             # 1x1-conv MLP stem (Patch-Diffusion option).
                 ):
        for name, value, allowed in (("embedding_type", embedding_type, ("fourier", "positional")),
                                     ("encoder_type", encoder_type, ("standard", "skip", "residual")),
                                     ("decoder_type", decoder_type, ("standard", "skip"))):
            if value not in allowed:
                raise ValueError(f"SongUNet: {name}={value!r}; expected one of {allowed}")
        super().__init__()
        self.label_dropout = label_dropout
        self.num_levels = len(channel_mult)
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout,
                            skip_scale=np.sqrt(0.5), eps=1e-6, resample_filter=resample_filter,
                            resample_proj=True, adaptive_scale=False, init=init,
                            init_zero=init_zero, init_attn=init_attn)

        # Noise-level mapping.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                if implicit_mlp:
                    stem = torch.nn.Sequential(
                        Conv2d(cin, cout, kernel=1, **init), torch.nn.SiLU(),
                        Conv2d(cout, cout, kernel=1, **init), torch.nn.SiLU(),
                        Conv2d(cout, cout, kernel=1, **init), torch.nn.SiLU(),
                        Conv2d(cout, cout, kernel=3, **init))
                    stem.out_channels = cout
                    self.enc[f"{res}x{res}_conv"] = stem
                else:
                    self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, kernel=3, down=True, resample_filter=resample_filter,
                        fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=(res in attn_resolutions), **block_kwargs)
        skips = [blk.out_channels for name, blk in self.enc.items() if "aux" not in name]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=(idx == num_blocks and res in attn_resolutions), **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        factor = 2 ** (self.num_levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"SongUNet: input of {tuple(x.shape[-2:])} pixels; both sides must be "
                             f"divisible by {factor} for {self.num_levels} levels")
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [sin, cos] order of EDM
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))

        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


MODEL_TYPES = {"SongUNet": SongUNet}


def _build_model(model_type: str, **kwargs) -> torch.nn.Module:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(MODEL_TYPES)}")
    return MODEL_TYPES[model_type](**kwargs)


# ----------------------------------------------------------------------------------------
# EDM preconditioning (Karras et al. 2022, Table 1, column "EDM")


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """c_skip, c_out, c_in, c_noise of EDM for ``sigma`` of shape (B,1,1,1)."""
    s2 = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / s2, sigma * sigma_data / s2.sqrt(), 1 / s2.sqrt(), sigma.log() / 4


@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    """Whole-image EDM denoiser ``D(x, sigma) -> x0_hat`` (no position channels).

    ``init_kwargs`` records the constructor arguments: ``type(net)(**net.init_kwargs)``
    rebuilds the same architecture (used by the safetensors+json snapshot format).
    """

    loadable_names = ("EDMPrecond",)  # class names under which checkpoints may hold this network
    model_types = MODEL_TYPES  # model_type kwarg -> U-Net class (checked when loading)
    # Kwargs that the paper's train.py stores in every network it writes but that change
    # nothing at the only value it uses ("Always keep as 1"); a file with another value is
    # refused (persistence.check_init_kwargs).
    fixed_kwargs = {"hash_channels": 1, "four_channels": 1}

    def __init__(self,
                 img_resolution: int,              # Training image resolution.
                 img_channels: int,                # Image channels in and out.
                 label_dim: int = 0,               # Class labels, 0 = unconditional.
                 use_fp16: bool = False,           # Run the U-Net in fp16 on CUDA.
                 sigma_min: float = 0,             # Smallest supported noise level.
                 sigma_max: float = float("inf"),  # Largest supported noise level.
                 sigma_data: float = 0.5,          # Expected std of the training data.
                 model_type: str = "SongUNet",     # Class name of the U-Net.
                 **model_kwargs):                  # Arguments of the U-Net.
        super().__init__()
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                                label_dim=label_dim, use_fp16=use_fp16, sigma_min=sigma_min,
                                sigma_max=sigma_max, sigma_data=sigma_data, model_type=model_type,
                                **model_kwargs)
        self._set_up(img_resolution, img_channels, img_channels, label_dim, use_fp16, sigma_min, sigma_max,
                     sigma_data, model_type, model_kwargs)

    def _set_up(self, img_resolution, img_channels, out_channels, label_dim, use_fp16, sigma_min, sigma_max,
                sigma_data, model_type, model_kwargs) -> None:
        """The attributes and the U-Net (``img_channels`` in, ``out_channels`` out); the
        constructors of this class and its subclass differ only in the channels."""
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.out_channels = out_channels
        self.pos_channels = img_channels - out_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = _build_model(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                  out_channels=out_channels, label_dim=label_dim, **model_kwargs)

    def _run(self, x: torch.Tensor, sigma, extra: torch.Tensor | None, class_labels, force_fp32: bool):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if sigma.shape[0] == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0], 1, 1, 1)
        if self.label_dim:
            class_labels = (torch.zeros([1, self.label_dim], device=x.device) if class_labels is None
                            else class_labels.to(torch.float32).reshape(-1, self.label_dim))
        else:
            class_labels = None
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        x_in = c_in * x if extra is None else torch.cat([c_in * x, extra.to(x.dtype)], dim=1)
        f_x = self.model(x_in.to(dtype), c_noise.flatten(), class_labels=class_labels)
        return c_skip * x + c_out * f_x.to(torch.float32)

    def forward(self, x: torch.Tensor, sigma, pos: torch.Tensor | None = None, class_labels=None,
                force_fp32: bool = False) -> torch.Tensor:
        """x: (B, C, H, W) noisy image in [0,1] + noise; sigma: scalar or (B,); ``pos`` is ignored
        (accepted so every denoiser shares one signature). Returns x0_hat, (B, C, H, W)."""
        return self._run(x, sigma, None, class_labels, force_fp32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


@persistence.persistent_class
class PatchEDMPrecond(EDMPrecond):
    """Position-aware patch denoiser ``D(x, sigma, pos)`` of Patch-Diffusion / PaDIS.

    ``img_channels`` counts the 2 position channels (3 for grayscale), as in the published
    checkpoints; ``out_channels`` is the number of image channels. ``pos``: (B, 2, h, w), x
    (column) then y (row) coordinates in [-1, 1] on the padded canvas.
    """

    loadable_names = ("PatchEDMPrecond", "Patch_EDMPrecond")  # the second: Patch-Diffusion/PaDIS pickles

    def __init__(self,
                 img_resolution: int,              # Padded training canvas (image + 2*pad_width).
                 img_channels: int,                # Network input channels = image + 2 position.
                 out_channels: int | None = None,  # Image channels out (default: img_channels).
                 label_dim: int = 0,               # Class labels, 0 = unconditional.
                 use_fp16: bool = False,           # Run the U-Net in fp16 on CUDA.
                 sigma_min: float = 0,             # Smallest supported noise level.
                 sigma_max: float = float("inf"),  # Largest supported noise level.
                 sigma_data: float = 0.5,          # Expected std of the training data.
                 model_type: str = "SongUNet",     # Class name of the U-Net.
                 **model_kwargs):                  # Arguments of the U-Net.
        super(EDMPrecond, self).__init__()  # nn.Module's: EDMPrecond's would build a U-Net for img_channels out
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                                out_channels=out_channels, label_dim=label_dim, use_fp16=use_fp16,
                                sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                                model_type=model_type, **model_kwargs)
        out = img_channels if out_channels is None else out_channels
        if img_channels - out not in (0, 2):
            raise ValueError(f"PatchEDMPrecond: img_channels={img_channels}, out_channels={out_channels}; "
                             "expected img_channels = out_channels + 2 (position channels)")
        self._set_up(img_resolution, img_channels, out, label_dim, use_fp16, sigma_min, sigma_max, sigma_data,
                     model_type, model_kwargs)

    def forward(self, x: torch.Tensor, sigma, pos: torch.Tensor | None = None, class_labels=None,
                force_fp32: bool = False) -> torch.Tensor:
        """x: (B, C, h, w) noisy patches; sigma: scalar or (B,); pos: (B, 2, h, w) in [-1, 1].
        Returns x0_hat (B, C, h, w)."""
        if self.pos_channels and pos is None:
            raise ValueError("PatchEDMPrecond: this network expects 2 position channels; pass pos")
        return self._run(x, sigma, pos if self.pos_channels else None, class_labels, force_fp32)


# Precision name -> the autocast dtype a network runs under (None: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------
# Position channels and named architectures


def position_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Position channels of a whole canvas: (1, 2, H, W), x (column) then y (row), each
    ``(i / (N - 1) - 0.5) * 2`` in [-1, 1] (docs/ARCHITECTURE.md). Patches crop this grid."""
    xs = torch.linspace(-1, 1, width, device=device, dtype=dtype) if width > 1 else torch.zeros(1, device=device, dtype=dtype)
    ys = torch.linspace(-1, 1, height, device=device, dtype=dtype) if height > 1 else torch.zeros(1, device=device, dtype=dtype)
    grid_x = xs[None, :].expand(height, width)
    grid_y = ys[:, None].expand(height, width)
    return torch.stack([grid_x, grid_y])[None].contiguous()


# Named configurations for --arch. The paper's prior: 'ddpmpp' with model_channels 128,
# channel_mult [2,2,2], 4 blocks, attention at 16 (about 54 M parameters).
ARCHS = {
    "ddpmpp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                   decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                   model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16],
                   dropout=0.10),
    "ncsnpp": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
                   decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1],
                   model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16],
                   dropout=0.10),  # the paper's (EDM's) NCSN++ settings
    "small": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                  decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                  model_channels=32, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[16],
                  dropout=0.0),
    "tiny": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                 decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                 model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                 dropout=0.0),
}


def build_network(arch: str | dict, img_resolution: int, image_channels: int, positional: bool = True,
                  **overrides) -> EDMPrecond:
    """Build a denoiser from a named architecture (``ARCHS``) or a dict of SongUNet kwargs.

    positional=True gives ``PatchEDMPrecond`` with ``img_channels = image_channels + 2``.
    """
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f"unknown --arch {arch!r}; expected one of {sorted(ARCHS)}")
        kwargs = dict(ARCHS[arch])
    else:
        kwargs = dict(arch)
    kwargs.update(overrides)
    if positional:
        net = PatchEDMPrecond(img_resolution=img_resolution, img_channels=image_channels + 2,
                              out_channels=image_channels, **kwargs)
    else:
        net = EDMPrecond(img_resolution=img_resolution, img_channels=image_channels, **kwargs)
    check_group_norms(net, kwargs)
    return net


def check_group_norms(net: torch.nn.Module, kwargs: dict) -> None:
    """ValueError if a GroupNorm's groups do not divide its channels (it would fail at the first
    call, deep in the decoder): some model_channels / channel_mult give such counts (48 x [1, 2, 2]
    concatenates to 144 channels for 32 groups); multiples of 32 never do."""
    for name, m in net.named_modules():
        if isinstance(m, GroupNorm) and m.weight.numel() % m.num_groups:
            raise ValueError(f"model_channels {kwargs.get('model_channels')} with channel_mult "
                             f"{kwargs.get('channel_mult')}: the GroupNorm {name} gets {m.weight.numel()} "
                             f"channels, not divisible by its {m.num_groups} groups; use a model_channels "
                             "that is a multiple of 32")
