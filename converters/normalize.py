"""Gatys et al.'s normalisation of a VGG: every filter's mean activation over images and positions becomes 1.

"We normalized the network by scaling the weights such that the mean activation of each
convolutional filter over images and positions is equal to one. Such re-scaling can be
done for the VGG network without changing its output, because it contains only rectifying
linear activation functions and no normalization or pooling over feature maps."
(Gatys, Ecker, Bethge, CVPR 2016, section 2.)

Dividing layer l's filter o (kernel and bias) by s_l[o] divides its rectified output by
s_l[o] (ReLU is positively homogeneous, and so are average and max pooling); multiplying
layer l+1's input channel o by s_l[o] undoes that for layer l+1. So every layer of the
rescaled net sees exactly the pre-activations of the original, and all scales are the mean
activations of the *original* net: one forward pass per image finds them all.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import vgg
from nst_jax.converters.common import log


def mean_activations(params, images: Sequence, *, pooling: str = "avg", padding: str = "zeros") -> dict:
    """Per conv layer, the mean rectified activation of each filter over positions, averaged over images."""
    if len(images) == 0:
        raise ValueError("`images` is empty: the normalisation needs at least one image")
    channels = vgg.conv_channels(vgg.depth_of(params))  # VGG-19 or VGG-16
    layers = tuple(name.replace("conv", "relu") for name in channels)
    means = {name: np.zeros(n, np.float64) for name, n in channels.items()}
    feats_fn = jax.jit(vgg.features, static_argnames=("layers", "pooling", "padding"))
    for image in images:
        feats = feats_fn(params, jnp.asarray(image, jnp.float32), layers=layers, pooling=pooling, padding=padding)
        for name, layer in zip(channels, layers, strict=True):
            means[name] += np.asarray(jnp.mean(feats[layer], axis=(0, 1)), np.float64) / len(images)
    return means


def normalize_params(params, images: Sequence, *, pooling: str = "avg", padding: str = "zeros") -> tuple[dict, dict]:
    """Rescales ``conv1_1..conv5_4`` (VGG-16: ``..conv5_3``) so each filter's mean activation over ``images`` is 1.

    Args:
      params: canonical VGG-19 or VGG-16 parameters (any source).
      images: ``[h, w, 3]`` RGB images in [0, 1] (sizes may differ).
      pooling, padding: as the network will be used (avg pooling is the paper's).

    Returns:
      ``(normalised params, scales)``; ``scales[layer][o]`` is what filter o's activations
      were divided by. Filters that never fire on ``images`` (mean 0) keep scale 1.
    """
    scales = mean_activations(params, images, pooling=pooling, padding=padding)
    out = {"preprocess": jax.tree.map(np.asarray, params["preprocess"])}
    previous = None
    for name in vgg.conv_channels(vgg.depth_of(params)):
        scale = scales[name]
        dead = scale <= 0
        if dead.any():
            log.info("%s: %d filters never fire on these images; left unscaled", name, int(dead.sum()))
        scale = np.where(dead, 1.0, scale)
        scales[name] = scale
        kernel = np.asarray(params[name]["kernel"], np.float64) / scale  # HWIO: the last axis is the filter
        if previous is not None:
            kernel = kernel * previous[None, None, :, None]  # undo the previous layer's scaling of this input
        out[name] = {
            "kernel": kernel.astype(np.float32),
            "bias": (np.asarray(params[name]["bias"], np.float64) / scale).astype(np.float32),
        }
        previous = scale
    return out, {name: s.astype(np.float32) for name, s in scales.items()}
