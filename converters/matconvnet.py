"""MatConvNet ``imagenet-vgg-verydeep-19.mat`` (used by many TensorFlow style-transfer tools), read with scipy.

Layout (SimpleNN): ``layers`` is a 1 x L cell array of structs with ``name``, ``type``
(``conv``, ``relu``, ``pool``, ``softmax``) and, for convolutions, ``weights`` = {W, b} with W
of shape FH x FW x C x K (already HWIO). The mean image is ``meta.normalization.averageImage``
(current release) or ``normalization.averageImage`` (beta16 and older); the network takes
RGB in 0..255 minus that mean, which is folded into ``preprocess``. The fully connected
layers (``fc6``..``fc8``, stored as convolutions with 7x7 and 1x1 kernels) are ignored.

Kernels are used without the H/W transpose some TensorFlow ports apply: the
ImageNet-evaluated orientation is FH x FW (see anishathalye/neural-style#180).
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from nst_jax.converters.common import MAX_FILE_BYTES, MAX_TOTAL_BYTES, assemble, first_line, log, preprocess, require


def _unwrap(value):
    """Strips the 1x1 cell and struct arrays scipy wraps every MATLAB value in."""
    while isinstance(value, np.ndarray) and value.size == 1 and (value.dtype == object or value.dtype.names):
        value = value.flat[0]
    return value


def _text(value) -> str:
    value = _unwrap(value)
    if isinstance(value, np.ndarray):
        value = value.flat[0] if value.size else ""
    return str(value)


def _mean_rgb(data) -> np.ndarray:
    """The mean pixel (RGB, 0..255): ``meta.normalization.averageImage`` or ``normalization.averageImage``."""
    holders = [_unwrap(data["meta"])] if "meta" in data else []
    holders.append(data)
    for holder in holders:
        try:
            average = _unwrap(_unwrap(holder["normalization"])["averageImage"])
        except (KeyError, ValueError, IndexError, TypeError):
            continue
        return np.asarray(average, np.float64).reshape(-1, 3).mean(axis=0)
    raise ValueError("no `normalization.averageImage` (the mean pixel) in the file")


_MI_COMPRESSED, _MI_MATRIX = 15, 14


def check_mat_file(path: str | os.PathLike) -> None:
    """Walks a MATLAB v5 file's top-level elements before scipy reads it.

    Every element must lie within the file, and every compressed one must inflate to at
    most :data:`MAX_TOTAL_BYTES` in all (inflated as a stream and counted, never kept), so
    scipy is never asked to allocate what a tag merely claims.

    Raises:
      ValueError: naming the element and what is wrong.
    """
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a weight file may have")
    with open(path, "rb") as f:
        header = f.read(128)
        if len(header) < 128 or not header.startswith(b"MATLAB"):
            raise ValueError(f"{path}: not a MATLAB 5.0 MAT-file (no 128-byte header)")
        if header.startswith(b"MATLAB 7.3"):
            raise ValueError(f"{path}: a MATLAB 7.3 (HDF5) MAT-file; save it with -v7 to convert it")
        order = {b"IM": "<", b"MI": ">"}.get(header[126:128])
        if order is None:
            raise ValueError(f"{path}: MAT-file header has no byte-order mark")
        inflated, position, index = 0, 128, 0
        while position < size:
            tag = f.read(8)
            if len(tag) < 8:
                raise ValueError(f"{path}: element {index} at byte {position} is truncated")
            kind, nbytes = struct.unpack(order + "II", tag)
            if kind >> 16:  # a small element: type and length in the first word, data in the second
                kind, nbytes = kind & 0xFFFF, 4
            if kind not in (_MI_COMPRESSED, _MI_MATRIX) or position + 8 + nbytes > size:
                raise ValueError(
                    f"{path}: element {index} at byte {position} (type {kind}, {nbytes} bytes) is not a variable "
                    f"within the file's {size} bytes"
                )
            if kind == _MI_COMPRESSED:
                inflate, left = zlib.decompressobj(), nbytes
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    left -= len(chunk)
                    data = chunk
                    while data:
                        inflated += len(inflate.decompress(data, 1 << 24))
                        data = inflate.unconsumed_tail
                        if inflated > MAX_TOTAL_BYTES:
                            raise ValueError(
                                f"{path}: compressed variables inflate to more than {MAX_TOTAL_BYTES} bytes"
                            )
                position += 8 + nbytes
            else:
                position += 8 + nbytes + (-nbytes) % 8
            f.seek(position)
            index += 1


def convert_matconvnet(path: str | os.PathLike) -> dict:
    """A MatConvNet VGG-19 ``.mat`` -> canonical parameters (the file is walked by :func:`check_mat_file` first)."""
    io = require("scipy.io", "scipy")
    check_mat_file(path)
    try:
        data = io.loadmat(path)
    except (ValueError, TypeError, OSError, NotImplementedError, IndexError, KeyError, UnboundLocalError) as e:
        raise ValueError(f"{path}: not a readable MATLAB v5 file ({type(e).__name__}: {e})") from None
    try:
        return _convert(data, path)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a MatConvNet VGG-19 ({first_line(e)})") from None


def _convert(data, path) -> dict:
    if "layers" not in data:
        raise ValueError(f"{path}: MATLAB file without `layers`; not a MatConvNet SimpleNN model")
    try:
        mean = _mean_rgb(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    convs = []
    for cell in np.asarray(data["layers"]).reshape(-1):
        layer = _unwrap(cell)
        name, kind = _text(layer["name"]), _text(layer["type"])
        if kind != "conv":
            continue
        weights = np.asarray(layer["weights"]).reshape(-1)
        if weights.size == 1:
            weights = np.asarray(_unwrap(weights)).reshape(-1)
        if weights.size != 2:
            raise ValueError(f"{path}: convolution {name!r} has {weights.size} weight arrays, expected W and b")
        kernel, bias = (np.asarray(w) for w in weights)
        if kernel.ndim == 4 and kernel.shape[:2] == (3, 3):
            convs.append((f"{name} (matconvnet)", kernel, bias))
        else:
            log.info("ignored MatConvNet layer %s (kernel %s)", name, kernel.shape)
    return assemble(convs, preprocess(np.full(3, 255.0), -mean, bgr=False))
