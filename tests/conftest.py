"""Shared fixtures: a seeded generator, the device(s) to test on, tiny networks."""

from __future__ import annotations

import pytest
import torch

# One thread: the tiny networks of the tests run faster without intra-op threading, and
# results do not depend on the machine's core count.
torch.set_num_threads(1)

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
