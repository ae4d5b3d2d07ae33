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

import numpy as np

from nst_jax.converters.common import assemble, log, preprocess, require


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


def convert_matconvnet(path: str | os.PathLike) -> dict:
    """A MatConvNet VGG-19 ``.mat`` -> canonical parameters."""
    io = require("scipy.io", "scipy")
    try:
        data = io.loadmat(path)
    except (ValueError, TypeError, OSError, NotImplementedError) as e:
        raise ValueError(f"{path}: not a readable MATLAB v5 file ({e})") from None
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
