"""Any feature network: a user's Flax module through make_objective, stylize, sweep and perceptual_loss; VGG-16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_image

import nst_jax
from nst_jax import StyleConfig, make_objective, vgg

CONFIG = StyleConfig(
    network="custom", size=32, num_scales=1, num_steps=6, content_layers=("c2",), style_layers=("c1", "c2")
)


@pytest.fixture(scope="module")
def small(small_network):
    return small_network


def test_from_flax_reads_layers_channels_and_strides(small):
    _, network, _ = small
    assert network.layers == ("c1", "c2") and dict(network.channels) == {"c1": 8, "c2": 12}
    assert dict(network.strides) == {"c1": 1, "c2": 2} and network.min_side(("c2",)) == 2
    with pytest.raises(ValueError, match=r"`style_layers` has 'relu1_1', which network 'small' does not have"):
        network.check_layers("style_layers", ("relu1_1",))


def test_objective_of_a_flax_module_matches_a_hand_computation(small, rng):
    module, network, params = small
    content, style, image = (random_image(rng, 16, 20) for _ in range(3))
    config = CONFIG.replace(flat_content_weight=1.0)  # the paper's uniform term (the flat weights: test_flat_content)
    objective = make_objective(params, content, style, config, network=network)
    loss, aux = objective(jnp.asarray(image))
    feats = lambda x: module.apply({"params": params}, jnp.asarray(x)[None])
    f, p, s = feats(image), feats(content), feats(style)
    gram = lambda a: np.asarray(nst_jax.gram(a[0]), np.float64)
    content_term = np.mean((f["c2"] - p["c2"]) ** 2) / np.mean(np.asarray(p["c2"]) ** 2)
    np.testing.assert_allclose(aux["content/c2"], CONFIG.content_weight * content_term, rtol=1e-4)
    for layer in ("c1", "c2"):  # equal default weights for a custom network (1/2 each)
        style_term = np.mean((gram(f[layer]) - gram(s[layer])) ** 2) / np.mean(gram(s[layer]) ** 2)
        np.testing.assert_allclose(aux[f"style/{layer}"], CONFIG.style_weight * 0.5 * style_term, rtol=1e-4)
    assert jnp.isfinite(loss)


def test_stylize_sweep_and_perceptual_loss_take_the_network(small, rng, tmp_path):
    _, network, params = small
    content, style = random_image(rng, 24, 24), random_image(rng, 24, 24)
    result = nst_jax.stylize(content, style, CONFIG, params=params, network=network)
    assert result.num_steps == 6 and result.finite and result.loss < result.history[0][1]
    swept = nst_jax.sweep(content, style, CONFIG, {"style_weight": [1.0, 100.0]}, params=params, network=network)
    assert swept.images.shape == (2, 24, 24, 3) and swept.network is network
    path = nst_jax.save_sweep(tmp_path / "sweep", swept)
    assert path.is_file()
    layered = nst_jax.sweep(content, style, CONFIG, {"style_layers": [("c1",), ("c1", "c2")]}, params=params,
                            network=network)  # fmt: skip
    assert layered.images.shape[0] == 2
    loss = nst_jax.perceptual_loss(params, style, CONFIG, network=network)
    values, _ = loss(np.stack([content, content]), np.stack([content, style]))
    assert values.shape == (2,) and values[0] < values[1]


def test_network_mistakes_are_named(small, rng):
    _, network, params = small
    content, style = random_image(rng), random_image(rng)
    with pytest.raises(ValueError, match="`config.network` is 'custom' but no `network` was given"):
        make_objective(params, content, style, CONFIG)
    with pytest.raises(ValueError, match="`network` is given but `config.network` is 'vgg'"):
        make_objective(params, content, style, StyleConfig(), network=network)
    with pytest.raises(ValueError, match="`content_layers` has 'relu4_2', which network 'small' does not have"):
        make_objective(params, content, style, StyleConfig(network="custom", style_layers=("c1",)), network=network)
    with pytest.raises(ValueError, match="`params` is None: give the parameters of `network`"):
        nst_jax.stylize(content, style, CONFIG, network=network)
    with pytest.raises(ValueError, match="`network` must be one of \\('vgg', 'custom'\\)"):
        StyleConfig(network="resnet")


def test_vgg16_parameters_run_everywhere(rng):
    params16 = vgg.init_params(jax.random.key(1), depth=16)
    assert vgg.depth_of(params16) == 16 and "conv3_4" not in params16
    content, style = random_image(rng, 32, 32), random_image(rng, 32, 32)
    config = StyleConfig(size=32, num_scales=1, num_steps=4, style_layers=("relu1_1", "relu3_3", "relu5_3"))
    result = nst_jax.stylize(content, style, config, params=params16)
    assert result.finite and set(result.terms) >= {"style/relu5_3", "content/relu4_2"}
    with pytest.raises(ValueError, match="`layers` has 'relu5_4', which VGG-16 does not have"):
        make_objective(params16, content, style, StyleConfig(style_layers=("relu5_4",)))
