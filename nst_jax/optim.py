"""optax optimisers and the jitted optimisation loop.

The loop runs in chunks: one jitted ``lax.while_loop`` of up to K steps, compiled
once (K is a traced argument, so the last, shorter chunk does not recompile).
Between chunks the driver in :mod:`nst_jax.transfer` reports progress, calls
callbacks and saves.

Box constraint (``StyleConfig.box``). By default the objective carries a smooth
penalty on pixels outside [0, 1] and the loop never changes the image behind the
optimiser's back. With ``box="clip"`` the image is clipped between chunks and,
where clipping moved a pixel, loss and gradient are evaluated afresh
(:func:`clip_to_box`) so L-BFGS never steps from a stale gradient; measured at
256 px, the loss then stalls and creeps back up (0.502 at step 120, 0.513 at 200)
while the penalty keeps descending (0.434 at 200).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nst_jax.checks import check_choice
from nst_jax.config import OPTIMIZERS

ADAM_DEFAULT_LR = 0.02


@functools.cache
def make_optimizer(name: str, lr: float | None = None, memory_size: int = 10) -> optax.GradientTransformationExtraArgs:
    """Returns the optax transformation for ``name``; raises before any tracing on a bad name.

    Args:
      name: one of :data:`nst_jax.config.OPTIMIZERS`.
      lr: learning rate. For ``"lbfgs"``, ``None`` lets the zoom line search
        choose every step (the usual L-BFGS); a number scales the direction
        instead. For ``"adam"``, ``None`` means 0.02 (pixels in [0, 1]).
      memory_size: L-BFGS history length.

    The same arguments return the same object, so the jitted loop (which takes the
    optimiser as a static argument) compiles once per setting, not once per call.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "lbfgs":
        return optax.lbfgs(learning_rate=lr, memory_size=memory_size)
    return optax.adam(ADAM_DEFAULT_LR if lr is None else lr)


class LoopState(NamedTuple):
    """Carry of the optimisation loop (an explicit pytree, nothing hidden)."""

    image: jax.Array  # [h, w, 3], the optimiser's params
    opt_state: Any
    value: jax.Array  # loss at `image`
    grad: jax.Array  # gradient at `image`
    step: jax.Array  # int32 steps taken
    num_evals: jax.Array  # int32 loss+gradient evaluations, the initial one included
    finite: jax.Array  # bool; False once a step produced a non-finite loss (that step is undone)


def _uses_linesearch(opt_state) -> bool:
    return optax.tree_utils.tree_get(opt_state, "num_linesearch_steps", default=None) is not None


def init_loop(
    loss_fn: Callable[[jax.Array], jax.Array],
    optimizer: optax.GradientTransformationExtraArgs,
    image: jax.Array,
    mesh: Mesh | None = None,
) -> LoopState:
    """Evaluates the loss once and builds the first :class:`LoopState`.

    ``loss_fn`` maps an image to a scalar; make it a pytree (e.g. ``objective.value``
    bound to an :class:`~nst_jax.objective.Objective`) so jit takes its arrays as arguments.
    With ``mesh`` (:func:`image_mesh`), the state's image-shaped leaves are split by rows
    over it from the start (place ``loss_fn`` and ``image`` with :func:`shard_rows` first).
    """
    return _init_loop(loss_fn, optimizer, image, mesh)


@functools.partial(jax.jit, static_argnames=("optimizer", "mesh"))
def _init_loop(loss_fn, optimizer, image, mesh=None):
    value, grad = jax.value_and_grad(loss_fn)(image)
    one = jnp.ones((), jnp.int32)
    state = LoopState(image, optimizer.init(image), value, grad, 0 * one, one, jnp.isfinite(value))
    # Make every leaf strongly typed, as a step returns it (optax leaves some weakly typed at
    # init), so the first and later chunks share one compiled program. (Not by eval_shape of
    # a step: tracing one costs ~1.2 s at every start, which the compilation cache cannot save.)
    state = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), state)
    if mesh is not None:  # optax's zeros would otherwise be replicated: 2 x memory_size images on every device
        state = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, row_sharding(x, image.shape, mesh)), state)
    return state


def reevaluate(loss_fn, state: LoopState) -> LoopState:
    """Loss and gradient evaluated afresh at ``state.image`` (after the image was changed from outside)."""
    return _reevaluate(loss_fn, state)


@jax.jit
def _reevaluate(loss_fn, state):
    value, grad = jax.value_and_grad(loss_fn)(state.image)
    return state._replace(value=value, grad=grad, num_evals=state.num_evals + 1)


def step(loss_fn, optimizer, state: LoopState) -> LoopState:
    """One optimiser step (not jitted on its own; :func:`run_chunk` loops it)."""
    updates, opt_state = optimizer.update(
        state.grad, state.opt_state, state.image, value=state.value, grad=state.grad, value_fn=loss_fn
    )
    image = optax.apply_updates(state.image, updates)
    if _uses_linesearch(opt_state):
        # The zoom line search already evaluated loss and gradient at the accepted point.
        value = optax.tree_utils.tree_get(opt_state, "value")
        grad = optax.tree_utils.tree_get(opt_state, "grad")
        evals = optax.tree_utils.tree_get(opt_state, "num_linesearch_steps")
    else:
        value, grad = jax.value_and_grad(loss_fn)(image)
        evals = 1
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
    new = LoopState(image, opt_state, value, grad, state.step + 1, state.num_evals + evals, finite)
    # A non-finite loss undoes the step (keeping the last finite image) and ends the loop.
    keep = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    return keep._replace(num_evals=new.num_evals, finite=finite)


def run_chunk(
    loss_fn: Callable[[jax.Array], jax.Array],
    optimizer: optax.GradientTransformationExtraArgs,
    state: LoopState,
    num_steps: int | jax.Array,
) -> LoopState:
    """Runs up to ``num_steps`` steps in one jitted ``while_loop``; stops early on a non-finite loss.

    Compiled once per (objective structure, optimiser, image shape): ``num_steps``
    is traced, so chunks of any length reuse the same program.
    """
    return _run_chunk(loss_fn, optimizer, state, jnp.asarray(num_steps, jnp.int32))


def chunk_program(loss_fn, optimizer, state: LoopState):
    """The compiled program :func:`run_chunk` runs (``state`` may be abstract), for its memory and cost analysis."""
    return _run_chunk.lower(loss_fn, optimizer, state, jnp.int32(1)).compile()


def program_bytes(compiled) -> int:
    """Peak bytes of a compiled program per device (arguments, outputs and temporaries), from XLA's analysis."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return 0
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes)


@functools.partial(jax.jit, static_argnames=("optimizer",))
def _run_chunk(loss_fn, optimizer, state, num_steps):
    stop = state.step + num_steps
    return jax.lax.while_loop(
        lambda s: (s.step < stop) & s.finite,
        lambda s: step(loss_fn, optimizer, s),
        state,
    )


# One image over many devices (not in the paper, which ran on one GPU): its rows, and every
# activation's, split over a 1-D mesh. XLA's SPMD partitioner (GSPMD) turns each convolution
# into its shard's convolution plus a one-row halo exchange with its neighbours, and each Gram
# matrix and loss into a sum over shards; the code of the loss is unchanged.
ROWS = "rows"


def image_mesh(devices=None) -> Mesh:
    """A 1-D mesh whose axis ``"rows"`` splits an image's rows over ``devices`` (default: every device)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (ROWS,))


def rows_divide(rows: int, mesh: Mesh | None) -> bool:
    """Whether an image of ``rows`` rows can be split evenly over ``mesh`` (always, without a mesh)."""
    return mesh is None or rows % mesh.size == 0


def shard_rows(tree, shape: tuple[int, ...], mesh: Mesh):
    """``tree``'s leaves placed on ``mesh``: those ending in ``shape`` (``[h, w, 3]``: the image, its
    gradient, L-BFGS's history of them) split by rows, every other leaf (weights, targets) replicated.

    Leaves may be arrays or ``jax.ShapeDtypeStruct`` (then the result is abstract too, for a plan).
    """

    def place(x):
        sharding = row_sharding(x, shape, mesh)
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return put(x, sharding)

    return jax.tree.map(place, tree)


def row_sharding(x, shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """Split by rows over ``mesh`` if ``x`` ends in ``shape`` (an image-shaped leaf), else replicated."""
    shape, ndim = tuple(shape), len(jnp.shape(x))
    if ndim >= len(shape) and tuple(jnp.shape(x)[ndim - len(shape) :]) == shape:
        return NamedSharding(mesh, PartitionSpec(*([None] * (ndim - len(shape))), ROWS, *([None] * (len(shape) - 1))))
    return NamedSharding(mesh, PartitionSpec())


def put(x, sharding: NamedSharding) -> jax.Array:
    """``jax.device_put(x, sharding)`` that also works when the mesh spans several processes.

    Every process passes the same value; each places its own devices' shards of it. (Older
    jax versions refuse ``device_put`` onto devices of other processes.)
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global: reshard in a program
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(x: jax.Array) -> np.ndarray:
    """``x`` as a numpy array, gathered from every process when it spans several (a multi-process mesh).

    Every process must call it at the same point: the gather is a collective.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def clip_to_box(loss_fn, state: LoopState) -> LoopState:
    """Clips the image into [0, 1]; re-evaluates loss and gradient only if a pixel moved."""
    clipped = jnp.clip(state.image, 0.0, 1.0)
    if bool(jnp.all(clipped == state.image)):
        return state
    return reevaluate(loss_fn, state._replace(image=clipped))
