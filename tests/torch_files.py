"""Writes PyTorch checkpoints (legacy and zip formats) without torch, for tests.

Follows the public layout of ``torch.save``: tensors pickle as
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
with storages as persistent ids.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

_TYPES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.int64): "LongStorage",
}


class _Global:
    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce insists on a callable; never called here
        raise TypeError(f"{self.module}.{self.name} is a stand-in")


class _Tensor:
    def __init__(self, key, array, offset=0, size=None, stride=None, numel=None):
        self.key, self.array = key, array
        self.offset, self.size, self.stride, self.numel = offset, size, stride, numel


class _Pickler(pickle._Pickler):
    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def save_global(self, obj, name=None):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            numel = obj.array.size if obj.numel is None else obj.numel
            pid = ("storage", _Global("torch", _TYPES[obj.array.dtype]), obj.key, "cpu", numel)
            return (*pid, None) if self.legacy else pid
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            return self.save_global(obj)
        if isinstance(obj, _Tensor):
            a = obj.array
            strides = tuple(s // a.itemsize for s in a.strides) if obj.stride is None else obj.stride
            shape = a.shape if obj.size is None else obj.size
            self.save_reduce(
                _Global("torch._utils", "_rebuild_tensor_v2"),
                (_StorageRef(obj.key, a, obj.numel), obj.offset, shape, strides, False, collections.OrderedDict()),
                obj=obj,
            )
            return None
        return super().save(obj, save_persistent_id)


class _StorageRef:
    def __init__(self, key, array, numel=None):
        self.key, self.array, self.numel = key, array, numel


def _wrap(state_dict):
    tensors = collections.OrderedDict()
    for i, (name, array) in enumerate(state_dict.items()):
        if isinstance(array, _Tensor):
            tensors[name] = array
            array.key = str(i)
        else:
            tensors[name] = _Tensor(str(i), np.ascontiguousarray(array))
    return tensors


def tensor(storage, offset=0, size=None, stride=None, numel=None):
    """A tensor entry for ``save_*`` that claims any offset, size, stride and storage length (for hostile files)."""
    return _Tensor("", np.ascontiguousarray(storage), offset, size, stride, numel)


def save_legacy(path, state_dict):
    tensors = _wrap(state_dict)
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        _Pickler(f, legacy=True).dump(tensors)
        pickle.dump([t.key for t in tensors.values()], f, protocol=2)
        for t in tensors.values():
            f.write(struct.pack("<q", t.array.size if t.numel is None else t.numel))
            f.write(t.array.astype(t.array.dtype.newbyteorder("<")).tobytes())


def save_zip(path, state_dict):
    tensors = _wrap(state_dict)
    buf = io.BytesIO()
    _Pickler(buf, legacy=False).dump(tensors)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/version", "3\n")
        for t in tensors.values():
            z.writestr(f"archive/data/{t.key}", t.array.tobytes())


def malicious_pickle(command: str) -> bytes:
    """A pickle that calls os.system(command) when loaded by an unrestricted unpickler."""
    return (
        b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(command)) + command.encode() + b"q\x01\x85q\x02Rq\x03."
    )
