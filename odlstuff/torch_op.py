"""Torch autograd wrappers around :class:`odlstuff.geometry.Projector` (ODL + ASTRA).

Tensors are (B, C, H, W) images and (B, C, views, det_count) sinograms, float32, on any device.
With a numpy :class:`~odlstuff.geometry.Projector` each call moves the whole batch to host memory
once, runs ASTRA slice by slice (B * C slices) and moves the result back once. The methods a
projector lists in `torch_methods` (:class:`~odlstuff.geometry.VolumeProjector` on CUDA) take the
B * C slices as one torch tensor on its device: one ASTRA call, no host copy.
The backward of the projection is the back projection (the true adjoint) and vice versa, so
gradients of any order are available; FBP is linear too and its backward is its adjoint.
"""

from __future__ import annotations

import numpy as np
import torch

from .geometry import Projector


def _run(fn, x: torch.Tensor, out_shape: tuple[int, int], native: bool = False) -> torch.Tensor:
    lead = x.shape[:-2]
    if native:
        out = fn(x.detach().to(torch.float32).reshape(-1, *x.shape[-2:]).contiguous())
        return out.reshape(*lead, *out_shape)
    arr = x.detach().to("cpu", torch.float32).reshape(-1, *x.shape[-2:]).numpy()
    out = fn(np.ascontiguousarray(arr))
    return torch.from_numpy(out).reshape(*lead, *out_shape).to(x.device)


class _Linear(torch.autograd.Function):
    """y = L x for a linear numpy map L given by (forward, adjoint) names on a Projector."""

    @staticmethod
    def forward(ctx, x, projector: Projector, fwd: str, adj: str):
        ctx.projector, ctx.names = projector, (fwd, adj)
        out_shape = projector.sino_shape if fwd in ("forward", "fbp_adjoint") else projector.image_shape
        return _run(getattr(projector, fwd), x, out_shape, fwd in getattr(projector, "torch_methods", ()))

    @staticmethod
    def backward(ctx, grad):
        fwd, adj = ctx.names
        return _Linear.apply(grad, ctx.projector, adj, fwd), None, None, None


def _check(x: torch.Tensor, shape: tuple[int, int], what: str) -> None:
    if x.dim() < 3 or tuple(x.shape[-2:]) != tuple(shape):
        raise ValueError(f"{what} must have shape (..., {shape[0]}, {shape[1]}), got {tuple(x.shape)}")


def project(x: torch.Tensor, projector: Projector) -> torch.Tensor:
    """Forward projection: (B, C, H, W) -> (B, C, views, det_count); backward = back projection."""
    _check(x, projector.image_shape, "image")
    return _Linear.apply(x, projector, "forward", "adjoint")


def backproject(y: torch.Tensor, projector: Projector) -> torch.Tensor:
    """True adjoint of :func:`project`: (B, C, views, det_count) -> (B, C, H, W)."""
    _check(y, projector.sino_shape, "sinogram")
    return _Linear.apply(y, projector, "adjoint", "forward")


def fbp(y: torch.Tensor, projector: Projector) -> torch.Tensor:
    """Filtered back projection (ODL fbp_op): (B, C, views, det_count) -> (B, C, H, W)."""
    _check(y, projector.sino_shape, "sinogram")
    return _Linear.apply(y, projector, "fbp", "fbp_adjoint")
