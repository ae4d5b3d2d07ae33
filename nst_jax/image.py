"""Pure array operations on images: resizing and initial images.

Images are float32 ``[height, width, 3]`` RGB in [0, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.checks import RANGE_TOLERANCE, check_image  # noqa: F401  (their home before nst_jax.checks)
from nst_jax.config import COLOUR_MATCHES, INITS


def as_images(images) -> list:
    """One ``[h, w, 3]`` image, or a sequence of them (entries may be ``None``), as a list."""
    return [images] if getattr(images, "ndim", None) == 3 else list(images)


def fit_long_side(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    """``(height, width)`` with the long side ``size`` and the aspect ratio of ``shape``."""
    h, w = shape
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def scaled_shape(shape: tuple[int, ...], ratio: float, floor: int = 64) -> tuple[int, int]:
    """``shape`` scaled by ``ratio``, its long side kept at ``floor`` or more (or as it is, if smaller).

    A coarse-to-fine stage scales the style images with it; the floor keeps a small style
    image's deepest feature maps non-empty.
    """
    return fit_long_side(shape, max(min(max(shape), floor), round(max(shape) * ratio)))


def resize(image: jax.Array | np.ndarray, shape: tuple[int, ...]) -> jax.Array:
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
        return resize(jnp.asarray(style, jnp.float32), shape)
    return resize(jnp.asarray(init, jnp.float32), shape)


# Colour preservation (Gatys, Bethge, Hertzmann, Shechtman, "Preserving Color in Neural Artistic
# Style Transfer", 2016). YIQ as in the paper (NTSC matrix).
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]], np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _mm(a, b) -> jax.Array:
    """A float32 matrix product: GPUs default to TensorFloat-32 (about 3 significant digits), too coarse for colours."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def rgb_to_yiq(image: jax.Array) -> jax.Array:
    """``[h, w, 3]`` RGB -> YIQ (Y in [0, 1]; I, Q signed)."""
    return _mm(jnp.asarray(image, jnp.float32), _RGB_TO_YIQ.T)


def yiq_to_rgb(image: jax.Array) -> jax.Array:
    return _mm(jnp.asarray(image, jnp.float32), _YIQ_TO_RGB.T)


def luminance_image(image: jax.Array) -> jax.Array:
    """The luminance Y as a grey RGB image (what the network sees in luminance-only transfer)."""
    y = rgb_to_yiq(image)[..., :1]
    return jnp.repeat(y, 3, axis=-1)


def match_luminance(style: jax.Array, content: jax.Array) -> jax.Array:
    """Style's luminance with the content's mean and standard deviation (the paper's eq. for L_S'), as grey RGB.

    References:
      Gatys et al. 2016, "Preserving Color...", section 2.2 (luminance-only transfer).
    """
    ys, yc = rgb_to_yiq(style)[..., 0], rgb_to_yiq(content)[..., 0]
    matched = (ys - ys.mean()) * (yc.std() / jnp.maximum(ys.std(), 1e-6)) + yc.mean()
    return jnp.repeat(matched[..., None], 3, axis=-1)


def with_content_colour(result: jax.Array | np.ndarray, content: jax.Array | np.ndarray) -> jax.Array:
    """The result's luminance with the content's I and Q channels, back in RGB, clipped to [0, 1]."""
    y = rgb_to_yiq(jnp.asarray(result))[..., :1]
    iq = rgb_to_yiq(jnp.asarray(content))[..., 1:]
    return jnp.clip(yiq_to_rgb(jnp.concatenate([y, iq], axis=-1)), 0.0, 1.0)


def _sqrt_psd(cov, inverse=False):
    values, vectors = jnp.linalg.eigh(cov)
    values = jnp.maximum(values, 1e-8)
    power = -0.5 if inverse else 0.5
    return _mm(vectors * values**power, vectors.T)


def match_colour(source: jax.Array, target: jax.Array, mode: str = "cholesky") -> jax.Array:
    """``source``'s colours moved to ``target``'s mean and covariance by an affine map ``x' = A x + b``.

    ``mode="cholesky"``: ``A = L_t L_s^-1`` (``Sigma = L L^T``); ``"eigen"``: the symmetric
    ``A = Sigma_t^(1/2) Sigma_s^(-1/2)``. ``b = mu_t - A mu_s``. Used to give the style
    image the content's colour histogram before transfer.

    References:
      Gatys et al. 2016, "Preserving Color...", section 2.1 (colour histogram matching).
    """
    if mode not in COLOUR_MATCHES:
        raise ValueError(f"`mode` must be one of {COLOUR_MATCHES}, got {mode!r}")
    s = jnp.asarray(source, jnp.float32).reshape(-1, 3)
    t = jnp.asarray(target, jnp.float32).reshape(-1, 3)
    mu_s, mu_t = s.mean(0), t.mean(0)
    eye = 1e-5 * jnp.eye(3)
    cov = lambda x, mu: _mm((x - mu).T, x - mu) / max(x.shape[0] - 1, 1)  # as jnp.cov, at full precision
    cov_s, cov_t = cov(s, mu_s) + eye, cov(t, mu_t) + eye
    if mode == "cholesky":
        a = _mm(jnp.linalg.cholesky(cov_t), jnp.linalg.inv(jnp.linalg.cholesky(cov_s)))
    else:
        a = _mm(_sqrt_psd(cov_t), _sqrt_psd(cov_s, inverse=True))
    out = _mm(s - mu_s, a.T) + mu_t
    return jnp.clip(out.reshape(jnp.shape(source)), 0.0, 1.0)


def region_masks(labels: np.ndarray, count: int) -> np.ndarray:
    """``count`` one-hot region masks ``[count, h, w]`` from a mask image of flat colours.

    The regions are the ``count`` most common colours, ordered darkest to brightest (by
    luminance); every pixel goes to the nearest of them, so anti-aliased edges are fine.
    """
    pixels = np.round(np.asarray(labels, np.float32).reshape(-1, 3) * 255).astype(np.int32)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    if len(colours) < count:
        raise ValueError(f"`masks` has {len(colours)} colours for {count} style images: give one region per style")
    chosen = colours[np.argsort(-counts, kind="stable")[:count]]
    chosen = chosen[np.argsort(chosen @ np.array([0.299, 0.587, 0.114]), kind="stable")]
    nearest = np.argmin(((pixels[:, None, :] - chosen[None]) ** 2).sum(-1), axis=1)
    h, w = np.shape(labels)[:2]
    return (nearest[None, :] == np.arange(count)[:, None]).reshape(count, h, w).astype(np.float32)


def box_blur(y: jax.Array, radius: int) -> jax.Array:
    """The mean of each ``(2r+1)^2`` window of a ``[h, w]`` map (edges reflected; the judge's
    :func:`nst_jax.quality.detail` too)."""
    k = 2 * radius + 1
    padded = jnp.pad(y, radius, mode="reflect")
    return jax.lax.reduce_window(padded, 0.0, jax.lax.add, (k, k), (1, 1), "VALID") / (k * k)


def flatness(image: jax.Array, fraction: float) -> jax.Array:
    """Where ``image`` (``[h, w, 3]``) is flat: 1 on the ``fraction`` of its pixels with the least
    local detail, 0 elsewhere, softened over 1/64 of its long side: ``[h, w]`` in [0, 1].

    Detail is the luma minus its 5x5 box blur (:func:`nst_jax.quality.flat_speckle`'s); local
    detail is its magnitude averaged over 1/64 of the long side, so the same regions are flat
    at every size.
    """
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[:2]
    radius = max(1, round(max(h, w) / 64))
    y = _mm(image, _RGB_TO_YIQ[0])  # luma (YIQ's Y, Rec. 601)
    local = box_blur(jnp.abs(y - box_blur(y, min(2, h - 1, w - 1))), min(radius, h - 1, w - 1))
    flat = (local <= jnp.quantile(local, fraction)).astype(jnp.float32)
    return box_blur(flat, min(radius, h - 1, w - 1))


def layer_mask(mask: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """A ``[h, w]`` mask downsampled (area-averaged) to a layer's ``shape``: the 2017 paper's simple propagation."""
    mask = jnp.asarray(mask, jnp.float32)
    if tuple(mask.shape) == tuple(shape):
        return mask
    return jnp.clip(jax.image.resize(mask, shape, "linear", antialias=True), 0.0, 1.0)
