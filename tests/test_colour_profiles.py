"""Embedded ICC profiles (issue 29): inputs converted to sRGB by LittleCMS, outputs say they are sRGB."""

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from nst_jax import bits16
from nst_jax.io import MAX_PROFILE_BYTES, load_image, save_image


def _s15(values) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def gamma_curve(gamma: float) -> bytes:
    """A ``curv`` tone curve of one gamma (u8Fixed8)."""
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def table_curve(values) -> bytes:
    """A ``curv`` tone curve sampled at ``len(values)`` points over [0, 1]."""
    table = np.round(np.asarray(values) * 65535).astype(">u2").tobytes()
    return b"curv\0\0\0\0" + struct.pack(">I", len(values)) + table


def para_curve(kind: int, *params: float) -> bytes:
    """A ``para`` (parametric) tone curve of ``kind`` 0-4."""
    return b"para\0\0\0\0" + struct.pack(">HH", kind, 0) + _s15(params)


def matrix_profile(
    red, green, blue, gamma: float, name: str = "test RGB", curve: bytes | None = None, extra=()
) -> bytes:
    """An ICC v2 RGB display profile of three D50 primaries and one gamma (as Adobe RGB (1998) is), or ``curve``;
    ``extra``: more (signature, data) tags."""
    xyz = lambda v: b"XYZ \0\0\0\0" + _s15(v)
    curve = gamma_curve(gamma) if curve is None else curve
    tags = [
        (b"desc", desc_tag(name)), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red)),
        (b"gXYZ", xyz(green)), (b"bXYZ", xyz(blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
        (b"cprt", b"text\0\0\0\0no copyright\0"), *extra,
    ]  # fmt: skip
    return icc_file(b"mntr", b"RGB ", tags)


def desc_tag(name: str) -> bytes:
    """A v2 ``desc`` (textDescriptionType) tag."""
    text = name.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + struct.pack(">II", 0, 0) + b"\0" * 70


def icc_file(device_class: bytes, space: bytes, tags) -> bytes:
    """An ICC v2 profile of ``tags`` ((signature, data) pairs) for a ``device_class`` (b"mntr", b"prtr")
    of colour ``space`` (b"RGB ", b"CMYK"), D50 XYZ as its connection space."""
    at = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", at + len(body), len(data))
        body += data
    header = struct.pack(">I4sI4s4s4s", at + len(body), b"lcms", 0x02100000, device_class, space, b"XYZ ")
    header += b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + _s15((0.9642, 1.0, 0.8249)) + b"\0" * 48
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


# Adobe RGB (1998), its primaries adapted to D50 as in Adobe's own profile.
ADOBE_PRIMARIES = (0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446)
ADOBE_RGB = matrix_profile(*ADOBE_PRIMARIES, 563 / 256)
PATCHES = np.array(
    [[[40, 200, 60], [200, 40, 60], [60, 90, 220]], [[128, 128, 128], [250, 250, 250], [5, 5, 5]]], np.uint8
)


def lut_profile(red, green, blue, gamma: float) -> bytes:
    """The same colours through a lookup table: an A2B0 lut16 (mft2) of gamma input tables and a
    2-point CLUT holding the matrix (exact for a matrix), which LittleCMS prefers to the matrix tags."""
    n = 256
    inputs = np.round(np.linspace(0, 1, n) ** gamma * 65535).astype(">u2")
    matrix = np.array([red, green, blue], np.float64).T
    corners = [matrix @ np.array([r, g, b]) for r in (0, 1) for g in (0, 1) for b in (0, 1)]
    clut = np.round(np.array(corners) * 32768).astype(">u2")  # XYZ in lut16: 1.0 is 32768
    identity = np.tile(np.array([0, 65535], ">u2"), 3).tobytes()
    body = b"mft2\0\0\0\0" + struct.pack(">BBBB", 3, 3, 2, 0) + _s15((1, 0, 0, 0, 1, 0, 0, 0, 1))
    body += struct.pack(">HH", n, 2) + np.tile(inputs, 3).tobytes() + clut.tobytes() + identity
    return matrix_profile(red, green, blue, gamma, "LUT RGB", extra=[(b"A2B0", body)])


def littlecms(pixels: np.ndarray, profile: bytes, mode: str = "RGB") -> np.ndarray:
    """What LittleCMS computes on its own for ``pixels`` (Pillow ``mode``) in ``profile``, to sRGB."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    intent = ImageCms.Intent.RELATIVE_COLORIMETRIC
    image = Image.fromarray(pixels, mode)
    return np.asarray(ImageCms.profileToProfile(image, source, srgb, renderingIntent=intent, outputMode="RGB"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_an_adobe_rgb_photo_is_converted_to_srgb(tmp_path, fmt):
    pixels = np.repeat(np.repeat(PATCHES, 8, 0), 8, 1)  # patches of 8 x 8, so JPEG keeps their centres
    path = tmp_path / f"adobe.{fmt.lower()}"
    Image.fromarray(pixels).save(path, fmt, icc_profile=ADOBE_RGB, **({"quality": 100} if fmt == "JPEG" else {}))
    with Image.open(path) as sent:
        expected = littlecms(np.asarray(sent), ADOBE_RGB)[4::8, 4::8] / 255
    loaded = load_image(path)[4::8, 4::8]
    assert np.abs(loaded - expected).max() <= 1 / 255 + 1e-6
    assert np.abs(loaded - PATCHES / 255).max() > 20 / 255  # the profile was applied: Adobe's green is not sRGB's


def test_an_srgb_profile_changes_nothing_and_no_profile_means_srgb(tmp_path):
    for name, options in (("tagged.png", {"icc_profile": bits16.srgb_profile()}), ("plain.png", {})):
        Image.fromarray(PATCHES).save(tmp_path / name, **options)
        assert np.abs(load_image(tmp_path / name) - PATCHES / 255).max() <= 1 / 255 + 1e-6


def test_a_cmyk_jpeg_with_a_profile_is_refused_in_one_line_when_the_profile_is_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 200, 200, 0)).save(path, icc_profile=ADOBE_RGB)
    with pytest.raises(ValueError, match=r"`content`: '.*cmyk.jpg' embeds an ICC profile that does not fit its CMYK"):
        load_image(path, what="content")


def test_a_broken_or_oversized_profile_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "broken.png"
    Image.fromarray(PATCHES).save(path, icc_profile=b"not a profile at all" * 10)
    with pytest.raises(ValueError, match=r"`style`: '.*broken.png' embeds an ICC profile that cannot be read"):
        load_image(path, what="style")
    Image.fromarray(PATCHES).save(path, icc_profile=ADOBE_RGB)
    monkeypatch.setattr("nst_jax.io.MAX_PROFILE_BYTES", len(ADOBE_RGB) - 1)
    with pytest.raises(ValueError, match=rf"embeds an ICC profile of {len(ADOBE_RGB)} bytes; nst-jax reads up to"):
        load_image(path)
    assert MAX_PROFILE_BYTES >= 2**20


def test_16_bit_greyscale_keeps_its_levels(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 1200).round().astype(np.uint16), (4, 1))
    path = tmp_path / "scan.png"
    Image.fromarray(ramp).save(path)  # mode I;16
    loaded = load_image(path)
    assert loaded.shape == (4, 1200, 3) and len(np.unique(loaded[..., 0])) > 256
    np.testing.assert_allclose(loaded[0, :, 1], ramp[0] / 65535, atol=1e-6)
    assert load_image(path, size=600).shape == (2, 600, 3)


def test_outputs_embed_the_srgb_profile(tmp_path):
    for name in ("out.png", "out.jpg", "out.webp", "out.tif"):
        with Image.open(save_image(tmp_path / name, PATCHES / 255)) as img:
            assert img.info["icc_profile"] == bits16.srgb_profile(), name


def test_keep_profile_writes_the_picture_back_in_the_contents_profile(tmp_path):
    """--keep-profile: sRGB -> the content's profile by LittleCMS, the profile embedded; loads back as it was."""
    image = np.repeat(np.repeat(PATCHES, 8, 0), 8, 1) / 255
    for name in ("kept.png", "kept.jpg", "kept.tif"):
        path = save_image(tmp_path / name, image, profile=ADOBE_RGB)
        with Image.open(path) as written:
            assert written.info["icc_profile"] == ADOBE_RGB and written.mode == "RGB", name
            raw = np.asarray(written)[4::8, 4::8]
        assert np.abs(raw / 255 - PATCHES / 255).max() > 20 / 255, name  # Adobe RGB's numbers, not sRGB's
        if name != "kept.jpg":  # lossless: only the two 8-bit conversions round (a JPEG's chroma loses more)
            back = load_image(path)[4::8, 4::8]  # converted to sRGB again on reading
            assert np.abs(back - PATCHES / 255).max() <= 2 / 255 + 1e-6, name


def test_keep_profile_is_refused_before_the_run_where_it_cannot_be_written(tmp_path, capsys):
    from conftest import one_line_error

    from nst_jax.io import check_output_profile

    cmyk = ADOBE_RGB[:16] + b"CMYK" + ADOBE_RGB[20:]  # a header that says CMYK: what the checks read
    assert check_output_profile(tmp_path / "o.jpg", cmyk) == "CMYK"
    assert check_output_profile(tmp_path / "o.png", None) is None  # no profile: sRGB, as without --keep-profile
    cannot = (
        r"`keep_profile`: the output .*o\.png' is PNG, which cannot hold the content's CMYK pixels; use \.jpg or \.tif"
    )
    with pytest.raises(ValueError, match=cannot):
        check_output_profile(tmp_path / "o.png", cmyk)
    grey = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()[:16] + b"GRAY" + ADOBE_RGB[20:]
    with pytest.raises(ValueError, match=r"`keep_profile` writes 8 bits per channel with a grey profile, not 16"):
        check_output_profile(tmp_path / "o.tif", grey, 16)
    assert check_output_profile(tmp_path / "o.png", ADOBE_RGB, 16) == "RGB"  # 16 bits in float
    assert check_output_profile(tmp_path / "o.tif", cmyk, 16) == "CMYK"  # a 16-bit CMYK TIFF
    content = tmp_path / "adobe.png"
    Image.fromarray(np.repeat(np.repeat(PATCHES, 8, 0), 8, 1)).save(content, icc_profile=ADOBE_RGB)
    style = save_image(tmp_path / "style.png", np.random.default_rng(0).random((24, 24, 3)))
    (tmp_path / "out").mkdir()
    argv = ["stylize", str(content), str(style), "--keep-profile", "--size", "24", "--steps", "1"]
    one_line_error(capsys, [*argv, "--bits", "16", "-o", str(tmp_path / "out" / "x.jpg")], "`bits` 16 needs a .png")
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_keep_profile_on_the_command_line(tmp_path):
    from nst_jax import cli

    content = tmp_path / "adobe.png"
    Image.fromarray(np.repeat(np.repeat(PATCHES, 8, 0), 8, 1)).save(content, icc_profile=ADOBE_RGB)
    style = save_image(tmp_path / "style.png", np.random.default_rng(0).random((24, 24, 3)))
    argv = ["stylize", str(content), str(style), "--keep-profile", "--size", "24", "--steps", "2", "-q"]
    assert cli.main([*argv, "--num-scales", "1", "-o", str(tmp_path / "out.tif")]) == 0
    with Image.open(tmp_path / "out.tif") as written:  # a .tif: 16 bits, converted in float
        assert written.info["icc_profile"] == ADOBE_RGB and ";16" in written.tile[0][3][0]
    plain = save_image(tmp_path / "plain.png", np.repeat(np.repeat(PATCHES, 8, 0), 8, 1) / 255)
    assert cli.main(["stylize", str(plain), *argv[2:], "--num-scales", "1", "-o", str(tmp_path / "plain.jpg")]) == 0
    with Image.open(tmp_path / "plain.jpg") as written:  # an sRGB content: sRGB out, as always
        assert written.info["icc_profile"] == bits16.srgb_profile()


# Display P3's primaries (D50) with sRGB's parametric curve, and ProPhoto's with a sampled gamma 1.8.
DISPLAY_P3 = matrix_profile(
    (0.5151, 0.2412, -0.0011), (0.2919, 0.6922, 0.0419), (0.1572, 0.0666, 0.7841), 1.0, "P3",
    para_curve(3, 2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045),
)  # fmt: skip
PROPHOTO = matrix_profile(
    (0.7977, 0.2880, 0.0), (0.1352, 0.7119, 0.0), (0.0313, 0.0001, 0.8249), 1.0, "ProPhoto",
    table_curve(np.linspace(0, 1, 1024) ** 1.8),
)  # fmt: skip


@pytest.mark.parametrize("profile", [ADOBE_RGB, DISPLAY_P3, PROPHOTO], ids=["gamma", "para", "table"])
def test_matrix_trc_profiles_are_converted_in_float_as_littlecms_converts_them(profile):
    from nst_jax import icc

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    shaper = icc.read(profile)
    assert shaper is not None
    ours = icc.to_srgb(pixels / 255.0, shaper)
    assert np.abs(ours - littlecms(pixels, profile) / 255).max() <= 1 / 255
    back = icc.from_srgb(ours, shaper)  # and back, where no colour was clipped to sRGB's gamut
    inside = np.all((ours > 0.002) & (ours < 0.998), axis=-1)
    assert inside.mean() > 0.2 and np.abs(back - pixels / 255)[inside].max() < 2e-3


@pytest.mark.parametrize("name", ["adobe.png", "adobe.tif"])
def test_a_16_bit_adobe_rgb_photo_keeps_its_levels_up_to_the_network(tmp_path, name):
    pytest.importorskip("cv2")
    ramp = np.linspace(0.0, 1.0, 40 * 600).reshape(40, 600)
    ramp = np.stack([ramp, ramp**2, 1.0 - ramp], -1)
    write = bits16.png16 if name.endswith(".png") else bits16.tiff16
    (tmp_path / name).write_bytes(write(ramp, ADOBE_RGB))
    loaded = load_image(tmp_path / name)
    assert len(np.unique(loaded[..., 0])) > 2000  # 8 bits would give at most 256
    # Levels an 8-bit file also holds (v * 257) land where LittleCMS puts the 8-bit ones.
    patches = np.repeat(np.repeat(PATCHES, 8, 0), 8, 1)
    (tmp_path / name).write_bytes(write(patches / 255.0, ADOBE_RGB))
    expected = littlecms(PATCHES, ADOBE_RGB) / 255
    assert np.abs(load_image(tmp_path / name)[4::8, 4::8] - expected).max() <= 1 / 255


def test_keep_profile_writes_16_bits_in_float_for_a_matrix_trc_profile(tmp_path):
    pytest.importorskip("cv2")
    ramp = np.linspace(0.05, 0.95, 40 * 600).reshape(40, 600)
    ramp = np.stack([ramp, ramp**2, 1.0 - ramp], -1)
    for name in ("kept.png", "kept.tif"):
        path = save_image(tmp_path / name, ramp, bits=16, profile=ADOBE_RGB)
        with Image.open(path) as written:
            assert written.info["icc_profile"] == ADOBE_RGB, name
        back = load_image(path)  # Adobe RGB at 16 bits, converted to sRGB again on reading
        np.testing.assert_allclose(back, ramp, atol=2e-4)
        assert len(np.unique(back[..., 0])) > 2000


def test_the_matrix_trc_reader_declines_what_it_cannot_apply_and_trusts_no_offset():
    from nst_jax import icc

    assert icc.read(ADOBE_RGB) is not None and icc.read(bits16.srgb_profile()) is not None
    tags = struct.unpack_from(">I", ADOBE_RGB, 128)[0]
    table_end = 132 + 12 * tags
    declined = {
        "a lookup table": ADOBE_RGB.replace(b"cprt", b"A2B0", 1),
        "CMYK data": ADOBE_RGB[:16] + b"CMYK" + ADOBE_RGB[20:],
        "Lab connection space": ADOBE_RGB[:20] + b"Lab " + ADOBE_RGB[24:],
        "no acsp": ADOBE_RGB[:36] + b"xxxx" + ADOBE_RGB[40:],
        "truncated": ADOBE_RGB[: len(ADOBE_RGB) // 2],
        "a size past the file": struct.pack(">I", len(ADOBE_RGB) + 1) + ADOBE_RGB[4:],
        "a million tags": ADOBE_RGB[:128] + struct.pack(">I", 10**6) + ADOBE_RGB[132:],
        "a tag past the end": ADOBE_RGB[:136] + struct.pack(">I", 2**31) + ADOBE_RGB[140:],
        "a tag size past the end": ADOBE_RGB[:140] + struct.pack(">I", 2**32 - 1) + ADOBE_RGB[144:],
        "no green colorant": ADOBE_RGB.replace(b"gXYZ", b"zzzz", 1),
        "a curve of 2**31 points": ADOBE_RGB[: table_end] + ADOBE_RGB[table_end:].replace(
            b"curv\0\0\0\0\0\0\0\x01", b"curv\0\0\0\0\x80\0\0\0"
        ),
        "para with a = 0": matrix_profile(
            (0.6, 0.3, 0.0), (0.2, 0.6, 0.1), (0.1, 0.1, 0.7), 1, curve=para_curve(1, 2.0, 0.0, 0.0)
        ),
        "a falling curve": matrix_profile(
            (0.6, 0.3, 0.0), (0.2, 0.6, 0.1), (0.1, 0.1, 0.7), 1, curve=table_curve([1, 0])
        ),
        "gamma 0": matrix_profile((0.6, 0.3, 0.0), (0.2, 0.6, 0.1), (0.1, 0.1, 0.7), 0.0),
        "a singular matrix": matrix_profile((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (0.1, 0.1, 0.7), 2.2),
        "not bytes": "RGB ",
    }  # fmt: skip
    for why, profile in declined.items():
        assert icc.read(profile) is None, why


def test_a_16_bit_photo_in_a_lookup_table_profile_keeps_its_levels_through_littlecms(tmp_path):
    """A profile only LittleCMS converts: every 8-bit triple through it once, 16-bit pixels interpolated."""
    pytest.importorskip("cv2")
    from nst_jax import icc

    lut = lut_profile((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446), 2.2)
    assert icc.read(lut) is None
    patches = np.repeat(np.repeat(PATCHES, 8, 0), 8, 1)
    (tmp_path / "lut.png").write_bytes(bits16.png16(patches / 255.0, lut))
    expected = littlecms(PATCHES, lut) / 255
    assert np.abs(load_image(tmp_path / "lut.png")[4::8, 4::8] - expected).max() <= 1 / 255 + 1e-6
    assert np.abs(expected - PATCHES / 255).max() > 20 / 255  # the table was applied
    ramp = np.linspace(0.0, 1.0, 40 * 600).reshape(40, 600)
    (tmp_path / "ramp.png").write_bytes(bits16.png16(np.stack([ramp, ramp**2, 1.0 - ramp], -1), lut))
    loaded = load_image(tmp_path / "ramp.png")
    assert len(np.unique(loaded[..., 0])) > 2000  # 8 bits would give at most 256


def test_a_profile_is_taken_for_srgb_by_its_numbers_not_its_name(tmp_path):
    """A foreign file's description is not trusted: Adobe RGB's numbers named "sRGB" are converted."""
    from nst_jax import icc

    assert icc.same_colours(icc.read(bits16.srgb_profile()), icc.srgb())
    assert not icc.same_colours(icc.read(ADOBE_RGB), icc.srgb())
    named = matrix_profile((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446), 2.2, "sRGB")
    Image.fromarray(PATCHES).save(tmp_path / "named.png", icc_profile=named)
    loaded = load_image(tmp_path / "named.png")
    assert np.abs(loaded - littlecms(PATCHES, named) / 255).max() <= 1 / 255
    assert np.abs(loaded - PATCHES / 255).max() > 20 / 255  # converted, not taken as sRGB


# linear sRGB -> D50 XYZ (Bradford-adapted, as in the sRGB profile's colorants)
SRGB_D50 = np.array([[0.4361, 0.3851, 0.1431], [0.2225, 0.7169, 0.0606], [0.0139, 0.0971, 0.7141]])


def cmyk_profile(output: bool = True) -> bytes:
    """A toy press: CMYK inks that cannot reach sRGB's saturated corners or its black (paper black at 8%),
    as an output ('prtr') profile with lut16 A2B0 (CMYK -> XYZ) and B2A0 (XYZ -> CMYK) tables; without
    ``output``, an input-only one (no B2A0: nothing can be converted to it)."""
    floor, cross = 0.08, 0.25
    mixing = (1 - cross) * np.eye(3) + cross / 3  # inks that are not pure: each reflects some of the others' light

    def reflect(c, m, y, k):  # linear RGB the paper reflects
        return floor + (1 - floor) * (mixing @ np.array([1 - c, 1 - m, 1 - y])) * (1 - k)

    g = 5
    axis = np.linspace(0, 1, g)
    forward = [SRGB_D50 @ reflect(c, m, y, k) for c in axis for m in axis for y in axis for k in axis]
    a2b = np.round(np.clip(np.array(forward), 0, 65535 / 32768) * 32768).astype(">u2")
    n = 33
    xyz_axis = np.linspace(0, 65535 / 32768, n)
    inverse = np.linalg.inv(SRGB_D50)
    back = []
    for x in xyz_axis:
        for y_ in xyz_axis:
            for z in xyz_axis:
                rgb = np.clip(inverse @ np.array([x, y_, z]), floor, 1.0)
                ink = np.clip(np.linalg.solve(mixing, (rgb - floor) / (1 - floor)), 0, 1)
                back.append(np.r_[1 - ink, 0.0])
    b2a = np.round(np.array(back) * 65535).astype(">u2")
    identity = lambda channels: np.tile(np.array([0, 65535], ">u2"), channels).tobytes()
    ident = _s15((1, 0, 0, 0, 1, 0, 0, 0, 1))
    a2b0 = b"mft2\0\0\0\0" + struct.pack(">BBBB", 4, 3, g, 0) + ident + struct.pack(">HH", 2, 2)
    a2b0 += identity(4) + a2b.tobytes() + identity(3)
    b2a0 = b"mft2\0\0\0\0" + struct.pack(">BBBB", 3, 4, n, 0) + ident + struct.pack(">HH", 2, 2)
    b2a0 += identity(3) + b2a.tobytes() + identity(4)
    xyz = lambda v: b"XYZ \0\0\0\0" + _s15(v)
    tags = [(b"desc", desc_tag("toy press")), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"A2B0", a2b0),
            *([(b"B2A0", b2a0)] if output else []), (b"cprt", b"text\0\0\0\0no copyright\0")]  # fmt: skip
    return icc_file(b"prtr", b"CMYK", tags)


@pytest.mark.parametrize("printer", ["cmyk", "rgb"])
def test_soft_proof_is_littlecms_proofing_transform_in_float(printer):
    """--proof: sRGB -> the printer -> sRGB as LittleCMS's proofing transform computes it (exact on 8-bit
    triples), smooth between them; what the press cannot print moves into its gamut, white stays white."""
    from nst_jax.io import soft_proof

    narrow = matrix_profile((0.30, 0.20, 0.10), (0.35, 0.60, 0.20), (0.30, 0.20, 0.52), 2.2, "narrow")
    profile = cmyk_profile() if printer == "cmyk" else narrow
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    transform = ImageCms.buildProofTransform(
        srgb, srgb, ImageCms.ImageCmsProfile(io.BytesIO(profile)), "RGB", "RGB",
        renderingIntent=ImageCms.Intent.PERCEPTUAL, proofRenderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        flags=ImageCms.Flags.SOFTPROOFING,
    )  # fmt: skip
    expected = np.asarray(transform.apply(Image.fromarray(pixels))) / 255
    proofed = soft_proof(pixels / 255, profile)
    assert proofed.dtype == np.float32 and np.abs(proofed - expected).max() <= 1 / 255 + 1e-6
    assert np.abs(proofed - pixels / 255).mean() > 8 / 255  # the press's gamut is not sRGB's
    corners = soft_proof(np.array([[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]), profile)[0]
    assert np.abs(corners[0] - 1).max() <= 1 / 255  # paper white is white (relative colorimetric back)
    assert corners[1][1] > 60 / 255  # pure red is beyond either press: it comes back less saturated
    if printer == "cmyk":
        assert corners[2].min() > 60 / 255  # the press's black is the paper's 8 % (linear): a dark grey
    ramp = np.linspace(0, 1, 4096, dtype=np.float32)[None, :, None].repeat(3, -1)
    grey = soft_proof(ramp, profile)[0, :, 1]
    assert len(np.unique(np.round(grey * 65535))) > 1000  # more levels than 8 bits hold: no 8-bit step


def test_a_profile_that_cannot_be_proofed_to_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    from conftest import one_line_error

    from nst_jax import io as nst_io
    from nst_jax.io import load_proof_profile

    good = tmp_path / "press.icc"
    good.write_bytes(cmyk_profile())
    assert load_proof_profile(good) == cmyk_profile()
    with pytest.raises(FileNotFoundError, match=r"`proof`: ICC profile .*nope\.icc' does not exist"):
        load_proof_profile(tmp_path / "nope.icc")
    with pytest.raises(IsADirectoryError, match=r"`proof`: .* is a folder, not an ICC profile"):
        load_proof_profile(tmp_path)
    junk = tmp_path / "junk.icc"
    junk.write_bytes(b"not a profile" * 20)
    with pytest.raises(ValueError, match=r"`proof`: .*junk\.icc' is not an ICC profile LittleCMS can read"):
        load_proof_profile(junk)
    scanner = tmp_path / "input-only.icc"  # a CMYK profile with no B2A0 table: nothing converts to it
    scanner.write_bytes(cmyk_profile(output=False))
    with pytest.raises(ValueError, match=r"`proof`: .*input-only\.icc' cannot be proofed to \(LittleCMS: .*\); give"):
        load_proof_profile(scanner)
    monkeypatch.setattr(nst_io, "MAX_PROFILE_BYTES", 1000)
    with pytest.raises(ValueError, match=r"press\.icc' is over 1000 bytes; nst-jax reads ICC profiles up to that"):
        load_proof_profile(good)
    monkeypatch.undo()
    content = save_image(tmp_path / "content.png", np.random.default_rng(0).random((24, 24, 3)))
    (tmp_path / "out").mkdir()
    out = str(tmp_path / "out" / "x.png")
    argv = ["stylize", str(content), str(content), "--size", "24", "--steps", "1", "-o", out]
    one_line_error(capsys, [*argv, "--proof", str(junk)], "is not an ICC profile LittleCMS can read")
    one_line_error(capsys, ["texture", str(content), "-o", str(tmp_path / "out" / "t.png"), "--proof", str(scanner)],
                   "cannot be proofed to")  # fmt: skip
    assert not any((tmp_path / "out").iterdir())


def test_proof_maps_the_content_and_the_styles_before_the_run(tmp_path):
    """--proof: the images the run is made from are the proofed ones, in float (stylize, sweep, video)."""
    from nst_jax import cli, commands
    from nst_jax.io import soft_proof

    press = tmp_path / "press.icc"
    press.write_bytes(cmyk_profile())
    rng = np.random.default_rng(0)
    content = save_image(tmp_path / "content.png", rng.random((24, 24, 3)))
    style = save_image(tmp_path / "style.png", rng.random((24, 24, 3)))
    args = cli._build_parser().parse_args(
        ["stylize", str(content), str(style), "--size", "24", "-o", str(tmp_path / "out.png"), "--proof", str(press)]
    )
    prepared = commands.prepare(args)
    sweep = ["sweep", str(content), str(style), "--size", "24", "-o", str(tmp_path / "sweep"), "--proof", str(press)]
    swept = commands.prepare_sweep(cli._build_parser().parse_args([*sweep, "--vary", "style_weight=1,2"]))
    for got, path in ((prepared.content, content), (prepared.style[0], style), (swept.content, content)):
        np.testing.assert_allclose(got, soft_proof(load_image(path), cmyk_profile()), atol=1e-6)
        assert np.abs(got - load_image(path)).max() > 0.1
    from nst_jax import clips

    frames = np.stack([rng.random((24, 24, 3)) for _ in range(3)]).astype(np.float32)
    clips.write_clip(tmp_path / "clip.gif", frames, 10)
    video = ["video", str(tmp_path / "clip.gif"), str(style), "-o", str(tmp_path / "o.gif"), "--size", "24"]
    clip = commands.prepare_video(cli._build_parser().parse_args([*video, "--proof", str(press)]))
    plain = clips.read_clip(tmp_path / "clip.gif", 24).frames
    np.testing.assert_allclose(clip.frames, soft_proof(plain, cmyk_profile()), atol=1e-6)  # every frame
    np.testing.assert_allclose(clip.style[0], prepared.style[0], atol=1e-6)


@pytest.mark.parametrize("kind", ["lut.png", "lut.tif", "cmyk.tif"])
def test_keep_profile_writes_16_bits_through_littlecms_for_lookup_table_and_cmyk_profiles(tmp_path, kind):
    """--keep-profile at 16 bits where only LittleCMS converts: every 8-bit triple once, interpolated."""
    profile = cmyk_profile() if kind.startswith("cmyk") else lut_profile(*ADOBE_PRIMARIES, 2.2)
    mode = "CMYK" if kind.startswith("cmyk") else "RGB"
    if mode == "RGB":
        cv2 = pytest.importorskip("cv2")  # reads the 16-bit RGB samples (Pillow keeps 8 of them)
        _read_16 = lambda path: cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]
    patches = np.repeat(np.repeat(PATCHES, 8, 0), 8, 1)
    path = save_image(tmp_path / f"patches.{kind}", patches / 255, bits=16, profile=profile)
    with Image.open(path) as written:
        assert written.info["icc_profile"] == profile and written.mode == mode
        assert ";16" in str(written.tile[0][3])  # 16 bits a sample (the raw mode Pillow would decode)
    target = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    intent = ImageCms.Intent.RELATIVE_COLORIMETRIC
    expected = np.asarray(ImageCms.profileToProfile(Image.fromarray(PATCHES), srgb, target, intent, mode))
    if mode == "RGB":
        raw = _read_16(path)[4::8, 4::8]
    else:  # our own encoder's layout: one strip of little-endian CMYK samples right after the header
        h, w, _ = patches.shape
        raw = np.frombuffer(path.read_bytes()[8 : 8 + h * w * 8], "<u2").reshape(h, w, 4)[4::8, 4::8]
    assert np.abs(raw / 65535 - expected / 255).max() <= 1 / 255 + 1e-6  # an 8-bit triple: where LittleCMS puts it
    back = littlecms(expected, profile, mode)
    assert np.abs(load_image(path)[4::8, 4::8] - back / 255).max() <= 2 / 255  # back as LittleCMS brings it
    ramp = np.linspace(0.0, 1.0, 40 * 600).reshape(40, 600)
    ramp_path = save_image(tmp_path / f"ramp.{kind}", np.stack([ramp, ramp**2, 1.0 - ramp], -1), 16, profile)
    if mode == "RGB":
        levels = _read_16(ramp_path)[..., 0]
    else:
        levels = np.frombuffer(ramp_path.read_bytes()[8 : 8 + 40 * 600 * 8], "<u2").reshape(40, 600, 4)[..., 1]
    assert len(np.unique(levels)) > 1000  # 8 bits would give at most 256
