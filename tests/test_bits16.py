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
