"""Saving and loading padis networks: safetensors + JSON, and EDM-layout pickles.

Formats (docs/ARCHITECTURE.md, "Runs, files and checkpoints"):

* ``NAME.safetensors`` + ``NAME.json`` (:func:`save_network`) — our preferred format. The
  safetensors file holds the state dict and, in its metadata, ``class_name`` and
  ``init_kwargs`` (JSON); the JSON file beside it holds ``class_name``, ``init_kwargs``,
  ``sha256`` of the safetensors file, ``num_parameters`` and a free ``extra`` dict. The JSON
  is strict JSON: non-finite floats (``sigma_max = inf``) are written as
  ``{"__float__": "inf"}`` and read back exactly.
* ``network-snapshot-*.pkl`` (:func:`save_pickle`) in the layout of EDM's
  ``torch_utils.persistence``: every object whose class is decorated with
  :func:`persistent_class` is pickled as a call of
  ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = dict(type='class',
  version=6, module_src=<module source>, class_name=<name>, state=<the object's __dict__ plus
  _init_args and _init_kwargs>)``; tensors are pickled as torch pickles them
  (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` over
  ``torch.storage._load_from_bytes``). Tools of the EDM family, which execute ``module_src``,
  can therefore load our pickles; the published PaDIS pickles use the same layout.
  ``_init_kwargs`` holds ``net.init_kwargs`` for networks, the constructor parameters stored
  as same-named plain attributes for other objects (e.g. the loss), and ``{}`` for
  submodules: only the top-level kwargs are used to rebuild a network.

Loading (:func:`load_network`, :func:`load_snapshot`) **never executes code from a file**.
Pickles are read by the restricted unpickler (:mod:`torch_utils.safe_unpickler`, which keeps
the allow-list of globals). The network is then rebuilt from its class name and
``_init_kwargs`` as our own class — only classes that registered themselves through
:func:`persistent_class` with ``loadable_names`` qualify, and the classes declared in the
entry-point group ``padis.networks`` (pyproject.toml) are imported on first use, so nothing but
this module needs importing; :func:`check_init_kwargs` decides which kwargs are accepted — on
the meta device first, so absurd kwargs cannot allocate memory, and its tensors are loaded
with ``load_state_dict(strict=True)``. Every problem with
a file is one line naming it: :class:`CheckpointError` (a ``ValueError``) or
``FileNotFoundError``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import inspect
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

from torch_utils import misc
from torch_utils.safe_unpickler import (
    PERSISTENCE_VERSION,
    CheckpointError,
    Record,
    module_tensors,
    one_line,
    plain,
    unpickle,
)

__all__ = ["CheckpointError", "check_init_kwargs", "dumps_json", "load_network", "load_snapshot",
           "loadable_networks", "loads_json", "network_summary", "persistent_class", "save_network",
           "save_pickle"]

JSON_FORMAT = "padis-network-v1"  # Value of "format" in the JSON beside a .safetensors file.
PICKLE_SUFFIXES = (".pkl", ".pickle")
_PROTOCOL = 4  # Pickle protocol we write (EDM's default).


# ----------------------------------------------------------------------------------------
# Small helpers


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
                              f"({one_line(expected, 80)}); the file is corrupt or not the one meant")


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
                         "only padis networks can be saved")
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
        raise CheckpointError(f"{bad}: unreadable header ({one_line(exc, 80)})") from None
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
            raise CheckpointError(f"{bad}: malformed entry for tensor {one_line(name, 80)!r}")
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= body or end - begin != math.prod(info["shape"]) * _ST_ITEMSIZE[info["dtype"]]:
            raise CheckpointError(f"{bad}: tensor {one_line(name, 80)!r} lies outside the data (truncated?)")
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
        raise CheckpointError(f"{bad}: {one_line(exc, 120)}") from None
    return tensors, metadata


def _load_safetensors_network(st_path: Path, json_path: Path | None, expected_sha256: str | None):
    record = None
    if json_path is not None:
        try:
            record = loads_json(_read_bytes(json_path).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{json_path} is not valid JSON: {one_line(exc, 100)}") from None
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
                              f"{one_line(record.get('num_parameters'), 40)} parameters, the network has {count}")
    return net


# ----------------------------------------------------------------------------------------
# Which classes are persistent and which may be rebuilt as networks
#
# Network classes are declared in the entry-point group ``padis.networks`` (pyproject.toml:
# ``Name = "module:Class"``); the loaders import them on first use, so a fresh interpreter that
# imported only this module loads every supported file. torch_utils names no network module
# itself: the declarations are read from the installed distributions' metadata and, in a
# checkout, from the pyproject.toml beside this package (a checkout that is not pip-installed,
# or whose install predates a new entry point, has no or stale metadata).

ENTRY_POINT_GROUP = "padis.networks"
PROJECT_NAME = "padis"  # the [project] name whose pyproject.toml declares the shipped networks
_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"  # a checkout's (absent when installed)

_PERSISTENT_CLASSES: set[type] = set()  # pickled in EDM's persistent layout
_NETWORKS: dict[str, type] = {}  # class names a checkpoint may give its network -> our class
_declared_loaded = False  # the entry points were imported (once per process)
_declaration_problems: list[str] = []  # entry points that could not be used, for error messages


def persistent_class(cls: type) -> type:
    """Class decorator (EDM's name, so that ``module_src`` stays executable by EDM's tools):
    instances of ``cls`` are pickled by :func:`save_pickle` in EDM's persistent layout.

    If ``cls`` defines ``loadable_names`` (a tuple of class names, in its own class body), the
    loaders may rebuild a network that a file names by one of them as ``cls``; a network class
    with a ``model_type`` kwarg also defines ``model_types`` (``model_type`` -> backbone class),
    which :func:`check_init_kwargs` uses. Nothing else is ever rebuilt from a file. Such a class
    is also declared in the entry-point group :data:`ENTRY_POINT_GROUP`, so that the loaders
    find it without its module having been imported.

    Only classes of imported modules (in ``sys.modules``) register: a copy of a module's
    source executed elsewhere (as EDM's loaders do with ``module_src``) changes nothing here."""
    if sys.modules.get(cls.__module__) is None:
        return cls
    _PERSISTENT_CLASSES.add(cls)
    for name in cls.__dict__.get("loadable_names", ()):
        _NETWORKS[name] = cls
    return cls


def checkout_entry_points(pyproject: str | os.PathLike) -> list[importlib.metadata.EntryPoint]:
    """The :data:`ENTRY_POINT_GROUP` entry points that ``pyproject`` declares, if it is the
    pyproject.toml of project :data:`PROJECT_NAME` ([] for a missing file or another project).
    A file that is no valid TOML is a ValueError naming it."""
    pyproject = Path(pyproject)
    if not pyproject.is_file():
        return []
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError(f"{pyproject}: cannot read it without tomllib (Python >= 3.11) or tomli; "
                             "pip install tomli, or pip install -e . the checkout") from None
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{pyproject}: not a readable TOML file ({one_line(exc, 100)})") from None
    if not isinstance(project, dict) or project.get("name") != PROJECT_NAME:
        return []
    table = (project.get("entry-points") or {}).get(ENTRY_POINT_GROUP, {})
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ValueError(f"{pyproject}: [project.entry-points.\"{ENTRY_POINT_GROUP}\"] must map names to "
                         "'module:Class' strings")
    return [importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in table.items()]


def declared_entry_points() -> list[importlib.metadata.EntryPoint]:
    """Every declared network class: the :data:`ENTRY_POINT_GROUP` entry points of the
    installed distributions, then those of this checkout's pyproject.toml; each (name, value)
    once."""
    found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    found += checkout_entry_points(_PYPROJECT)
    unique: dict[tuple[str, str], importlib.metadata.EntryPoint] = {}
    for ep in found:
        unique.setdefault((ep.name, ep.value), ep)
    return list(unique.values())


def _load_declared_networks() -> None:
    """Import the declared network classes once per process; an entry point that cannot be
    imported, or that is no registered network class, is remembered for the error message of a
    file that needs it (another plugin's fault must not stop our own classes from loading)."""
    global _declared_loaded
    if _declared_loaded:
        return
    _declared_loaded = True
    try:
        declared = declared_entry_points()
    except ValueError as exc:
        _declaration_problems.append(str(exc))
        declared = []
    for ep in declared:
        try:
            cls = ep.load()
        except Exception as exc:  # an installed plugin's import error, whatever it is
            _declaration_problems.append(f"entry point {ep.name} = {ep.value!r} does not import: "
                                         f"{type(exc).__name__}: {one_line(exc, 100)}")
            continue
        if not (isinstance(cls, type) and cls in _PERSISTENT_CLASSES and cls.__dict__.get("loadable_names")):
            _declaration_problems.append(f"entry point {ep.name} = {ep.value!r} is not a network class "
                                         "registered with @persistent_class and loadable_names")
            continue
        for name in cls.__dict__["loadable_names"]:  # registered by the decorator already, unless reset
            _NETWORKS.setdefault(name, cls)


def _networks() -> dict[str, type]:
    """The registry, after the declared network classes were imported."""
    _load_declared_networks()
    return _NETWORKS


def loadable_networks() -> dict[str, type]:
    """Class names a checkpoint may give its network -> the class it is rebuilt as."""
    return dict(_networks())


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


def _same_value(value: Any, want: Any) -> bool:
    """``value == want`` for plain numbers (numpy scalars included, bools excluded)."""
    if isinstance(value, np.generic):
        value = value.item()
    return type(value) is type(want) and value == want


def check_init_kwargs(cls: type, kwargs: Any, source: Path) -> dict:
    """The constructor kwargs of network class ``cls`` read from ``source``, validated: the
    kwargs that ``cls`` (and the backbone its ``model_type`` selects, from ``cls.model_types``)
    accepts are kept; kwargs in ``cls.fixed_kwargs`` (stored by the paper's code, inert at the
    one value it uses) are dropped at that value and refused at any other; unknown kwargs that
    are off/empty (None, False, 0, "", []) are dropped with a warning; any other unknown kwarg
    is a :class:`CheckpointError`. This is the one
    place that decides which kwargs of a file padis accepts."""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise CheckpointError(f"{source}: constructor kwargs of the network are not a dict of names")
    params = inspect.signature(cls.__init__).parameters
    known = {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    model_types = getattr(cls, "model_types", {})
    model_type = kwargs.get("model_type", params["model_type"].default if "model_type" in params else None)
    if model_type is not None:
        if not isinstance(model_type, str) or model_type not in model_types:
            raise CheckpointError(f"{source}: model_type {one_line(repr(model_type), 60)} is not one of "
                                  f"{sorted(model_types)}")
        model_params = inspect.signature(model_types[model_type].__init__).parameters
        known |= set(model_params) - {"self", "img_resolution", "in_channels", "out_channels", "label_dim"}
    unknown = [k for k in kwargs if k not in known]
    fixed = getattr(cls, "fixed_kwargs", {})
    for k in (k for k in unknown if k in fixed):
        if not _same_value(kwargs[k], fixed[k]):
            raise CheckpointError(f"{source}: constructor kwarg {k}={one_line(repr(kwargs[k]), 40)} of "
                                  f"{cls.__name__} is not supported; padis supports only {k}={fixed[k]!r} "
                                  "(the value the paper's code always uses)")
    inert = [k for k in unknown if k in fixed]
    unknown = [k for k in unknown if k not in fixed]
    refused = {k: kwargs[k] for k in unknown if not _is_falsy(kwargs[k])}
    if refused:
        raise CheckpointError(f"{source}: constructor kwargs {one_line(refused, 120)} of {cls.__name__} are not "
                              f"supported by padis' implementation (it takes the kwargs of {cls.__name__} and "
                              f"of its model_type)")
    if unknown:
        warnings.warn(f"{source}: ignoring unsupported constructor kwargs that are off/empty: "
                      f"{ {k: kwargs[k] for k in unknown} }", stacklevel=3)
    return {k: v for k, v in kwargs.items() if k not in unknown and k not in inert}


def _fmt_names(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(one_line(n, 60) for n in names[:4])
    return shown + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def _build_network(class_name: Any, init_args: Any, init_kwargs: Any, tensors: dict[str, torch.Tensor],
                   source: Path) -> torch.nn.Module:
    """Construct our class for ``class_name`` from the kwargs and load ``tensors`` strictly.
    Returns the network on the CPU in eval mode with requires_grad False."""
    networks = _networks()
    if not isinstance(class_name, str) or class_name not in networks:
        hint = "" if networks else (f" (no network class is declared in the entry-point group {ENTRY_POINT_GROUP!r}: "
                                    "run from a padis checkout or reinstall it, pip install -e .)")
        problems = f"; {'; '.join(_declaration_problems)}" if _declaration_problems else ""
        raise CheckpointError(f"{source}: network class {one_line(repr(class_name), 60)} is not one of "
                              f"{sorted(networks)}{hint}{problems}")
    cls = networks[class_name]
    if not isinstance(init_args, (list, tuple)) or any(not isinstance(a, (int, float, str)) for a in init_args):
        raise CheckpointError(f"{source}: positional constructor arguments of {class_name} are not plain values")
    kwargs = check_init_kwargs(cls, init_kwargs, source)
    with _module_limit(2 * len(tensors) + 64, source), torch.device("meta"):
        try:
            net = cls(*init_args, **kwargs)
        except CheckpointError:
            raise
        except Exception as exc:  # any bad value in kwargs read from the file
            raise CheckpointError(f"{source}: cannot build {class_name} from its constructor kwargs: "
                                  f"{type(exc).__name__}: {one_line(exc, 120)}") from None
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
        raise CheckpointError(f"{source}: cannot load its tensors: {one_line(exc, 120)}") from None
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
    raise CheckpointError(f"this pickle holds a persistent object ({one_line(repr(name), 60)}) whose embedded "
                          "source code would have to be executed; padis never does that: load the file with "
                          "torch_utils.persistence.load_network(path) or load_snapshot(path)")


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
    """Pickles objects of :func:`persistent_class` classes in EDM's persistent layout; CUDA
    tensors go to CPU."""

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
        if type(obj) not in _PERSISTENT_CLASSES:
            return NotImplemented
        module = type(obj).__module__
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
# Loading



def _network_from_record(rec: Any, path: Path) -> torch.nn.Module:
    if not isinstance(rec, Record):
        raise CheckpointError(f"{path}: the network entry is a {type(rec).__name__}, not a pickled network")
    if "_init_kwargs" not in rec.state:
        raise CheckpointError(f"{path}: the pickled {one_line(rec.class_name, 60)} has no constructor "
                              "arguments (_init_kwargs)")
    init_args = plain(rec.state.get("_init_args", ()), path)
    init_kwargs = plain(rec.state["_init_kwargs"], path)
    return _build_network(rec.class_name, init_args, init_kwargs, module_tensors(rec, path), path)


def _is_network_record(value: Any) -> bool:
    return isinstance(value, Record) and value.class_name in _networks()


def load_snapshot(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """Read a whole EDM-layout pickle safely. Networks (``ema``, ...) are rebuilt as ours
    (CPU, eval, requires_grad False); other pickled objects (``loss_fn``, ``augment_pipe``)
    become ``EasyDict(class_name, init_args, init_kwargs, state)`` of plain values; EasyDicts
    and dicts stay dicts."""
    path = Path(path)
    data = _read_bytes(path)
    _check_sha256(data, expected_sha256, path, "the expected sha256")
    obj = unpickle(data, path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a snapshot dict (ema, loss_fn, ...), found a {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if _is_network_record(value):
            out[plain(key, path)] = _network_from_record(value, path)
        else:
            out[plain(key, path)] = plain(value, path)
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
        obj = unpickle(data, path)
        if isinstance(obj, dict):
            if "ema" not in obj:
                keys = [one_line(repr(k), 30) for k in list(obj)[:8]]
                raise CheckpointError(f"{path}: no 'ema' network in the pickle (keys: {', '.join(keys) or 'none'})")
            obj = obj["ema"]
        net = _network_from_record(obj, path)
    else:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        raise CheckpointError(f"{path}: unknown checkpoint type; expected .safetensors, .json or .pkl")
    return net.to(device)
