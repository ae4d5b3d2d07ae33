"""The only module that touches disk for images: load (EXIF-aware, any mode), save (atomic), contact sheets."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from nst_jax import bits16, icc
from nst_jax.checks import check_choice
from nst_jax.image import fit_long_side

# The largest image read, in pixels: an 8K frame is 33 MP, a 61 MP camera's photo fits.
# Checked on the header, before anything is decoded (a 131-byte PNG can claim 13000 x 13000).
MAX_IMAGE_PIXELS = 80_000_000
# The largest embedded ICC profile read: a printer's CMYK profile is a few MB, an RGB one a few KB.
MAX_PROFILE_BYTES = 16 * 2**20
# What a user's format name is checked for: an RGB image round-trips through it.
_COMMON_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".bmp")


@functools.cache
def _can_encode_rgb(fmt: str) -> bool:
    try:
        Image.new("RGB", (8, 8)).save(io.BytesIO(), format=fmt)
    except Exception:  # Pillow raises OSError, ValueError, KeyError... for a format it lists but cannot write
        return False
    return True


def output_format(path: str | os.PathLike, what: str = "output") -> str:
    """Pillow's format name for ``path``'s extension, checked by a trial encoding of an RGB image.

    Raises:
      ValueError: naming ``what``, the extension and the common choices.
    """
    extension = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(extension)
    if fmt is None or fmt not in Image.SAVE or not _can_encode_rgb(fmt):
        raise ValueError(
            f"`{what}`: {str(path)!r} has extension {extension!r}, which cannot be written as an RGB image; "
            f"use one of {', '.join(_COMMON_EXTENSIONS)}"
        )
    return fmt


# Bits per channel an output can have; 16 only where bits16 has an encoder.
BITS = (8, 16)
_SIXTEEN_BIT = {"PNG": bits16.png16, "TIFF": bits16.tiff16}


def output_bits(path: str | os.PathLike, bits: int | None = None, what: str = "output") -> int:
    """Bits per channel :func:`save_image` writes to ``path``: ``bits``, or by default 16 for
    .tif/.tiff (a print file) and 8 for every other format.

    Raises:
      ValueError: an unknown format (:func:`output_format`), ``bits`` not in :data:`BITS`, or 16
        bits for a format written at 8 only.
    """
    fmt = output_format(path, what)
    if bits is None:
        return 16 if fmt == "TIFF" else 8
    check_choice("bits", bits, BITS)
    if bits == 16 and fmt not in _SIXTEEN_BIT:
        raise ValueError(f"`bits` 16 needs a .png or .tif output; `{what}` {str(path)!r} is {fmt}, written at 8 bits")
    return bits


def check_output_image(path: str | os.PathLike, what: str = "output", bits: int | None = None) -> Path:
    """Everything about writing an image to ``path`` that can be checked before the work: format,
    bits per channel, folder, path.

    Raises:
      ValueError: naming ``what`` (see :func:`nst_jax.files.check_output_file`).
    """
    from nst_jax.files import check_output_file

    return check_output_file(path, what, encode=lambda: output_bits(path, bits, what))


def _png_data_complete(path: Path) -> bool:
    """Whether a PNG's image data holds every row its header declares (Pillow pads missing rows silently)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return True  # not a PNG: Pillow's own checks apply
        length, kind = struct.unpack(">I4s", f.read(8))
        if kind != b"IHDR" or length != 13:
            return False
        w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", f.read(13))
        if colour not in channels:
            return False
        bits = channels[colour] * depth
        row_bytes = lambda width: 1 + math.ceil(width * bits / 8) if width else 0
        if interlace:  # Adam7: seven passes of sub-images
            passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
            expected = 0
            for x0, y0, dx, dy in passes:
                pw, ph = max(0, math.ceil((w - x0) / dx)), max(0, math.ceil((h - y0) / dy))
                expected += ph * row_bytes(pw) if pw else 0
        else:
            expected = h * row_bytes(w)
        f.seek(4, os.SEEK_CUR)  # IHDR's CRC
        inflate, produced = zlib.decompressobj(), 0
        while produced < expected:
            header = f.read(8)
            if len(header) < 8:
                break
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IEND":
                break
            if kind != b"IDAT":
                f.seek(length + 4, os.SEEK_CUR)
                continue
            data = f.read(length)
            f.seek(4, os.SEEK_CUR)
            try:
                while data and produced < expected:
                    produced += len(inflate.decompress(data, 1 << 20))
                    data = inflate.unconsumed_tail
            except zlib.error:
                return False
        return produced >= expected


def _open(path: Path, what: str):
    """Opens ``path`` with Pillow after the checks that need no decoding; returns the opened image."""
    if path.is_dir():
        raise IsADirectoryError(f"`{what}`: {str(path)!r} is a folder, not an image")
    if not path.is_file():
        raise FileNotFoundError(f"`{what}`: image {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings (bombs, odd palettes) never reach the user's terminal
            opened = Image.open(path)
    except Image.DecompressionBombError:
        raise ValueError(
            f"`{what}`: {str(path)!r} declares more than {MAX_IMAGE_PIXELS // 10**6} megapixels; "
            "nst-jax reads smaller images (make it smaller first)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"`{what}`: {str(path)!r} is not a readable image ({e})") from None
    w, h = opened.size
    if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
        opened.close()
        raise ValueError(
            f"`{what}`: {str(path)!r} declares {w} x {h} pixels; nst-jax reads images of 1 to "
            f"{MAX_IMAGE_PIXELS // 10**6} megapixels (make it smaller first)"
        )
    return opened


def image_shape(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """``(height, width)`` of an image file as :func:`load_image` would return it, from its header alone."""
    with _open(Path(path), what) as opened, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w, h = opened.size
        try:  # a PNG's EXIF may follow its pixels: Pillow reads on, and a truncated file fails here
            orientation = opened.getexif().get(0x0112, 1) if hasattr(opened, "getexif") else 1
        except (OSError, SyntaxError, ValueError, struct.error) as e:
            raise ValueError(f"`{what}`: {str(path)!r} is not a readable image ({e})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def load_image(path: str | os.PathLike, size: int | None = None, what: str = "image") -> np.ndarray:
    """Reads an image as float32 ``[h, w, 3]`` RGB in [0, 1].

    EXIF orientation is applied; any Pillow mode (palette, greyscale, CMYK,
    16-bit, with alpha) becomes RGB (alpha is composited on white), and an embedded ICC
    profile (Adobe RGB, Display P3, a CMYK press) is converted to sRGB, relative colorimetric:
    a matrix/TRC RGB one in float (:mod:`nst_jax.icc`), any other by LittleCMS at 8 bits;
    without one the pixels are taken as sRGB. 16-bit greyscale without a profile keeps its
    levels (no 8-bit step), and so does 16-bit RGB(A) PNG or TIFF, where OpenCV is installed
    (the ``video`` extra): in float with no profile, an sRGB or a matrix/TRC one, through a
    table of LittleCMS's 8-bit conversions interpolated with any other. With
    ``size``, the long side is resized to it (Lanczos), keeping the aspect ratio.

    Raises:
      FileNotFoundError: no such file.
      IsADirectoryError: a folder.
      ValueError: not a readable image, a truncated one, more than :data:`MAX_IMAGE_PIXELS`,
        an ICC profile that cannot be read or does not fit the pixels, or ``size`` below 1;
        every message names ``what`` (the argument) and the file.
    """
    path = Path(path)
    if size is not None and (not isinstance(size, int | np.integer) or size < 1):
        raise ValueError(f"`size` must be a positive integer (pixels of the long side), got {size!r}")
    opened = _open(path, what)
    sixteen = _sixteen_bit_rgb(opened)
    try:
        with opened, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orientation = opened.getexif().get(_ORIENTATION, 1)
            img = ImageOps.exif_transpose(opened)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"`{what}`: {str(path)!r} is not a readable image ({e})") from None
    if not _png_data_complete(path):
        raise ValueError(f"`{what}`: {str(path)!r} is truncated (its image data ends before the last row)")
    profile = img.info.get("icc_profile")
    where = f"`{what}`: {str(path)!r}"
    # A matrix/TRC RGB profile (Adobe RGB, Display P3, ProPhoto) is applied in float (nst_jax.icc),
    # after LittleCMS has read it (its refusals stand); any other goes through LittleCMS at 8 bits.
    shaper, srgb = None, not profile
    if profile and img.mode in ("RGB", "RGBA", "P"):
        _read_profile(profile, where)
        shaper = icc.read(profile)
        srgb = _is_srgb(profile, shaper)
        if srgb:
            shaper = None
    if sixteen and img.mode in ("RGB", "RGBA"):
        array = _decode_sixteen_bit(path, opened.size, orientation)
        if array is not None:  # 16-bit RGB reaches the network with all its levels (no 8-bit step)
            if profile and not srgb:
                array = icc.to_srgb(array, shaper) if shaper is not None else _through_lattice(array, profile, where)
            return _resize_float(array, size)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, np.float32)
        array = np.clip(array / (65535.0 if array.max() > 255 else 255.0), 0.0, 1.0)
        if not profile:  # 16-bit greyscale reaches the network with all its levels (no 8-bit step)
            return np.repeat(_resize_float(array[..., None], size), 3, axis=-1)
        img = Image.fromarray((array * 255 + 0.5).astype(np.uint8))  # LittleCMS converts it at 8 bits
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if shaper is not None:  # converted in float: no 8-bit step after the conversion either
        rgb = np.asarray(img.convert("RGB"), np.float32) / 255.0
        return _resize_float(icc.to_srgb(rgb, shaper), size)
    if profile:
        img = _to_srgb(img, profile, where)
    img = img.convert("RGB")
    if size is not None:
        h, w = fit_long_side((img.height, img.width), size)
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), Image.Resampling.LANCZOS)
    return np.asarray(img, np.float32) / 255.0


_ORIENTATION = 0x0112  # the EXIF orientation tag
# Each EXIF orientation as numpy does what ImageOps.exif_transpose does to it.
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}  # fmt: skip


def _sixteen_bit_rgb(opened) -> bool:
    """Whether Pillow, which holds RGB at 8 bits, is about to drop the low bits of 16-bit RGB(A) samples."""
    if opened.mode not in ("RGB", "RGBA") or not opened.tile:
        return False
    tile = opened.tile[0]  # (codec, extents, offset, args): a plain tuple in older Pillow, a named one in newer
    if not isinstance(tile, tuple) or len(tile) < 4:
        return False
    args = tile[3]
    rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
    return isinstance(rawmode, str) and ";16" in rawmode


def _is_srgb(profile, shaper: icc.MatrixShaper | None) -> bool:
    """Whether an embedded profile is sRGB, so the pixels need no conversion.

    A matrix/TRC profile (``shaper``, :func:`nst_jax.icc.read`'s) is compared by its numbers
    (:func:`nst_jax.icc.same_colours`), whatever its description says; any other by its
    description, which LittleCMS reads.
    """
    from PIL import ImageCms

    if shaper is not None:
        return icc.same_colours(shaper, icc.srgb())
    try:
        description = ImageCms.getProfileDescription(_read_profile(profile, "the image"))
    except (ValueError, ImageCms.PyCMSError):
        return False
    return description.strip().lower().startswith("srgb")


def _decode_sixteen_bit(path: Path, size: tuple[int, int], orientation) -> np.ndarray | None:
    """16-bit RGB(A) PNG or TIFF samples as float32 ``[h, w, 3]`` in [0, 1] (alpha composited on white).

    OpenCV decodes them (the ``video`` extra; Pillow, which already read and checked the file
    at 8 bits, has no 16-bit RGB mode). ``None`` without OpenCV, or when its pixels are not the
    ``size`` (width, height) Pillow read: the caller keeps the 8-bit pixels then.
    """
    try:
        import cv2
    except ImportError:
        return None
    if path.stat().st_size > MAX_IMAGE_PIXELS * 8 + 2**24:  # more than 16-bit RGBA pixels and a margin
        return None
    data = np.fromfile(path, np.uint8)
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    w, h = size
    if decoded is None or decoded.dtype != np.uint16 or decoded.shape[:2] != (h, w) or decoded.ndim != 3:
        return None
    if decoded.shape[2] not in (3, 4):
        return None
    array = decoded[..., [2, 1, 0, 3][: decoded.shape[2]]].astype(np.float32) / 65535.0  # BGR(A) to RGB(A)
    if array.shape[2] == 4:
        alpha = array[..., 3:]
        array = array[..., :3] * alpha + (1.0 - alpha)
    array = _ORIENT.get(orientation, lambda a: a)(array)
    return np.ascontiguousarray(array)


def _through_lattice(array: np.ndarray, profile: bytes, where: str) -> np.ndarray:
    """16-bit RGB in a profile LittleCMS must convert (a lookup-table one), to sRGB without an 8-bit step.

    LittleCMS converts every 8-bit RGB triple once (256^3, half a second), and each pixel is
    interpolated between the eight around it (trilinear): an 8-bit level lands where
    LittleCMS puts it, and the levels between stay between, so a 16-bit gradient keeps its
    smoothness instead of banding at 256 levels.
    """
    return _interpolate(array, _lattice(lambda img: _to_srgb(img, profile, where)))


def _lattice(convert) -> np.ndarray:
    """``convert`` (8-bit RGB Pillow image -> another) on every 8-bit RGB triple: uint8 ``[256, 256, 256, C]``."""
    levels = np.arange(256, dtype=np.uint8)
    every = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(4096, 4096, 3)
    converted = np.asarray(convert(Image.fromarray(every, "RGB")), np.uint8)
    return converted.reshape(256, 256, 256, -1)


def _interpolate(array: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Float RGB ``array`` in [0, 1] through ``table`` (:func:`_lattice`), trilinear between the eight
    8-bit triples around each pixel, a million pixels at a time: ``[..., C]`` in [0, 1]."""
    flat = array.reshape(-1, 3)
    channels = table.shape[-1]
    out = np.empty((len(flat), channels), np.float32)
    for start in range(0, len(flat), icc.CHUNK_PIXELS):
        scaled = np.clip(flat[start : start + icc.CHUNK_PIXELS], 0.0, 1.0) * 255.0
        low = np.minimum(scaled.astype(np.int64), 254)
        weight = scaled - low  # [n, 3]: each channel's fraction of the way to its next level
        total = np.zeros((len(low), channels), np.float64)
        for corner in np.ndindex(2, 2, 2):
            step = np.array(corner)
            share = np.prod(np.where(step == 1, weight, 1.0 - weight), axis=-1)
            index = low + step
            total += share[:, None] * table[index[:, 0], index[:, 1], index[:, 2]]
        out[start : start + icc.CHUNK_PIXELS] = total / 255.0
    return out.reshape(*array.shape[:-1], channels)


def _resize_float(array: np.ndarray, size: int | None) -> np.ndarray:
    """A float ``[h, w, C]`` image with its long side resized to ``size`` (Lanczos, channel by channel), in [0, 1]."""
    if size is not None and max(array.shape[:2]) != size:
        h, w = fit_long_side(array.shape[:2], size)
        channels = [Image.fromarray(np.ascontiguousarray(array[..., c]), "F") for c in range(array.shape[2])]
        array = np.stack([np.asarray(c.resize((w, h), Image.Resampling.LANCZOS), np.float32) for c in channels], -1)
    return np.clip(array, 0.0, 1.0).astype(np.float32)


def _read_profile(profile, where: str):
    """An embedded ICC profile, parsed by LittleCMS after its size is checked against :data:`MAX_PROFILE_BYTES`."""
    from PIL import ImageCms

    if not isinstance(profile, bytes) or len(profile) > MAX_PROFILE_BYTES:
        size = len(profile) if isinstance(profile, bytes) else type(profile).__name__
        raise ValueError(f"{where} embeds an ICC profile of {size} bytes; nst-jax reads up to {MAX_PROFILE_BYTES}")
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(profile))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        raise ValueError(f"{where} embeds an ICC profile that cannot be read ({e})") from None


def embedded_profile(path: str | os.PathLike, what: str = "image") -> bytes | None:
    """The ICC profile embedded in an image file (None: none, so sRGB), checked as :func:`load_image`
    checks it (size, readable by LittleCMS), from the file's header: nothing is decoded.

    Raises:
      FileNotFoundError, IsADirectoryError, ValueError: as :func:`load_image`.
    """
    with _open(Path(path), what) as opened:
        profile = opened.info.get("icc_profile")
    if not profile:
        return None
    _read_profile(profile, f"`{what}`: {str(path)!r}")
    return profile


# The Pillow mode an output is written in for each colour space a kept profile may have, and
# the formats that hold that mode.
_PROFILE_MODES = {"RGB": ("RGB", ("PNG", "JPEG", "WEBP", "TIFF")), "CMYK": ("CMYK", ("JPEG", "TIFF")),
                  "GRAY": ("L", ("PNG", "JPEG", "WEBP", "TIFF"))}  # fmt: skip


def check_output_profile(path: str | os.PathLike, profile: bytes | None, bits: int | None = None) -> str | None:
    """The Pillow mode ``path`` will be written in, back in ``profile`` (None: no profile given), or
    a ValueError now, before the run: a profile of another colour space than RGB, CMYK or grey,
    one the format cannot hold (CMYK in a PNG), or 16 bits per channel asked for with a grey
    profile (written at 8 bits, a .tif too). RGB and CMYK ones are written at 16 bits where asked."""
    if profile is None:
        return None
    where = f"the output {str(path)!r}"
    space = _read_profile(profile, "the kept profile").profile.xcolor_space.strip()
    if space not in _PROFILE_MODES:
        raise ValueError(f"`keep_profile`: the content's profile is for {space}; nst-jax writes RGB, CMYK or grey")
    mode, formats = _PROFILE_MODES[space]
    fmt = output_format(path)
    if fmt not in formats:
        raise ValueError(
            f"`keep_profile`: {where} is {fmt}, which cannot hold the content's {space} pixels; "
            f"use {' or '.join('.' + f.lower().replace('jpeg', 'jpg').replace('tiff', 'tif') for f in formats)}"
        )
    if bits is not None and bits != 8 and mode == "L":
        raise ValueError(f"`keep_profile` writes 8 bits per channel with a grey profile, not {bits}")
    return mode


def _from_srgb(img: Image.Image, profile: bytes, mode: str) -> Image.Image:
    """An 8-bit sRGB ``img`` converted to ``profile`` (the kept one; LittleCMS, relative colorimetric)
    as Pillow ``mode`` ("RGB", "CMYK" or "L"): :func:`_to_srgb` the other way."""
    from PIL import ImageCms

    target, intent = _read_profile(profile, "the kept profile"), ImageCms.Intent.RELATIVE_COLORIMETRIC
    converted = ImageCms.profileToProfile(img, _srgb_profile(), target, renderingIntent=intent, outputMode=mode)
    assert converted is not None  # None only with inPlace=True
    return converted


@functools.lru_cache(maxsize=1)
def _from_srgb_table(profile: bytes, mode: str) -> np.ndarray:
    """:func:`_from_srgb` on every 8-bit triple: :func:`_interpolate` takes a float image through it
    with no 8-bit step."""
    return _lattice(lambda img: _from_srgb(img, profile, mode))


def _to_srgb(img: Image.Image, profile: bytes, where: str) -> Image.Image:
    """``img`` converted from its embedded ICC ``profile`` to sRGB (LittleCMS, relative colorimetric).

    Raises:
      ValueError: a profile over :data:`MAX_PROFILE_BYTES`, one LittleCMS cannot read, or one that
        does not fit the pixels (an RGB profile on CMYK pixels).
    """
    from PIL import ImageCms

    source = _read_profile(profile, where)
    if img.mode not in ("RGB", "CMYK", "L", "LAB"):  # after alpha was composited: what LittleCMS converts
        img = img.convert("RGB")  # palette and the like: their colours are the profile's RGB
    try:
        converted = ImageCms.profileToProfile(
            img, source, _srgb_profile(), renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        raise ValueError(f"{where} embeds an ICC profile that does not fit its {img.mode} pixels ({e})") from None
    assert converted is not None  # None only with inPlace=True
    return converted


@functools.cache
def _srgb_profile():
    """The profile inputs are converted to: the one every output embeds (:func:`bits16.srgb_profile`)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(io.BytesIO(bits16.srgb_profile()))


def load_proof_profile(path: str | os.PathLike, what: str = "proof") -> bytes:
    """A printer's (or any output device's) ICC profile file for :func:`soft_proof`, checked now:
    its size against :data:`MAX_PROFILE_BYTES` before it is read, then LittleCMS must read it
    and build the proofing transform with it (an input-only or abstract profile cannot be proofed to).

    Raises:
      FileNotFoundError, IsADirectoryError: no such file, a folder.
      ValueError: too large, not a profile LittleCMS reads, or one it cannot proof to; the message names ``what``.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"`{what}`: {str(path)!r} is a folder, not an ICC profile")
    if not path.is_file():
        raise FileNotFoundError(f"`{what}`: ICC profile {str(path)!r} does not exist")
    where = f"`{what}`: {str(path)!r}"
    with path.open("rb") as f:
        data = f.read(MAX_PROFILE_BYTES + 1)  # never more than the cap, whatever the file's size
    if len(data) > MAX_PROFILE_BYTES:
        raise ValueError(f"{where} is over {MAX_PROFILE_BYTES} bytes; nst-jax reads ICC profiles up to that")
    try:
        _read_profile(data, where)
    except ValueError:
        raise ValueError(f"{where} is not an ICC profile LittleCMS can read") from None
    _proof_transform(data, where)
    return data


def _proof_transform(profile: bytes, where: str):
    """sRGB -> the device of ``profile`` -> sRGB (LittleCMS's soft-proofing transform, Pillow's default
    flag): perceptual into the device, as a print is made from an sRGB file, then relative
    colorimetric back, so the paper's white stays white (LittleCMS's default, absolute, would tint it)."""
    from PIL import ImageCms

    srgb = _srgb_profile()
    try:
        return ImageCms.buildProofTransform(
            srgb, srgb, _read_profile(profile, where), "RGB", "RGB",
            renderingIntent=ImageCms.Intent.PERCEPTUAL, proofRenderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        )  # fmt: skip
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        raise ValueError(f"{where} cannot be proofed to (LittleCMS: {e}); give an output device's profile") from None


@functools.lru_cache(maxsize=1)
def _proof_table(profile: bytes) -> np.ndarray:
    """:func:`_proof_transform` on every 8-bit triple (50 MB; one profile kept: a run proofs all its images to one)."""
    transform = _proof_transform(profile, "`proof`")
    return _lattice(transform.apply)


def soft_proof(image, profile: bytes) -> np.ndarray:
    """``image`` (float RGB in [0, 1], sRGB; ``[..., h, w, 3]``, a clip's frames too) as the device
    of ICC ``profile`` (a printer's, a press's) reproduces it, seen in sRGB: colours it cannot
    print are mapped into its gamut (perceptual intent: a press's tables may move the colours near
    its gamut's edge a little too, as a print would), and black becomes the press's black.
    Styling proofed images makes a picture of colours the printer has. In float: LittleCMS
    proofs every 8-bit triple once (a second or two), and each pixel is interpolated between the
    eight around it, so a 16-bit or resized image keeps its smoothness (an 8-bit triple lands
    exactly where LittleCMS puts it).

    Raises:
      ValueError: ``profile`` cannot be read or proofed to (:func:`load_proof_profile` says so first).
    """
    array = np.asarray(image, np.float32)
    if array.ndim < 3 or array.shape[-1] != 3:
        raise ValueError(f"`image` must be [h, w, 3] RGB (or a batch of them, [..., h, w, 3]), got shape {array.shape}")
    return _interpolate(array, _proof_table(bytes(profile)))


def load_masks(path, style_mask_paths, shape: tuple[int, int], styles):
    """Spatial control's masks from files: the output's region masks (``[R, h, w]`` at ``shape``) from a mask
    image of flat colours, one region per entry of ``styles`` (darkest colour first), and, when
    ``style_mask_paths`` names one image per style, each style's mask at its image's size (``None`` for a
    style that is ``None``, and without ``style_mask_paths``).
    """
    import jax

    from nst_jax.image import region_masks, resize

    labels = load_image(path, what="--masks")
    # Nearest neighbour: resampling must not invent colours between the regions'.
    labels = np.asarray(jax.image.resize(labels, (*shape, 3), "nearest"))
    masks = region_masks(labels, len(styles))
    if not style_mask_paths:
        return masks, None
    if len(style_mask_paths) != len(styles):
        raise ValueError(f"--style-masks has {len(style_mask_paths)} images for {len(styles)} STYLE images")
    style_masks = []
    for mask_path, style in zip(style_mask_paths, styles, strict=True):
        grey = load_image(mask_path, what="--style-masks").mean(axis=-1)
        style_masks.append(None if style is None else np.asarray(resize(grey[..., None], style.shape[:2]))[..., 0])
    return masks, style_masks


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


def png_bytes(image) -> bytes:
    """``image`` ([h, w, 3] in [0, 1]) encoded as PNG (what Jupyter's ``_repr_png_`` returns)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def save_image(
    path: str | os.PathLike, image: ArrayLike, bits: int | None = None, profile: bytes | None = None
) -> Path:
    """Writes a ``[h, w, 3]`` image in [0, 1] atomically (temporary file, then rename).

    The format follows the extension (:func:`output_format`); no partial file is
    ever left at ``path``. Values are clipped to [0, 1]; an integer array, NaN or values
    far outside [0, 1] (a 0-255 image) are refused (:func:`nst_jax.checks.check_image`).
    ``bits``: per channel (:func:`output_bits`; default 16 for .tif/.tiff, 8 otherwise). At 16
    the float image is written with no 8-bit step, in sRGB with the profile embedded
    (:mod:`nst_jax.bits16`). ``profile``: an ICC profile (the content's, ``--keep-profile``) to
    write the image back in (relative colorimetric) and embed. At 16 bits (where ``bits`` or a
    .tif asks) the float image is converted with no 8-bit step: a matrix/TRC RGB profile by its
    curves and matrix (:mod:`nst_jax.icc`), a lookup-table RGB or a CMYK one (a 16-bit CMYK
    TIFF) by LittleCMS on every 8-bit triple, interpolated between them. At 8 bits, and for a
    grey profile, LittleCMS converts the 8-bit image. Checked first by :func:`check_output_profile`.
    """
    from nst_jax.checks import check_image

    path = Path(path)
    fmt = output_format(path)
    check_image(image, "image")
    mode = check_output_profile(path, profile, bits)
    if mode in ("RGB", "CMYK") and profile is not None and output_bits(path, bits) == 16:  # in float: no 8-bit step
        shaper = icc.read(profile) if mode == "RGB" else None
        array = np.asarray(image, np.float32)
        if shaper is not None:  # a matrix/TRC profile: its curves and matrix
            converted = icc.from_srgb(array, shaper)
        else:  # a lookup-table RGB or a CMYK profile: LittleCMS on every 8-bit triple, interpolated
            converted = _interpolate(array, _from_srgb_table(profile, mode))
        data = _SIXTEEN_BIT[fmt](converted, profile)
        return _write_atomically(path, lambda f: f.write(data))
    if mode is not None and profile is not None:  # at 8 bits, converted by LittleCMS
        back = _from_srgb(Image.fromarray(to_uint8(image), "RGB"), profile, mode)
        kept: dict = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        return _write_atomically(path, lambda f: back.save(f, format=fmt, icc_profile=profile, **kept))
    if output_bits(path, bits) == 16:
        data = _SIXTEEN_BIT[fmt](image)
        return _write_atomically(path, lambda f: f.write(data))
    img = Image.fromarray(to_uint8(image), "RGB")
    options: dict = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        options["icc_profile"] = bits16.srgb_profile()  # the pixels are sRGB, and say so
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
    size = max(10, min(16, cell_h // 8))  # pixels; a Pillow without FreeType gives a bitmap font without .size
    font = ImageFont.load_default(size=size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda text: measure.textbbox((0, 0), text, font=font)[2] if text else 0
    line = int(size * 1.5)
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
        draw.text((gap, y + cell_h // 2 - size // 2), label, fill="black", font=font)
        for c in range(len(columns)):
            image = Image.fromarray(to_uint8(images[r * len(columns) + c]), "RGB")
            x = left + c * (cell_w + gap) + (cell_w - image.width) // 2
            sheet.paste(image, (x, y + (cell_h - image.height) // 2))
    return np.asarray(sheet, np.float32) / 255.0
