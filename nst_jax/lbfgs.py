"""L-BFGS written as a state machine that needs exactly one loss+gradient evaluation per iteration.

Why not ``optax.lbfgs`` for batches: its zoom line search is a ``while_loop`` of
``lax.cond`` s; under ``jax.vmap`` every ``cond`` becomes a ``select`` that runs both
branches and the loop runs until the slowest member is done, so each member pays about 3
evaluations per step instead of about 1.1, and a vmapped sweep was slower than sequential
runs. Here one iteration is: every member proposes a trial point, all trial points are
evaluated together (one batched evaluation), and every member decides on its own:

* the trial satisfies the Armijo condition -> it is accepted: the curvature pair
  ``(s, y)`` enters the member's own history (skipped if ``s.y <= 0``), the next direction
  comes from the two-loop recursion with the usual ``gamma = s.y / y.y`` scaling, and the
  next trial step is 1;
* it does not (or the loss is not finite) -> the member stays where it is and shrinks its
  own step size by safeguarded quadratic interpolation; its next iteration tries again.

So each member has its own curvature history and its own step size, a rejected trial costs
the member one evaluation exactly as a backtracking step would in a sequential line search,
and no member waits for another inside a step. The first direction is ``-g`` capped to
unit norm, as optax does.

Everything here is written for one image; :mod:`nst_jax.sweeps` batches it with ``jax.vmap``.

References:
  Nocedal & Wright, "Numerical Optimization", 2nd ed., algorithms 3.1 (backtracking with
  interpolation, eq. 3.58) and 7.4-7.5 (L-BFGS two-loop recursion).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ARMIJO = 1e-4  # sufficient-decrease constant c1
MAX_REJECTS = 25  # consecutive rejected trials after which a member stops (the step size is then ~1e-8)


class LbfgsState(NamedTuple):
    """One member's state (batch it with ``jax.vmap``)."""

    image: jax.Array  # [h, w, 3] the accepted point
    value: jax.Array  # loss at `image`
    grad: jax.Array  # gradient at `image`
    direction: jax.Array  # search direction from `image`
    step_size: jax.Array  # the next trial is image + step_size * direction
    s_history: jax.Array  # [m, h, w, 3] accepted steps, oldest first (zeros where empty)
    y_history: jax.Array  # [m, h, w, 3] gradient differences, oldest first
    rho_history: jax.Array  # [m] 1 / (s.y); 0 marks an empty slot
    steps: jax.Array  # int32 accepted steps
    evals: jax.Array  # int32 evaluations this member used, the initial one included
    rejects: jax.Array  # int32 consecutive rejected trials
    done: jax.Array  # bool: reached its step count or stalled; its state no longer changes


def _vdot(a, b):
    return jnp.vdot(a.ravel(), b.ravel(), precision=jax.lax.Precision.HIGHEST)


def _first_direction(grad):
    """``-g`` capped to unit norm (optax's first L-BFGS step)."""
    norm = jnp.sqrt(_vdot(grad, grad))
    return -grad * jnp.minimum(1.0, 1.0 / jnp.maximum(norm, 1e-30))


def _two_loop(grad, s_history, y_history, rho_history):
    """``-H g`` by the two-loop recursion; ``H0 = gamma I`` from the newest pair."""
    m = rho_history.shape[0]
    q = grad
    alphas = []
    for i in reversed(range(m)):  # newest first
        alpha = rho_history[i] * _vdot(s_history[i], q)
        q = q - alpha * y_history[i]
        alphas.append(alpha)
    newest = m - 1
    yy = _vdot(y_history[newest], y_history[newest])
    gamma = jnp.where(rho_history[newest] > 0, 1.0 / jnp.maximum(rho_history[newest] * yy, 1e-30), 1.0)
    r = gamma * q
    for i, alpha in zip(range(m), reversed(alphas), strict=True):  # oldest first
        beta = rho_history[i] * _vdot(y_history[i], r)
        r = r + (alpha - beta) * s_history[i]
    return -r


def init(image: jax.Array, value: jax.Array, grad: jax.Array, memory_size: int = 10) -> LbfgsState:
    """The state after the first evaluation (at ``image``)."""
    zeros = jnp.zeros((memory_size, *image.shape), image.dtype)
    direction = _first_direction(grad)
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
    return LbfgsState(
        image=image,
        value=value,
        grad=grad,
        direction=direction,
        step_size=jnp.ones((), image.dtype),
        s_history=zeros,
        y_history=zeros,
        rho_history=jnp.zeros((memory_size,), image.dtype),
        steps=jnp.zeros((), jnp.int32),
        evals=jnp.ones((), jnp.int32),
        rejects=jnp.zeros((), jnp.int32),
        done=~finite,  # nothing to do from a non-finite start
    )


def trial_point(state: LbfgsState) -> jax.Array:
    """Where this member wants the loss evaluated next (its own image once it is done)."""
    return jnp.where(state.done, state.image, state.image + state.step_size * state.direction)


def advance(state: LbfgsState, value: jax.Array, grad: jax.Array, num_steps) -> LbfgsState:
    """Takes the evaluation at :func:`trial_point` and accepts or shrinks; one iteration of one member.

    Args:
      state: the member's state.
      value, grad: loss and gradient at ``trial_point(state)``.
      num_steps: the member is done after this many accepted steps.
    """
    slope = _vdot(state.grad, state.direction)
    t = state.step_size
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
    accept = finite & (value <= state.value + ARMIJO * t * slope)

    # Accepted: new curvature pair (skipped unless s.y > 0, which keeps H positive definite).
    s = t * state.direction
    y = grad - state.grad
    sy = _vdot(s, y)
    keep_pair = sy > 1e-10 * jnp.sqrt(_vdot(s, s) * _vdot(y, y))
    roll = lambda history, new: jnp.concatenate([history[1:], new[None]], axis=0)
    s_history = jnp.where(keep_pair, roll(state.s_history, s), state.s_history)
    y_history = jnp.where(keep_pair, roll(state.y_history, y), state.y_history)
    rho_history = jnp.where(keep_pair, roll(state.rho_history, 1.0 / jnp.where(keep_pair, sy, 1.0)), state.rho_history)
    direction = _two_loop(grad, s_history, y_history, rho_history)
    # Not a descent direction (possible after skipped pairs): forget the history and restart.
    restart = _vdot(grad, direction) >= 0
    direction = jnp.where(restart, _first_direction(grad), direction)
    s_history, y_history = (jnp.where(restart, 0.0, h) for h in (s_history, y_history))
    rho_history = jnp.where(restart, 0.0, rho_history)
    accepted = LbfgsState(
        image=state.image + s,
        value=value,
        grad=grad,
        direction=direction,
        step_size=jnp.ones_like(t),
        s_history=s_history,
        y_history=y_history,
        rho_history=rho_history,
        steps=state.steps + 1,
        evals=state.evals + 1,
        rejects=jnp.zeros_like(state.rejects),
        done=state.steps + 1 >= num_steps,
    )

    # Rejected: minimiser of the quadratic through f(0), f'(0) and f(t), kept in [0.1 t, 0.5 t].
    curvature = value - state.value - slope * t
    t_quadratic = -slope * t * t / (2.0 * jnp.where(curvature > 0, curvature, 1.0))
    t_new = jnp.where(finite & (curvature > 0), jnp.clip(t_quadratic, 0.1 * t, 0.5 * t), 0.1 * t)
    rejected = state._replace(
        step_size=t_new,
        evals=state.evals + 1,
        rejects=state.rejects + 1,
        done=state.rejects + 1 >= MAX_REJECTS,
    )

    new = jax.tree.map(lambda a, r: jnp.where(accept, a, r), accepted, rejected)
    return jax.tree.map(lambda n, o: jnp.where(state.done, o, n), new, state)
