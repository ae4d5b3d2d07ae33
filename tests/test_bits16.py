"""16-bit outputs (issue 29): PNG and TIFF written from the float image with no 8-bit step."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nst_jax import bits16, cli
from nst_jax.io import output_bits, save_image, to_uint8


def gradient(h=12, w=1500) -> np.ndarray:
    """A smooth ramp: 1500 levels across, more than 8 bits can hold."""
    ramp = np.linspace(0.0, 1.0, w)
    return np.stack([np.tile(ramp, (h, 1)), np.tile(ramp[::-1], (h, 1)), np.full((h, w), 0.3)], -1)


def read_png16(data: bytes) -> np.ndarray:
    """An independent reader of our 16-bit RGB PNGs: the IDAT stream inflated and each row's filter undone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks = 8, {}
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at : at + 4]), data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        at += 12 + length
    w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (16, 2)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 6 * w)
    rows = []
    for line in raw:
        kind, values = line[0], line[1:].astype(np.int64)
        assert kind in (0, 1)
        if kind == 1:  # Sub: add back the byte 6 to the left
            for start in range(6):
                values[start::6] = np.cumsum(values[start::6]) % 256
        rows.append(values.astype(np.uint8))
    return np.stack(rows).view(">u2").reshape(h, w, 3).astype(np.uint16)


def test_to_uint16_rounds_to_the_nearest_of_65536_levels():
    values = np.array([[[0.0, 0.5, 1.0], [-0.2, 1.3, 1 / 65535 * 0.49]]])
    np.testing.assert_array_equal(bits16.to_uint16(values), [[[0, 32768, 65535], [0, 65535, 0]]])


def test_png16_holds_every_level_of_a_smooth_ramp():
    image = gradient()
    data = bits16.png16(image)
    pixels = read_png16(data)
    np.testing.assert_array_equal(pixels, bits16.to_uint16(image))
    assert len(np.unique(pixels[..., 0])) > 256  # what an 8-bit step would have cut to 256
    with Image.open(io.BytesIO(data)) as img:  # a reader of its own agrees, and finds the profile
        assert img.format == "PNG" and img.size == (1500, 12)
        assert img.info["icc_profile"] == bits16.srgb_profile()
        assert np.abs(np.asarray(img.convert("RGB"), np.int16) - to_uint8(image)).max() <= 1


def test_tiff16_holds_every_level_and_says_what_it_is():
    image = gradient()
    data = bits16.tiff16(image)
    with Image.open(io.BytesIO(data)) as img:  # Pillow's own TIFF parser reads the tags
        tags = img.tag_v2
        assert img.format == "TIFF" and img.size == (1500, 12)
        assert tags[258] == (16, 16, 16) and tags[262] == 2 and tags[277] == 3 and tags[259] == 1
        assert bytes(tags[34675]) == bits16.srgb_profile()
        offset, count = tags[273][0], tags[279][0]
        assert np.abs(np.asarray(img.convert("RGB"), np.int16) - to_uint8(image)).max() <= 1
    assert count == 12 * 1500 * 6
    pixels = np.frombuffer(data[offset : offset + count], "<u2").reshape(12, 1500, 3)
    np.testing.assert_array_equal(pixels, bits16.to_uint16(image))
    assert len(np.unique(pixels[..., 1])) > 256


def test_save_image_writes_16_bits_for_tiff_by_default_and_for_png_when_asked(tmp_path):
    image = gradient(6, 400)
    depth = lambda path: path.read_bytes()[24]  # the PNG header's bit depth
    assert depth(save_image(tmp_path / "a.png", image)) == 8
    sixteen = save_image(tmp_path / "b.png", image, bits=16)
    assert depth(sixteen) == 16
    np.testing.assert_array_equal(read_png16(sixteen.read_bytes()), bits16.to_uint16(image))
    for name in ("c.tif", "d.tiff"):
        with Image.open(save_image(tmp_path / name, image)) as img:
            assert img.tag_v2[258] == (16, 16, 16)
    with Image.open(save_image(tmp_path / "e.tif", image, bits=8)) as img:
        assert img.mode == "RGB" and img.tag_v2[258] == (8, 8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.tif", "d.tiff", "e.tif"]


def test_bits_are_checked_against_the_format_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"`bits` 16 needs a .png or .tif output; `output` '.*x.jpg' is JPEG"):
        output_bits(tmp_path / "x.jpg", 16)
    with pytest.raises(ValueError, match=r"`bits` must be one of \(8, 16\), got 12"):
        output_bits(tmp_path / "x.png", 12)
    assert (output_bits("x.tif"), output_bits("x.png"), output_bits("x.webp")) == (16, 8, 8)
    assert cli.main(["demo", "-o", str(tmp_path / "out.jpg"), "--bits", "16", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nst-jax: error: ") and "`bits` 16 needs a .png or .tif output" in err
    assert len(err.splitlines()) == 1 and not any(tmp_path.iterdir())


def _ramp(h=40, w=600):
    """A smooth ramp of 2400 levels a channel, each channel rising at its own rate."""
    x = np.linspace(0.0, 1.0, h * w, dtype=np.float64).reshape(h, w)
    return np.stack([x, x**2, 1.0 - x], -1).astype(np.float32)


@pytest.mark.parametrize("name", ["ramp.png", "ramp.tif"])
def test_a_16_bit_rgb_file_reaches_the_network_with_all_its_levels(tmp_path, name):
    """Our own 16-bit files (an embedded sRGB profile) load back at 16 bits, not through an 8-bit step."""
    pytest.importorskip("cv2")
    from nst_jax.io import load_image

    ramp = _ramp()
    save_image(tmp_path / name, ramp, bits=16)
    loaded = load_image(tmp_path / name)
    assert len(np.unique(loaded[..., 0])) > 2000  # 8 bits would give at most 256
    np.testing.assert_allclose(loaded, ramp, atol=1.0 / 65535)
    half = load_image(tmp_path / name, size=300)  # resized in float, channel by channel
    assert half.shape == (20, 300, 3) and len(np.unique(half[..., 0])) > 256


def test_16_bit_rgba_without_a_profile_is_composited_on_white_at_16_bits(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from nst_jax.io import load_image

    ramp = _ramp()
    alpha = np.full((*ramp.shape[:2], 1), 0.5, np.float32)
    rgba = (np.concatenate([ramp, alpha], -1) * 65535 + 0.5).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])
    loaded = load_image(tmp_path / "rgba.png")
    np.testing.assert_allclose(loaded, ramp * 0.5 + 0.5, atol=2.0 / 65535)
    assert len(np.unique(loaded[..., 0])) > 1000


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16_bit_pixels_are_turned_as_pillow_turns_8_bit_ones(orientation):
    from PIL import ImageOps

    from nst_jax.io import _ORIENT

    raw = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(raw)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=100)
    with Image.open(buffer) as opened:
        turned = np.asarray(ImageOps.exif_transpose(opened))
        decoded = np.asarray(opened.convert("RGB"))  # as stored, before turning
    np.testing.assert_array_equal(_ORIENT.get(orientation, lambda a: a)(decoded), turned)


def test_without_opencv_16_bit_rgb_loads_at_8_bits(tmp_path, monkeypatch):
    import sys

    from nst_jax.io import load_image

    save_image(tmp_path / "ramp.png", _ramp(), bits=16)
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    loaded = load_image(tmp_path / "ramp.png")
    assert len(np.unique(loaded[..., 0])) <= 256
    np.testing.assert_allclose(loaded, _ramp(), atol=1.0 / 255 + 1e-6)  # Pillow keeps the high byte
