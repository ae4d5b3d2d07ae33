"""The only module that touches disk for images: load (EXIF-aware, any mode), save (atomic), contact sheets."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

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


def _write_atomically(path: Path, write) -> Path:
    """Calls ``write(file)`` on a temporary file beside ``path``, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_image(path: str | os.PathLike, image) -> Path:
    """Writes a ``[h, w, 3]`` image in [0, 1] atomically (temporary file, then rename).

    The format follows the extension (:func:`output_format`); no partial file is
    ever left at ``path``.
    """
    path = Path(path)
    fmt = output_format(path)
    img = Image.fromarray(to_uint8(image), "RGB")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    return _write_atomically(path, lambda f: img.save(f, format=fmt, **options))


def save_json(path: str | os.PathLike, data) -> Path:
    """Writes ``data`` as indented JSON atomically."""
    text = json.dumps(data, indent=1, allow_nan=True) + "\n"
    return _write_atomically(Path(path), lambda f: f.write(text.encode()))


def contact_sheet(
    images: Sequence,
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    row_title: str = "",
    column_title: str = "",
    title: str = "",
) -> np.ndarray:
    """Tiles ``len(rows) * len(columns)`` images (row-major) with labels, like the paper's Figure 3.

    Args:
      images: ``[h, w, 3]`` images in [0, 1], row by row (smaller ones are centred in their cell).
      rows, columns: labels written left of each row and above each column.
      row_title, column_title, title: what the rows and columns sweep, and a title line.

    Returns:
      The sheet as a ``[H, W, 3]`` float image in [0, 1].
    """
    if len(images) != len(rows) * len(columns):
        raise ValueError(f"`images` has {len(images)} images for {len(rows)} rows x {len(columns)} columns")
    cell_h = max(np.shape(im)[0] for im in images)
    cell_w = max(np.shape(im)[1] for im in images)
    font = ImageFont.load_default(size=max(10, min(16, cell_h // 8)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda text: measure.textbbox((0, 0), text, font=font)[2] if text else 0
    line = int(font.size * 1.5)
    gap = 4
    left = max([text_w(r) for r in rows] + [text_w(row_title)]) + 2 * gap
    top = line * (1 + bool(column_title) + bool(title))
    sheet = Image.new("RGB", (left + len(columns) * (cell_w + gap), top + len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for text in (title, column_title):
        if text:
            draw.text((left, y), text, fill="black", font=font)
            y += line
    if row_title:
        draw.text((gap, top - line), row_title, fill="black", font=font)
    for c, label in enumerate(columns):
        draw.text((left + c * (cell_w + gap), top - line), label, fill="black", font=font)
    for r, label in enumerate(rows):
        y = top + r * (cell_h + gap)
        draw.text((gap, y + cell_h // 2 - font.size // 2), label, fill="black", font=font)
        for c in range(len(columns)):
            image = Image.fromarray(to_uint8(images[r * len(columns) + c]), "RGB")
            x = left + c * (cell_w + gap) + (cell_w - image.width) // 2
            sheet.paste(image, (x, y + (cell_h - image.height) // 2))
    return np.asarray(sheet, np.float32) / 255.0
