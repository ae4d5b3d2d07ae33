"""What every converter shares: the canonical parameter layout and the folded preprocessing.

Canonical form: ``preprocess`` (a 1x1 conv taking RGB in [0, 1] to the network's own
input space), then ``conv1_1 .. conv5_4`` (VGG-16: ``.. conv5_3``), kernels HWIO, float32. A source's input
convention (ImageNet mean/std, BGR 0..255 minus the mean, ...) becomes the
``preprocess`` conv, so the model never has to know where the weights came from.
"""

from __future__ import annotations

import logging

import numpy as np

from nst_jax import vgg

log = logging.getLogger("nst_jax.converters")

CONV_NAMES = tuple(vgg.CONV_CHANNELS)  # conv1_1 .. conv5_4

# ImageNet statistics (RGB, [0, 1]) used by torchvision, and the Caffe mean pixel (BGR, 0..255)
# used by the original VGG release, Keras' "caffe" preprocessing and Gatys et al.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


# Caps on what a weight file may declare, checked before anything is allocated or read. A
# whole VGG-19 with its classifier is 143.7 M float32 values (575 MB, the largest fc6's
# 102.8 M); the files are 510-575 MB.
MAX_FILE_BYTES = 2 << 30
MAX_ARRAY_ELEMENTS = 1 << 28
MAX_TOTAL_BYTES = 2 << 30


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters): a library's error inside our one-line errors."""
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class MissingDependencyError(ImportError):
    """A converter needs an optional package; the message names the extra that installs it."""


def require(module: str, package: str):
    """Imports an optional dependency or raises a one-line message naming ``.[converters]``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"reading this format needs {package}: pip install 'nst-jax[converters]' (or pip install {package})"
        ) from None


def preprocess(scale, offset, bgr: bool) -> dict[str, np.ndarray]:
    """The 1x1 conv ``y_o = scale_o * x_src(o) + offset_o`` from RGB [0, 1]; ``src`` swaps to BGR if asked."""
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for out in range(3):
        kernel[0, 0, 2 - out if bgr else out, out] = scale[out]
    return {"kernel": kernel, "bias": np.asarray(offset, np.float32)}


def torchvision_preprocess() -> dict[str, np.ndarray]:
    """``(x - mean) / std`` in RGB (torchvision's ImageNet normalisation)."""
    std = np.asarray(IMAGENET_STD_RGB)
    return preprocess(1.0 / std, -np.asarray(IMAGENET_MEAN_RGB) / std, bgr=False)


def caffe_preprocess(mean_bgr=CAFFE_MEAN_BGR) -> dict[str, np.ndarray]:
    """``255 x[::-1] - mean`` (BGR, 0..255, mean-subtracted: Caffe's VGG, Keras' caffe mode)."""
    return preprocess(np.full(3, 255.0), -np.asarray(mean_bgr), bgr=True)


def assemble(convs: list[tuple[str, np.ndarray, np.ndarray]], first: dict[str, np.ndarray]) -> dict:
    """Canonical parameters from the ``(source name, HWIO kernel, bias)`` in order and the ``preprocess`` conv.

    16 convolutions are a VGG-19 (conv1_1..conv5_4), 13 a VGG-16 (conv1_1..conv5_3).
    Every renamed layer is logged; names and shapes are checked against ``jax.eval_shape``
    of the model (the first mismatch is named).
    """
    from nst_jax.vgg import check_params

    depth = 16 if len(convs) == len(vgg.conv_channels(16)) else 19
    names = tuple(vgg.conv_channels(depth))
    if len(convs) != len(names):
        found = ", ".join(name for name, _, _ in convs[:4]) + ("..." if len(convs) > 4 else "")
        raise ValueError(
            f"expected {len(CONV_NAMES)} 3x3 convolutions (conv1_1..conv5_4; 13 for a VGG-16), found "
            f"{len(convs)}: {found or 'none'}"
        )
    params = {"preprocess": first}
    shapes = vgg.param_shapes(depth)
    for (source, kernel, bias), name in zip(convs, names, strict=True):
        kernel = np.ascontiguousarray(kernel, np.float32)
        bias = np.asarray(bias, np.float32).reshape(-1)
        expected = shapes[name]["kernel"]
        if kernel.shape != expected:
            raise ValueError(f"{source} (-> {name}) has kernel shape {kernel.shape}, the model expects {expected}")
        params[name] = {"kernel": kernel, "bias": bias}
        log.info("renamed %s -> %s", source, name)
    check_params(params)
    return params
