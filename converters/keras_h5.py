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

from nst_jax.converters.common import assemble, caffe_preprocess, log, require


def _names(attribute) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in attribute]


def convert_keras_h5(path: str | os.PathLike) -> dict:
    """A Keras VGG19 ``.h5`` -> canonical parameters."""
    h5py = require("h5py", "h5py")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise ValueError(f"{path}: HDF5 file without Keras `layer_names`; not a Keras weights file")
        convs = []
        for layer in _names(root.attrs["layer_names"]):
            group = root[layer]
            weight_names = _names(group.attrs.get("weight_names", []))
            if not weight_names:
                continue
            arrays = [np.asarray(group[name]) for name in weight_names]
            if len(arrays) == 2 and arrays[0].ndim == 4:
                kernel, bias = arrays
                convs.append((f"{layer} ({weight_names[0]})", kernel, bias))
            else:
                log.info("ignored Keras layer %s (%s)", layer, ", ".join(str(a.shape) for a in arrays))
    return assemble(convs, caffe_preprocess())
