"""The configuration of one reconstruction run: :class:`ReconConfig`.

``inverse.reconstruct.run`` takes a ``ReconConfig`` (or a dict of its fields), writes
``to_dict()`` as the run directory's ``config.json`` and compares it with that file when a run
is resumed. ``None`` in a field means "the library default" (filled by :meth:`resolved`, or by
the component named in the field's comment).

Adding a field is one line in the class body: ``name: type = default  # what it means``.
Give it ``field(default=..., metadata=FREE)`` if a resumed run may change it (where and how the
run executes, not what it computes), or ``metadata=PATH`` if it is a file or directory path
(compared as absolute paths). Older ``config.json`` files lack the new key; :meth:`from_dict`
gives them the default, so the default must mean what older runs did.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnnlib.config import CheckedConfig

FREE = {"resume_free": True}  # a resumed run may change this field
PATH = {"path": True}  # a path: compared as an absolute path on resume

# Noise level of simulated measurements when ``noise`` is None: std as a fraction of
# max |sinogram| for CT, std in image units otherwise (inverse.operators).
DEFAULT_NOISE = dict(ct=0.005, other=0.01)


@dataclass
class ReconConfig(CheckedConfig):
    """Everything that defines one reconstruction run (see the module docstring to add a field)."""

    KIND = "reconstruction"  # the word of dnnlib.config.CheckedConfig's errors (not a field)

    # What to reconstruct
    network: str = field(metadata=PATH)  # checkpoint (torch_utils.persistence.load_network)
    problem: str  # key of inverse.operators.OPERATORS
    input: str | None = field(default=None, metadata=PATH)  # ground-truth image file or directory
    measurements: str | None = field(default=None, metadata=PATH)  # .npy file or directory (no ground truth)
    image_size: list[int] | None = None  # [H, W]: ground truth must have it; required with measurements
    mat_key: str = "images"  # variable of .mat/.npz inputs
    normalize: bool = False  # min-max scale inputs outside [0, 1]
    max_images: int | None = None  # only the first N images (sorted order)
    hu_window: list[float] | None = None  # DICOM [HU min, HU max] -> [0, 1] (None: training.ct_window's)
    noise: float | None = None  # measurement noise level for op.noise (0: none; None: DEFAULT_NOISE)
    noise_absolute: bool = False  # True: noise is the std in the measurement's own units (the paper's --sigma)
    problem_kwargs: dict = field(default_factory=dict)  # operator options (inverse.operators)

    # The prior (inverse.prior.build_prior)
    prior: str = "patch"  # key of inverse.prior.PRIOR_BUILDERS
    pad: int | list[int] | None = None  # zero padding per side, or [rows, cols]; None: chosen per size
    psize: int | None = None  # patch size; None: chosen per image size (recorded in ``grid``)
    stride: int | None = None  # patch stride of prior 'average' (None: psize // 2)
    pad_fill: str | None = None  # canvas outside the image: 'zeros' | 'noise' (std sigma, from the run's
    # generator); None: the solver's default (inverse.samplers.PAD_FILL_DEFAULTS), or on resume the
    # one the run's config.json recorded ('zeros' if it has none: runs before the option)
    batch: int | None = None  # max patches per network call (None: all)
    precision: str = "fp32"  # network autocast: 'fp32' | 'bf16' | 'fp16'
    channels_last: bool = False  # channels-last memory format for the network
    compile: bool = field(default=False, metadata=FREE)  # torch.compile the network
    images_per_batch: int = 1  # K images of the same size solved together (results depend on K)
    parallel_baselines: bool = field(default=False, metadata=FREE)  # baselines in a thread beside the solve

    # Volume mode (inverse.volume): each input is one 3-D volume, solved in slabs
    volume: bool = False  # inputs are volumes
    slab: int = 16  # adjacent slices solved together
    z_coupling: float = 0.0  # weight of ||slice differences||² in the data step (0: slices independent)

    # The solver (inverse.samplers)
    solver: str = "diffpir"  # key of inverse.samplers.SAMPLERS
    solver_kwargs: dict = field(default_factory=dict)  # its options (None values: its defaults)
    steps: int | None = None  # noise levels (None: inverse.samplers.schedule_defaults(solver, problem))
    sigma_min: float | None = None  # smallest noise level (None: SCHEDULE_DEFAULTS[solver])
    sigma_max: float | None = None  # largest noise level (None: SCHEDULE_DEFAULTS[solver])
    samples: int = 1  # K posterior samples per image in one batched solve; their mean is the reconstruction
    save_samples: bool = False  # also write the K samples (NAME_samples.npy)

    # Baselines (inverse.baselines)
    baselines: list[str] = field(default_factory=lambda: ["fbp", "tv"])  # keys of BASELINES
    tv_weight: float | None = None  # TV weight (None: inverse.baselines.default_tv_weight(problem))
    tv_iters: int | None = None  # TV maximum iterations (None: inverse.baselines.TV_ITERS)
    tv_tol: float | None = None  # TV stop: relative objective change (None: inverse.baselines.TV_TOL; 0: run tv_iters)

    # Where and how it runs
    outdir: str = field(default="out", metadata=FREE)  # runs go to OUTDIR/NNNNN-<problem>-<solver>/
    seed: int = 0  # image i uses seed + i
    device: str | None = field(default=None, metadata=FREE)  # None: cuda if available, else cpu
    threads: int = field(default=0, metadata=FREE)  # torch CPU threads (0: torch's default)
    progress: bool = field(default=True, metadata=FREE)  # progress bars and the results table
    resume: str | None = field(default=None, metadata=FREE)  # an earlier run directory to complete

    # Set by the run (written to config.json)
    run_dir: str | None = field(default=None, metadata=FREE)  # the run directory
    patch_range: list[int] | None = field(default=None, metadata=FREE)  # network's trained patch sizes
    grid: dict | None = field(default=None, metadata=FREE)  # {"HxW": {pad, psize, chosen}} per size

    @classmethod
    def from_dict(cls, values: dict) -> ReconConfig:
        """A config from a dict (e.g. a ``config.json``); missing keys get their defaults, an
        unknown key is a ``ValueError`` listing the valid ones."""
        if isinstance(values, ReconConfig):
            return values
        cls.check_names(values)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"reconstruction option(s) {', '.join(map(repr, missing))} missing")
        return cls(**values)

    def resolved(self) -> ReconConfig:
        """A copy with the defaults filled: ``noise``, ``device``, the problem's TV weight, the
        solver's noise schedule (``steps``, ``sigma_min``, ``sigma_max``) and ``pad_fill`` (the
        solver's; with ``resume`` the one that run recorded, :func:`recorded_pad_fill`)."""
        from inverse.baselines import default_tv_weight
        from inverse.samplers import PAD_FILL_DEFAULTS, schedule_defaults

        changes: dict[str, Any] = {}
        if self.noise is None:
            changes["noise"] = DEFAULT_NOISE["ct" if self.problem.startswith("ct") else "other"]
        if self.tv_weight is None:
            changes["tv_weight"] = default_tv_weight(self.problem)
        if self.device is None:
            from torch_utils.device import default_device
            changes["device"] = default_device()
        defaults = schedule_defaults(self.solver, self.problem)
        if defaults is not None:
            for k in ("steps", "sigma_min", "sigma_max"):
                if getattr(self, k) is None:
                    changes[k] = defaults[k]
        if self.pad_fill is None:
            recorded = resumed_pad_fill(self.resume) if self.resume else None
            changes["pad_fill"] = recorded or PAD_FILL_DEFAULTS.get(self.solver, RECORDED_PAD_FILL)
        return dataclasses.replace(self, **changes)

    def comparable(self) -> dict:
        """The fields a resumed run must keep, as JSON values (paths made absolute)."""
        meta = {f.name: f.metadata for f in dataclasses.fields(self)}
        out = json.loads(json.dumps({k: v for k, v in self.to_dict().items() if not meta[k].get("resume_free")},
                                    default=str))
        for k, v in out.items():
            if meta[k].get("path") and v is not None:
                out[k] = os.path.abspath(v)
        return out


# What a config.json without ``pad_fill`` ran with: the canvas was zeros before the option.
RECORDED_PAD_FILL = "zeros"


def recorded_pad_fill(values: dict) -> str:
    """The canvas fill a run's config.json (as a dict) records; 'zeros' where it has none."""
    return values.get("pad_fill") or RECORDED_PAD_FILL


def resumed_pad_fill(run_dir: str | os.PathLike) -> str | None:
    """:func:`recorded_pad_fill` of ``run_dir/config.json``; None if that file cannot be read
    (the resume check then says why)."""
    try:
        values = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return recorded_pad_fill(values) if isinstance(values, dict) else None
