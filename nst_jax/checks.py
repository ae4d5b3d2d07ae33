"""Argument checks shared by every stage: each names the argument, shows the value and says what is valid."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np


def check_choice(argument: str, value: object, choices: Sequence[object]) -> None:
    """Raises naming ``argument``, showing ``value`` and listing ``choices`` if it is not one of them."""
    if value not in choices:
        raise ValueError(f"`{argument}` must be one of {tuple(choices)}, got {value!r}")


# Values outside [0, 1] by more than this are taken for a mistake (a 0-255 image), not rounding.
RANGE_TOLERANCE = 0.5


def check_image(image, what: str) -> None:
    """Refuses what is not a float ``[h, w, 3]`` image with finite values in [0, 1] (give or take rounding).

    An integer array (e.g. uint8 0-255) is refused rather than guessed at: divide by 255 first.
    Abstract arrays (``jax.ShapeDtypeStruct``, tracers) are checked for shape and dtype only.

    Raises:
      ValueError: naming ``what``, the dtype, shape or range found.
    """
    # The dtype without np.asarray where the image has one: a tracer cannot become a numpy array.
    dtype = np.dtype(image.dtype if hasattr(image, "dtype") else np.asarray(image).dtype)
    shape = tuple(np.shape(image))
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"`{what}` has dtype {dtype}; images are floats in [0, 1] "
            "(for 0-255 integers use `image.astype(np.float32) / 255`)"
        )
    if len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 1:
        raise ValueError(f"`{what}` has shape {shape}; images are [height, width, 3] RGB")
    if isinstance(image, jax.ShapeDtypeStruct) or isinstance(image, jax.core.Tracer):
        return
    values = np.asarray(image)
    if not np.isfinite(values).all():
        raise ValueError(f"`{what}` has {int((~np.isfinite(values)).sum())} NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"`{what}` has values from {low:g} to {high:g}; images are in [0, 1] (a 0-255 image: divide by 255)"
        )
