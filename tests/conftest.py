"""Shared fixtures: a seeded generator, the device(s) to test on, tiny networks."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def tiny_patch_net():
    """A randomly initialised position-aware denoiser of ~0.2 M parameters (grayscale)."""
    from training.networks import build_network

    torch.manual_seed(0)
    return build_network("tiny", img_resolution=32, image_channels=1).eval()
