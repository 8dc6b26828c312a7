import math

import numpy as np
import pytest
import torch

from inverse.metrics import psnr, ssim


def test_identical_images():
    x = np.random.default_rng(0).random((16, 12))
    assert psnr(x, x) == math.inf
    assert ssim(x, x) == pytest.approx(1.0)


def test_known_mse_gives_known_psnr():
    ref = np.full((1, 16, 16), 0.5)
    x = ref + 0.1  # MSE 0.01 -> PSNR = 10 log10(1 / 0.01) = 20 dB
    assert psnr(x, ref) == pytest.approx(20.0, abs=1e-9)
    assert psnr(torch.tensor(x, dtype=torch.float32)[None], torch.tensor(ref)) == pytest.approx(20.0, abs=1e-4)


def test_ssim_rgb_and_degradation():
    rng = np.random.default_rng(1)
    ref = rng.random((3, 24, 20))
    noisy = np.clip(ref + 0.2 * rng.standard_normal(ref.shape), 0, 1)
    s = ssim(noisy, ref)
    assert 0 < s < 0.9
    per_channel = np.mean([ssim(noisy[c], ref[c]) for c in range(3)])
    assert s == pytest.approx(per_channel, rel=1e-6)
    with pytest.raises(ValueError, match="differs"):
        psnr(ref, ref[:, :10])
