"""The restricted unpickler: reads network pickles without ever running code from the file.

:class:`SafeUnpickler` resolves only the globals of :data:`ALLOWED_GLOBALS`, each to an
inert stand-in: persistent objects (EDM's ``_reconstruct_persistent_obj(meta)``) become
:class:`Record` s of class name + state (``module_src`` is never read), tensor storages are
read with ``torch.load(..., weights_only=True)``, numpy scalars are decoded from their bytes.
:func:`unpickle` first walks the opcodes (:func:`_prescan`) so that a hostile file cannot make
the unpickler allocate memory out of proportion to its size. :func:`plain` turns the result
into plain Python values and :func:`module_tensors` collects a record tree's tensors under
their state-dict names. What may be rebuilt as a network from such records is decided by
:mod:`torch_utils.persistence`, the save/load API built on this module.

Every problem with a file is a :class:`CheckpointError` (a ``ValueError``), one line naming it.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnnlib.util import EasyDict

__all__ = ["ALLOWED_GLOBALS", "CheckpointError", "PERSISTENCE_VERSION", "Record", "SafeUnpickler",
           "module_tensors", "one_line", "plain", "unpickle"]

PERSISTENCE_VERSION = 6  # The version of EDM's persistence layout that we write and expect.
MAX_DEPTH = 200  # Nesting limit when walking unpickled data (guards against hostile files).
_MAX_MESSAGE = 240  # Longest quoted text in an error message.


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, refused, or does not describe a padis network."""


def one_line(text: Any, limit: int = _MAX_MESSAGE) -> str:
    """``text`` on one line, at most ``limit`` characters (for quoting file content in errors)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Record:
    """Inert stand-in for a pickled object: its class name and state, nothing callable."""

    class_name = "?"

    def __init__(self) -> None:
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        if state is not None and not isinstance(state, dict):
            raise ValueError(f"state of a {self.class_name} is not a dict")
        self.state = dict(state or {})


class _PersistentRecord(Record):
    """What ``_reconstruct_persistent_obj(meta)`` yields under the safe unpickler."""


def _record_class(name: str) -> type:
    return type(f"_{name}Record", (Record,), {"class_name": name, "__slots__": ()})


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
        warnings.warn(f"{source}: persistence layout version {one_line(meta.get('version'), 20)} "
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
                         f"({one_line(str(exc).strip().splitlines()[0] if str(exc).strip() else exc, 100)})") from None
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
        raise ValueError(f"numpy dtype {one_line(repr(name), 40)} is not a plain numeric type")
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
                                  f"{one_line(f'{module}.{name}', 100)}, which is not allowed in a network pickle")
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
                              f"{type(exc).__name__}: {one_line(exc, 160)}") from None


def unpickle(data: bytes, path: Path) -> Any:
    _prescan(data, path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            return SafeUnpickler(io.BytesIO(data), path).load()
    except CheckpointError:
        raise
    except Exception as exc:  # whatever a corrupt or hostile byte stream provokes
        raise CheckpointError(f"{path} is not a readable network pickle: "
                              f"{type(exc).__name__}: {one_line(exc, 160)}") from None


def module_tensors(root: Record, path: Path) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a record tree, named as in a state dict."""
    out: dict[str, torch.Tensor] = {}
    stack, seen = [("", root, 0)], set()
    while stack:
        prefix, rec, depth = stack.pop()
        if id(rec) in seen or depth > MAX_DEPTH:
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
                    raise CheckpointError(f"{path}: {one_line(prefix + str(name), 80)} is not a named tensor")
                out[prefix + name] = t
        children = state.get("_modules") or {}
        if not isinstance(children, dict):
            raise CheckpointError(f"{path}: _modules of {prefix or 'the network'} is not a dict")
        for name, child in children.items():
            if child is None:
                continue
            if not isinstance(name, str) or not isinstance(child, Record):
                raise CheckpointError(f"{path}: submodule {one_line(prefix + str(name), 80)} is not a module")
            stack.append((f"{prefix}{name}.", child, depth + 1))
    return out


def plain(value: Any, path: Path) -> Any:
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
        if id(v) in active or depth > MAX_DEPTH:
            raise CheckpointError(f"{path}: its data is cyclic or nested too deeply")
        active.add(id(v))
        if isinstance(v, Record):
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
        raise CheckpointError(f"{path}: malformed data ({type(exc).__name__}: {one_line(exc, 100)})") from None
