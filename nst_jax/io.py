"""The only module that touches disk for images: load (EXIF-aware, any mode) and save (atomic)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nst_jax.image import fit_long_side


def output_format(path: str | os.PathLike) -> str:
    """Pillow's format name for ``path``'s extension; raises a ValueError listing the choices."""
    extension = Path(path).suffix.lower()
    formats = Image.registered_extensions()
    writable = {ext: fmt for ext, fmt in formats.items() if fmt in Image.SAVE}
    if extension not in writable:
        choices = ", ".join(sorted(e for e in writable if e in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".bmp")))
        raise ValueError(
            f"output {str(path)!r} has extension {extension!r}, which cannot be written; use one of {choices}"
        )
    return writable[extension]


def load_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Reads an image as float32 ``[h, w, 3]`` RGB in [0, 1].

    EXIF orientation is applied; any Pillow mode (palette, greyscale, CMYK,
    16-bit, with alpha) becomes RGB (alpha is composited on white). With
    ``size``, the long side is resized to it (Lanczos), keeping the aspect ratio.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"image {str(path)!r} is not a readable image ({e})") from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, np.float32)
        img = Image.fromarray(np.clip(array / (65535.0 if array.max() > 255 else 255.0) * 255, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("RGB")
    if size is not None:
        h, w = fit_long_side((img.height, img.width), size)
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), Image.Resampling.LANCZOS)
    return np.asarray(img, np.float32) / 255.0


def to_uint8(image) -> np.ndarray:
    return (np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path: str | os.PathLike, image) -> Path:
    """Writes a ``[h, w, 3]`` image in [0, 1] atomically (temporary file, then rename).

    The format follows the extension (:func:`output_format`); no partial file is
    ever left at ``path``.
    """
    path = Path(path)
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(to_uint8(image), "RGB")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            img.save(f, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
