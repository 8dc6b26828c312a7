"""The configuration of one training run: :class:`TrainConfig`.

``training.training_loop.run`` takes a ``TrainConfig`` or a dict of its fields
(:meth:`TrainConfig.from_dict`), and writes ``to_dict()`` plus what the run adds (run
directory, data shape, ``batch_mul``, ...) as the run directory's ``config.json`` and into each
training state. ``train.py``'s options take their defaults from here
(:meth:`TrainConfig.default`), so every default is written once, in the class body.

Adding a field is one line in the class body: ``name: type = default  # what it means``
(``field(default_factory=...)`` for a list or dict) and one option in ``train.py`` with
``default=D("name")``. Older ``config.json`` files and training states lack the new key; a run
that resumes one takes the field from its options (the default unless given), so the default
must mean what older runs did. Keep the order of the fields: it is the order of the keys in
``config.json``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dnnlib.config import CheckedConfig
from torch_utils.device import default_device
from training.augment import AugmentSpec
from training.networks import PRECISIONS
from training.patch_loss import parse_patch_sizes, patch_probabilities


@dataclass(frozen=True)
class TrainConfig(CheckedConfig):
    """Everything that defines one training run (see the module docstring to add a field).

    Units: ``nimg`` counts training patches (``training.training_loop``); kimg = 1e3 of them,
    Mimg = 1e6.
    """

    KIND = "training"  # the word of dnnlib.config.CheckedConfig's errors (not a field)

    outdir: str = "runs"  # parent of the run directories
    desc: str | None = None  # run directory suffix (None: built from the config)
    data: str | None = None  # training images: directory or file (training.dataset formats); required
    mat_key: str = "images"  # variable name in .mat/.npz files
    normalize: bool = False  # min-max scale each image to [0, 1]
    xflip: bool = False  # augment: the data set doubled by left-right mirror images
    max_images: int | None = None  # use at most this many images (None: all)
    arch: str = "small"  # name in training.networks.ARCHS
    arch_overrides: dict = field(default_factory=dict)  # SongUNet kwargs replacing those of the arch
    transfer: str | None = None  # start from this network file (its architecture; arch ignored) and fine-tune
    batch: int | None = None  # base batch over all processes (None: 1 per process); x batch_mul(p) patches
    batch_mul_base: int = 16  # batch_mul(p) = base * largest/p: 64/32/16 for 16/32/64 (paper)
    batch_gpu: int | None = None  # per-process microbatch in base images (None: no accumulation)
    lr: float = 2e-4  # Adam learning rate
    lr_rampup_kimg: float = 1.0  # linear lr warm-up (kimg); 0 = none
    ema_halflife_kimg: float = 0.5  # EMA half-life (kimg)
    ema_rampup_ratio: float | None = 0.05  # EMA half-life <= this ratio * images seen (None: off)
    duration_mimg: float = 0.01  # training length (Mimg)
    tick_kimg: float = 1.0  # stats interval (kimg)
    snap_ticks: int = 10  # network snapshot every N ticks (and at the end); 0: only at the end
    dump_ticks: int = 10  # training state every N ticks (and at the end); 0: only at the end
    seed: int = 0  # random seed
    real_p: float = 0.5  # probability of the largest patch size
    pad_width: int = 64  # zero padding on each side of the image (pixels)
    patch_sizes: list = field(default_factory=lambda: [16, 32, 64])  # ints ascending, or ['whole']
    positional: bool = True  # position channels (False: ablation; always off for 'whole')
    precision: str = "fp32"  # autocast: a key of training.networks.PRECISIONS (fp16: GradScaler on CUDA)
    workers: int = 0  # CPU threads for torch (0: torch's default)
    device: str | None = None  # cpu | cuda (None: torch_utils.device.default_device())
    resume: str | None = None  # training-state file, 'auto' (newest run of the same desc), or None
    max_nonfinite: int = 10  # stop after this many non-finite losses in a row
    loss_kwargs: dict = field(default_factory=lambda: dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5))  # EDM loss
    augment: dict = field(default_factory=dict)  # training.augment.AugmentSpec fields; {}: off
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    adam_eps: float = 1e-8  # Adam epsilon
    progress: bool = True  # tqdm progress bar on rank 0

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (a fresh copy for lists and dicts)."""
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        raise ValueError(f"unknown training option {name!r}; valid: {', '.join(cls.field_names())}")

    @classmethod
    def from_dict(cls, values: dict | TrainConfig) -> TrainConfig:
        """A config from a dict (e.g. train.py's options); missing keys get their defaults, an
        unknown key is a ``ValueError`` listing the valid ones. The dict's values are copied."""
        if isinstance(values, TrainConfig):
            return values
        cls.check_names(values)
        return cls(**copy.deepcopy(dict(values)))

    def resolved(self) -> TrainConfig:
        """A checked copy with ``patch_sizes`` parsed, every ``augment`` field filled in and
        ``device`` chosen; ``batch`` stays None until the run knows its processes."""
        if self.data is None:
            raise ValueError("config: 'data' (training images) is required")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; expected one of {sorted(PRECISIONS)}")
        for key in ("tick_kimg", "duration_mimg", "batch_mul_base"):
            value = getattr(self, key)
            if not value or value <= 0:
                raise ValueError(f"config: {key} must be positive, got {value}")
        if self.pad_width < 0:
            raise ValueError(f"pad_width must be >= 0, got {self.pad_width}")
        patch_sizes = parse_patch_sizes(self.patch_sizes)
        patch_probabilities(len(patch_sizes), self.real_p)  # checks real_p
        augment = dataclasses.asdict(AugmentSpec.from_dict(self.augment))  # checked; every field written
        return dataclasses.replace(self, patch_sizes=patch_sizes, augment=augment,
                                   device=self.device if self.device is not None else default_device())
