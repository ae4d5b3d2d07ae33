"""Keras VGG19 weights in HDF5 (``vgg19_weights_tf_dim_ordering_tf_kernels(_notop).h5``), read with h5py.

Layout (Keras 2 ``save_weights``; a whole-model file nests it under ``model_weights``):
the root attribute ``layer_names`` lists the layers in order; each layer's group has the
attribute ``weight_names`` naming its datasets (``block1_conv1/kernel:0`` and
``block1_conv1/bias:0``, or Keras 1's ``block1_conv1_W_1:0``/``block1_conv1_b_1:0``).
Kernels are already HWIO. Keras' ``preprocess_input(mode="caffe")`` (BGR, 0..255 minus
the mean pixel) is folded into ``preprocess``; ``fc1``/``fc2``/``predictions`` are ignored.
"""

from __future__ import annotations

import os

import numpy as np

from nst_jax.converters.common import (
    MAX_ARRAY_ELEMENTS,
    MAX_TOTAL_BYTES,
    assemble,
    caffe_preprocess,
    first_line,
    log,
    require,
)

_MAX_NAMES = 10_000  # layer and weight names in one attribute


def _names(attribute, what: str) -> list[str]:
    names = np.asarray(attribute)
    if names.ndim != 1 or names.size > _MAX_NAMES or names.dtype.kind not in "SUO":
        raise ValueError(f"attribute {what} is not a list of at most {_MAX_NAMES} names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _child(h5py, group, name: str):
    """``group[name]``, refusing links that leave the file (external links) or jump within it (soft links)."""
    link = group.get(name, getlink=True)
    if link is None:
        raise ValueError(f"{group.name} has no member {name!r}")
    if not isinstance(link, h5py.HardLink):
        raise ValueError(f"{group.name}/{name} is a {type(link).__name__}; links to other places are refused")
    return group[name]


def _read(h5py, dataset, where: str) -> np.ndarray:
    """A dataset's values, after checking what it declares: a float array within the caps, stored in this file."""
    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"{where} is not a dataset")
    if dataset.is_virtual or dataset.external:
        raise ValueError(f"{where} keeps its data in other files; refused")
    if dataset.dtype.kind != "f" or dataset.dtype.itemsize > 8:
        raise ValueError(f"{where} has dtype {dataset.dtype}, not floating point")
    shape = dataset.shape or ()
    count = int(np.prod(shape, dtype=np.float64))
    if len(shape) > 4 or count > MAX_ARRAY_ELEMENTS:
        raise ValueError(f"{where} declares shape {shape}; at most 4 dimensions and {MAX_ARRAY_ELEMENTS} values")
    return np.asarray(dataset[()], np.float32)


def convert_keras_h5(path: str | os.PathLike) -> dict:
    """A Keras VGG19 ``.h5`` -> canonical parameters.

    Every link, attribute and dataset is checked before it is read: external and soft
    links, virtual and externally stored datasets are refused; shapes are capped.
    """
    h5py = require("h5py", "h5py")
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({first_line(e)})") from None
    try:
        with f:
            return _convert(h5py, f, path)
    except (KeyError, ValueError, TypeError, OSError, RuntimeError, IndexError, AttributeError, UnicodeError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable Keras weights file ({first_line(e)})") from None


def _convert(h5py, f, path) -> dict:
    root = _child(h5py, f, "model_weights") if "model_weights" in f else f
    if "layer_names" not in root.attrs:
        raise ValueError(f"{path}: HDF5 file without Keras `layer_names`; not a Keras weights file")
    convs, total = [], 0
    for layer in _names(root.attrs["layer_names"], "layer_names"):
        group = _child(h5py, root, layer)
        weight_names = _names(group.attrs.get("weight_names", []), f"{layer}/weight_names")
        if not weight_names:
            continue
        arrays = [_read(h5py, _child(h5py, group, name), f"{layer}/{name}") for name in weight_names]
        total += sum(a.nbytes for a in arrays)
        if total > MAX_TOTAL_BYTES:
            raise ValueError(f"{path}: the datasets add up to more than {MAX_TOTAL_BYTES} bytes")
        if len(arrays) == 2 and arrays[0].ndim == 4:
            kernel, bias = arrays
            convs.append((f"{layer} ({weight_names[0]})", kernel, bias))
        else:
            log.info("ignored Keras layer %s (%s)", layer, ", ".join(str(a.shape) for a in arrays))
    return assemble(convs, caffe_preprocess())
