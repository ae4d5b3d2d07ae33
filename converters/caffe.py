"""Caffe ``.caffemodel`` files (e.g. ``VGG_ILSVRC_19_layers.caffemodel``), read without Caffe or protobuf.

A caffemodel is a serialised ``caffe.NetParameter`` message. This reader walks the
protobuf wire format itself and keeps only what a VGG needs: each layer's name, type
and blobs. Field numbers (from ``caffe.proto``):

* ``NetParameter``: ``layers = 2`` (V1LayerParameter), ``layer = 100`` (LayerParameter, V2).
* V2 ``LayerParameter``: ``name = 1``, ``type = 2`` (a string, "Convolution"), ``blobs = 7``.
* V1 ``V1LayerParameter``: ``name = 4``, ``type = 5`` (an enum, CONVOLUTION = 4), ``blobs = 6``,
  and ``layer = 1`` holding an older V0 layer (``name = 1``, ``type = 2`` "conv", ``blobs = 50``).
* ``BlobProto``: ``num/channels/height/width = 1..4``, ``data = 5`` (packed float),
  ``shape = 7`` (``BlobShape.dim = 1``, packed int64), ``double_data = 8``.

The VGG release expects BGR in 0..255 minus the mean pixel: folded into ``preprocess``.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any, NamedTuple

import numpy as np

from nst_jax.converters.common import MAX_ARRAY_ELEMENTS, MAX_FILE_BYTES, assemble, caffe_preprocess, log

_V1_CONVOLUTION = 4
_V1_INNER_PRODUCT = 14


class CaffeLayer(NamedTuple):
    name: str
    type: str  # V2 string type; V1 enum as "V1:<number>"; V0 string type
    blobs: list[np.ndarray]


class _Corrupt(ValueError):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Corrupt(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf, start: int, end: int):
    """Yields ``(field number, wire type, value)``; length-delimited values are ``(start, end)`` spans."""
    pos = start
    value: Any  # an int (varint), bytes (fixed 64/32 bits) or a (start, end) span
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = bytes(buf[pos : pos + 8]), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        elif wire == 5:
            value, pos = bytes(buf[pos : pos + 4]), pos + 4
        else:
            raise _Corrupt(f"unsupported wire type {wire} (field {number}) at byte {pos}")
        if pos > end or number == 0:
            raise _Corrupt(f"field {number} runs past its message (byte {pos} > {end})")
        yield number, wire, value


def _packed_varints(buf, span) -> list[int]:
    values, pos = [], span[0]
    while pos < span[1]:
        value, pos = _varint(buf, pos, span[1])
        values.append(value)
    return values


def _blob(buf, span) -> np.ndarray:
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    shape: list[int] | None = None
    chunks: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for number, wire, value in _fields(buf, *span):
        if number in legacy and wire == 0:
            legacy[number] = value
        elif number == 5 and wire == 2:
            if (value[1] - value[0]) % 4:
                raise _Corrupt(f"float data of {value[1] - value[0]} bytes, not a multiple of 4")
            chunks.append(np.frombuffer(buf[value[0] : value[1]], "<f4"))
        elif number == 5 and wire == 5:
            chunks.append(np.frombuffer(value, "<f4"))
        elif number == 8 and wire == 2:
            if (value[1] - value[0]) % 8:
                raise _Corrupt(f"double data of {value[1] - value[0]} bytes, not a multiple of 8")
            doubles.append(np.frombuffer(buf[value[0] : value[1]], "<f8"))
        elif number == 7 and wire == 2:
            shape = []
            for dim_number, dim_wire, dim in _fields(buf, *value):
                if dim_number == 1:
                    shape += _packed_varints(buf, dim) if dim_wire == 2 else [dim]
    if shape is None:
        shape = [legacy[1], legacy[2], legacy[3], legacy[4]]  # legacy 4-d blobs; biases are (1, 1, 1, n)
    count = 1
    for n in shape:
        count *= n
    if len(shape) > 8 or count > MAX_ARRAY_ELEMENTS:
        raise _Corrupt(f"blob declares shape {tuple(shape)}: at most 8 dimensions and {MAX_ARRAY_ELEMENTS} values")
    if count != sum(c.size for c in chunks or doubles):
        raise _Corrupt(f"blob of shape {tuple(shape)} holds {sum(c.size for c in chunks or doubles)} values")
    data = np.concatenate(chunks or doubles or [np.zeros(0, np.float32)]).astype(np.float32)
    return data.reshape(shape)


def _layer(buf, span, version: int) -> CaffeLayer:
    name_field, type_field, blobs_field = {2: (1, 2, 7), 1: (4, 5, 6), 0: (1, 2, 50)}[version]
    name, kind, blobs = "", "", []
    for number, wire, value in _fields(buf, *span):
        if number == name_field and wire == 2:
            name = bytes(buf[value[0] : value[1]][:256]).decode("utf-8", "replace")
        elif number == type_field and version == 1 and wire == 0:
            kind = f"V1:{value}"
        elif number == type_field and wire == 2:
            kind = bytes(buf[value[0] : value[1]][:256]).decode("utf-8", "replace")
        elif number == blobs_field and wire == 2:
            blobs.append(_blob(buf, value))
        elif version == 1 and number == 1 and wire == 2:
            return _layer(buf, value, 0)  # a V0 layer wrapped in a V1 one
    return CaffeLayer(name, kind, blobs)


def read_caffemodel(path: str | os.PathLike) -> list[CaffeLayer]:
    """Every layer of a ``.caffemodel`` (V0, V1 or V2 layers) with its blobs as float32 arrays."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ValueError(f"{path}: empty file, not a Caffe model")
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a weight file may have")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                layers = [
                    _layer(buf, value, 2 if number == 100 else 1)
                    for number, wire, value in _fields(buf, 0, size)
                    if number in (2, 100) and wire == 2
                ]
            except (_Corrupt, struct.error, UnicodeDecodeError, TypeError, IndexError, OverflowError) as e:
                raise ValueError(f"{path}: not a readable Caffe model (truncated or corrupt: {e})") from None
    if not layers:
        raise ValueError(f"{path}: a protobuf message with no Caffe layers")
    return layers


def _is_convolution(layer: CaffeLayer) -> bool:
    return layer.type in ("Convolution", f"V1:{_V1_CONVOLUTION}", "conv")


def convert_caffe(path: str | os.PathLike) -> dict:
    """A Caffe VGG-19 -> canonical parameters (BGR 0..255 minus the mean pixel folded into ``preprocess``)."""
    layers = read_caffemodel(path)
    convs = []
    for layer in layers:
        if not _is_convolution(layer):
            if layer.blobs:
                log.info("ignored Caffe layer %s (type %s)", layer.name, layer.type)
            continue
        if len(layer.blobs) != 2:
            raise ValueError(
                f"{path}: convolution {layer.name!r} has {len(layer.blobs)} blobs, expected weights and bias"
            )
        kernel, bias = layer.blobs
        if kernel.ndim != 4:
            raise ValueError(f"{path}: convolution {layer.name!r} has kernel shape {kernel.shape}, expected 4-d")
        convs.append((f"{layer.name} (caffe)", kernel.transpose(2, 3, 1, 0), bias))  # KCHW -> HWIO
    return assemble(convs, caffe_preprocess())
