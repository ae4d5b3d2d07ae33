"""StyleConfig.flat_content_weight: the content term weaker where the photograph is flat (issue 24)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_NETWORK_CONFIG
from jax.test_util import check_grads

from nst_jax import StyleConfig, losses, make_objective, samples, stylize, sweep
from nst_jax.image import flatness

NET = SMALL_NETWORK_CONFIG.replace(num_steps=30, chunk_size=10)


def half_flat(rng, h: int, w: int) -> np.ndarray:
    """Flat grey on the left half, noise on the right."""
    image = np.full((h, w, 3), 0.5, np.float32)
    image[:, w // 2 :] = rng.random((h, w - w // 2, 3))
    return image


@pytest.mark.parametrize("shape", [(48, 64), (96, 128)])
def test_flatness_finds_the_flat_half_at_every_size(rng, shape):
    h, w = shape
    flat = np.asarray(flatness(half_flat(rng, h, w), 0.4))  # the flattest 40 %: inside the flat half
    assert flat.shape == (h, w) and flat.min() >= 0 and flat.max() <= 1
    edge = max(1, round(w / 64)) * 2 + 2  # the softened border, 1/64 of the long side each way
    assert flat[:, : w // 2 - edge].min() > 0.99 and flat[:, w // 2 + edge :].max() < 0.01


def test_the_weighted_content_loss_is_the_weighted_mean(rng):
    features, target, weights = rng.random((4, 5, 3)), rng.random((4, 5, 3)), rng.random((4, 5))
    expected = np.mean(weights[..., None] * (features - target) ** 2)
    np.testing.assert_allclose(losses.content_loss(features, target, weights), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.content_loss(features, target), np.mean((features - target) ** 2), rtol=1e-6)
    check_grads(lambda f: losses.content_loss(f, target, weights), (jnp.asarray(features),), order=2)


def test_the_content_term_is_weaker_only_where_the_photograph_is_flat(small_network, rng):
    _, network, params = small_network
    content, style, image = half_flat(rng, 32, 40), rng.random((32, 32, 3)), rng.random((32, 40, 3))
    paper = make_objective(params, content, style, NET.replace(flat_content_weight=1.0), network=network)
    assert paper.content_weights is None  # 1: the paper's uniform term, unchanged
    config = NET  # the default, 0.25
    assert config.flat_content_weight == 0.25
    objective = make_objective(params, content, style, config, network=network)
    weights = np.asarray(objective.content_weights["c2"])  # c2 is at half size
    assert weights.shape == (16, 20)
    high = weights[:, 13:].mean()  # the weights' mean is 1: the term's total weight is the paper's
    np.testing.assert_allclose(weights.mean(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(weights[:, :7], 0.25 * high, rtol=1e-3)
    np.testing.assert_allclose(weights[:, 13:], high, rtol=1e-3)
    assert 1.2 < high < 1.6  # about 40 % of the positions at a quarter
    feats = make_objective(params, image, None, NET, network=network).content_targets["c2"]  # the image's
    target = np.asarray(objective.content_targets["c2"])
    by_hand = np.mean(weights[..., None] * (np.asarray(feats) - target) ** 2) / np.mean(target**2)
    _, aux = objective(jnp.asarray(image))
    np.testing.assert_allclose(aux["content/c2"], config.content_weight * by_hand, rtol=1e-5)
    assert aux["style/c1"] == paper(jnp.asarray(image))[1]["style/c1"]  # the style terms as before
    np.testing.assert_allclose(jax.jit(lambda o, x: o(x)[0])(objective, image), objective(image)[0], rtol=1e-5)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"flat_content_weight": 1.5}, r"`flat_content_weight` must be a finite number in \[0, 1\], got 1\.5"),
        ({"flat_content_weight": -0.1}, r"`flat_content_weight` must be a finite number in \[0, 1\], got -0\.1"),
        ({"flat_fraction": 0.0}, r"`flat_fraction` must be a number in \(0, 1\), got 0\.0"),
        ({"flat_fraction": 1}, r"`flat_fraction` must be a number in \(0, 1\), got 1"),
    ],
)
def test_bounds_are_checked_before_anything_runs(change, match):
    with pytest.raises(ValueError, match=match):
        StyleConfig(**change)


def test_a_sweep_member_is_the_picture_stylize_makes_with_it(small_network):
    """The weights travel into the batched objective (shared by every member), through every stage."""
    _, network, params = small_network
    content, style = samples.village(32, 40), samples.swirls(32, 40)
    config = NET  # the default, 0.25
    alone = stylize(content, style, config, params=params, network=network)
    member = sweep(content, style, config, {"style_weight": [config.style_weight]}, params=params, network=network)
    assert float(member.losses[0]) == pytest.approx(float(alone.loss), rel=1e-3)
    difference = np.abs(np.asarray(member.images[0]) - np.asarray(alone.image))
    assert difference.mean() < 1e-3 and difference.max() < 2e-2
    paper = stylize(content, style, NET.replace(flat_content_weight=1.0), params=params, network=network)
    assert np.abs(np.asarray(paper.image) - np.asarray(alone.image)).max() > 1e-3  # it changed the picture


def test_without_a_style_every_position_weighs_alike(small_network, rng):
    """A reconstruction (no style) has nothing to make room for: the paper's uniform term."""
    _, network, params = small_network
    content = half_flat(rng, 32, 40)
    assert make_objective(params, content, None, NET, network=network).content_weights is None


def test_a_perceptual_loss_weighs_every_position_alike(small_network, rng):
    """Its contents change with every batch, so the flat regions of none are used: the default
    and the paper's uniform term give the same loss."""
    from nst_jax import perceptual_loss

    _, network, params = small_network
    style, images, contents = rng.random((32, 32, 3)), rng.random((2, 32, 40, 3)), rng.random((2, 32, 40, 3))
    default = perceptual_loss(params, style, NET, network=network)
    paper = perceptual_loss(params, style, NET.replace(flat_content_weight=1.0), network=network)
    assert default.objective.content_weights is None
    np.testing.assert_allclose(default(images, contents)[0], paper(images, contents)[0], rtol=1e-6)


def test_a_flat_content_weight_axis_gives_each_member_its_own_weights(small_network):
    """Swept, every member is the picture stylize makes with its value (1: the paper's uniform term)."""
    _, network, params = small_network
    content, style = samples.village(32, 40), samples.swirls(32, 40)
    swept = sweep(content, style, NET, {"flat_content_weight": [1.0, 0.25]}, params=params, network=network)
    for i, value in enumerate((1.0, 0.25)):
        alone = stylize(content, style, NET.replace(flat_content_weight=value), params=params, network=network)
        assert float(swept.losses[i]) == pytest.approx(float(alone.loss), rel=1e-3)
        difference = np.abs(np.asarray(swept.images[i]) - np.asarray(alone.image))
        assert difference.mean() < 1e-3 and difference.max() < 2e-2
    assert np.abs(np.asarray(swept.images[0]) - np.asarray(swept.images[1])).max() > 1e-3


def test_a_flat_content_weight_axis_is_read_and_bounded(small_network):
    from nst_jax.sweeps import parse_axis

    _, network, params = small_network
    assert parse_axis("flat_content_weight=1,0.25") == ("flat_content_weight", [1.0, 0.25])
    assert parse_axis("flat-content-weight=0.5") == ("flat_content_weight", [0.5])
    with pytest.raises(ValueError, match=r"`flat_content_weight` must be a finite number in \[0, 1\], got 2\.0"):
        axes = {"flat_content_weight": [0.25, 2.0]}
        sweep(samples.village(32, 40), samples.swirls(32, 40), NET, axes, params=params, network=network)
