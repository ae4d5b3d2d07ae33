import numpy as np
import pytest
from conftest import random_image

from nst_jax import quality, vgg


def _stripes(h, w, frequency, axis=1):
    """Grey sinusoidal stripes of ``frequency`` cycles per pixel across ``axis``."""
    x = np.arange(w if axis == 1 else h, dtype=np.float32)
    wave = 0.5 + 0.4 * np.sin(2 * np.pi * frequency * x)
    grey = np.broadcast_to(wave[None, :] if axis == 1 else wave[:, None], (h, w))
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)


def test_identical_images_are_at_distance_zero(tiny_params, rng):
    image = random_image(rng, 40, 48)
    report = quality.judge(tiny_params, image, image, image)
    assert set(report["style"]) == set(quality.STYLE_LAYERS)
    assert all(d < 1e-5 for d in report["style"].values()), report
    assert report["content"] < 1e-5
    assert report["shape"] == [40, 48]


def test_distances_match_numpy(tiny_params, rng):
    image, style = random_image(rng, 40, 40), random_image(rng, 40, 40)
    got = quality.style_distances(tiny_params, image, style, ("relu2_1",))["relu2_1"]
    a, b = (np.asarray(vgg.features(tiny_params, x, ("relu2_1",))["relu2_1"], np.float64) for x in (image, style))
    gram = lambda f: f.reshape(-1, f.shape[-1]).T @ f.reshape(-1, f.shape[-1]) / (f.shape[0] * f.shape[1])
    expected = np.linalg.norm(gram(a) - gram(b)) / np.linalg.norm(gram(b))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    content = quality.content_distance(tiny_params, image, style, "relu2_1")
    np.testing.assert_allclose(content, np.linalg.norm(a - b) / np.linalg.norm(b), rtol=1e-4)


def test_a_shifted_texture_has_the_same_style(tiny_params, rng):
    """A periodic texture shifted by half its period has its statistics (Gram); another texture does not."""
    tile = rng.random((8, 8, 3)).astype(np.float32)
    texture = np.tile(tile, (8, 8, 1))  # 64 x 64, period 8
    shifted = np.roll(texture, (4, 4), axis=(0, 1))
    same = quality.judge(tiny_params, shifted, texture, texture)["style"]
    other = quality.judge(tiny_params, np.tile(rng.random((8, 8, 3)), (8, 8, 1)), texture, texture)["style"]
    assert max(same.values()) < 0.05, same
    assert all(other[layer] > 5 * same[layer] for layer in quality.STYLE_LAYERS), (same, other)


@pytest.mark.parametrize(("frequency", "low", "high"), [(0.05, 0.0, 0.01), (0.4, 0.97, 1.0)])
def test_high_frequency_share_of_stripes(frequency, low, high):
    for axis in (0, 1):
        share = quality.high_frequency_share(_stripes(64, 96, frequency, axis))
        assert low <= share <= high, (frequency, axis, share)


def test_high_frequency_share_matches_numpy_and_is_zero_for_flat():
    assert quality.high_frequency_share(np.full((16, 24, 3), 0.3, np.float32)) == 0.0
    image = np.random.default_rng(1).random((32, 40, 3)).astype(np.float32)
    y = image @ np.array([0.299, 0.587, 0.114])
    y = (y - y.mean()) * np.outer(np.hanning(32), np.hanning(40))
    power = np.abs(np.fft.fft2(y)) ** 2
    fy, fx = np.fft.fftfreq(32)[:, None], np.fft.fftfreq(40)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    expected = power[radius > 0.25].sum() / power[radius > 0].sum()
    np.testing.assert_allclose(quality.high_frequency_share(image), expected, rtol=1e-6)


def test_flat_speckle_sees_noise_only_where_the_content_is_flat(rng):
    content = np.full((64, 64, 3), 0.5, np.float32)
    content[:, 32:] = random_image(rng, 64, 32)  # right half textured, left half flat
    assert quality.flat_speckle(content, content) < 1e-6  # flat stays flat
    noisy_flat, noisy_textured = content.copy(), content.copy()
    noisy_flat[:, :32] += 0.05 * rng.standard_normal((64, 32, 1)).astype(np.float32)
    noisy_textured[:, 32:] += 0.05 * rng.standard_normal((64, 32, 1)).astype(np.float32)
    assert quality.flat_speckle(noisy_flat, content) > 0.03
    assert quality.flat_speckle(noisy_textured, content) < 1e-6


def test_judge_resizes_content_and_style(tiny_params, rng):
    output = random_image(rng, 30, 40)
    report = quality.judge(tiny_params, output, random_image(rng, 60, 80), random_image(rng, 50, 50))
    assert report["shape"] == [30, 40] and np.isfinite(report["content"])


def _smooth_image(rng, h, w, cell=8):
    """A smooth random picture: random colours at every ``cell`` pixels, interpolated."""
    from nst_jax.image import resize

    coarse = rng.random((h // cell + 1, w // cell + 1, 3)).astype(np.float32)
    return np.asarray(resize(coarse, (h, w)))


def test_composition_distance_known_answers(tiny_params, rng):
    """0 for a picture against itself, at any size; grows as the picture shifts."""
    from nst_jax.image import resize

    image = _smooth_image(rng, 64, 96)
    distance = lambda a, b: quality.composition_distance(tiny_params, a, b, size=None)  # at the smaller size
    assert distance(image, image) < 1e-6
    larger = np.asarray(resize(image, (192, 288)))  # the same picture, 3x: compared at the smaller size
    same = distance(image, larger)
    shifts = [distance(np.roll(image, s, axis=1), image) for s in (2, 8, 24)]
    assert same < 0.5 * shifts[0], (same, shifts)
    assert 0 < shifts[0] < shifts[1] < shifts[2], shifts
    assert distance(image, larger) == pytest.approx(distance(larger, image), rel=0.2)
    # By default both are compared as 128 px thumbnails.
    thumbnails = [np.asarray(resize(x, (85, 128))) for x in (np.roll(image, 8, axis=1), larger)]
    assert quality.composition_distance(tiny_params, np.roll(image, 8, axis=1), larger) == pytest.approx(
        distance(*thumbnails), rel=1e-4
    )


def test_composition_distance_matches_numpy_at_a_given_size(tiny_params, rng):
    from nst_jax.image import resize

    image, reference = _smooth_image(rng, 96, 128), _smooth_image(rng, 192, 256)
    got = quality.composition_distance(tiny_params, image, reference, size=64, layer="relu3_1")
    a, b = (
        np.asarray(vgg.features(tiny_params, resize(x, (48, 64)), ("relu3_1",))["relu3_1"], np.float64)
        for x in (image, reference)
    )
    np.testing.assert_allclose(got, np.linalg.norm(a - b) / np.linalg.norm(b), rtol=1e-4)
