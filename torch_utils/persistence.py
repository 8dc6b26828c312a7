"""Saving and safely loading padis networks: safetensors + JSON, and EDM-layout pickles.

Formats (DESIGN.md, "Runs, files and checkpoints"):

* ``NAME.safetensors`` + ``NAME.json`` (:func:`save_network`) — our preferred format. The
  safetensors file holds the state dict and, in its metadata, ``class_name`` and
  ``init_kwargs`` (JSON); the JSON file beside it holds ``class_name``, ``init_kwargs``,
  ``sha256`` of the safetensors file, ``num_parameters`` and a free ``extra`` dict. The JSON
  is strict JSON: non-finite floats (``sigma_max = inf``) are written as
  ``{"__float__": "inf"}`` and read back exactly.
* ``network-snapshot-*.pkl`` (:func:`save_pickle`) in the layout of EDM's
  ``torch_utils.persistence``: every object whose class lives in padis' ``training`` package
  is pickled as a call of ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
  ``meta = dict(type='class', version=6, module_src=<module source>, class_name=<name>,
  state=<the object's __dict__ plus _init_args and _init_kwargs>)``; tensors are pickled as
  torch pickles them (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` over
  ``torch.storage._load_from_bytes``). Tools of the EDM family, which execute
  ``module_src``, can therefore load our pickles; the published PaDIS pickles use the same
  layout. ``_init_kwargs`` holds ``net.init_kwargs`` for networks, the constructor
  parameters stored as same-named plain attributes for other objects (e.g. the loss), and
  ``{}`` for submodules: only the top-level kwargs are used to rebuild a network.

Loading (:func:`load_network`, :func:`load_snapshot`) **never executes code from a file**.
Pickles are read by :class:`SafeUnpickler`, whose allow-list (:data:`ALLOWED_GLOBALS`)
maps each permitted global to an inert stand-in: persistent objects become records of
class name + state (``module_src`` is ignored), tensor storages are read with
``torch.load(..., weights_only=True)``, numpy scalars are decoded from their bytes. The
network is then rebuilt from its class name and ``_init_kwargs`` as our own class (on the
meta device first, so absurd kwargs cannot allocate memory) and its tensors are loaded with
``load_state_dict(strict=True)``. Every problem with a file is one line naming it:
:class:`CheckpointError` (a ``ValueError``) or ``FileNotFoundError``.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import hashlib
import inspect
import io
import json
import math
import os
import pickle
import struct
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from dnnlib.util import EasyDict
from torch_utils import misc

__all__ = ["ALLOWED_GLOBALS", "CheckpointError", "SafeUnpickler", "dumps_json", "load_network", "load_snapshot",
           "loads_json", "network_summary", "save_network", "save_pickle"]

PERSISTENCE_VERSION = 6  # The version of EDM's persistence layout that we write and expect.
JSON_FORMAT = "padis-network-v1"  # Value of "format" in the JSON beside a .safetensors file.
PICKLE_SUFFIXES = (".pkl", ".pickle")
_MAX_DEPTH = 200  # Nesting limit when walking unpickled data (guards against hostile files).
_MAX_MESSAGE = 240  # Longest quoted text in an error message.
_PROTOCOL = 4  # Pickle protocol we write (EDM's default).


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, refused, or does not describe a padis network."""


# ----------------------------------------------------------------------------------------
# Small helpers


def _one_line(text: Any, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise CheckpointError(f"{path} is empty")
    return data


def _check_sha256(data: bytes, expected: str | None, path: Path, what: str) -> None:
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if not isinstance(expected, str) or actual != expected.strip().lower():
        raise CheckpointError(f"{path} has sha256 {actual}, which does not match {what} "
                              f"({_one_line(expected, 80)}); the file is corrupt or not the one meant")


def network_summary(net: torch.nn.Module) -> dict:
    """``dict(class_name, init_kwargs, num_parameters)`` of a padis network."""
    return dict(class_name=type(net).__name__, init_kwargs=copy.deepcopy(getattr(net, "init_kwargs", {})),
                num_parameters=sum(p.numel() for p in net.parameters()))


# ----------------------------------------------------------------------------------------
# Strict JSON with exact floats


def _to_json(value: Any) -> Any:
    """Plain JSON values; non-finite floats -> {"__float__": "inf"|"-inf"|"nan"}; tuples -> lists."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _float_hook(obj: dict) -> Any:
    if len(obj) == 1 and "__float__" in obj and obj["__float__"] in ("inf", "-inf", "nan"):
        return float(obj["__float__"])
    return obj


def dumps_json(obj: Any) -> str:
    """Strict, indented JSON of ``obj``; ``loads_json(dumps_json(x))`` gives back every float."""
    return json.dumps(_to_json(obj), indent=2, allow_nan=False)


def loads_json(text: str) -> Any:
    """Inverse of :func:`dumps_json` (also accepts Python's ``Infinity``/``NaN``)."""
    return json.loads(text, object_hook=_float_hook)


def _canonical(obj: Any) -> str:
    return json.dumps(_to_json(obj), sort_keys=True, allow_nan=False)


# ----------------------------------------------------------------------------------------
# safetensors + JSON


_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1}


def save_network(net: torch.nn.Module, path: str | os.PathLike, extra: dict | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``net``'s weights to ``path`` (``*.safetensors``) and its description to the
    ``.json`` beside it; both atomically, never overwriting unless ``overwrite``.

    ``net`` must carry ``init_kwargs`` (``type(net)(**net.init_kwargs)`` rebuilds it).
    ``extra``: any JSON-able dict (e.g. training step, data set), stored under ``"extra"``.
    Returns ``path``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_network: {path} must end with .safetensors")
    if not hasattr(net, "init_kwargs"):
        raise ValueError(f"save_network: {type(net).__name__} has no init_kwargs; "
                         "only padis networks (training.networks) can be saved")
    json_path = path.with_suffix(".json")
    if not overwrite:
        for p in (path, json_path):
            if p.exists():
                raise FileExistsError(f"{p} already exists; refusing to overwrite it")
    from safetensors.torch import save as st_save

    summary = network_summary(net)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    metadata = {"format": "pt", "class_name": summary["class_name"],
                "init_kwargs": dumps_json(summary["init_kwargs"])}
    data = st_save(tensors, metadata=metadata)
    record = dict(format=JSON_FORMAT, class_name=summary["class_name"], init_kwargs=summary["init_kwargs"],
                  weights=path.name, sha256=hashlib.sha256(data).hexdigest(),
                  num_parameters=summary["num_parameters"], extra=dict(extra or {}))
    misc.atomic_write_bytes(path, data, overwrite=overwrite)
    misc.atomic_write_text(json_path, dumps_json(record) + "\n", overwrite=overwrite)
    return path


def _parse_safetensors(data: bytes, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Validate the safetensors layout ourselves (one clear error), then decode it."""
    bad = f"{path} is not a valid safetensors file"
    if len(data) < 8:
        raise CheckpointError(f"{bad}: only {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > len(data) - 8:
        raise CheckpointError(f"{bad}: header of {n} bytes in a file of {len(data)} (truncated?)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{bad}: unreadable header ({_one_line(exc, 80)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{bad}: __metadata__ is not a map of strings")
    body = len(data) - 8 - n
    spans = []
    for name, info in header.items():
        ok = (isinstance(info, dict) and info.get("dtype") in _ST_ITEMSIZE
              and isinstance(info.get("shape"), list)
              and all(type(s) is int and s >= 0 for s in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(type(o) is int for o in info["data_offsets"]))
        if not ok:
            raise CheckpointError(f"{bad}: malformed entry for tensor {_one_line(name, 80)!r}")
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= body or end - begin != math.prod(info["shape"]) * _ST_ITEMSIZE[info["dtype"]]:
            raise CheckpointError(f"{bad}: tensor {_one_line(name, 80)!r} lies outside the data (truncated?)")
        spans.append((begin, end))
    spans.sort()
    pos = 0
    for begin, end in spans:
        if begin != pos:
            raise CheckpointError(f"{bad}: tensor data overlaps or leaves gaps")
        pos = end
    if pos != body:
        raise CheckpointError(f"{bad}: {body - pos} bytes of data belong to no tensor")
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(data)
    except Exception as exc:  # the library's own checks; we validated the layout already
        raise CheckpointError(f"{bad}: {_one_line(exc, 120)}") from None
    return tensors, metadata


def _load_safetensors_network(st_path: Path, json_path: Path | None, expected_sha256: str | None):
    record = None
    if json_path is not None:
        try:
            record = loads_json(_read_bytes(json_path).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{json_path} is not valid JSON: {_one_line(exc, 100)}") from None
        if not isinstance(record, dict):
            raise CheckpointError(f"{json_path} does not describe a network (expected a JSON object)")
    data = _read_bytes(st_path)
    _check_sha256(data, expected_sha256, st_path, "the expected sha256")
    if record is not None and record.get("sha256") is not None:
        _check_sha256(data, record["sha256"], st_path, f"the sha256 recorded in {json_path}")
    tensors, metadata = _parse_safetensors(data, st_path)

    meta_class = metadata.get("class_name")
    meta_kwargs = None
    if "init_kwargs" in metadata:
        try:
            meta_kwargs = loads_json(metadata["init_kwargs"])
        except (ValueError, RecursionError):
            raise CheckpointError(f"{st_path}: init_kwargs in its metadata is not valid JSON") from None
    if record is not None:
        class_name, init_kwargs = record.get("class_name"), record.get("init_kwargs")
        if class_name is None or init_kwargs is None:
            raise CheckpointError(f"{json_path} lacks class_name or init_kwargs")
        if ((meta_class is not None and meta_class != class_name)
                or (meta_kwargs is not None and _canonical(meta_kwargs) != _canonical(init_kwargs))):
            raise CheckpointError(f"{json_path} does not match the weights in {st_path}: the class name or "
                                  "constructor kwargs differ from those stored in the safetensors metadata")
    else:
        class_name, init_kwargs = meta_class, meta_kwargs
        if class_name is None or init_kwargs is None:
            raise CheckpointError(f"{st_path} has no class_name/init_kwargs in its metadata and no "
                                  f"{st_path.with_suffix('.json').name} beside it")
    source = json_path if record is not None else st_path
    net = _build_network(class_name, (), init_kwargs, tensors, source)
    count = sum(p.numel() for p in net.parameters())
    if record is not None and record.get("num_parameters") not in (None, count):
        raise CheckpointError(f"{json_path} does not match the weights in {st_path}: it records "
                              f"{_one_line(record.get('num_parameters'), 40)} parameters, the network has {count}")
    return net


# ----------------------------------------------------------------------------------------
# Rebuilding a network from class name + kwargs + tensors


@contextlib.contextmanager
def _module_limit(limit: int, source: Path) -> Iterator[None]:
    """Abort construction once more than ``limit`` submodules were registered (a file with
    e.g. ``num_blocks = 2**31`` must fail fast instead of looping). Uses torch's global
    module-registration hook for the duration of the block."""
    count = 0

    def hook(module, name, submodule):
        nonlocal count
        count += 1
        if count > limit:
            raise CheckpointError(f"network in {source} does not match the architecture its kwargs describe: "
                                  f"its kwargs ask for far more modules than the file has tensors")

    handle = torch.nn.modules.module.register_module_module_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _is_falsy(value: Any) -> bool:
    if value is None or value is False:
        return True
    if isinstance(value, (int, float, str, list, tuple, dict, np.generic)):
        return not bool(value)
    return False


def _check_kwargs(cls: type, kwargs: Any, source: Path) -> dict:
    from training.networks import MODEL_TYPES

    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise CheckpointError(f"{source}: constructor kwargs of the network are not a dict of names")
    params = inspect.signature(cls.__init__).parameters
    known = {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    model_type = kwargs.get("model_type", params["model_type"].default if "model_type" in params else None)
    if model_type is not None:
        if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
            raise CheckpointError(f"{source}: model_type {_one_line(repr(model_type), 60)} is not one of "
                                  f"{sorted(MODEL_TYPES)}")
        model_params = inspect.signature(MODEL_TYPES[model_type].__init__).parameters
        known |= set(model_params) - {"self", "img_resolution", "in_channels", "out_channels", "label_dim"}
    unknown = [k for k in kwargs if k not in known]
    refused = [k for k in unknown if not _is_falsy(kwargs[k])]
    if refused:
        raise CheckpointError(f"{source}: constructor kwargs {refused} of {cls.__name__} are not supported "
                              "by padis' implementation")
    if unknown:
        warnings.warn(f"{source}: ignoring unsupported constructor kwargs that are off/empty: "
                      f"{ {k: kwargs[k] for k in unknown} }", stacklevel=3)
    return {k: v for k, v in kwargs.items() if k not in unknown}


def _fmt_names(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(_one_line(n, 60) for n in names[:4])
    return shown + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def _build_network(class_name: Any, init_args: Any, init_kwargs: Any, tensors: dict[str, torch.Tensor],
                   source: Path) -> torch.nn.Module:
    """Construct our class for ``class_name`` from the kwargs and load ``tensors`` strictly.
    Returns the network on the CPU in eval mode with requires_grad False."""
    from training.networks import PRECOND_TYPES

    if not isinstance(class_name, str) or class_name not in PRECOND_TYPES:
        raise CheckpointError(f"{source}: network class {_one_line(repr(class_name), 60)} is not one of "
                              f"{sorted(PRECOND_TYPES)}")
    cls = PRECOND_TYPES[class_name]
    if not isinstance(init_args, (list, tuple)) or any(not isinstance(a, (int, float, str)) for a in init_args):
        raise CheckpointError(f"{source}: positional constructor arguments of {class_name} are not plain values")
    kwargs = _check_kwargs(cls, init_kwargs, source)
    with _module_limit(2 * len(tensors) + 64, source), torch.device("meta"):
        try:
            net = cls(*init_args, **kwargs)
        except CheckpointError:
            raise
        except Exception as exc:  # any bad value in kwargs read from the file
            raise CheckpointError(f"{source}: cannot build {class_name} from its constructor kwargs: "
                                  f"{type(exc).__name__}: {_one_line(exc, 120)}") from None
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise CheckpointError(f"network in {source} does not match the architecture its kwargs describe: "
                              f"missing {_fmt_names(missing)}, unexpected {_fmt_names(unexpected)}, "
                              f"wrong shape {_fmt_names(wrong)}")
    try:
        state = {k: tensors[k].detach().to(device="cpu", dtype=expected[k].dtype).contiguous() for k in expected}
        net.load_state_dict(state, strict=True, assign=True)
    except Exception as exc:
        raise CheckpointError(f"{source}: cannot load its tensors: {_one_line(exc, 120)}") from None
    leftover = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"network in {source} does not match the architecture its kwargs describe: "
                              f"no values for {_fmt_names(leftover)}")
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------
# Writing EDM-layout pickles


def _reconstruct_persistent_obj(meta: dict) -> Any:
    """The global that EDM-layout pickles call. Plain ``pickle`` reaching it means someone
    is unpickling a network pickle without our safe loader; EDM would execute the embedded
    ``module_src`` here, which padis never does."""
    name = meta.get("class_name") if isinstance(meta, dict) else None
    raise CheckpointError(f"this pickle holds a persistent object ({_one_line(repr(name), 60)}) whose embedded "
                          "source code would have to be executed; padis never does that: load the file with "
                          "torch_utils.persistence.load_network(path) or load_snapshot(path)")


def _training_package_dir() -> Path:
    import training

    return Path(training.__file__).resolve().parent


def _persistent_module(cls: type) -> str | None:
    """Name of ``cls``'s module if it is a module of padis' ``training`` package."""
    name = getattr(cls, "__module__", "") or ""
    if name != "training" and not name.startswith("training."):
        return None
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if file is None or not Path(file).resolve().is_relative_to(_training_package_dir()):
        return None
    return name


def _init_kwargs_of(obj: Any) -> dict:
    if hasattr(obj, "init_kwargs") and isinstance(obj.init_kwargs, dict):
        return copy.deepcopy(obj.init_kwargs)
    if isinstance(obj, torch.nn.Module):
        return {}  # submodules: rebuilt from the top-level network's kwargs
    plain = (type(None), bool, int, float, str, list, tuple)
    params = inspect.signature(type(obj).__init__).parameters
    return {n: copy.deepcopy(getattr(obj, n)) for n in params
            if n != "self" and isinstance(getattr(obj, n, object()), plain)}


class _PersistentPickler(pickle.Pickler):
    """Pickles padis ``training`` objects in EDM's persistent layout; CUDA tensors go to CPU."""

    def __init__(self, file, protocol: int = _PROTOCOL) -> None:
        super().__init__(file, protocol=protocol)
        self._sources: dict[str, str] = {}  # module name -> source text, read once per file

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and obj.device.type != "cpu":
            if isinstance(obj, torch.nn.Parameter):
                return torch.nn.Parameter(obj.detach().cpu(), obj.requires_grad).__reduce_ex__(_PROTOCOL)
            return obj.detach().cpu().__reduce_ex__(_PROTOCOL)
        if isinstance(obj, type):
            return NotImplemented
        module = _persistent_module(type(obj))
        if module is None:
            return NotImplemented
        if module not in self._sources:
            self._sources[module] = inspect.getsource(sys.modules[module])
        state = dict(vars(obj))
        state["_init_args"] = tuple(getattr(obj, "_init_args", ()))
        state["_init_kwargs"] = _init_kwargs_of(obj)
        meta = dict(type="class", version=PERSISTENCE_VERSION, module_src=self._sources[module],
                    class_name=type(obj).__name__, state=state)
        return _reconstruct_persistent_obj, (meta,)


def save_pickle(path: str | os.PathLike, snapshot: dict, overwrite: bool = False) -> Path:
    """Write ``snapshot`` (e.g. ``dict(ema=net, loss_fn=loss, augment_pipe=None,
    dataset_kwargs={...})``) as an EDM-layout pickle, atomically, never overwriting unless
    ``overwrite``. Returns ``path``."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            _PersistentPickler(f, protocol=_PROTOCOL).dump(snapshot)

    return misc.atomic_write_with(path, write, overwrite=overwrite)


# ----------------------------------------------------------------------------------------
# Safe unpickling


class _Record:
    """Inert stand-in for a pickled object: its class name and state, nothing callable."""

    class_name = "?"

    def __init__(self) -> None:
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        if state is not None and not isinstance(state, dict):
            raise ValueError(f"state of a {self.class_name} is not a dict")
        self.state = dict(state or {})


class _PersistentRecord(_Record):
    """What ``_reconstruct_persistent_obj(meta)`` yields under the safe unpickler."""


def _record_class(name: str) -> type:
    return type(f"_{name}Record", (_Record,), {"class_name": name, "__slots__": ()})


class _SafeEasyDict(EasyDict):
    """``dnnlib.util.EasyDict`` while unpickling; turned into a plain EasyDict afterwards."""

    def __setstate__(self, state: Any) -> None:
        if state:
            raise ValueError("an EasyDict with attribute state")


class _DtypeToken:
    """Stand-in for ``numpy.dtype(...)``: only simple numeric dtypes, byte order from state."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise ValueError("malformed numpy dtype state")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


class _SafeCall:
    """An allowed function bound to the file being read; refuses to be modified by BUILD."""

    __slots__ = ("_fn", "_source")

    def __init__(self, fn, source: Path) -> None:
        self._fn = fn
        self._source = source

    def __call__(self, *args: Any) -> Any:
        return self._fn(self._source, *args)

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError(f"refusing to load {self._source}: it tries to modify an allowed function")


def _safe_persistent(source: Path, meta: Any) -> _PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise ValueError("a persistent object whose meta is not dict(type='class', ...)")
    if not isinstance(meta.get("class_name"), str) or not isinstance(meta.get("module_src", ""), str):
        raise ValueError("a persistent object without a class name")
    if meta.get("version") != PERSISTENCE_VERSION:
        warnings.warn(f"{source}: persistence layout version {_one_line(meta.get('version'), 20)} "
                      f"(expected {PERSISTENCE_VERSION}); reading it anyway", stacklevel=2)
    rec = _PersistentRecord()
    rec.class_name = meta["class_name"]
    rec.__setstate__(meta.get("state"))  # module_src is deliberately dropped unread
    return rec


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # torch's legacy-format magic number


def _safe_load_from_bytes(source: Path, data: Any) -> torch.storage.TypedStorage:
    if not isinstance(data, (bytes, bytearray)) or not bytes(data[: len(_LEGACY_MAGIC)]) == _LEGACY_MAGIC:
        raise ValueError("tensor storage bytes are not in torch's legacy storage format")
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ValueError("a tensor storage cannot be read by a weights-only load "
                         f"({_one_line(str(exc).strip().splitlines()[0] if str(exc).strip() else exc, 100)})") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise ValueError("embedded torch data is not a tensor storage")
    return storage


def _safe_rebuild_tensor(source: Path, storage: Any, offset: Any, size: Any, stride: Any,
                         requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise ValueError("tensor data is not a torch storage")
    if not (_is_int(offset) and offset >= 0 and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(_is_int(s) and s >= 0 for s in size + stride)):
        raise ValueError("malformed tensor geometry")
    if backward_hooks or metadata:
        raise ValueError("a tensor with hooks or metadata")
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if extent > storage.size():
        raise ValueError("tensor reaches past the end of its storage")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())


def _safe_rebuild_parameter(source: Path, data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                            state: Any = None) -> torch.nn.Parameter:
    if type(data) is not torch.Tensor or backward_hooks or not isinstance(state, (dict, tuple, type(None))):
        raise ValueError("malformed parameter")
    return torch.nn.Parameter(data, requires_grad=False)


_NUMPY_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}


def _safe_dtype(source: Path, name: Any, align: Any = False, copy_: Any = False) -> _DtypeToken:
    if name not in _NUMPY_DTYPES:
        raise ValueError(f"numpy dtype {_one_line(repr(name), 40)} is not a plain numeric type")
    return _DtypeToken(np.dtype(name))


def _safe_scalar(source: Path, dtype: Any, data: Any = None) -> np.generic:
    if not isinstance(dtype, _DtypeToken) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise ValueError("malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype.dtype)[0]


# torch.nn containers/activations that may occur inside a pickled network, as inert records.
_RECORD_TYPES = {name: _record_class(name) for name in ("ModuleDict", "Sequential", "SiLU")}

# The allow-list: (module, name) -> factory(source file) of the inert object the unpickler
# gets instead of the real global. Anything else is refused by SafeUnpickler.find_class.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): lambda s: _SafeCall(_safe_persistent, s),
    ("torch._utils", "_rebuild_tensor_v2"): lambda s: _SafeCall(_safe_rebuild_tensor, s),
    ("torch._utils", "_rebuild_parameter"): lambda s: _SafeCall(_safe_rebuild_parameter, s),
    ("torch._utils", "_rebuild_parameter_with_state"): lambda s: _SafeCall(_safe_rebuild_parameter, s),
    ("torch.storage", "_load_from_bytes"): lambda s: _SafeCall(_safe_load_from_bytes, s),
    ("torch.nn.modules.container", "ModuleDict"): lambda s: _RECORD_TYPES["ModuleDict"],
    ("torch.nn.modules.container", "Sequential"): lambda s: _RECORD_TYPES["Sequential"],
    ("torch.nn.modules.activation", "SiLU"): lambda s: _RECORD_TYPES["SiLU"],
    ("collections", "OrderedDict"): lambda s: collections.OrderedDict,
    ("numpy._core.multiarray", "scalar"): lambda s: _SafeCall(_safe_scalar, s),
    ("numpy.core.multiarray", "scalar"): lambda s: _SafeCall(_safe_scalar, s),
    ("numpy", "dtype"): lambda s: _SafeCall(_safe_dtype, s),
    ("dnnlib.util", "EasyDict"): lambda s: _SafeEasyDict,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler for network pickles that never runs code from the file: only the globals
    in :data:`ALLOWED_GLOBALS` resolve, each to an inert stand-in; no persistent ids."""

    def __init__(self, file: io.BufferedIOBase, source: str | os.PathLike) -> None:
        super().__init__(file)
        self._source = Path(source)

    def find_class(self, module: str, name: str) -> Any:
        factory = ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise CheckpointError(f"refusing to load {self._source}: it references "
                                  f"{_one_line(f'{module}.{name}', 100)}, which is not allowed in a network pickle")
        return factory(self._source)

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"refusing to load {self._source}: it contains persistent ids, which network "
                              "pickles do not use")


_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _prescan(data: bytes, path: Path) -> None:
    """Walk the opcodes without building anything. Rejects what would make the real
    unpickler allocate memory out of proportion to the file: memo indices far beyond the
    number of memo writes (the C unpickler sizes its memo table by the largest index) and
    length fields that reach past the end of the data."""
    import pickletools

    puts = 0
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in _MEMO_PUTS:
                if not isinstance(arg, int) or arg > 2 * puts + 1024:
                    raise CheckpointError(f"{path} is not a readable network pickle: memo index {arg} "
                                          f"after {puts} memo writes")
                puts += 1
            elif op.name == "MEMOIZE":
                puts += 1
    except CheckpointError:
        raise
    except Exception as exc:  # truncated data, unknown opcodes, bad length fields, ...
        raise CheckpointError(f"{path} is not a readable network pickle: "
                              f"{type(exc).__name__}: {_one_line(exc, 160)}") from None


def _unpickle(data: bytes, path: Path) -> Any:
    _prescan(data, path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            return SafeUnpickler(io.BytesIO(data), path).load()
    except CheckpointError:
        raise
    except Exception as exc:  # whatever a corrupt or hostile byte stream provokes
        raise CheckpointError(f"{path} is not a readable network pickle: "
                              f"{type(exc).__name__}: {_one_line(exc, 160)}") from None


def _module_tensors(root: _Record, path: Path) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a record tree, named as in a state dict."""
    out: dict[str, torch.Tensor] = {}
    stack, seen = [("", root, 0)], set()
    while stack:
        prefix, rec, depth = stack.pop()
        if id(rec) in seen or depth > _MAX_DEPTH:
            raise CheckpointError(f"{path}: the module tree is cyclic or too deep")
        seen.add(id(rec))
        state = rec.state
        skip = state.get("_non_persistent_buffers_set") or set()
        for attr in ("_parameters", "_buffers"):
            entries = state.get(attr) or {}
            if not isinstance(entries, dict) or not isinstance(skip, (set, frozenset, list, tuple)):
                raise CheckpointError(f"{path}: {attr} of {prefix or 'the network'} is not a dict")
            for name, t in entries.items():
                if t is None or (attr == "_buffers" and name in skip):
                    continue
                if not isinstance(name, str) or not isinstance(t, torch.Tensor):
                    raise CheckpointError(f"{path}: {_one_line(prefix + str(name), 80)} is not a named tensor")
                out[prefix + name] = t
        children = state.get("_modules") or {}
        if not isinstance(children, dict):
            raise CheckpointError(f"{path}: _modules of {prefix or 'the network'} is not a dict")
        for name, child in children.items():
            if child is None:
                continue
            if not isinstance(name, str) or not isinstance(child, _Record):
                raise CheckpointError(f"{path}: submodule {_one_line(prefix + str(name), 80)} is not a module")
            stack.append((f"{prefix}{name}.", child, depth + 1))
    return out


def _plain(value: Any, path: Path) -> Any:
    """Unpickled data -> plain Python values; records -> EasyDict(class_name, init_args,
    init_kwargs, state). Linear in the number of objects; cycles are an error."""
    memo: dict[int, Any] = {}
    active: set[int] = set()

    def conv(v: Any, depth: int) -> Any:
        if v is None or isinstance(v, (bool, int, float, str, bytes)):
            return v
        if isinstance(v, torch.Tensor):
            return v.detach()  # drops anything a hostile BUILD attached to the tensor object
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, _DtypeToken):
            return v.dtype
        if id(v) in memo:
            return memo[id(v)]
        if id(v) in active or depth > _MAX_DEPTH:
            raise CheckpointError(f"{path}: its data is cyclic or nested too deeply")
        active.add(id(v))
        if isinstance(v, _Record):
            state = {k: conv(x, depth + 1) for k, x in v.state.items() if k not in ("_init_args", "_init_kwargs")}
            out = EasyDict(class_name=v.class_name, init_args=conv(v.state.get("_init_args", ()), depth + 1),
                           init_kwargs=conv(v.state.get("_init_kwargs", {}), depth + 1), state=state)
        elif isinstance(v, dict):
            out = (EasyDict if isinstance(v, EasyDict) else dict)(
                (conv(k, depth + 1), conv(x, depth + 1)) for k, x in v.items())
        elif isinstance(v, (list, tuple, set, frozenset)):
            out = type(v)(conv(x, depth + 1) for x in v)
        else:
            raise CheckpointError(f"{path}: unexpected {type(v).__name__} object in its data")
        active.discard(id(v))
        memo[id(v)] = out
        return out

    try:
        return conv(value, 0)
    except CheckpointError:
        raise
    except Exception as exc:  # e.g. unhashable keys built by a hostile file
        raise CheckpointError(f"{path}: malformed data ({type(exc).__name__}: {_one_line(exc, 100)})") from None


def _network_from_record(rec: Any, path: Path) -> torch.nn.Module:
    if not isinstance(rec, _Record):
        raise CheckpointError(f"{path}: the network entry is a {type(rec).__name__}, not a pickled network")
    if "_init_kwargs" not in rec.state:
        raise CheckpointError(f"{path}: the pickled {_one_line(rec.class_name, 60)} has no constructor "
                              "arguments (_init_kwargs)")
    init_args = _plain(rec.state.get("_init_args", ()), path)
    init_kwargs = _plain(rec.state["_init_kwargs"], path)
    return _build_network(rec.class_name, init_args, init_kwargs, _module_tensors(rec, path), path)


def _is_network_record(value: Any) -> bool:
    from training.networks import PRECOND_TYPES

    return isinstance(value, _Record) and value.class_name in PRECOND_TYPES


def load_snapshot(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """Read a whole EDM-layout pickle safely. Networks (``ema``, ...) are rebuilt as ours
    (CPU, eval, requires_grad False); other pickled objects (``loss_fn``, ``augment_pipe``)
    become ``EasyDict(class_name, init_args, init_kwargs, state)`` of plain values; EasyDicts
    and dicts stay dicts."""
    path = Path(path)
    data = _read_bytes(path)
    _check_sha256(data, expected_sha256, path, "the expected sha256")
    obj = _unpickle(data, path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a snapshot dict (ema, loss_fn, ...), found a {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if _is_network_record(value):
            out[_plain(key, path)] = _network_from_record(value, path)
        else:
            out[_plain(key, path)] = _plain(value, path)
    return out


def load_network(path: str | os.PathLike, device: str | torch.device = "cpu",
                 expected_sha256: str | None = None) -> torch.nn.Module:
    """Load a padis network in eval mode with requires_grad False, on ``device``.

    ``path``: our ``*.safetensors`` (the ``.json`` beside it, if present, must agree with
    it), the ``*.json`` beside one, our ``*.pkl``, or a published ``network-snapshot-*.pkl``
    (EDM layout; its ``ema`` entry is returned). ``expected_sha256`` is checked against the
    weights file (the .safetensors, or the pickle itself). Errors: ``FileNotFoundError`` or
    :class:`CheckpointError`, one line naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        net = _load_safetensors_network(path.with_suffix(".safetensors"), path, expected_sha256)
    elif suffix == ".safetensors":
        json_path = path.with_suffix(".json")
        net = _load_safetensors_network(path, json_path if json_path.exists() else None, expected_sha256)
    elif suffix in PICKLE_SUFFIXES:
        data = _read_bytes(path)
        _check_sha256(data, expected_sha256, path, "the expected sha256")
        obj = _unpickle(data, path)
        if isinstance(obj, dict):
            if "ema" not in obj:
                keys = [_one_line(repr(k), 30) for k in list(obj)[:8]]
                raise CheckpointError(f"{path}: no 'ema' network in the pickle (keys: {', '.join(keys) or 'none'})")
            obj = obj["ema"]
        net = _network_from_record(obj, path)
    else:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        raise CheckpointError(f"{path}: unknown checkpoint type; expected .safetensors, .json or .pkl")
    return net.to(device)
