"""An independent judge of a stylised picture: how close its style, content and texture are.

None of these numbers uses the optimiser's loss or its weights, so they can compare
settings (and other tools' outputs) fairly:

- ``style``: per-layer relative Gram distance ``||G(x) - G(s)||_F / ||G(s)||_F`` between
  the output ``x`` and the style image ``s`` (Gram/M, the VGG's average-pooled features).
  The deep layers (relu4_1, relu5_1) carry the large strokes, the shallow ones the
  colours and fine texture.
- ``content``: relative feature distance ``||F(x) - F(c)||_F / ||F(c)||_F`` to the content
  image ``c`` at relu4_2 (the paper's content layer).
- ``high_frequency``: the share of the luma power spectrum (mean removed, Hann window)
  above a quarter of the sampling rate, radially (|f| > 0.25 cycles per pixel).
- ``flat_speckle``: RMS of the luma's fine detail (the image minus its 5x5 box blur) over
  the quarter of the pixels where the *content* is flattest (sky, water, walls): speckle
  and ripples show there first.
- :func:`composition_distance`: how far apart two pictures are in what the eye reads first
  (where the objects, the masses of light and dark and the large strokes are): both brought
  to a thumbnail of ``COMPOSITION_SIZE`` (128) px, the relative relu4_2 feature distance.
  Between a 256 px preview and a 768 px print of the same settings it says whether the
  preview predicts the print; between the content and the print, how far styling moves the
  picture. At the preview's own size (``size=256``) the same distance also counts where each
  stroke lies, which a larger print redraws finer by design.

Images are ``[h, w, 3]`` RGB in [0, 1]. The content is compared at the output's size, the
style at the output's long side (as the CLI loads it).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import losses, vgg
from nst_jax.image import box_blur, fit_long_side, resize

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
# Long side at which composition_distance compares by default: at 128 px a brush stroke is a
# pixel or two while a building or a swirl is still ten or more; relu4_2 is then a 16 x 12 map.
COMPOSITION_SIZE = 128
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@jax.jit
def _features(params, image):
    return vgg.features(params, image, (*STYLE_LAYERS, CONTENT_LAYER), pooling="avg", padding="zeros")


def _relative(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-12))


def _pair(params, a, b):
    return tuple(_features(params, jnp.asarray(x, jnp.float32)) for x in (a, b))


def style_distances(params, image, style, layers: Sequence[str] = STYLE_LAYERS) -> dict[str, float]:
    """``{layer: ||G(image) - G(style)|| / ||G(style)||}`` (style used at the size given)."""
    mine, theirs = _pair(params, image, style)
    return {layer: _relative(losses.gram(mine[layer]), losses.gram(theirs[layer])) for layer in layers}


def content_distance(params, image, content, layer: str = CONTENT_LAYER) -> float:
    """``||F(image) - F(content)|| / ||F(content)||`` at ``layer`` (content at the image's size)."""
    mine, theirs = _pair(params, image, content)
    return _relative(mine[layer], theirs[layer])


def composition_distance(
    params, image, reference, size: int | None = COMPOSITION_SIZE, layer: str = CONTENT_LAYER
) -> float:
    """``||F(a) - F(b)|| / ||F(b)||`` at ``layer``, ``a`` and ``b`` being ``image`` and ``reference``
    brought to a long side of ``size`` (resized, antialiased), or to the smaller one's size.

    At the smaller size the fine texture that only the larger picture can show is filtered
    out, so what is compared is the composition: 0 for a picture against itself (at any
    size), and growing as objects and large strokes move or change.

    Args:
      params: VGG-19 parameters (:func:`nst_jax.load_params`).
      image, reference: ``[h, w, 3]`` RGB in [0, 1], any sizes (the same aspect ratio give or
        take rounding: both are resized to one ``(height, width)``).
      size: the long side they are compared at (default ``COMPOSITION_SIZE``, a thumbnail);
        ``None``: the smaller one's shape.
      layer: the VGG layer compared (default relu4_2, the paper's content layer).
    """
    image, reference = (np.clip(np.asarray(x, np.float32), 0.0, 1.0) for x in (image, reference))
    if size is None:
        shape = min(image.shape[:2], reference.shape[:2], key=lambda s: s[0] * s[1])
    else:
        shape = fit_long_side(reference.shape[:2], size)
    mine, theirs = _pair(params, resize(image, shape), resize(reference, shape))
    return _relative(mine[layer], theirs[layer])


def luma(image) -> np.ndarray:
    """``[h, w]`` luma (Rec. 601 weights) of an RGB image."""
    return np.asarray(image, np.float32) @ _LUMA


def high_frequency_share(image, cutoff: float = 0.25) -> float:
    """Share of the luma's power spectrum above ``cutoff`` cycles per pixel (0.25: half of Nyquist).

    The mean is removed and a Hann window applied (so the image's borders add no false
    high frequencies); the DC term is excluded from the total.
    """
    y = luma(image).astype(np.float64)
    h, w = y.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((y - y.mean()) * window)) ** 2
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    total = power[radius > 0].sum()
    return float(power[radius > cutoff].sum() / total) if total > 0 else 0.0


def detail(y: np.ndarray, radius: int = 2) -> np.ndarray:
    """The fine detail of a ``[h, w]`` map: itself minus its ``(2r+1)^2`` box blur."""
    return y - np.asarray(box_blur(jnp.asarray(y, jnp.float32), radius))


def flat_speckle(image, content, fraction: float = 0.25) -> float:
    """RMS fine detail of ``image``'s luma where ``content`` (same size) is flattest.

    The flat region is the ``fraction`` of the pixels with the least local detail in ``content``.
    """
    local = np.asarray(box_blur(jnp.asarray(np.abs(detail(luma(content)))), 4))
    flat = local <= np.quantile(local, fraction)
    return float(np.sqrt(np.mean(np.square(detail(luma(image))[flat]))))


def judge(params, output, content, style) -> dict:
    """All the judge's numbers for one output, as a JSON-ready dict.

    Args:
      params: VGG-19 parameters (:func:`nst_jax.load_params`).
      output: the stylised image ``[h, w, 3]``.
      content: the content image (any size; resized to the output's).
      style: the style image (any size; resized so its long side is the output's).

    Returns:
      ``{"style": {layer: distance}, "content": distance, "high_frequency": share,
      "flat_speckle": rms, "shape": [h, w]}``.
    """
    output = np.clip(np.asarray(output, np.float32), 0.0, 1.0)
    shape = output.shape[:2]
    content = resize(jnp.asarray(content, jnp.float32), shape)
    style = resize(jnp.asarray(style, jnp.float32), fit_long_side(np.shape(style)[:2], max(shape)))
    return {
        "style": style_distances(params, output, style),
        "content": content_distance(params, output, content),
        "high_frequency": high_frequency_share(output),
        "flat_speckle": flat_speckle(output, np.asarray(content)),
        "shape": list(shape),
    }
