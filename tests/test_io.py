import numpy as np
import pytest
from PIL import Image

from nst_jax import fit_long_side, load_image, save_image
from nst_jax.image import resize


def _gradient(h=20, w=30):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x / (w - 1), y / (h - 1), np.full((h, w), 0.5)], -1).astype(np.float32)


def test_exif_orientation_is_applied(tmp_path):
    pixels = (_gradient() * 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=100)
    loaded = load_image(path)
    assert loaded.shape == (30, 20, 3)  # width and height swapped
    np.testing.assert_allclose(loaded, np.rot90(pixels, -1) / 255.0, atol=0.05)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    img = Image.fromarray((_gradient() * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / f"image.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    img.save(path)
    loaded = load_image(path)
    assert loaded.shape == (20, 30, 3) and loaded.dtype == np.float32
    assert 0.0 <= loaded.min() and loaded.max() <= 1.0


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_allclose(load_image(path), 1.0)


def test_resize_long_side(tmp_path):
    path = tmp_path / "wide.png"
    save_image(path, _gradient(20, 30))
    assert load_image(path, size=60).shape == (40, 60, 3)
    assert load_image(path, size=15).shape == (10, 15, 3)
    assert fit_long_side((300, 200), 512) == (512, 341)
    assert resize(_gradient(20, 30), (10, 15)).shape == (10, 15, 3)


def test_save_round_trip_and_atomic(tmp_path):
    image = _gradient()
    path = tmp_path / "out" / "picture.png"
    save_image(path, image)
    np.testing.assert_allclose(load_image(path), image, atol=1 / 255)
    assert sorted(p.name for p in path.parent.iterdir()) == ["picture.png"]  # no temporary left behind
    save_image(tmp_path / "picture.jpg", image)
    with Image.open(tmp_path / "picture.jpg") as img:
        assert img.format == "JPEG"


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image '.*missing.png' does not exist"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="is not a readable image"):
        load_image(bad)
    with pytest.raises(
        ValueError, match=r"extension '.xyz', which cannot be written as an RGB image; use one of .*\.png"
    ):
        save_image(tmp_path / "out.xyz", _gradient())
    assert not (tmp_path / "out.xyz").exists()
