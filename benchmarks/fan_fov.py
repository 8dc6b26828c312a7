"""FBP PSNR on smooth 48 x 48 images that fill the frame: parallel beam, fan beam with the
paper's detector (field of view radius 17.9 of the half width 20) and fan beam with
``det_extent`` 80 (the default; covers the whole square). 40 views over [0, 2 pi), no noise.

    python benchmarks/fan_fov.py
"""

from __future__ import annotations

import numpy as np
import torch

from inverse.metrics import psnr
from inverse.operators import make_operator

CASES = [("parallel", "ct_parbeam", {}), ("fan, det_extent 40 (the paper's)", "ct_fanbeam", dict(det_extent=40)),
         ("fan, det_extent 80 (default)", "ct_fanbeam", dict(det_extent=80))]


def smooth_images(n: int = 3, size: int = 48) -> list[np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    return [(0.5 + 0.4 * np.sin(xx / (3 + k)) * np.cos(yy / 4)).astype(np.float32)[None] for k in range(n)]


def main() -> None:
    images = smooth_images()
    print(f"{'geometry':<30} FBP PSNR [dB] per image, mean")
    for label, problem, kw in CASES:
        op = make_operator(problem, images[0].shape[1:], views=40, **kw)
        vals = [float(psnr(op.pinv(op.A(torch.from_numpy(x)[None]))[0].numpy(), x)) for x in images]
        print(f"{label:<30} {' '.join(f'{v:.2f}' for v in vals)}  {np.mean(vals):.2f}")


if __name__ == "__main__":
    main()
