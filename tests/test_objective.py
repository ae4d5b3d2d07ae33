import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_image
from jax.test_util import check_grads

from nst_jax import StyleConfig, losses, make_objective, vgg

# The paper's uniform content term (flat_content_weight=1): the flat regions' weights have their own tests
# (test_flat_content.py).
CONFIG = StyleConfig(
    content_layers=("relu2_1",),
    style_layers=("relu1_1", "relu2_1", "relu3_1"),
    tv_weight=0.5,
    style_weight=10.0,
    flat_content_weight=1.0,
)


@pytest.fixture
def objective(tiny_params, rng):
    return make_objective(tiny_params, random_image(rng, 24, 20), random_image(rng, 30, 28), CONFIG)


def test_terms_add_up_and_match_numpy(tiny_params, rng):
    """The absolute terms (plain means; the relative ones are tested below)."""
    config = CONFIG.replace(loss_scale="absolute", layer_weights=None)
    objective = make_objective(tiny_params, random_image(rng, 24, 20), random_image(rng, 30, 28), config)
    image = random_image(rng, 24, 20)
    loss, aux = objective(image)
    assert set(aux) == {"content/relu2_1", "style/relu1_1", "style/relu2_1", "style/relu3_1", "tv", "box"}
    np.testing.assert_allclose(loss, sum(aux.values()), rtol=1e-6)
    feats = vgg.features(tiny_params, image, ("relu1_1", "relu2_1", "relu3_1"))
    content = np.asarray(objective.content_targets["relu2_1"])
    np.testing.assert_allclose(
        aux["content/relu2_1"], np.mean((np.asarray(feats["relu2_1"]) - content) ** 2), rtol=1e-4
    )
    for layer, n in (("relu1_1", 64), ("relu3_1", 256)):
        f = np.asarray(feats[layer], np.float64).reshape(-1, n)
        g = f.T @ f / f.shape[0]
        expected = 10.0 / n * np.mean((g - np.asarray(objective.style_targets[layer])) ** 2)
        np.testing.assert_allclose(aux[f"style/{layer}"], expected, rtol=1e-4)
    np.testing.assert_allclose(aux["tv"], 0.5 * losses.total_variation(image), rtol=1e-6)
    assert float(aux["box"]) == 0.0  # every pixel is inside [0, 1]
    outside = image.copy()
    outside[0, 0] = [1.5, -0.5, 0.5]
    expected = 1e3 * (0.25 + 0.25) / outside.size
    np.testing.assert_allclose(objective(outside)[1]["box"], expected, rtol=1e-5)


def test_targets_are_computed_once_and_shapes(objective):
    assert objective.content_targets["relu2_1"].shape == (12, 10, 128)
    assert objective.style_targets["relu3_1"].shape == (256, 256)


def test_jit_eager_vmap(objective, rng):
    images = np.stack([random_image(rng, 24, 20) for _ in range(3)])
    eager = [float(objective(x)[0]) for x in images]
    jitted = jax.jit(lambda o, x: o(x)[0])
    np.testing.assert_allclose(jitted(objective, images[0]), eager[0], rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(lambda x: objective(x)[0])(images), eager, rtol=1e-5)


def test_objective_is_a_pytree_argument(objective, rng):
    """New weights with the same structure reuse the compiled program (the weights are leaves)."""
    f = jax.jit(lambda o, x: o(x)[0])
    image = random_image(rng, 24, 20)
    first = f(objective, image)
    heavier = objective.replace(style_weight=objective.style_weight * 2)
    second = f(heavier, image)
    assert f._cache_size() == 1
    assert float(second) > float(first)
    # vmap over a batch of style weights.
    weights = jnp.array([0.0, 10.0, 100.0])
    batched = jax.vmap(lambda w: f(objective.replace(style_weight=w), image))(weights)
    np.testing.assert_allclose(batched[1], first, rtol=1e-5)


@pytest.mark.parametrize("loss_scale", ["relative", "absolute"])
def test_gradient(tiny_params, rng, loss_scale):
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tiny_params)
        config = StyleConfig(
            content_layers=("relu1_2",), style_layers=("relu1_1", "relu2_1"), tv_weight=1.0, loss_scale=loss_scale
        )
        c = jnp.asarray(random_image(rng, 8, 8), jnp.float64)
        s = jnp.asarray(random_image(rng, 8, 8), jnp.float64)
        obj = make_objective(params, c, s, config)
        x = jnp.asarray(random_image(rng, 8, 8), jnp.float64)
        # float64 central differences; eps 1e-6 (the relative terms are O(10) here, curvature with them)
        check_grads(obj.value, (x,), order=1, modes=["rev"], atol=1e-4, rtol=1e-4, eps=1e-6)


def test_content_only_and_style_only(tiny_params, rng):
    content_only = make_objective(tiny_params, random_image(rng), None, CONFIG)
    assert not content_only.style_targets and set(content_only(random_image(rng))[1]) == {
        "content/relu2_1",
        "tv",
        "box",
    }
    style_only = make_objective(tiny_params, None, random_image(rng), CONFIG)
    assert not style_only.content_targets


def test_errors(tiny_params, rng):
    with pytest.raises(ValueError, match="`content` and `style` are both None"):
        make_objective(tiny_params, None, None, CONFIG)
    with pytest.raises(ValueError, match=r"`content` has shape \(8, 8\); images are \[height, width, 3\] RGB"):
        make_objective(tiny_params, np.zeros((8, 8)), random_image(rng), CONFIG)
    # One image check everywhere: a 0-255 image is refused, not cast (make_objective used to cast it).
    uint8 = (np.asarray(random_image(rng)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match=r"`style` has dtype uint8; images are floats in \[0, 1\]"):
        make_objective(tiny_params, None, uint8, CONFIG)
    with pytest.raises(ValueError, match=r"`content` has dtype uint8"):
        make_objective(tiny_params, uint8, None, CONFIG)
    with pytest.raises(ValueError, match=r"`style\[1\]` has values from .* to .*; images are in \[0, 1\]"):
        make_objective(tiny_params, None, [random_image(rng), uint8.astype(np.float32)], CONFIG)
    with pytest.raises(ValueError, match="`style_layers` has pooling layer 'pool1'"):
        make_objective(
            tiny_params, None, random_image(rng), CONFIG.replace(style_layers=("pool1",), layer_weights=None)
        )


def test_default_layer_weights():
    from nst_jax import default_layer_weights

    assert default_layer_weights(("relu1_1", "conv3_1")) == (0.5, 0.5)
    np.testing.assert_allclose(default_layer_weights(("relu1_1", "conv3_1", "relu5_1")), np.array([1, 1, 0.2]) / 2.2)
    assert default_layer_weights(("relu1_1", "conv3_1", "relu5_1"), "absolute") == (1 / 64, 1 / 256, 1 / 512)


def test_default_layer_weights_follow_the_share_of_the_picture_each_layer_sees(tiny_params):
    """At half of 512 px each layer takes the weight of the next deeper one at 512 px; 1/5 per level beyond."""
    from nst_jax import default_layer_weights

    layers = StyleConfig().style_layers
    at = lambda size: np.asarray(default_layer_weights(layers, size=size)) * 4.2
    np.testing.assert_allclose(at(512), [1, 1, 1, 1, 0.2])
    np.testing.assert_allclose(at(None), at(512))
    np.testing.assert_allclose(at(256), [1, 1, 1, 0.2, 0.04])
    np.testing.assert_allclose(at(128), [1, 1, 0.2, 0.04, 0.008])
    np.testing.assert_allclose(at(1024), [1, 1, 1, 1, 1])
    np.testing.assert_allclose(at(362), [1, 1, 1, 0.2**0.5, 0.2**1.5], rtol=2e-3)  # half a level
    assert default_layer_weights(layers, "absolute", size=256) == default_layer_weights(layers, "absolute")
    # The objective takes the picture's size from the content (or from `size`).
    content = np.full((64, 48, 3), 0.5, np.float32)
    weights = lambda o: tuple(float(o.layer_weights[layer]) for layer in layers)
    np.testing.assert_allclose(weights(make_objective(tiny_params, content, content)), at(64) / 4.2, rtol=1e-6)
    styled = make_objective(tiny_params, content, content, size=256)
    np.testing.assert_allclose(weights(styled), at(256) / 4.2, rtol=1e-6)
    texture = make_objective(tiny_params, None, content)  # no content, no size: the 512 px weights
    np.testing.assert_allclose(weights(texture), at(512) / 4.2, rtol=1e-6)
    given = make_objective(tiny_params, None, content, size=64)  # content that comes later (perceptual_loss)
    np.testing.assert_allclose(weights(given), at(64) / 4.2, rtol=1e-6)


@pytest.mark.parametrize("loss_scale", ["relative", "absolute"])
def test_paper_weights_reproduce_the_loss(tiny_params, rng, loss_scale):
    """alpha and beta*w_l from paper_weights, put into the paper's formulas, give our loss."""
    from nst_jax.objective import paper_weights, target_mean_squares

    config = StyleConfig(
        content_layers=("relu2_1",),
        style_layers=("relu1_1", "relu3_1"),
        style_weight=7.0,
        loss_scale=loss_scale,
        tv_weight=0.0,  # not in the paper
        flat_content_weight=1.0,  # the paper's uniform content term
    )
    content, style, image = random_image(rng, 20, 24), random_image(rng, 16, 16), random_image(rng, 20, 24)
    objective = make_objective(tiny_params, content, style, config)
    alpha, beta = paper_weights(config, 20, 24, target_mean_squares(objective))
    feats = {
        k: np.asarray(v, np.float64)
        for k, v in vgg.features(tiny_params, image, ("relu1_1", "relu2_1", "relu3_1")).items()
    }
    style_feats = vgg.features(tiny_params, style, ("relu1_1", "relu3_1"))
    p = np.asarray(objective.content_targets["relu2_1"], np.float64)
    paper = alpha["relu2_1"] * 0.5 * np.sum((feats["relu2_1"] - p) ** 2)
    for layer in ("relu1_1", "relu3_1"):
        f = feats[layer].reshape(-1, feats[layer].shape[-1])
        a = np.asarray(style_feats[layer], np.float64).reshape(-1, f.shape[1])
        g, big_a = f.T @ f, a.T @ a * f.shape[0] / a.shape[0]  # the style's Gram at the output's M_l
        n, m = f.shape[1], f.shape[0]
        paper += beta[layer] * np.sum((g - big_a) ** 2) / (4 * n**2 * m**2)
    np.testing.assert_allclose(objective(image)[0], paper, rtol=1e-4)


def test_relative_terms_are_squared_relative_distances(tiny_params, rng):
    config = StyleConfig(
        content_layers=("relu2_1",), style_layers=("relu1_1", "relu3_1"), style_weight=3.0, flat_content_weight=1.0
    )
    content, style, image = random_image(rng, 20, 24), random_image(rng, 16, 16), random_image(rng, 20, 24)
    _, aux = make_objective(tiny_params, content, style, config, size=512)(image)  # the weights as at 512 px
    feats = {
        k: np.asarray(v, np.float64)
        for k, v in vgg.features(tiny_params, image, ("relu1_1", "relu2_1", "relu3_1")).items()
    }
    target = np.asarray(vgg.features(tiny_params, content, ("relu2_1",))["relu2_1"], np.float64)
    expected = np.sum((feats["relu2_1"] - target) ** 2) / np.sum(target**2)
    np.testing.assert_allclose(aux["content/relu2_1"], expected, rtol=1e-4)
    for layer in ("relu1_1", "relu3_1"):
        a, b = feats[layer], np.asarray(vgg.features(tiny_params, style, (layer,))[layer], np.float64)
        g = lambda f: f.reshape(-1, f.shape[-1]).T @ f.reshape(-1, f.shape[-1]) / (f.shape[0] * f.shape[1])
        distance = np.sum((g(a) - g(b)) ** 2) / np.sum(g(b) ** 2)
        np.testing.assert_allclose(aux[f"style/{layer}"], 3.0 / 2 * distance, rtol=1e-4)  # w_l = 1/2


def test_paper_weights_need_the_targets_with_relative_terms():
    from nst_jax.objective import paper_weights

    with pytest.raises(ValueError, match="`mean_squares` is needed with loss_scale 'relative'"):
        paper_weights(StyleConfig(), 512, 384)


def test_paper_weights_of_a_pooling_content_layer():
    from nst_jax.objective import paper_weights

    alpha, _ = paper_weights(StyleConfig(content_layers=("pool4",), loss_scale="absolute"), 512, 384)
    assert alpha == {"pool4": 2.0 / (512 * 32 * 24)}


def test_the_image_check_takes_tracers_for_shape_and_dtype_only(tiny_params, rng):
    """memory_needed builds the objective under jit from abstract images: the check must not read values."""
    build = lambda content: make_objective(tiny_params, content, None, CONFIG).content_targets
    shapes = jax.eval_shape(build, jax.ShapeDtypeStruct((16, 16, 3), jnp.float32))
    assert jax.tree.leaves(shapes) and all(leaf.ndim == 3 for leaf in jax.tree.leaves(shapes))
    with pytest.raises(ValueError, match="`content` has dtype int32"):
        jax.eval_shape(build, jax.ShapeDtypeStruct((16, 16, 3), jnp.int32))
