"""16 bits per channel: RGB PNG and TIFF encoders for print, each with an embedded sRGB profile (or the
content's, ``--keep-profile``; a CMYK TIFF for a press's).

Pillow writes RGB only at 8 bits per channel, so a print file made with it would have been
through an 8-bit step (256 levels: a smooth sky bands once a printer's curves stretch it).
These encoders write the float result straight to 16 bits (65536 levels). The pixels are
sRGB, as the network sees them, and say so with an embedded sRGB profile (LittleCMS's, made
by Pillow's ImageCms).

- PNG: colour type 2 at bit depth 16, each row "Sub"-filtered, with an ``iCCP`` chunk.
- TIFF: baseline, little-endian, uncompressed, one strip, 72 dpi, with the ICC profile tag.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

# Largest image data a TIFF's 32-bit offsets can hold (with room for the header, profile and IFD).
MAX_TIFF_DATA = 2**32 - 2**20


@functools.cache
def srgb_profile() -> bytes:
    """LittleCMS's sRGB ICC profile, as bytes."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def to_uint16(image) -> np.ndarray:
    """``[h, w, 3]`` in [0, 1] (clipped) to ``uint16``, rounded to the nearest of 65536 levels."""
    return (np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(image, profile: bytes | None = None) -> bytes:
    """``image`` (``[h, w, 3]`` in [0, 1]) as a 16-bit RGB PNG with the sRGB profile (or ``profile``, the
    pixels' own)."""
    pixels = to_uint16(image)
    h, w, _ = pixels.shape
    rows = pixels.astype(">u2").view(np.uint8).reshape(h, w * 6)
    filtered = np.empty((h, 1 + w * 6), np.uint8)
    filtered[:, 0] = 1  # "Sub": each byte minus the same byte of the pixel to its left (mod 256)
    filtered[:, 1:7] = rows[:, :6]
    filtered[:, 7:] = rows[:, 6:] - rows[:, :-6]
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    named = b"sRGB" if profile is None else b"ICC profile"
    iccp = named + b"\x00\x00" + zlib.compress(srgb_profile() if profile is None else profile)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"iCCP", iccp),
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6)),
            _chunk(b"IEND", b""),
        )
    )


def tiff16(image, profile: bytes | None = None) -> bytes:
    """``image`` (``[h, w, 3]`` in [0, 1]) as a 16-bit RGB TIFF with the sRGB profile (or ``profile``);
    ``[h, w, 4]``: CMYK ink amounts (1 full ink), a separated TIFF for ``profile``, a press's.

    Raises:
      ValueError: an image whose data passes the 4 GiB a TIFF's offsets reach.
    """
    pixels = to_uint16(image)
    h, w, channels = pixels.shape
    if channels not in (3, 4):
        raise ValueError(f"`image` must be [h, w, 3] RGB or [h, w, 4] CMYK, got shape {pixels.shape}")
    data = pixels.astype("<u2").tobytes()
    if len(data) > MAX_TIFF_DATA:
        raise ValueError(f"a {w}x{h} 16-bit TIFF needs {len(data)} bytes of pixels, past TIFF's 4 GiB; use .png")
    profile = srgb_profile() if profile is None else profile
    # Layout: header, pixels, profile, BitsPerSample's values, two resolutions, the IFD.
    pixels_at = 8
    profile_at = pixels_at + len(data) + (len(data) & 1)  # every value starts on a word boundary
    bits_at = profile_at + len(profile) + (len(profile) & 1)
    resolution_at = bits_at + 8
    ifd_at = resolution_at + 16
    short, long, rational, undefined = 3, 4, 5, 7
    entries = [
        (256, long, 1, w),  # ImageWidth
        (257, long, 1, h),  # ImageLength
        (258, short, channels, bits_at),  # BitsPerSample: 16 for each channel
        (259, short, 1, 1),  # Compression: none
        (262, short, 1, 2 if channels == 3 else 5),  # PhotometricInterpretation: RGB, or separated (CMYK)
        (273, long, 1, pixels_at),  # StripOffsets
        (277, short, 1, channels),  # SamplesPerPixel
        (278, long, 1, h),  # RowsPerStrip: one strip
        (279, long, 1, len(data)),  # StripByteCounts
        (282, rational, 1, resolution_at),  # XResolution: 72/1
        (283, rational, 1, resolution_at + 8),  # YResolution: 72/1
        (284, short, 1, 1),  # PlanarConfiguration: RGBRGB...
        (296, short, 1, 2),  # ResolutionUnit: inch
        (34675, undefined, len(profile), profile_at),  # ICC profile
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if kind == short and count == 1:
            ifd += struct.pack("<HHIHH", tag, kind, count, value, 0)  # a short fits in the field, left-justified
        else:
            ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)  # no next IFD
    return b"".join(
        (
            b"II*\x00" + struct.pack("<I", ifd_at),
            data,
            b"\x00" * (len(data) & 1),
            profile,
            b"\x00" * (len(profile) & 1),
            struct.pack("<HHHH", 16, 16, 16, 16 if channels == 4 else 0),
            struct.pack("<IIII", 72, 1, 72, 1),
            ifd,
        )
    )
