import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nst_jax import losses


def test_gram_by_hand():
    # Two positions, two channels: F = [[1, 2], [3, 4]] -> F^T F = [[10, 14], [14, 20]], / M = 2.
    features = jnp.array([[[1.0, 2.0], [3.0, 4.0]]])  # [h=1, w=2, c=2]
    np.testing.assert_allclose(losses.gram(features), [[5.0, 7.0], [7.0, 10.0]])


def _np_gram(f):
    flat = f.reshape(-1, f.shape[-1]).astype(np.float64)
    return flat.T @ flat / flat.shape[0]


def test_losses_against_numpy(rng):
    f = rng.standard_normal((6, 5, 4)).astype(np.float32)
    p = rng.standard_normal((6, 5, 4)).astype(np.float32)
    target = _np_gram(rng.standard_normal((7, 3, 4)))
    np.testing.assert_allclose(losses.gram(f), _np_gram(f), rtol=1e-5)
    np.testing.assert_allclose(losses.content_loss(f, p), np.mean((f - p) ** 2), rtol=1e-5)
    np.testing.assert_allclose(
        losses.style_layer_loss(f, target.astype(np.float32)), np.mean((_np_gram(f) - target) ** 2), rtol=1e-5
    )
    weights = {"a": 0.5, "b": 2.0}
    feats = {"a": f, "b": p}
    grams = {"a": target.astype(np.float32), "b": _np_gram(f).astype(np.float32)}
    expected = 0.5 * np.mean((_np_gram(f) - target) ** 2) + 2.0 * np.mean((_np_gram(p) - _np_gram(f)) ** 2)
    np.testing.assert_allclose(losses.style_loss(feats, grams, weights), expected, rtol=1e-5)


def test_paper_normalisation_relation(rng):
    """style_layer_loss is 4x the paper's E_l = 1/(4 N^2 M^2) sum (G - A)^2 with unnormalised Grams."""
    f = rng.standard_normal((4, 4, 3))
    a = rng.standard_normal((5, 3, 3))
    m, n = 16, 3
    gf = f.reshape(-1, n).T @ f.reshape(-1, n)
    ga = a.reshape(-1, n).T @ a.reshape(-1, n) * m / 15  # the style's Gram, rescaled to M positions
    paper = np.sum((gf - ga) ** 2) / (4 * n**2 * m**2)
    ours = losses.style_layer_loss(jnp.asarray(f, jnp.float32), jnp.asarray(ga / m, jnp.float32))
    np.testing.assert_allclose(ours, 4 * paper, rtol=1e-5)


def test_total_variation_against_numpy(rng):
    x = rng.random((5, 7, 3)).astype(np.float32)
    expected = np.mean((x[1:] - x[:-1]) ** 2) + np.mean((x[:, 1:] - x[:, :-1]) ** 2)
    np.testing.assert_allclose(losses.total_variation(x), expected, rtol=1e-5)
    assert float(losses.total_variation(np.ones((4, 4, 3), np.float32))) == 0.0


def test_box_penalty():
    x = np.array([[[-0.5, 0.5, 1.25]]], np.float32)
    np.testing.assert_allclose(losses.box_penalty(x), (0.25 + 0 + 0.0625) / 3, rtol=1e-6)
    assert float(losses.box_penalty(np.full((3, 3, 3), 0.5, np.float32))) == 0.0


def test_gradients(rng):
    with jax.enable_x64(True):
        f = jnp.asarray(rng.standard_normal((3, 4, 2)))
        p = jnp.asarray(rng.standard_normal((3, 4, 2)))
        target = jnp.asarray(_np_gram(rng.standard_normal((3, 4, 2))))
        check_grads(lambda x: losses.content_loss(x, p), (f,), order=2, modes=["rev", "fwd"])
        check_grads(lambda x: losses.style_layer_loss(x, target), (f,), order=2, modes=["rev", "fwd"])
        check_grads(losses.total_variation, (f,), order=2, modes=["rev"])
        check_grads(losses.box_penalty, (f + 0.3,), order=1, modes=["rev", "fwd"])


@pytest.mark.parametrize("fn", [losses.gram, losses.total_variation])
def test_jit_matches_eager_and_vmap_matches_loop(rng, fn):
    batch = jnp.asarray(rng.standard_normal((3, 4, 5, 2)).astype(np.float32))
    eager = [fn(x) for x in batch]
    np.testing.assert_allclose(jax.jit(fn)(batch[0]), eager[0], rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(fn)(batch), np.stack(eager), rtol=1e-6)


def test_gram_over_leading_batch_axes(rng):
    f = rng.standard_normal((2, 3, 5, 4, 6)).astype(np.float32)
    batched = losses.gram(f)
    assert batched.shape == (2, 3, 6, 6)
    for i, j in np.ndindex(2, 3):
        np.testing.assert_allclose(batched[i, j], losses.gram(f[i, j]), rtol=1e-6, atol=1e-6)


def test_gram_names_its_argument_on_a_wrong_rank():
    with pytest.raises(ValueError, match=r"`features` must be \[..., height, width, channels\].*got shape \(5, 6\)"):
        losses.gram(np.zeros((5, 6), np.float32))


def test_anchor_loss_matches_numpy_and_is_zero_at_its_own_thumbnail(rng):
    from nst_jax.image import resize

    image = rng.random((24, 32, 3)).astype(np.float32)
    target = np.asarray(resize(image, (6, 8)))
    assert float(losses.anchor_loss(jnp.asarray(image), jnp.asarray(target))) < 1e-10
    other = rng.random((6, 8, 3)).astype(np.float32)
    thumbnail = np.asarray(jax.image.resize(image, (6, 8, 3), "lanczos3", antialias=True), np.float64)
    expected = np.mean((thumbnail - other) ** 2) / np.mean((other - other.mean((0, 1))) ** 2)
    np.testing.assert_allclose(losses.anchor_loss(jnp.asarray(image), jnp.asarray(other)), expected, rtol=1e-5)
    flat = np.full((6, 8, 3), 0.5, np.float32)  # no variance: the plain mean square
    np.testing.assert_allclose(losses.anchor_loss(image, flat), np.mean((thumbnail - 0.5) ** 2), rtol=1e-5)
    with jax.enable_x64(True):
        target64 = jnp.asarray(other, jnp.float64)
        check_grads(lambda x: losses.anchor_loss(x, target64), (jnp.asarray(image, jnp.float64),), 2)
