"""EDM-layout network pickles as the paper's own train.py writes them (test fixtures).

Written by a pickler of our own, independent of ``save_pickle``, so that the loader is tested
against the published layout and not against itself:

* snapshot ``dict(ema=<Patch_EDMPrecond>, loss_fn=<Patch_EDMLoss>, augment_pipe=None,
  dataset_kwargs=<plain dict: class_name, path, use_labels, xflip, cache>)``;
* every module and the loss pickled as ``torch_utils.persistence._reconstruct_persistent_obj(
  dict(type='class', version=6, module_src=..., class_name=..., state=...))`` whose state holds
  the object's ``__dict__`` plus the ``_init_args`` / ``_init_kwargs`` it was constructed with
  (EDM's persistent classes record them for every module, not only the top one);
* the network's ``_init_kwargs`` exactly those of a real paper pickle (:data:`PAPER_TINY_KWARGS`,
  :data:`PAPER_SIZE_KWARGS`), ``hash_channels`` included; the loss's are empty;
* numpy scalars inside the recorded kwargs (``skip_scale=np.sqrt(0.5)``), ``ModuleDict``,
  tensors through ``torch.storage._load_from_bytes``;
* ``module_src`` is a payload that leaves marker files if anybody ever executes it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import os
import pickle
from pathlib import Path

import torch

from torch_utils import persistence
from training import networks

# The network's stored init kwargs of a real paper pickle (small config), in the stored order.
PAPER_TINY_KWARGS = dict(
    model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
    channel_mult_noise=1, resample_filter=[1, 1], model_channels=16, channel_mult=[1, 2, 2], hash_channels=1,
    dropout=0.05, use_fp16=False, img_resolution=64, img_channels=3, out_channels=1, label_dim=0, num_blocks=1)
# The paper-size one (the published CT prior: 256 x 256 slices + 2 x 64 padding).
PAPER_SIZE_KWARGS = PAPER_TINY_KWARGS | dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4,
                                             img_resolution=384)
PAPER_DATASET_KWARGS = dict(class_name="training.dataset.ImageFolderDataset", path="mydata", use_labels=False,
                            xflip=False, cache=True)
PAPER_NAMES = {"PatchEDMPrecond": "Patch_EDMPrecond"}  # our class name -> the paper's


class PaperLoss:
    """Stands in for the paper's ``Patch_EDMLoss`` (constructed without arguments)."""

    def __init__(self):
        self.P_mean, self.P_std, self.sigma_data = -1.2, 1.2, 0.5


@contextlib.contextmanager
def recorded_init_args():
    """While active, modules of ``training.networks`` remember the (args, kwargs) they were
    constructed with, as EDM's persistent classes do (in ``_fixture_init``)."""
    classes = [c for c in vars(networks).values()
               if isinstance(c, type) and issubclass(c, torch.nn.Module) and c.__module__ == networks.__name__]
    originals = {c: c.__dict__["__init__"] for c in classes if "__init__" in c.__dict__}

    def wrap(cls, init):
        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if type(self) is cls:
                self.__dict__["_fixture_init"] = (copy.deepcopy(args), copy.deepcopy(kwargs))
        return __init__

    try:
        for cls, init in originals.items():
            cls.__init__ = wrap(cls, init)
        yield
    finally:
        for cls, init in originals.items():
            cls.__init__ = init


def paper_network(kwargs: dict, meta: bool = False) -> networks.PatchEDMPrecond:
    """Our network for a paper pickle's kwargs (without the inert ``hash_channels``), seeded,
    in eval mode, with recorded constructor arguments. ``meta=True`` builds it on the meta
    device and gives every tensor a one-element storage expanded to its shape (a paper-size
    network pickles to a few hundred kB and needs no 54 M random numbers)."""
    torch.manual_seed(0)
    build = {k: v for k, v in kwargs.items() if k != "hash_channels"}
    with recorded_init_args(), (torch.device("meta") if meta else contextlib.nullcontext()):
        net = networks.PatchEDMPrecond(**build)
    if meta:
        for i, module in enumerate(net.modules()):
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is not None:
                        value = torch.full((1,), 0.01 * (i % 7 + 1)).expand(t.shape)
                        store[name] = torch.nn.Parameter(value, False) if store is module._parameters else value
    return net.eval().requires_grad_(False)


class PaperPickler(pickle.Pickler):
    """Pickles our modules (and :class:`PaperLoss`) in the paper's persistent layout."""

    def __init__(self, file, module_src: str, top_kwargs: dict):
        super().__init__(file, protocol=4)
        self.module_src = module_src
        self.top_kwargs = top_kwargs

    def reducer_override(self, obj):
        if isinstance(obj, PaperLoss):
            state, name = dict(vars(obj), _init_args=(), _init_kwargs={}), "Patch_EDMLoss"
        elif isinstance(obj, torch.nn.Module) and not isinstance(obj, (torch.nn.ModuleDict, torch.nn.Sequential)):
            state = dict(obj.__dict__)
            args, kwargs = state.pop("_fixture_init", ((), {}))
            if "init_kwargs" in state:  # the top-level network: exactly the paper's kwargs (EDM
                del state["init_kwargs"]  # keeps them in _init_kwargs only)
                args, kwargs = (), dict(self.top_kwargs)
            state.update(_init_args=args, _init_kwargs=kwargs)
            name = PAPER_NAMES.get(type(obj).__name__, type(obj).__name__)
        else:
            return NotImplemented
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=name, state=state)
        return persistence._reconstruct_persistent_obj, (meta,)


def payload(marker: str | os.PathLike) -> str:
    """module_src that leaves ``marker`` and ``marker.sh`` behind if it is ever executed."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
            "import os\nos.system('touch ' + " + repr(str(marker) + ".sh") + ")\n")


def write_paper_pickle(path: str | os.PathLike, net: torch.nn.Module, marker: str | os.PathLike,
                       top_kwargs: dict = PAPER_TINY_KWARGS, dataset_kwargs: dict | None = None) -> bytes:
    """Write ``network-snapshot``-style ``path`` for ``net`` with the paper's layout; returns the bytes."""
    snapshot = dict(ema=net, loss_fn=PaperLoss(), augment_pipe=None,
                    dataset_kwargs=dict(PAPER_DATASET_KWARGS if dataset_kwargs is None else dataset_kwargs))
    buf = io.BytesIO()
    PaperPickler(buf, payload(marker), top_kwargs).dump(snapshot)
    Path(path).write_bytes(buf.getvalue())
    return buf.getvalue()


def no_side_effect(marker: str | os.PathLike) -> None:
    assert not os.path.exists(marker), "module_src was executed"
    assert not os.path.exists(str(marker) + ".sh"), "module_src was executed"
