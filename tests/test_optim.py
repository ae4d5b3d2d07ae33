import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import StyleConfig, optim, optimize


def _quadratic(rng, shape=(4, 5, 3)):
    """A convex quadratic 0.5 (x - t)^T A (x - t) over an image-shaped array, as a pytree callable."""
    n = int(np.prod(shape))
    q = rng.standard_normal((n, n))
    a = q @ q.T / n + np.eye(n) * 0.5
    target = rng.random(shape) * 0.8 + 0.1  # the minimiser lies inside the [0, 1] box
    a, t = jnp.asarray(a, jnp.float32), jnp.asarray(target, jnp.float32)
    loss = jax.tree_util.Partial(_quad_value, a, t)
    return loss, np.asarray(target)


def _quad_value(a, t, x):
    d = (x - t).ravel()
    return 0.5 * d @ a @ d


def test_lbfgs_solves_a_quadratic(rng):
    loss, target = _quadratic(rng)
    optimizer = optim.make_optimizer("lbfgs")
    state = optim.init_loop(loss, optimizer, jnp.full(target.shape, 0.5, jnp.float32))
    state = optim.run_chunk(loss, optimizer, state, 60)
    np.testing.assert_allclose(state.image, target, atol=1e-3)
    assert int(state.num_evals) < 1.5 * int(state.step) + 2  # the line search mostly accepts the first trial


def test_adam_descends(rng):
    loss, target = _quadratic(rng)
    optimizer = optim.make_optimizer("adam", lr=0.05)
    state = optim.init_loop(loss, optimizer, jnp.full(target.shape, 0.5, jnp.float32))
    first = float(state.value)
    state = optim.run_chunk(loss, optimizer, state, 200)
    assert float(state.value) < 0.05 * first
    assert int(state.step) == 200 and int(state.num_evals) == 201


def test_chunks_do_not_recompile(rng):
    loss, target = _quadratic(rng)
    optimizer = optim.make_optimizer("lbfgs", memory_size=7)  # a setting no other test compiles
    state = optim.init_loop(loss, optimizer, jnp.full(target.shape, 0.5, jnp.float32))
    before = optim._run_chunk._cache_size()
    for length in (3, 5, 1, 7):
        state = optim.run_chunk(loss, optimizer, state, length)
    assert optim._run_chunk._cache_size() == before + 1
    assert int(state.step) == 16


def test_chunked_equals_one_chunk(rng):
    loss, target = _quadratic(rng)
    optimizer = optim.make_optimizer("lbfgs")
    start = optim.init_loop(loss, optimizer, jnp.full(target.shape, 0.5, jnp.float32))
    whole = optim.run_chunk(loss, optimizer, start, 12)
    pieces = start
    for length in (5, 4, 3):
        pieces = optim.run_chunk(loss, optimizer, pieces, length)
    np.testing.assert_array_equal(whole.image, pieces.image)


def _explodes(x):
    """Finite while the mean pixel stays below 0.75, NaN beyond: descent walks into the NaN region."""
    value = jnp.sum((x - 1.0) ** 2)
    return jnp.where(jnp.mean(x) < 0.75, value, jnp.nan)


def test_non_finite_loss_stops_and_keeps_last_finite_image():
    loss = jax.tree_util.Partial(_explodes)
    optimizer = optim.make_optimizer("adam", lr=0.05)
    state = optim.init_loop(loss, optimizer, jnp.zeros((4, 4, 3)))
    state = optim.run_chunk(loss, optimizer, state, 100)
    assert not bool(state.finite)
    assert int(state.step) < 100
    assert float(jnp.mean(state.image)) < 0.75 and np.isfinite(float(state.value))


@flax.struct.dataclass
class _ExplodingObjective:
    def __call__(self, image):
        value = _explodes(image)
        return value, {"total": value}

    def value(self, image):
        return _explodes(image)


def test_optimize_reports_non_finite():
    objective = _ExplodingObjective()
    result = optimize(objective, jnp.zeros((4, 4, 3)), StyleConfig(optimizer="adam", lr=0.05, num_steps=100))
    assert not result.finite and result.num_steps < 100
    assert np.isfinite(result.loss) and result.image.mean() < 0.75


def test_clip_to_box_reevaluates_only_when_needed(rng):
    loss, target = _quadratic(rng)
    optimizer = optim.make_optimizer("lbfgs")
    inside = optim.init_loop(loss, optimizer, jnp.full(target.shape, 0.5, jnp.float32))
    assert optim.clip_to_box(loss, inside) is inside
    outside = inside._replace(image=inside.image.at[0, 0, 0].set(1.5))
    clipped = optim.clip_to_box(loss, outside)
    assert float(clipped.image.max()) == 1.0
    np.testing.assert_allclose(clipped.value, _quad_value(loss.args[0], loss.args[1], clipped.image), rtol=1e-6)
    assert int(clipped.num_evals) == int(inside.num_evals) + 1


def test_unknown_optimizer():
    with pytest.raises(ValueError, match=r"`optimizer` must be one of \('lbfgs', 'adam'\), got 'sgd'"):
        optim.make_optimizer("sgd")
