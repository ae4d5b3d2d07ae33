"""The library inside a user's JAX pipeline: batch-first losses, any callable, forward mode, plain configs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_image

import nst_jax
from nst_jax import StyleConfig, make_objective, optimize, perceptual_loss

CONFIG = StyleConfig(size=32, content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))


def test_perceptual_loss_is_the_objective_per_item(tiny_params, rng):
    style = random_image(rng, 40, 36)
    images = np.stack([random_image(rng, 24, 20) for _ in range(3)])
    contents = np.stack([random_image(rng, 24, 20) for _ in range(3)])
    loss = perceptual_loss(tiny_params, style, CONFIG, size=24)  # the layer weights of 24 px pictures
    values, aux = jax.jit(lambda loss, x, c: loss(x, c))(loss, images, contents)
    assert values.shape == (3,) and all(v.shape == (3,) for v in aux.values())
    for i in range(3):
        # 24 px: its size; every position alike, as a perceptual loss weighs them (no flat regions)
        value, terms = make_objective(tiny_params, contents[i], style, CONFIG.replace(flat_content_weight=1.0))(
            images[i]
        )
        np.testing.assert_allclose(values[i], value, rtol=1e-5)
        for name, term in terms.items():
            np.testing.assert_allclose(aux[name][i], term, rtol=1e-5, atol=1e-7)


def test_perceptual_loss_errors(tiny_params, rng):
    loss = perceptual_loss(tiny_params, random_image(rng), CONFIG)
    with pytest.raises(ValueError, match=r"`images` must be a \[batch, height, width, 3\] batch"):
        loss(random_image(rng), random_image(rng))
    with pytest.raises(ValueError, match=r"`contents` must have the shape of `images` \(2, 32, 32, 3\)"):
        loss(np.zeros((2, 32, 32, 3), np.float32), np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="`style` is None and `config.content_layers` is empty"):
        perceptual_loss(tiny_params, None, CONFIG.replace(content_layers=()))
    content_only = perceptual_loss(tiny_params, None, CONFIG)
    values, aux = content_only(np.zeros((2, 16, 16, 3), np.float32), np.zeros((2, 16, 16, 3), np.float32))
    assert not any(name.startswith("style/") for name in aux) and values.shape == (2,)


def test_trains_a_small_flax_network(tiny_params, rng):
    """A few Adam steps of a feed-forward network (Johnson et al. in miniature) lower the mean loss."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Conv(8, (3, 3))(x))
            return nn.sigmoid(nn.Conv(3, (3, 3))(h) + 3.0 * (x - 0.5))

    net = Net()
    batch = np.stack([random_image(rng, 16, 16) for _ in range(4)])
    loss = perceptual_loss(tiny_params, random_image(rng, 24, 24), CONFIG)
    variables = net.init(jax.random.key(0), batch)
    optimizer = optax.adam(3e-2)
    opt_state = optimizer.init(variables)

    @jax.jit
    def train_step(variables, opt_state, loss, batch):
        mean = lambda v: loss(net.apply(v, batch), batch)[0].mean()
        value, grads = jax.value_and_grad(mean)(variables)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(variables, updates), opt_state, value

    values = []
    for _ in range(8):
        variables, opt_state, value = train_step(variables, opt_state, loss, batch)
        values.append(float(value))
    assert values[-1] < values[0] and train_step._cache_size() == 1


def test_optimize_takes_any_callable(rng):
    target = jnp.asarray(random_image(rng, 8, 8))
    config = StyleConfig(size=16, num_steps=15, chunk_size=5)
    start = jnp.full((8, 8, 3), 0.5)
    plain = optimize(lambda x: jnp.mean((x - target) ** 2), start, config)
    assert plain.loss < 1e-6 and plain.terms == {}
    with_aux = optimize(lambda x: (jnp.mean((x - target) ** 2), {"mse": jnp.mean((x - target) ** 2)}), start, config)
    assert set(with_aux.terms) == {"mse"} and with_aux.terms["mse"] == pytest.approx(with_aux.loss, abs=1e-9)
    pytree = jax.tree_util.Partial(lambda t, x: jnp.mean((x - t) ** 2), target)
    np.testing.assert_allclose(optimize(pytree, start, config).image, plain.image, atol=1e-5)
    with pytest.raises(ValueError, match="`objective` must return a scalar loss or a \\(loss, aux\\) pair"):
        optimize(lambda x: x, start, config)
    with pytest.raises(TypeError, match="`objective` must be callable"):
        optimize(3.0, start, config)


def test_forward_mode_through_the_objective(tiny_params, rng):
    objective = make_objective(tiny_params, random_image(rng, 16, 16), random_image(rng, 16, 16), CONFIG)
    x = jnp.asarray(random_image(rng, 16, 16))
    tangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    _, forward = jax.jvp(objective.value, (x,), (tangent,))
    reverse = jnp.vdot(jax.grad(objective.value)(x), tangent)
    np.testing.assert_allclose(forward, reverse, rtol=1e-4)


def test_hypergradient_of_the_result_with_respect_to_the_style_weight(tiny_params, rng):
    """d(judge after k gradient steps)/d(style weight): reverse, forward and finite differences agree."""
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tiny_params)
        content = jnp.asarray(random_image(rng, 12, 12), jnp.float64)
        style = jnp.asarray(random_image(rng, 12, 12), jnp.float64)
        objective = make_objective(params, content, style, CONFIG.replace(tv_weight=0.0))
        style_grams = nst_jax.gram(nst_jax.features(params, style, "relu1_1")["relu1_1"])

        def judged(style_weight):  # an independent judge of the image after 3 plain gradient steps
            o = objective.replace(style_weight=style_weight)
            image = content
            for _ in range(3):
                image = image - 1e-3 * jax.grad(o.value)(image)
            grams = nst_jax.gram(nst_jax.features(params, image, "relu1_1")["relu1_1"])
            return jnp.mean((grams - style_grams) ** 2)

        w = jnp.float64(2.0)
        reverse = jax.grad(judged)(w)
        _, forward = jax.jvp(judged, (w,), (jnp.float64(1.0),))
        eps = 1e-4
        finite = (judged(w + eps) - judged(w - eps)) / (2 * eps)
        assert reverse < 0  # more style weight: closer to the style's Gram matrices
        np.testing.assert_allclose(forward, reverse, rtol=1e-8)
        np.testing.assert_allclose(reverse, finite, rtol=1e-5)


def test_config_takes_numpy_scalars_and_a_single_layer_name():
    config = StyleConfig(
        size=np.int64(256), style_weight=np.float32(30.0), seed=np.uint32(3), scales=(np.int32(128), 256),
        content_layers="relu4_2", style_layers="relu3_1", layer_weights=np.ones(1, np.float32),
    )  # fmt: skip
    assert config.size == 256 and type(config.size) is int and type(config.style_weight) is float
    assert config.seed == 3 and config.scales == (128, 256) and type(config.scales[0]) is int
    assert config.content_layers == ("relu4_2",) and config.style_layers == ("relu3_1",)
    assert config.layer_weights == (1.0,)
    with pytest.raises(ValueError, match=r"`size` must be an integer in \[16, 16384\], got 8"):
        StyleConfig(size=np.int64(8))


def test_progress_bar_eta_without_compilation_and_notebook_display(tiny_params, rng, capsys, monkeypatch):
    from nst_jax.progress import format_eta

    content, style = random_image(rng, 24, 24), random_image(rng, 24, 24)
    config = CONFIG.replace(num_steps=6, chunk_size=2, num_scales=1)
    seen = []
    result = nst_jax.stylize(content, style, config, params=tiny_params, callback=seen.append, progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "loss" in err and "ETA" in err, err
    # The first chunk holds the compilation: no speed or ETA from it; later chunks have both.
    assert seen[0].eta is None and seen[0].steps_per_second is None
    assert all(p.eta is not None and p.steps_per_second > 0 for p in seen[1:]) and seen[-1].eta == 0
    assert result._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")
    assert format_eta(None) == "--:--" and format_eta(75.4) == "1:15" and format_eta(3725) == "1:02:05"
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r'pip install "nst-jax\[progress\]"'):
        nst_jax.stylize(content, style, config, params=tiny_params, progress=True)


def test_sweep_progress_and_display(tiny_params, rng, capsys):
    content, style = random_image(rng, 24, 24), random_image(rng, 24, 24)
    config = CONFIG.replace(num_steps=3, chunk_size=1, num_scales=1)
    result = nst_jax.sweep(content, style, config, {"style_weight": [1.0, 10.0]}, params=tiny_params, progress=True)
    assert "batch 1/1" in capsys.readouterr().err
    assert result._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")
