"""Read PyTorch checkpoints (legacy and zip formats) with numpy only, no torch.

A ``.pth`` file is a pickle, and unpickling can run arbitrary code. The reader
below uses a restricted :class:`pickle.Unpickler` that resolves only the few
globals a tensor state dict needs (:data:`ALLOWED_GLOBALS`); any other global
(``os.system``, ``builtins.eval``, a model class, ...) raises
:class:`UnsafePickleError` before anything is called.

Formats:
  * legacy (torch < 1.6, ``_use_new_zipfile_serialization=False``): a magic
    number pickle, a protocol pickle, a sys-info pickle, the object pickle, a
    pickle of storage keys, then each storage's raw bytes behind an int64 count.
  * zip (torch >= 1.6): ``<name>/data.pkl`` plus ``<name>/data/<key>`` members.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# storage class name -> numpy dtype
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# bfloat16 has no numpy dtype; it is widened to float32 on read.
_BFLOAT16 = "BFloat16Storage"


class UnsafePickleError(pickle.UnpicklingError):
    """A checkpoint asked for a global the restricted unpickler does not allow."""


class _StorageType:
    """Stands in for ``torch.<X>Storage``; only its name and dtype are used."""

    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """numpy version of ``torch._utils._rebuild_tensor_v2``."""
    del requires_grad, hooks, metadata
    flat, itemsize = storage
    if not size:
        return flat[storage_offset].copy()
    strides = tuple(s * itemsize for s in stride)
    view = np.lib.stride_tricks.as_strided(flat[storage_offset:], shape=tuple(size), strides=strides)
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    """numpy version of ``torch._utils._rebuild_parameter``: a Parameter is its data."""
    del requires_grad, backward_hooks, args
    return data


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in (*_STORAGE_DTYPES, _BFLOAT16)},
}
"""The only globals a checkpoint may name, mapped to their numpy stand-ins."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, load_storage, rebuild_tensor=_rebuild_tensor_v2):
        super().__init__(file)
        self._load_storage = load_storage
        self._rebuild_tensor = rebuild_tensor

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = sorted(f"{m}.{n}" for m, n in ALLOWED_GLOBALS)
            raise UnsafePickleError(
                f"checkpoint refers to global {module}.{name}, which a weight file has no need of; "
                f"refusing to load it (allowed: {', '.join(allowed)})"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} in checkpoint")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r} in checkpoint")
        return self._load_storage(storage_type.name, str(key), int(numel))


def _decode(raw: bytes | memoryview, type_name: str, numel: int) -> tuple[np.ndarray, int]:
    """Raw little-endian storage bytes -> (flat numpy array, itemsize in bytes)."""
    if type_name == _BFLOAT16:
        bits = np.frombuffer(raw, dtype="<u2", count=numel).astype(np.uint32) << 16
        flat = bits.view(np.float32)
    else:
        flat = np.frombuffer(raw, dtype=np.dtype(_STORAGE_DTYPES[type_name]).newbyteorder("<"), count=numel)
        flat = flat.astype(flat.dtype.newbyteorder("="), copy=False)
    return flat, flat.itemsize


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise pickle.UnpicklingError(f"{path}: zip checkpoint has {len(pkl)} data.pkl members, expected 1")
        prefix = pkl[0][: -len("data.pkl")]
        cache: dict[str, tuple[np.ndarray, int]] = {}

        def load_storage(type_name: str, key: str, numel: int):
            if key not in cache:
                member = f"{prefix}data/{key}"
                try:
                    raw = archive.read(member)
                except KeyError:
                    raise pickle.UnpicklingError(f"{path}: storage {member!r} is missing") from None
                cache[key] = _decode(raw, type_name, numel)
            return cache[key]

        with archive.open(pkl[0]) as f:
            return _RestrictedUnpickler(io.BytesIO(f.read()), load_storage).load()


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        data = f.read()
    buf = io.BytesIO(data)

    def no_storage(*args):
        raise pickle.UnpicklingError(f"{path}: storage reference outside the object pickle")

    def header():
        return _RestrictedUnpickler(buf, no_storage).load()

    if header() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    protocol = header()
    if protocol != 1001:
        raise pickle.UnpicklingError(f"{path}: unsupported legacy protocol version {protocol!r}")
    sys_info = header()
    if not sys_info.get("little_endian", True):
        raise pickle.UnpicklingError(f"{path}: big-endian checkpoints are not supported")

    requested: dict[str, tuple[str, int]] = {}
    placeholders: dict[str, list] = {}

    def load_storage(type_name: str, key: str, numel: int):
        # Storage bytes follow the object pickle, so hand out a mutable
        # placeholder now and fill it in once the bytes are read.
        requested[key] = (type_name, numel)
        return placeholders.setdefault(key, [None, 0])

    def lazy_rebuild(storage, *args):
        # Tensors are rebuilt once the storage bytes behind the pickle are read.
        return _Lazy(storage, args)

    obj = _RestrictedUnpickler(buf, load_storage, rebuild_tensor=lazy_rebuild).load()
    keys = header()
    offset = buf.tell()
    for key in keys:
        if offset + 8 > len(data):
            raise pickle.UnpicklingError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", data[offset : offset + 8])
        offset += 8
        type_name, _ = requested.get(key, ("ByteStorage", numel))
        itemsize = 2 if type_name == _BFLOAT16 else np.dtype(_STORAGE_DTYPES[type_name]).itemsize
        end = offset + numel * itemsize
        if end > len(data):
            raise pickle.UnpicklingError(f"{path}: storage {key!r} is truncated")
        if key in placeholders:
            placeholders[key][:] = _decode(memoryview(data)[offset:end], type_name, numel)
        offset = end
    missing = [k for k, p in placeholders.items() if p[0] is None]
    if missing:
        raise pickle.UnpicklingError(f"{path}: storages {missing[:3]} are missing")
    return _resolve(obj)


class _Lazy:
    def __init__(self, storage, args):
        self.storage, self.args = storage, args


def _resolve(obj):
    if isinstance(obj, _Lazy):
        return _rebuild_tensor_v2(tuple(obj.storage), *obj.args)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict without torch and without running code.

    Args:
      path: a ``.pth``/``.pt`` file written by ``torch.save``, legacy or zip.

    Returns:
      A dict from parameter name to numpy array (PyTorch layout). A checkpoint
      that wraps the state dict (``{"state_dict": {...}}``) is unwrapped.

    Raises:
      UnsafePickleError: the file names a global outside :data:`ALLOWED_GLOBALS`.
      pickle.UnpicklingError: the file is not a readable torch checkpoint.
    """
    path = os.fspath(path)
    try:
        obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except UnsafePickleError:
        raise
    except pickle.UnpicklingError as e:
        if str(e).startswith(path):
            raise
        raise pickle.UnpicklingError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    except (EOFError, ValueError, struct.error, IndexError, TypeError, AttributeError, zipfile.BadZipFile) as e:
        raise pickle.UnpicklingError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise pickle.UnpicklingError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return dict(obj)
