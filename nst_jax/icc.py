"""Matrix/TRC ICC profiles read and applied in float: an RGB photograph's profile to sRGB without an 8-bit step.

LittleCMS, through Pillow's ``ImageCms``, converts only 8-bit images (Pillow has no 16-bit RGB
mode), so a 16-bit Adobe RGB photograph would lose its low bits before the network sees it.
Most RGB profiles a camera or an editor embeds (Adobe RGB (1998), Display P3, ProPhoto RGB,
sRGB variants) are *matrix/TRC* profiles: three tone curves and a 3x3 matrix to the D50
profile connection space. Those are read here and applied in float, which is what LittleCMS
computes for them with the relative colorimetric intent (no black point compensation):
``srgb = curve_srgb^-1(clip(M_srgb^-1 M_source curve_source(rgb)))``. Any other profile (a
lookup-table one, CMYK, grey, a malformed one) gives ``None`` here, and the caller converts
through LittleCMS as before.

The file is foreign: every count, offset and size is checked against the profile's length
and a cap before it is read.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

import numpy as np

MAX_TAGS = 1024  # tags in one profile's table (real ones hold 10-30)
MAX_CURVE_POINTS = 65536  # entries in one sampled tone curve (16-bit tables hold at most 4096 in practice)
# Tags whose presence means LittleCMS would convert through a lookup table, not the matrix.
_LUT_TAGS = (b"A2B0", b"A2B1", b"A2B2", b"D2B0", b"D2B1", b"D2B2")
# Parameters of each parametric curve type (ICC.1:2010, 10.18).
_PARA_COUNTS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}


class Curve(NamedTuple):
    """A tone curve: ``"gamma"`` (params[0]), ``"table"`` (samples over [0, 1]) or ``"para"`` (type, params)."""

    kind: str
    params: tuple[float, ...] = ()
    table: np.ndarray | None = None


class MatrixShaper(NamedTuple):
    """An RGB matrix/TRC profile: ``xyz = matrix @ [r(R), g(G), b(B)]`` in the D50 connection space."""

    matrix: np.ndarray  # [3, 3]: columns the red, green and blue colorants (XYZ)
    curves: tuple[Curve, Curve, Curve]


def _s15(data: bytes, at: int, count: int) -> tuple[float, ...]:
    return tuple(v / 65536.0 for v in struct.unpack_from(f">{count}i", data, at))


def _tag(profile: bytes, tags: dict, signature: bytes) -> bytes | None:
    found = tags.get(signature)
    return None if found is None else profile[found[0] : found[0] + found[1]]


def _xyz(data: bytes | None) -> tuple[float, ...] | None:
    if data is None or len(data) < 20 or data[:4] != b"XYZ ":
        return None
    return _s15(data, 8, 3)


def _curve(data: bytes | None) -> Curve | None:
    if data is None or len(data) < 12:
        return None
    if data[:4] == b"curv":
        (count,) = struct.unpack_from(">I", data, 8)
        if count > MAX_CURVE_POINTS or len(data) < 12 + 2 * count:
            return None
        if count == 0:
            return Curve("gamma", (1.0,))
        if count == 1:
            (gamma,) = struct.unpack_from(">H", data, 12)
            return Curve("gamma", (gamma / 256.0,))
        table = np.frombuffer(data, ">u2", count, 12).astype(np.float64) / 65535.0
        return Curve("table", table=table)
    if data[:4] == b"para":
        (kind,) = struct.unpack_from(">H", data, 8)
        count = _PARA_COUNTS.get(kind)
        if count is None or len(data) < 12 + 4 * count:
            return None
        params = _s15(data, 12, count)
        if kind in (1, 2) and params[1] == 0:  # its threshold -b/a would divide by zero
            return None
        return Curve("para", (float(kind), *params))
    return None


def read(profile: bytes) -> MatrixShaper | None:
    """The matrix and curves of an RGB matrix/TRC ``profile``; ``None`` for any other profile (or a malformed one)."""
    if not isinstance(profile, bytes) or len(profile) < 132:
        return None
    (declared,) = struct.unpack_from(">I", profile, 0)
    if declared > len(profile) or declared < 132 or profile[36:40] != b"acsp":
        return None
    if profile[16:20] != b"RGB " or profile[20:24] != b"XYZ ":  # RGB data, XYZ connection space
        return None
    (count,) = struct.unpack_from(">I", profile, 128)
    if count > MAX_TAGS or 132 + 12 * count > declared:
        return None
    tags = {}
    for i in range(count):
        signature, offset, size = struct.unpack_from(">4sII", profile, 132 + 12 * i)
        if offset < 128 or size > declared or offset > declared - size:
            return None
        tags[signature] = (offset, size)
    if any(signature in tags for signature in _LUT_TAGS):
        return None
    colorants = [_xyz(_tag(profile, tags, s)) for s in (b"rXYZ", b"gXYZ", b"bXYZ")]
    curves = [_curve(_tag(profile, tags, s)) for s in (b"rTRC", b"gTRC", b"bTRC")]
    if any(c is None for c in colorants) or any(c is None or not _rising(c) for c in curves):
        return None
    matrix = np.array(colorants, np.float64).T
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-6:
        return None
    return MatrixShaper(matrix, tuple(curves))  # type: ignore[arg-type]


def _rising(curve: Curve) -> bool:
    """Whether a curve is finite, never falls, and rises from 0 to 1 overall: one that can be inverted."""
    with np.errstate(all="ignore"):
        values = apply_curve(curve, np.linspace(0.0, 1.0, 4097))
    if not np.all(np.isfinite(values)):
        return False
    return bool(np.all(np.diff(values) >= -1e-6) and values[-1] - values[0] > 0.5)


def apply_curve(curve: Curve, x: np.ndarray) -> np.ndarray:
    """The tone curve at ``x`` (in [0, 1]), as ICC.1:2010 defines each kind."""
    x = np.clip(x, 0.0, 1.0)
    if curve.kind == "gamma":
        return x ** curve.params[0]
    if curve.kind == "table":
        assert curve.table is not None
        return np.interp(x, np.linspace(0.0, 1.0, len(curve.table)), curve.table)
    kind, g, *p = curve.params
    a, b, c, d, e, f = (*p, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)[:6]
    power = lambda v: np.maximum(v, 0.0) ** g
    if kind == 0:
        return x**g
    if kind == 1:
        return np.where(x >= -b / a, power(a * x + b), 0.0)
    if kind == 2:
        return np.where(x >= -b / a, power(a * x + b) + c, c)
    if kind == 3:
        return np.where(x >= d, power(a * x + b), c * x)
    return np.where(x >= d, power(a * x + b) + e, c * x + f)


def same_colours(a: MatrixShaper, b: MatrixShaper, tolerance: float = 1e-3) -> bool:
    """Whether two profiles map every RGB value to the same colour, within ``tolerance`` (XYZ and curve values)."""
    if not np.allclose(a.matrix, b.matrix, atol=tolerance, rtol=0.0):
        return False
    grid = np.linspace(0.0, 1.0, 1025)
    return all(
        np.allclose(apply_curve(c, grid), apply_curve(d, grid), atol=tolerance, rtol=0.0)
        for c, d in zip(a.curves, b.curves, strict=True)
    )


@functools.cache
def srgb() -> MatrixShaper:
    """The sRGB profile every output embeds (LittleCMS's), as a :class:`MatrixShaper`."""
    from nst_jax import bits16

    shaper = read(bits16.srgb_profile())
    assert shaper is not None, "LittleCMS's sRGB profile is a matrix/TRC one"
    return shaper


def to_srgb(rgb: np.ndarray, source: MatrixShaper) -> np.ndarray:
    """``[..., 3]`` pixels in [0, 1] in ``source``'s colours, converted to sRGB in float (relative colorimetric).

    Colours outside sRGB's gamut are clipped to it, as LittleCMS clips them in 8 bits.
    """
    return _convert(rgb, source, srgb())


def from_srgb(rgb: np.ndarray, target: MatrixShaper) -> np.ndarray:
    """``[..., 3]`` sRGB pixels in [0, 1] converted to ``target``'s colours in float (:func:`to_srgb` inverted)."""
    return _convert(rgb, srgb(), target)


CHUNK_PIXELS = 2**20  # pixels converted at a time: float64 temporaries of ~100 MB, whatever the image's size


def _convert(rgb: np.ndarray, source: MatrixShaper, target: MatrixShaper) -> np.ndarray:
    rgb = np.asarray(rgb)
    matrix = np.linalg.solve(target.matrix, source.matrix)  # source linear RGB -> target linear RGB, via XYZ D50
    grid = np.linspace(0.0, 1.0, 65536)
    rising = [np.maximum.accumulate(apply_curve(c, grid)) for c in target.curves]  # the inverse, by interpolation
    flat = rgb.reshape(-1, 3)
    out = np.empty(flat.shape, np.float32)
    for start in range(0, len(flat), CHUNK_PIXELS):
        block = flat[start : start + CHUNK_PIXELS].astype(np.float64)
        linear = np.stack([apply_curve(c, block[:, i]) for i, c in enumerate(source.curves)], axis=-1)
        converted = np.clip(linear @ matrix.T, 0.0, 1.0)
        for i in range(3):
            out[start : start + CHUNK_PIXELS, i] = np.interp(converted[:, i], rising[i], grid)
    return out.reshape(rgb.shape)
