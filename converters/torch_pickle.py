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
import pickletools
import struct
import warnings
import zipfile
import zlib
from typing import Any, BinaryIO

import numpy as np

from nst_jax.converters.common import MAX_ARRAY_ELEMENTS, MAX_FILE_BYTES, MAX_TOTAL_BYTES, first_line

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Caps on what a checkpoint's pickle may declare (checked by a scan before it is unpickled).
# VGG-19's data.pkl has about 1,500 opcodes and 200 memo entries.
_MAX_PICKLE_BYTES = 64 << 20
_MAX_OPCODES = 1_000_000
_MAX_DIMS = 8

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


def _short(value) -> str:
    """A value's repr on one line, at most 80 characters (it lands in a one-line error)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _int_tuple(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_DIMS:
        raise pickle.UnpicklingError(f"tensor {what} must be a tuple of at most {_MAX_DIMS} integers: {_short(value)}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 for v in value):
        raise pickle.UnpicklingError(f"tensor {what} must hold integers >= 0, got {_short(value)}")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """numpy version of ``torch._utils._rebuild_tensor_v2``, every index checked against the storage first."""
    del requires_grad, hooks, metadata
    if not (isinstance(storage, (tuple, list)) and len(storage) == 2 and isinstance(storage[0], np.ndarray)):
        raise pickle.UnpicklingError("tensor without a storage")
    flat = storage[0]
    if isinstance(storage_offset, bool) or not isinstance(storage_offset, int) or storage_offset < 0:
        raise pickle.UnpicklingError(f"tensor storage offset must be an integer >= 0, got {_short(storage_offset)}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length")
    count = 1
    for n in size:
        count *= n
    if count > MAX_ARRAY_ELEMENTS:
        raise pickle.UnpicklingError(f"tensor of size {size} has more than {MAX_ARRAY_ELEMENTS} elements")
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if count else storage_offset
    if count and last >= flat.size:
        raise pickle.UnpicklingError(
            f"tensor of size {size}, stride {stride} at offset {storage_offset} reaches element {last} "
            f"of a storage of {flat.size}"
        )
    if not size:
        return flat[storage_offset].copy()
    if not count:
        return np.zeros(size, flat.dtype)
    strides = tuple(s * flat.itemsize for s in stride)
    view = np.lib.stride_tricks.as_strided(flat[storage_offset:], shape=size, strides=strides, writeable=False)
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
            raise pickle.UnpicklingError(f"unsupported persistent id {_short(pid)} in checkpoint")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {_short(storage_type)} in checkpoint")
        if not isinstance(key, (str, int)) or isinstance(key, bool) or len(str(key)) > 64:
            raise pickle.UnpicklingError(f"storage key {_short(key)} is not a short name")
        if isinstance(numel, bool) or not isinstance(numel, int) or not 0 <= numel <= MAX_ARRAY_ELEMENTS:
            raise pickle.UnpicklingError(f"storage of {_short(numel)} elements (at most {MAX_ARRAY_ELEMENTS})")
        return self._load_storage(storage_type.name, str(key), numel)


def _scan(buf: BinaryIO, limit: int) -> None:
    """Walks the next pickle in ``buf`` without building anything, refusing what could exhaust memory.

    Memo indices must stay below the number of opcodes (a valid pickle numbers them from
    0), and the pickle below ``limit`` bytes and :data:`_MAX_OPCODES`. ``buf`` is left where
    it was.
    """
    start = buf.tell()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickletools warns of odd escapes in a string: the unpickler decides
            _walk(buf, start, limit)
    except ValueError as e:  # pickletools' own complaint about a malformed opcode or argument
        raise pickle.UnpicklingError(f"malformed pickle ({e})") from None
    finally:
        buf.seek(start)


def _walk(buf: BinaryIO, start: int, limit: int) -> None:
    count = 0
    for opcode, arg, pos in pickletools.genops(buf):
        if pos is None:  # genops gives positions only for a stream with tell(); ours always has one
            raise pickle.UnpicklingError("the pickle's stream cannot tell its position")
        count += 1
        if count > _MAX_OPCODES or pos - start > limit:
            raise pickle.UnpicklingError(f"the pickle is larger than {limit} bytes or {_MAX_OPCODES} opcodes")
        if ("PUT" in opcode.name or "GET" in opcode.name) and isinstance(arg, int) and arg > count:
            raise pickle.UnpicklingError(f"memo index {arg} at byte {pos} (only {count} opcodes so far)")
        if opcode.name == "FRAME" and isinstance(arg, int) and arg > limit:
            raise pickle.UnpicklingError(f"pickle frame of {arg} bytes at byte {pos}")


def _checked_load(buf: BinaryIO, load_storage, rebuild_tensor=_rebuild_tensor_v2, limit: int = _MAX_PICKLE_BYTES):
    _scan(buf, limit)
    return _RestrictedUnpickler(buf, load_storage, rebuild_tensor).load()


def _decode(raw: bytes | memoryview, type_name: str, numel: int) -> tuple[np.ndarray, int]:
    """Raw little-endian storage bytes -> (flat numpy array, itemsize in bytes)."""
    if type_name == _BFLOAT16:
        bits = np.frombuffer(raw, dtype="<u2", count=numel).astype(np.uint32) << 16
        flat = bits.view(np.float32)
    else:
        flat = np.frombuffer(raw, dtype=np.dtype(_STORAGE_DTYPES[type_name]).newbyteorder("<"), count=numel)
        flat = flat.astype(flat.dtype.newbyteorder("="), copy=False)
    return flat, flat.itemsize


def _itemsize(type_name: str) -> int:
    return 2 if type_name == _BFLOAT16 else np.dtype(_STORAGE_DTYPES[type_name]).itemsize


def _read_member(archive: zipfile.ZipFile, name: str, size: int) -> bytes:
    """Exactly ``size`` bytes of a member, never inflating more (a member's declared size may lie)."""
    with archive.open(name) as f:
        data = f.read(size)
    if len(data) != size:
        raise pickle.UnpicklingError(f"member {name!r} holds {len(data)} bytes, {size} expected")
    return data


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        pkl = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise pickle.UnpicklingError(f"{path}: zip checkpoint has {len(pkl)} data.pkl members, expected 1")
        prefix = pkl[0][: -len("data.pkl")]
        cache: dict[str, tuple[np.ndarray, int]] = {}
        budget = [MAX_TOTAL_BYTES]

        def load_storage(type_name: str, key: str, numel: int):
            if key not in cache:
                member = f"{prefix}data/{key}"
                if member not in infos:
                    raise pickle.UnpicklingError(f"{path}: storage {member!r} is missing")
                nbytes = numel * _itemsize(type_name)
                if infos[member].file_size < nbytes:
                    raise pickle.UnpicklingError(
                        f"{path}: storage {member!r} holds {infos[member].file_size} bytes, its tensor {nbytes}"
                    )
                budget[0] -= nbytes
                if budget[0] < 0:
                    raise pickle.UnpicklingError(f"{path}: storages add up to more than {MAX_TOTAL_BYTES} bytes")
                cache[key] = _decode(_read_member(archive, member, nbytes), type_name, numel)
            return cache[key]

        size = infos[pkl[0]].file_size
        if size > _MAX_PICKLE_BYTES:
            raise pickle.UnpicklingError(f"{path}: data.pkl declares {size} bytes (at most {_MAX_PICKLE_BYTES})")
        return _checked_load(io.BytesIO(_read_member(archive, pkl[0], size)), load_storage)


def _load_legacy(path: str) -> Any:
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise pickle.UnpicklingError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a weight file may have")
    with open(path, "rb") as f:
        data = f.read()
    buf = io.BytesIO(data)

    def no_storage(*args):
        raise pickle.UnpicklingError(f"{path}: storage reference outside the object pickle")

    def header():
        return _checked_load(buf, no_storage, limit=4096)

    if header() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    protocol = header()
    if protocol != 1001:
        raise pickle.UnpicklingError(f"{path}: unsupported legacy protocol version {_short(protocol)}")
    sys_info = header()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        raise pickle.UnpicklingError(f"{path}: big-endian or unknown system info {_short(sys_info)}")

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

    obj = _checked_load(buf, load_storage, rebuild_tensor=lazy_rebuild)
    keys = _checked_load(buf, no_storage, limit=1 << 20)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise pickle.UnpicklingError(f"{path}: the storage keys are not a list of names")
    offset = buf.tell()
    for key in keys:
        if offset + 8 > len(data):
            raise pickle.UnpicklingError(f"{path}: truncated before storage {_short(key)}")
        (numel,) = struct.unpack("<q", data[offset : offset + 8])
        offset += 8
        type_name, expected = requested.get(key, ("ByteStorage", numel))
        if numel != expected or not 0 <= numel <= MAX_ARRAY_ELEMENTS:
            raise pickle.UnpicklingError(f"{path}: storage {_short(key)} has {numel} elements, its tensors {expected}")
        end = offset + numel * _itemsize(type_name)
        if end > len(data):
            raise pickle.UnpicklingError(f"{path}: storage {_short(key)} is truncated")
        if key in placeholders:
            placeholders[key][:] = _decode(memoryview(data)[offset:end], type_name, numel)
        offset = end
    missing = [k for k, p in placeholders.items() if p[0] is None]
    if missing:
        raise pickle.UnpicklingError(f"{path}: storages {missing[:3]} are missing")
    return obj


class _Lazy:
    def __init__(self, storage, args):
        self.storage, self.args = storage, args


def _state_dict(obj, path: str) -> dict[str, np.ndarray]:
    """The state dict in ``obj`` (a dict of tensors, or one under ``"state_dict"``), checked before it is walked.

    Only the dict's own values are looked at, so a pickle of shared nested containers
    (cheap to store, exponential to walk) is refused, not walked. Legacy tensors are
    rebuilt here, within a budget of :data:`MAX_TOTAL_BYTES`.
    """
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    out, budget = {}, MAX_TOTAL_BYTES
    for key, value in obj.items():
        if not isinstance(key, str):
            raise pickle.UnpicklingError(f"{path}: state dict key {_short(key)} is not a string")
        if isinstance(value, _Lazy):
            value = _rebuild_tensor_v2(value.storage, *value.args)
        if not isinstance(value, np.ndarray):
            raise pickle.UnpicklingError(
                f"{path}: expected a state dict of tensors; {_short(key)} is a {type(value).__name__}"
            )
        budget -= value.nbytes
        if budget < 0:
            raise pickle.UnpicklingError(f"{path}: the tensors add up to more than {MAX_TOTAL_BYTES} bytes")
        out[key] = value
    return out


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
        return _state_dict(obj, path)
    except (UnsafePickleError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except pickle.UnpicklingError as e:
        if str(e).startswith(path):
            raise
        raise pickle.UnpicklingError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    except (
        EOFError, ValueError, struct.error, IndexError, KeyError, TypeError, AttributeError, zipfile.BadZipFile,
        OverflowError, RecursionError, MemoryError, NotImplementedError, UnicodeDecodeError, zlib.error, OSError,
    ) as e:  # fmt: skip
        raise pickle.UnpicklingError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None
