"""Pure array operations on images: resizing and initial images.

Images are float32 ``[height, width, 3]`` RGB in [0, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.config import INITS


def fit_long_side(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """``(height, width)`` with the long side ``size`` and the aspect ratio of ``shape``."""
    h, w = shape
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize(image: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Antialiased Lanczos resize of an ``[h, w, 3]`` image to ``shape = (height, width)``, clipped to [0, 1]."""
    if tuple(image.shape[:2]) == tuple(shape):
        return jnp.asarray(image, jnp.float32)
    out = jax.image.resize(jnp.asarray(image, jnp.float32), (*shape, image.shape[2]), "lanczos3", antialias=True)
    return jnp.clip(out, 0.0, 1.0)


def initial_image(init: str | np.ndarray, content: jax.Array, style: jax.Array | None, seed: int = 0) -> jax.Array:
    """The starting image, shaped like ``content``.

    Args:
      init: ``"content"``, ``"noise"`` (uniform white noise in [0, 1], the
        paper's), ``"style"`` (the style image resized to the content's shape), or
        an image array (resized to the content's shape).
      content: the content image (its shape is the output's).
      style: the style image, needed for ``"style"``.
      seed: seed for ``"noise"``.
    """
    shape = tuple(content.shape[:2])
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"`init` must be one of {INITS} or an image, got {init!r}")
        if init == "content":
            return jnp.asarray(content, jnp.float32)
        if init == "noise":
            return jax.random.uniform(jax.random.key(seed), (*shape, 3), jnp.float32)
        if style is None:
            raise ValueError("`init` is 'style' but there is no style image")
        init = style
    return resize(jnp.asarray(init, jnp.float32), shape)
