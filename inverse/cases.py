"""The shipped evaluation cases: held-out CT head slices and the problems the demo and the
benchmarks run on them (tuned settings), and copying the inputs into a run's folder.

``CASES`` maps a case name to a :class:`Case`. TV weights and the solvers' ``lam`` are chosen
on the tuning slices (``TUNE_DIR``, a slab of their own that is never evaluated;
benchmarks/tune_tv.py, benchmarks/tune_solver.py; notes/quality.md and notes/solvers.md say
which values were compared). The test slices (``HELD_OUT``) are two contiguous slabs with gaps
to every training slice (datasets/ct_head/README.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

from inverse.baselines import default_tv_weight as tv
from inverse.shipped import ct_head_dir

REPO = Path(__file__).resolve().parents[1]
DATA = ct_head_dir() or REPO / "datasets" / "ct_head"  # a checkout's, or the installed copy
HELD_OUT = DATA / "test"  # the test slabs: scored, never tuned on
TUNE_DIR = DATA / "tune"  # the tuning slices: weights and solver settings are chosen here, never scored
ONE_SLICE = HELD_OUT / "slice_025.png"  # mid skull-base slab
EVAL_STRIDE = 4  # the demo scores every fourth test slice (5 of 20, both slabs) to stay within 5 minutes
EVAL_SLICES = "held-out"  # Case.source for "every EVAL_STRIDE-th test slice"


class Case(NamedTuple):
    """One problem with its tuned settings."""

    problem: str  # key of inverse.operators.OPERATORS
    source: str | Path  # an image file, or EVAL_SLICES
    options: dict  # operator options (ReconConfig.problem_kwargs)
    noise: float  # measurement noise level (ReconConfig.noise)
    tv_weight: float  # TV baseline weight, tuned on the tuning slices
    lam: float  # prior weight of the default solver (diffpir), tuned on the tuning slices
    dds_lam: float  # the dds solver's prior weight (relative to ||A||²), tuned on the tuning slices


CASES = {
    "ct_parbeam_20": Case("ct_parbeam", EVAL_SLICES, dict(views=20), 0.005, tv("ct_parbeam"), 0.3, 0.003),
    "ct_fanbeam_40": Case("ct_fanbeam", ONE_SLICE, dict(views=40), 0.005, tv("ct_fanbeam"), 0.3, 0.01),
    # angle_range: odlstuff.geometry.LACT_RANGE rounded, the wedge the published demo numbers used.
    "ct_lact_120deg": Case("ct_lact", ONE_SLICE, dict(views=60, angle_range="0,2.0944"), 0.005, tv("ct_lact"),
                             0.3, 0.003),
    "deblur_uniform_9": Case("deblur_uniform", ONE_SLICE, dict(kernel_size=9), 0.01, tv("deblur_uniform"), 0.3, 0.1),
    "super_x4": Case("super", ONE_SLICE, dict(factor=4), 0.01, tv("super"), 0.3, 0.01),
}


def stage_images(files, folder: Path) -> Path:
    """Copy ``files`` into ``folder`` (runs read a directory); files already there are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (folder / f.name).exists():
            shutil.copy2(f, folder / f.name)
    return folder


def eval_slice_files() -> list[Path]:
    """The demo's evaluation slices: every EVAL_STRIDE-th test slice, sorted."""
    return sorted(HELD_OUT.glob("slice_*.png"))[::EVAL_STRIDE]


def stage_eval_slices(folder: Path) -> Path:
    """Copy the demo's evaluation slices into ``folder``."""
    return stage_images(eval_slice_files(), folder)
