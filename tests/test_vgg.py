import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_image
from jax.test_util import check_grads

from nst_jax import vgg


def _np_conv(x, kernel_hwio, bias, padding):
    """Reference 'same' 3x3 (or 1x1) convolution in numpy, float64."""
    kh, kw = kernel_hwio.shape[:2]
    ph, pw = kh // 2, kw // 2
    mode = {"reflect": "reflect", "circular": "wrap"}.get(padding, "constant")
    xp = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), mode=mode)
    h, w = x.shape[:2]
    out = np.zeros((h, w, kernel_hwio.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += xp[i : i + h, j : j + w] @ kernel_hwio[i, j]
    return out + bias


def _np_features(params, image, layers, pooling="avg", padding="zeros"):
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = _np_conv(image.astype(np.float64), params["preprocess"]["kernel"], params["preprocess"]["bias"], padding)
    out = {}
    for name in vgg.LAYERS[: max(vgg.LAYERS.index(layer) for layer in layers) + 1]:
        if name.startswith("conv"):
            x = _np_conv(x, params[name]["kernel"], params[name]["bias"], padding)
        elif name.startswith("relu"):
            x = np.maximum(x, 0)
        else:
            if padding == "circular":  # odd sides wrap their last window around
                x = np.pad(x, ((0, x.shape[0] % 2), (0, x.shape[1] % 2), (0, 0)), mode="wrap")
            h, w, c = x.shape
            blocks = x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c)
            x = {"avg": blocks.mean((1, 3)), "max": blocks.max((1, 3))}.get(pooling)
            if pooling == "mixed":
                x = 0.5 * (blocks.mean((1, 3)) + blocks.max((1, 3)))
        if name in layers:
            out[name] = x
    return out


def test_real_weights_match_numpy_reference(real_params, rng):
    """The converted default weights, through the Flax model, equal a numpy forward pass."""
    image = random_image(rng, 32, 40)
    layers = ("relu1_1", "conv2_1", "relu3_1", "relu4_2", "relu5_1")
    got = vgg.features(real_params, image, layers)
    want = _np_features(real_params, image, layers)
    for layer in layers:
        scale = np.abs(want[layer]).max()
        np.testing.assert_allclose(got[layer], want[layer], atol=2e-4 * scale, rtol=2e-4, err_msg=layer)


@pytest.mark.parametrize("pooling", vgg.POOLINGS)
@pytest.mark.parametrize("padding", vgg.PADDINGS)
def test_modes_match_numpy_reference(tiny_params, rng, pooling, padding):
    image = random_image(rng, 21, 18)  # odd sizes exercise pooling's floor
    layers = ("relu1_2", "pool1", "relu2_1", "pool2", "relu3_1")
    got = vgg.features(tiny_params, image, layers, pooling=pooling, padding=padding)
    want = _np_features(tiny_params, image, layers, pooling=pooling, padding=padding)
    for layer in layers:
        np.testing.assert_allclose(got[layer], want[layer], rtol=1e-4, atol=1e-4, err_msg=layer)


def test_stops_at_deepest_requested_layer(tiny_params, rng):
    shallow = {k: v for k, v in tiny_params.items() if k in ("preprocess", "conv1_1", "conv1_2")}
    out = vgg.features(shallow, random_image(rng), ("relu1_1", "relu1_2"))
    assert set(out) == {"relu1_1", "relu1_2"}
    assert out["relu1_2"].shape == (32, 32, 64)


def test_jit_matches_eager_and_vmap_matches_loop(tiny_params, rng):
    images = np.stack([random_image(rng) for _ in range(3)])
    layers = ("relu2_1", "relu3_1")
    f = lambda x: vgg.features(tiny_params, x, layers)
    eager = [f(x) for x in images]
    jitted = jax.jit(f)(images[0])
    batched = jax.vmap(f)(images)
    for layer in layers:
        np.testing.assert_allclose(jitted[layer], eager[0][layer], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(batched[layer], np.stack([e[layer] for e in eager]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((0, 0), (0, 0)), ((2, 0), (1, 2))])
def test_conv2d_gradient(rng, padding):
    x = jnp.asarray(rng.standard_normal((1, 6, 5, 3)))
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 4)))
    with jax.enable_x64(True):
        x, k = x.astype(jnp.float64), k.astype(jnp.float64)
        check_grads(lambda x, k: vgg.conv2d(x, k, padding), (x, k), order=2, modes=["rev", "fwd"])
        reference = jax.grad(lambda x: jnp.sum(jnp.sin(vgg._conv(x, k, padding))))(x)
        ours = jax.grad(lambda x: jnp.sum(jnp.sin(vgg.conv2d(x, k, padding))))(x)
        np.testing.assert_allclose(ours, reference, rtol=1e-10)


@pytest.mark.parametrize("padding", vgg.PADDINGS)
@pytest.mark.parametrize("shape", [(7, 5), (2, 3), (1, 4), (3, 1)])
def test_padded_conv3x3_matches_explicit_padding(rng, padding, shape):
    """The ring-corrected 'same' convolution equals np.pad + convolution, and so do its gradients."""
    x = rng.standard_normal((2, *shape, 3))
    k = rng.standard_normal((3, 3, 3, 4))
    got = vgg.padded_conv3x3(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32), padding)
    want = np.stack([_np_conv(image, k, 0.0, padding) for image in x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with jax.enable_x64(True):
        check_grads(lambda x, k: vgg.padded_conv3x3(x, k, padding), (jnp.asarray(x), jnp.asarray(k)), 1, ["rev"])


def test_precisions(real_params, rng):
    """tf32 is float32 on a CPU; bf16 stays within bfloat16's rounding of the float32 features, gradients too."""
    image = jnp.asarray(random_image(rng, 48, 40))
    layers = ("relu1_1", "relu3_1", "relu5_1")
    exact = vgg.features(real_params, image, layers)
    if jax.default_backend() == "cpu":
        tf32 = vgg.features(real_params, image, layers, precision="tf32")
        for layer in layers:
            np.testing.assert_allclose(tf32[layer], exact[layer], rtol=1e-5, atol=1e-5 * np.abs(exact[layer]).max())
    bf16 = vgg.features(real_params, image, layers, precision="bf16")
    for layer in layers:
        assert bf16[layer].dtype == jnp.float32
        error = np.linalg.norm(bf16[layer] - exact[layer]) / np.linalg.norm(exact[layer])
        assert 1e-4 < error < 3e-2, (layer, error)  # really narrower, and still close
    grad = lambda precision: jax.grad(
        lambda x: jnp.sum(vgg.features(real_params, x, ("relu3_1",), precision=precision)["relu3_1"] ** 2)
    )(image)
    exact_grad, bf16_grad = grad("highest"), grad("bf16")
    assert np.linalg.norm(bf16_grad - exact_grad) / np.linalg.norm(exact_grad) < 3e-2


def test_bad_precision(tiny_params, rng):
    with pytest.raises(ValueError, match=r"`precision` must be one of \('highest', 'tf32', 'bf16'\), got 'fp8'"):
        vgg.features(tiny_params, random_image(rng), ("relu1_1",), precision="fp8")


def test_unknown_layer_is_named(tiny_params, rng):
    with pytest.raises(ValueError, match=r"`layers` has unknown layer 'conv6_1'; valid layers are conv1_1"):
        vgg.features(tiny_params, random_image(rng), ("relu1_1", "conv6_1"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pooling": "min"}, r"`pooling` must be one of \('avg', 'max', 'mixed'\), got 'min'"),
        ({"padding": "wrap"}, r"`padding` must be one of \('zeros', 'reflect', 'circular'\), got 'wrap'"),
    ],
)
def test_bad_modes(tiny_params, rng, kwargs, match):
    with pytest.raises(ValueError, match=match):
        vgg.features(tiny_params, random_image(rng), ("relu1_1",), **kwargs)


def test_bad_image_shape(tiny_params):
    with pytest.raises(ValueError, match=r"`image` must have shape \[..., height, width, 3\], got \(8, 8, 4\)"):
        vgg.features(tiny_params, jnp.zeros((8, 8, 4)), ("relu1_1",))
    with pytest.raises(ValueError, match=r"got \(8, 3\)"):
        vgg.features(tiny_params, jnp.zeros((8, 3)), ("relu1_1",))


def test_features_take_leading_batch_axes(tiny_params, rng):
    images = rng.random((2, 3, 24, 20, 3)).astype(np.float32)
    batched = vgg.features(tiny_params, images, ("relu2_1", "relu3_1"))
    assert batched["relu3_1"].shape == (2, 3, 6, 5, 256)
    for i, j in np.ndindex(2, 3):
        one = vgg.features(tiny_params, images[i, j], ("relu2_1", "relu3_1"))
        for layer in one:
            np.testing.assert_allclose(batched[layer][i, j], one[layer], rtol=1e-5, atol=1e-6)


def test_a_single_string_is_one_layer(tiny_params, rng):
    image = random_image(rng)
    assert list(vgg.features(tiny_params, image, "relu2_1")) == ["relu2_1"]


def test_conv2d_input_gradient_is_labelled_hwio(rng):
    """The reason conv2d has a custom JVP: its input gradient's convolution keeps the kernel
    labelled HWIO (XLA:CPU's fast path in a while_loop), where plain JAX's is labelled HWOI."""
    x = jnp.asarray(rng.standard_normal((1, 8, 8, 3)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
    same = ((1, 1), (1, 1))

    def gradient_text(conv):
        step = lambda x: x - jax.grad(lambda x: jnp.sum(jnp.sin(conv(x, k, same))))(x)
        return jax.jit(lambda x: jax.lax.fori_loop(0, 2, lambda i, x: step(x), x)).lower(x).as_text()

    assert gradient_text(vgg._conv).count("[0, 1, o, i]") == 1  # plain JAX: the HWOI one
    ours = gradient_text(vgg.conv2d)
    assert ours.count("convolution") == 2 and ours.count("[0, 1, i, o]") == 2 and "[0, 1, o, i]" not in ours


@pytest.mark.parametrize("precision", vgg.PRECISIONS)
def test_conv2d_derivatives_in_each_precision(rng, precision):
    """Forward and reverse derivatives of conv2d, under jit and vmap, against float32 plain JAX's:
    equal for float32 and tf32 (float32 on a CPU); for bf16 within bfloat16's rounding."""
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 3)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32) * 0.3
    t = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    same = ((1, 1), (1, 1))
    ours = lambda x, k: jnp.sum(jnp.sin(vgg.conv2d(x, k, same, precision)))
    plain = lambda x, k: jnp.sum(jnp.sin(vgg._conv(x, k, same)))
    tolerance = 2e-2 if precision == "bf16" else 1e-5
    for got, want in (
        (jax.jit(jax.grad(ours, (0, 1)))(x, k), jax.grad(plain, (0, 1))(x, k)),
        (
            jax.jit(lambda x, t: jax.jvp(lambda x: ours(x, k), (x,), (t,)))(x, t),
            jax.jvp(lambda x: plain(x, k), (x,), (t,)),
        ),
        (jax.vmap(jax.grad(ours), (0, None))(x[:, None], k)[:, 0], jax.grad(plain)(x, k)),
    ):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert a.dtype == jnp.float32
            assert np.linalg.norm(a - b) <= tolerance * np.linalg.norm(b)


def test_forward_mode_through_features(tiny_params, rng):
    """jvp, linearize and jacfwd go through the features and agree with reverse mode, under jit too."""
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tiny_params)
        x = jnp.asarray(random_image(rng, 8, 8), jnp.float64)
        f = lambda x: vgg.features(params, x, ("relu2_1",))["relu2_1"]
        check_grads(f, (x,), order=1, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5, eps=1e-6)
        tangent = jnp.asarray(rng.standard_normal(x.shape))
        _, jvp_out = jax.jvp(f, (x,), (tangent,))
        _, linear = jax.linearize(f, x)
        np.testing.assert_allclose(linear(tangent), jvp_out, rtol=1e-10, atol=1e-12)
        scalar = lambda x: jnp.sum(jnp.sin(f(x)))
        np.testing.assert_allclose(jax.jacfwd(scalar)(x), jax.grad(scalar)(x), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(jax.jit(jax.jacfwd(scalar))(x), jax.grad(scalar)(x), rtol=1e-8, atol=1e-10)
        # Second order, forward over reverse: a Hessian-vector product against reverse over reverse.
        hvp = jax.jvp(jax.grad(scalar), (x,), (tangent,))[1]
        np.testing.assert_allclose(hvp, jax.grad(lambda x: jnp.vdot(jax.grad(scalar)(x), tangent))(x), rtol=1e-8)


def test_circular_padding_is_exactly_translation_equivariant(tiny_params, rng):
    image = random_image(rng, 64, 48)
    shifted = np.roll(image, (16, -32), axis=(0, 1))
    layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    got = vgg.features(tiny_params, shifted, layers, padding="circular")
    want = vgg.features(tiny_params, image, layers, padding="circular")
    for layer, factor in zip(layers, (1, 2, 4, 8, 16), strict=True):
        rolled = np.roll(np.asarray(want[layer]), (16 // factor, -32 // factor), axis=(0, 1))
        np.testing.assert_allclose(got[layer], rolled, rtol=1e-5, atol=1e-5, err_msg=layer)
