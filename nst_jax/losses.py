"""Pure per-image losses: Gram matrix, content, style and total variation.

:func:`gram` takes feature maps with any leading batch axes, ``[..., h, w, c]``; the
losses take one image's feature maps ``[h, w, c]`` (batch them with ``jax.vmap``).

Normalisation (see docs/loss.md): the Gram matrix is divided by
the number of positions M = h*w, and the losses are means, so they do not grow
with image size. The paper's ``E_l = 1/(4 N^2 M^2) sum (G - A)^2`` equals
``style_layer_loss / 4``, and its ``1/2 sum (F - P)^2`` equals
``content_loss * N*M / 2``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def gram(features: jax.Array) -> jax.Array:
    """Gram matrix ``F^T F / M`` of ``[..., h, w, c]`` features, shape ``[..., c, c]``.

    Leading axes are batch axes: one Gram matrix per image, in one batched matmul.

    References:
      Gatys et al., "Image Style Transfer Using Convolutional Neural Networks", eq. 3
      (without the division by M = h*w, added here so the loss is size-independent).
    """
    shape = jnp.shape(features)
    if len(shape) < 3:
        raise ValueError(f"`features` must be [..., height, width, channels] feature maps, got shape {shape}")
    *batch, h, w, c = shape
    flat = jnp.reshape(features, (*batch, h * w, c))
    return jnp.matmul(jnp.swapaxes(flat, -1, -2), flat, precision=jax.lax.Precision.HIGHEST) / (h * w)


def masked_gram(features: jax.Array, mask: jax.Array) -> jax.Array:
    """Guided Gram matrix ``(F * T)^T (F * T) / sum(T^2)`` of ``[h, w, c]`` features and a ``[h, w]`` mask.

    References:
      Gatys, Ecker, Bethge, Hertzmann, Shechtman, "Controlling Perceptual Factors in Neural
      Style Transfer", CVPR 2017, eq. 4 (normalised by the region's size, as :func:`gram` is by M).
    """
    h, w, c = features.shape
    weights = mask.reshape(h * w, 1)
    flat = features.reshape(h * w, c) * weights
    return jnp.matmul(flat.T, flat, precision=jax.lax.Precision.HIGHEST) / jnp.maximum(jnp.sum(weights**2), 1e-6)


def content_loss(features: jax.Array, target: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean squared difference of feature maps (the paper's eq. 1 up to the factor 2/(N M)).

    ``weights``: ``[h, w]``, one per position of the ``[..., h, w, c]`` maps (not in the paper:
    ``StyleConfig.flat_content_weight``); ``None``: every position alike, as the paper.
    """
    if weights is None:
        return jnp.mean(jnp.square(features - target))
    return jnp.mean(weights[..., None] * jnp.square(features - target))


def style_layer_loss(features: jax.Array, target_gram: jax.Array) -> jax.Array:
    """Mean squared difference of Gram matrices (the paper's eq. 4 times 4)."""
    return jnp.mean(jnp.square(gram(features) - target_gram))


def style_loss(
    features: Mapping[str, jax.Array],
    target_grams: Mapping[str, jax.Array],
    layer_weights: Mapping[str, jax.Array],
) -> jax.Array:
    """Weighted sum of :func:`style_layer_loss` over the layers of ``target_grams`` (the paper's eq. 5)."""
    terms = [layer_weights[k] * style_layer_loss(features[k], target_grams[k]) for k in target_grams]
    return sum(terms[1:], terms[0]) if terms else jnp.zeros(())


def inverse_mean_square(target: jax.Array) -> jax.Array:
    """``1 / mean(target^2)``, the scale that turns a mean squared difference from ``target`` into a
    squared relative distance ``||x - target||^2 / ||target||^2``; 1 for an all-zero target.

    Not in the paper (see ``StyleConfig.loss_scale``).
    """
    mean_square = jnp.mean(jnp.square(target))
    return 1.0 / jnp.where(mean_square > 0, mean_square, 1.0)


def total_variation(image: jax.Array, circular: bool = False) -> jax.Array:
    """Mean squared difference of neighbouring pixels, summed over both directions.

    Not in the paper; neural-style and most later tools add it to suppress high-frequency noise.
    ``circular=True`` also counts the pairs across the wrapped edges (for seamless tiles).
    """
    if circular:
        dy = jnp.square(jnp.roll(image, -1, axis=0) - image)
        dx = jnp.square(jnp.roll(image, -1, axis=1) - image)
    else:
        dy = jnp.square(image[1:, :, :] - image[:-1, :, :])
        dx = jnp.square(image[:, 1:, :] - image[:, :-1, :])
    return jnp.mean(dy) + jnp.mean(dx)


def anchor_loss(image: jax.Array, target: jax.Array) -> jax.Array:
    """Squared relative distance of ``image``'s thumbnail from ``target``, a ``[h', w', 3]`` thumbnail.

    ``mean((T(x) - t)^2) / mean((t - mean(t))^2)``: ``T`` is an antialiased Lanczos resize to
    ``target``'s size (linear, so the term is a smooth quadratic in the pixels); the
    denominator is the target's variance (1 for a flat target).

    Not in the paper: it keeps a coarse-to-fine stage's composition (see ``StyleConfig.anchor_weight``).
    """
    thumbnail = jax.image.resize(image, jnp.shape(target), "lanczos3", antialias=True)
    variance = jnp.mean(jnp.square(target - jnp.mean(target, axis=(0, 1))))
    return jnp.mean(jnp.square(thumbnail - target)) / jnp.where(variance > 0, variance, 1.0)


def box_penalty(image: jax.Array) -> jax.Array:
    """Mean squared distance of the pixels from the box [0, 1] (zero inside it).

    Not in the paper: a smooth way to keep an L-BFGS iterate in range (see ``StyleConfig.box``).
    """
    return jnp.mean(jnp.square(jnp.maximum(image - 1.0, 0.0)) + jnp.square(jnp.maximum(-image, 0.0)))
