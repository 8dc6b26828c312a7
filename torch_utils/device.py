"""The device a run uses when it names none: :func:`default_device`.

Training, reconstruction, sampling and the benchmarks all take ``--device``; when it is not
given they ask this one function, so every entry point makes the same choice.
"""

from __future__ import annotations

import torch


def default_device() -> str:
    """``'cuda'`` if torch sees a CUDA device, else ``'cpu'``."""
    return "cuda" if torch.cuda.is_available() else "cpu"
