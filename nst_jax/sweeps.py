"""Batched sweeps: one compiled program optimises B images at once, sharded over devices.

Everything that varies between the B members is a leaf of the :class:`~nst_jax.objective.Objective`
with a leading batch axis (content, style and TV weights, per-layer style weights, the
style targets when several style images are swept) or part of the initial image (seed).
The VGG parameters and the content targets are computed once and shared. Each member runs
the one-evaluation-per-iteration L-BFGS of :mod:`nst_jax.lbfgs` (or Adam), written for one
image and batched here with ``jax.vmap``; the batch axis is sharded over a 1-D mesh of
``jax.devices()`` with ``NamedSharding``, so the same code uses one CPU, 8 GPUs of a host
or, after ``jax.distributed.initialize()``, every device of every host.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nst_jax import lbfgs, memory, optim, schedule, vgg
from nst_jax.config import StyleConfig
from nst_jax.image import flatness, initial_image, resize
from nst_jax.memory import MemoryLimitError, available_memory  # noqa: F401  (available_memory: its home before nst_jax.memory)
from nst_jax.network import FeatureNetwork
from nst_jax.objective import (
    Objective,
    anchor_thumbnail,
    check_network,
    default_layer_weights,
    flat_weights,
    make_objective,
    paper_weights,
    target_mean_squares,
    with_anchor,
)
from nst_jax.transfer import prepare_styles

# What a sweep can vary. "ratio" is content_weight / style_weight (the paper's alpha/beta in
# this library's normalisation, default 1/36); it keeps content_weight and sets
# style_weight = content_weight / ratio.
# "style_layers" takes layer *sets*: each becomes a weight vector over the union of the
# sets, zero outside the set. "style" takes several style images (label -> image), and
# "fine_style" several fine styles for scale control (label -> image; the stages after the first).
SWEEP_AXES = (
    "content_weight", "style_weight", "ratio", "tv_weight", "layer_weights", "style_layers", "style", "fine_style",
    "seed", "flat_content_weight",
)  # fmt: skip
_IMAGE_AXES = ("style", "fine_style")
_NUMBER_AXES = ("content_weight", "style_weight", "ratio", "tv_weight", "flat_content_weight")


class SweepProgress(NamedTuple):
    """What a sweep callback sees between chunks."""

    batch: int  # index of the batch being optimised (members are run batch_size at a time)
    num_batches: int
    members: range  # the members of this batch
    steps: np.ndarray  # [batch] accepted steps of each member so far
    losses: np.ndarray  # [batch] each member's current loss
    iterations: int  # batched evaluations of this batch so far
    seconds: float  # wall time since the sweep started
    # The batch's current images, [len(members), h, w, 3], clipped to [0, 1] (np.asarray copies them to the host);
    # None when the sweep spans several processes (no process holds the whole batch).
    images: Any = None
    stage: int = 0  # coarse-to-fine stage (0-based; the last is the output's size)
    num_stages: int = 1


KIND = "sweep"  # what our marker file in a sweep's folder says (nst_jax.files.MARKER)


class SweepPlan(NamedTuple):
    """What :func:`sweep` with ``dry_run=True`` returns: the plan at the output's size, nothing optimised."""

    shape: tuple[int, int]  # (height, width) of the output
    members: int  # settings in the sweep
    batch_size: int  # members per compiled program (what fits, or the batch_size asked for)
    devices: int  # devices the batch is split over
    bytes_per_device: int  # XLA's memory analysis of that program, per device
    limit_bytes: int | None  # free memory of one device (the host's on CPU)
    memory_fraction: float  # share of limit_bytes a batch may use


class SweepResult(NamedTuple):
    """Outcome of :func:`sweep`; member i's settings are ``settings[i]``."""

    images: np.ndarray  # [B, h, w, 3] in [0, 1]
    settings: list[dict[str, Any]]  # per member: swept axis -> value (style: its label)
    losses: np.ndarray  # [B] final loss
    terms: list[dict[str, float]]  # per member: weighted loss terms, as stylize's Result.terms
    layer_losses: list[dict[str, float]]  # per member: unweighted per-layer losses (content, style)
    target_mean_squares: list[dict[str, float]]  # per member: each term's target mean square (objective.py)
    steps: np.ndarray  # [B] accepted optimiser steps
    evals: np.ndarray  # [B] loss+gradient evaluations each member used (initial one included)
    iterations: int  # batched evaluations, summed over batches (each evaluates a whole batch)
    batch_size: int  # members per compiled batch (a multiple of the device count)
    bytes_per_device: int  # XLA's memory analysis of the batch program: arguments + outputs + temporaries
    seconds: float  # wall time, compilation included
    axes: dict[str, list]  # the swept axes as given (style: labels), in order
    product: bool  # members are the Cartesian product of the axes (else zipped)
    config: StyleConfig  # the settings the members share, as the sweep was given them (save_sweep records it)
    network: Any = None  # the FeatureNetwork the sweep used (None: VGG)

    @property
    def num_steps(self) -> np.ndarray:
        """``steps`` under the name :class:`~nst_jax.transfer.Result` gives it: [B] accepted optimiser steps."""
        return self.steps

    @property
    def num_evals(self) -> np.ndarray:
        """``evals`` under the name :class:`~nst_jax.transfer.Result` gives it: [B] evaluations, the first included."""
        return self.evals

    def _repr_png_(self) -> bytes:  # Jupyter shows a sweep as its labelled contact sheet
        from nst_jax.io import contact_sheet, png_bytes

        images, rows, columns, row_title, column_title = _grid(self)
        return png_bytes(contact_sheet(images, rows, columns, row_title=row_title, column_title=column_title))


def parse_axis(text: str, what: str = "--vary") -> tuple[str, list]:
    """``NAME=V1,V2,...`` -> ``(name, values)`` for :func:`sweep` (the CLI's ``--vary`` and the web page's sweep).

    ``style_layers`` sets are joined by ``+`` (``relu1_1+relu2_1``), ``layer_weights`` vectors by ``:``.
    A swept style or fine style takes images, not text: it is not an axis here.
    """
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not values.strip():
        raise ValueError(f"{what} must look like NAME=V1,V2,..., got {text!r}")
    if name not in SWEEP_AXES or name in _IMAGE_AXES:
        valid = ", ".join(a for a in SWEEP_AXES if a not in _IMAGE_AXES)
        raise ValueError(
            f"{what} has unknown axis {name!r}; valid axes are {valid} (give several style images to sweep styles)"
        )
    parts = [part.strip() for part in values.split(",") if part.strip()]
    try:
        if name == "seed":
            return name, [int(p) for p in parts]
        if name == "style_layers":
            return name, [tuple(layer.strip() for layer in p.split("+")) for p in parts]
        if name == "layer_weights":
            return name, [tuple(float(w) for w in p.split(":")) for p in parts]
        return name, [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what} {name}: cannot read {values!r} as {name} values") from None


def members(axes: Mapping[str, Sequence | Mapping], product: bool = True) -> list[dict[str, Any]]:
    """The list of member settings: the Cartesian product of the axes (first axis slowest), or zipped."""
    if not axes:
        raise ValueError("`axes` is empty: give at least one setting to sweep, e.g. {'style_weight': [1e2, 1e3]}")
    for name, values in axes.items():
        if name not in SWEEP_AXES:
            raise ValueError(f"`axes` has unknown axis {name!r}; valid axes are {', '.join(SWEEP_AXES)}")
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, Mapping, np.ndarray)):
            raise ValueError(f"`axes[{name!r}]` must be a list of values, got {values!r}")
        if len(values) == 0:
            raise ValueError(f"`axes[{name!r}]` is empty: give at least one value")
    names = list(axes)
    values = [list(v.items()) if isinstance(v, Mapping) else list(v) for v in (axes[name] for name in names)]
    combos: Iterable[tuple]
    if product:
        combos = itertools.product(*values)
    else:
        lengths = {name: len(v) for name, v in zip(names, values, strict=True)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"zipped `axes` must all have the same length, got lengths {lengths}")
        combos = zip(*values, strict=True)
    return [dict(zip(names, combo, strict=True)) for combo in combos]


def check_axes(
    config: StyleConfig,
    axes: Mapping[str, Sequence] | None,
    product: bool = True,
    network: FeatureNetwork | None = None,
) -> list[StyleConfig]:
    """Validates a sweep before anything is computed; returns one StyleConfig per member.

    Raises ``ValueError`` naming the axis or field for an empty sweep, an unknown axis,
    zipped axes of different lengths, unknown layer names, negative weights, ...
    """
    return _member_configs(config, members(axes or {}, product), network)[0]


def _label(value) -> Any:
    """A member's setting as it goes into labels and sweep.json."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and not isinstance(value[1], str):
        return value[0]  # (label, image) of a swept style
    if isinstance(value, (list, tuple)):
        return [_label(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _member_configs(
    config: StyleConfig, settings: list[dict], network: FeatureNetwork | None = None
) -> tuple[list[StyleConfig], tuple[str, ...]]:
    """One validated StyleConfig per member (its errors name the field) and the union of style layers."""
    if "ratio" in settings[0] and "style_weight" in settings[0]:
        raise ValueError("`axes` has both 'ratio' and 'style_weight'; ratio sets style_weight, sweep one of them")
    if "seed" in settings[0] and config.init != "noise":
        raise ValueError(
            f"`axes` sweeps 'seed' but `init` is {config.init!r}: every member would start from the same image; "
            "use init='noise'"
        )
    if config.box == "clip":
        raise ValueError("`box` 'clip' is not available in sweeps; use 'penalty' (the default) or 'none'")
    unsupported = {
        "save_every": config.save_every,
        "checkpoint_every": config.checkpoint_every,
        "style_blend": config.style_blend,
        "preserve_colour": config.preserve_colour if config.preserve_colour == "luminance" else None,
    }
    for name, value in unsupported.items():
        if value:
            raise ValueError(f"`{name}` {value!r} is not available in sweeps; run those with stylize")
    configs = []
    for member in settings:
        names = ("content_weight", "style_weight", "tv_weight", "seed", "flat_content_weight")
        changes = {k: v for k, v in member.items() if k in names}
        if "ratio" in member:
            ratio = member["ratio"]
            if not isinstance(ratio, (int, float)) or not 0 < ratio < math.inf:
                raise ValueError(f"`ratio` must be a finite number > 0, got {ratio!r}")
            changes["style_weight"] = config.content_weight / ratio
        if "style_layers" in member:
            check = vgg.check_layers if network is None else network.check_layers
            layers = check("style_layers", member["style_layers"])
            if not layers:
                raise ValueError("`style_layers` has an empty layer set; each set needs at least one layer")
            # As the paper's Figure 3: equal total weight for every set (the relative default's
            # weights over the set sum to 1), on the absolute scale 1/N_l per layer times L/|set|.
            # With relative terms the defaults themselves (None), which follow each stage's size.
            changes["style_layers"] = layers
            changes["layer_weights"] = None
            if config.loss_scale != "relative":
                scale = len(config.style_layers) / len(layers)
                changes["layer_weights"] = tuple(w * scale for w in default_layer_weights(layers, "absolute", network))
        if "layer_weights" in member:
            changes["layer_weights"] = tuple(member["layer_weights"])
        for name in ("content_weight", "style_weight", "tv_weight", "flat_content_weight"):
            if name in changes and isinstance(changes[name], (np.floating, np.integer)):
                changes[name] = changes[name].item()
        if "seed" in changes:
            changes["seed"] = int(changes["seed"]) if isinstance(changes["seed"], np.integer) else changes["seed"]
        configs.append(config.replace(**changes))
    order = vgg.LAYERS if network is None else network.layers
    union = tuple(layer for layer in order if any(layer in c.style_layers for c in configs))
    return configs, union


def _weights_over(config: StyleConfig, union: tuple[str, ...], network=None, size=None) -> list[float]:
    """A member's per-layer weights over the sweep's union of style layers, at long side ``size``."""
    layer_weights = config.layer_weights or default_layer_weights(config.style_layers, config.loss_scale, network, size)
    weights = dict(zip(config.style_layers, layer_weights, strict=True))
    return [weights.get(layer, 0.0) for layer in union]


def _objective_axes(objectives: Objective, style_batched: bool) -> Objective:
    """vmap ``in_axes`` of a batched Objective: weights batched, parameters and content targets shared.

    Built from ``objectives`` itself so its static fields (pooling, padding, precision) match.
    """
    weights = objectives.content_weights  # [h_l, w_l] shared, or [B, h_l, w_l] with a flat_content_weight axis
    weights_batched = weights is not None and any(jnp.ndim(w) == 3 for w in weights.values())
    return objectives.replace(
        params=None,
        content_targets=None,
        content_weights=0 if weights_batched else None,
        style_targets=0 if style_batched else None,
        content_weight=0,
        style_weight=0,
        layer_weights=0,
        tv_weight=0,
        box_weight=None,
        style_masks=None,
        region_weights=None,
        anchor=None if objectives.anchor is None else 0,
        anchor_weight=None,
    )


def _lbfgs_iteration(objective: Objective, state: lbfgs.LbfgsState, num_steps) -> lbfgs.LbfgsState:
    """One iteration of one member: evaluate its trial point, accept or shrink."""
    value, grad = jax.value_and_grad(objective.value)(lbfgs.trial_point(state))
    return lbfgs.advance(state, value, grad, num_steps)


def _adam_iteration(objective: Objective, state: optim.LoopState, num_steps, optimizer) -> optim.LoopState:
    loss_fn = jax.tree_util.Partial(type(objective).value, objective)
    new = optim.step(loss_fn, optimizer, state)
    return jax.tree.map(lambda n, o: jnp.where(_done(state, num_steps), o, n), new, state)


def _done(state, num_steps) -> jax.Array:
    if isinstance(state, lbfgs.LbfgsState):
        return state.done
    return (state.step >= num_steps) | ~state.finite


def _steps_evals(state) -> tuple[jax.Array, jax.Array]:
    if isinstance(state, lbfgs.LbfgsState):
        return state.steps, state.evals
    return state.step, state.num_evals


@functools.partial(jax.jit, static_argnames=("style_batched", "optimizer", "memory_size"))
def _init_batch(objectives, images, num_steps, style_batched, optimizer, memory_size):
    axes = _objective_axes(objectives, style_batched)
    values, grads = jax.vmap(lambda o, x: jax.value_and_grad(o.value)(x), in_axes=(axes, 0))(objectives, images)
    if optimizer is None:
        state = jax.vmap(lambda x, v, g: lbfgs.init(x, v, g, memory_size))(images, values, grads)
        return state._replace(done=state.done | (num_steps <= 0))
    one = jnp.ones(values.shape, jnp.int32)
    state = optim.LoopState(images, jax.vmap(optimizer.init)(images), values, grads, 0 * one, one, jnp.isfinite(values))
    iteration = jax.vmap(lambda o, s: _adam_iteration(o, s, num_steps, optimizer), (axes, 0))
    after = jax.eval_shape(iteration, objectives, state)
    return jax.tree.map(lambda x, a: jax.lax.convert_element_type(x, a.dtype), state, after)


@functools.partial(jax.jit, static_argnames=("style_batched", "optimizer"), donate_argnames=("state",))
def _run_batch(objectives, state, num_steps, max_iterations, style_batched, optimizer):
    """Up to ``max_iterations`` batched iterations in one ``while_loop``; ends when every member is done."""
    axes = _objective_axes(objectives, style_batched)
    if optimizer is None:
        iteration = jax.vmap(_lbfgs_iteration, in_axes=(axes, 0, None))
    else:
        iteration = jax.vmap(lambda o, s, n: _adam_iteration(o, s, n, optimizer), in_axes=(axes, 0, None))

    def body(carry):
        state, count = carry
        return iteration(objectives, state, num_steps), count + 1

    def cond(carry):
        state, count = carry
        return (count < max_iterations) & ~jnp.all(_done(state, num_steps))

    return jax.lax.while_loop(cond, body, (state, jnp.zeros((), jnp.int32)))


@functools.partial(jax.jit, static_argnames=("style_batched",))
def _final_terms(objectives, images, style_batched):
    axes = _objective_axes(objectives, style_batched)
    weighted = jax.vmap(lambda o, x: o(x)[1], in_axes=(axes, 0))(objectives, images)
    ones = lambda x: jnp.ones_like(x)
    unweighted = objectives.replace(
        content_weight=ones(objectives.content_weight),
        style_weight=ones(objectives.style_weight),
        layer_weights=jax.tree.map(ones, objectives.layer_weights),
    )
    raw = jax.vmap(lambda o, x: o(x)[1], in_axes=(axes, 0))(unweighted, images)
    return weighted, raw


@overload
def sweep(
    content: jax.Array | None,
    style: jax.Array | None,
    config: StyleConfig = StyleConfig(),
    axes: Mapping[str, Sequence] | None = None,
    *,
    params: Mapping | None = None,
    product: bool = True,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    shape: tuple[int, int] | None = None,
    callback: Callable[[SweepProgress], bool | None] | None = None,
    memory_fraction: float = 0.8,
    init: jax.Array | None = None,
    progress: bool = False,
    network: FeatureNetwork | None = None,
    fine_style: jax.Array | None = None,
    dry_run: Literal[False] = False,
) -> SweepResult: ...


@overload
def sweep(
    content: jax.Array | None,
    style: jax.Array | None,
    config: StyleConfig = StyleConfig(),
    axes: Mapping[str, Sequence] | None = None,
    *,
    params: Mapping | None = None,
    product: bool = True,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    shape: tuple[int, int] | None = None,
    callback: Callable[[SweepProgress], bool | None] | None = None,
    memory_fraction: float = 0.8,
    init: jax.Array | None = None,
    progress: bool = False,
    network: FeatureNetwork | None = None,
    fine_style: jax.Array | None = None,
    dry_run: Literal[True],
) -> SweepPlan: ...


@overload
def sweep(
    content: jax.Array | None,
    style: jax.Array | None,
    config: StyleConfig = StyleConfig(),
    axes: Mapping[str, Sequence] | None = None,
    *,
    params: Mapping | None = None,
    product: bool = True,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    shape: tuple[int, int] | None = None,
    callback: Callable[[SweepProgress], bool | None] | None = None,
    memory_fraction: float = 0.8,
    init: jax.Array | None = None,
    progress: bool = False,
    network: FeatureNetwork | None = None,
    fine_style: jax.Array | None = None,
    dry_run: bool = False,
) -> SweepResult | SweepPlan: ...


def sweep(
    content: jax.Array | None,
    style: jax.Array | None,
    config: StyleConfig = StyleConfig(),
    axes: Mapping[str, Sequence] | None = None,
    *,
    params: Mapping | None = None,
    product: bool = True,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    shape: tuple[int, int] | None = None,
    callback: Callable[[SweepProgress], bool | None] | None = None,
    memory_fraction: float = 0.8,
    init: jax.Array | None = None,
    progress: bool = False,
    network: FeatureNetwork | None = None,
    fine_style: jax.Array | None = None,
    dry_run: bool = False,
) -> SweepResult | SweepPlan:
    """Optimises one image per combination of the swept settings, B at a time in one compiled program.

    Args:
      content: ``[h, w, 3]`` RGB in [0, 1], or ``None`` (textures; then ``shape`` is needed).
      style: ``[h', w', 3]`` RGB in [0, 1], or ``None`` when ``axes`` sweeps ``"style"``.
      config: the settings every member shares (:class:`~nst_jax.config.StyleConfig`).
      axes: swept axis -> values; axes are one of :data:`SWEEP_AXES`, e.g.
        ``{"style_layers": [("relu1_1",), ("relu1_1", "relu2_1")], "ratio": [1e-4, 1e-3]}``;
        ``"style"`` takes ``{label: image}``, and so does ``"fine_style"`` (scale control with one
        fine style per member, as ``fine_style``).
      params: VGG-19 parameters; ``None`` loads ``config.weights``.
      product: members are the Cartesian product of the axes (the first axis varies slowest);
        ``False`` zips axes of equal length.
      batch_size: members per compiled program; ``None`` takes as many as fit in
        ``memory_fraction`` of the free memory (measured from the compiled program).
        Rounded up to a multiple of the device count.
      devices: devices to shard the batch over (default: ``jax.devices()``).
      shape: ``(height, width)`` of the output when ``content`` is None.
      callback: called between chunks with a :class:`SweepProgress`; returning ``True`` ends the batch in
        hand, and no later coarse-to-fine stage runs (the result is then that stage's images, smaller
        in a coarser stage).
      memory_fraction: share of the free memory a batch may use.
      init: ``[B, h, w, 3]`` initial images, one per member (default: ``config.init`` for each).
      progress: draw a progress bar per batch (tqdm's ``auto``; see :mod:`nst_jax.progress`).
      network: any feature network (:func:`nst_jax.network.from_flax`) with ``config.network ==
        "custom"`` and its parameters as ``params``; ``None``: VGG.
      fine_style: scale control, as :func:`~nst_jax.transfer.stylize`'s: an image whose statistics
        set ``config.fine_style_layers`` in every coarse-to-fine stage after the first, for every
        member (the first stage composes with each member's style).
      dry_run: return the :class:`SweepPlan` of the output's size (the batch that fits and its
        memory per device, from the compiled program) instead of optimising.

    Coarse to fine as :func:`~nst_jax.transfer.stylize` (``config.num_scales`` or ``scales``):
    the whole sweep runs at each stage's size, each member starting from its own result of
    the stage before; steps, evaluations and seconds add up over the stages.

    Returns:
      A :class:`SweepResult`; member i of the product is ``result.settings[i]`` (in Jupyter,
      it displays as its labelled contact sheet).
    """
    return _sweep(
        content, style, config, axes, params=params, product=product, batch_size=batch_size, devices=devices,
        shape=shape, callback=callback, memory_fraction=memory_fraction, init=init, progress=progress,
        network=network, fine_style=fine_style, dry_run=dry_run,
    )  # fmt: skip


def _sweep(
    content: jax.Array | None,
    style: jax.Array | None,
    config: StyleConfig = StyleConfig(),
    axes: Mapping[str, Sequence] | None = None,
    *,
    params: Mapping | None = None,
    product: bool = True,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    shape: tuple[int, int] | None = None,
    callback: Callable[[SweepProgress], bool | None] | None = None,
    memory_fraction: float = 0.8,
    init: jax.Array | None = None,
    progress: bool = False,
    network: FeatureNetwork | None = None,
    fine_style: jax.Array | None = None,
    dry_run: bool = False,
    anchor: jax.Array | None = None,
    stage_fine_style: jax.Array | None = None,
    stage: int | None = None,
) -> SweepResult | SweepPlan:
    """:func:`sweep`; ``anchor``: ``[B, h', w', 3]`` thumbnails (:func:`~nst_jax.objective.anchor_thumbnail`)
    of each member's first coarse-to-fine stage, whose composition this stage keeps; ``stage_fine_style``:
    a later stage's fine style, scaled to it (``fine_style`` is the caller's, checked and staged); ``stage``:
    the coarse-to-fine stage this call is (None: the caller's sweep; a "fine_style" axis counts from stage 1)."""
    if progress:
        from nst_jax.progress import ProgressBar

        bar = ProgressBar(callback)
        try:
            return _sweep(
                content, style, config, axes, params=params, product=product, batch_size=batch_size, devices=devices,
                shape=shape, callback=bar, memory_fraction=memory_fraction, init=init, network=network,
                fine_style=fine_style, dry_run=dry_run, anchor=anchor, stage_fine_style=stage_fine_style, stage=stage,
            )  # fmt: skip
        finally:
            bar.close()
    check_network(config, network)
    settings = members(axes or {}, product)
    configs, union = _member_configs(config, settings, network)
    if "style" in settings[0]:
        styles = [member["style"][1] for member in settings]
    elif style is None:
        raise ValueError("`style` is None and `axes` does not sweep 'style': there is no style image")
    else:
        styles = None
    if content is None and shape is None:
        raise ValueError("`shape` is needed when `content` is None")
    from nst_jax.checks import check_image

    if content is not None:
        check_image(content, "content")
    for image in styles or ([] if style is None else [style]):
        check_image(image, "style")
    fine_images = [member["fine_style"][1] for member in settings] if "fine_style" in settings[0] else None
    for image in fine_images or []:
        check_image(image, "fine_style")
    if fine_images is not None and fine_style is not None:
        raise ValueError("`fine_style` and a 'fine_style' axis were both given; sweep the fine styles or share one")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be an integer >= 1 or None, got {batch_size!r}")
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"`memory_fraction` must be in (0, 1], got {memory_fraction!r}")
    from nst_jax.weights import params_or_default

    params = params_or_default(params, config, network)
    final = tuple(jnp.shape(content)[:2]) if content is not None else tuple(shape or ())  # shape: checked above
    from nst_jax.transfer import check_sizes

    for member_config, member_styles in zip(configs, styles or [style] * len(configs), strict=True):
        check_sizes(member_config, final, [jnp.shape(member_styles)[:2]], content is not None, network=network)
    if stage is None and (fine_style is not None or fine_images is not None):
        from nst_jax.transfer import check_fine_style

        fine_check = [fine_style] if fine_images is None else fine_images[:1]
        check_fine_style(config, final, fine_check, style if styles is None else styles[0], None)
    staged = schedule.is_staged(config, final)
    if dry_run and staged:  # the last stage is the largest program, with its fine styles' targets
        return _sweep(
            content, style, config.replace(scales=(), num_scales=1, size=max(final)), axes, params=params,
            product=product, batch_size=batch_size, devices=devices, shape=shape, memory_fraction=memory_fraction,
            init=init, network=network, dry_run=True, stage_fine_style=fine_style,
            stage=len(schedule.stages(config, final)) - 1,
        )  # fmt: skip
    if staged:
        fine = None if fine_style is None else [fine_style]
        inputs = schedule.Inputs(
            content, None if style is None else [style], (int(final[0]), int(final[1])), init, fine_styles=fine
        )
        return _coarse_to_fine(
            inputs, config, axes,
            dict(params=params, product=product, batch_size=batch_size, devices=devices, callback=callback,
                 memory_fraction=memory_fraction, network=network),
        )  # fmt: skip

    start = time.perf_counter()
    if content is not None:  # style_scale and histogram colour matching, as stylize applies them
        output_shape = jnp.shape(content)[:2]
        if styles is not None:
            styles = [prepare_styles(s, output_shape, config, content=content)[0] for s in styles]
        elif style is not None:
            style = prepare_styles(style, output_shape, config, content=content)[0]
    shared = config.replace(style_layers=union, layer_weights=None)
    base = make_objective(params, content, styles[0] if styles else style, shared, network=network)
    style_batched = styles is not None
    if styles is not None:
        targets = [make_objective(params, None, s, shared, network=network).style_targets for s in styles]
        style_targets = jax.tree.map(lambda *t: jnp.stack(t), *targets)
    else:
        style_targets = base.style_targets
    fine_targets = None  # scale control in a later stage: the fine layers take the fine styles' statistics
    if stage_fine_style is not None:  # one fine style for every member
        fine_targets = _style_targets(params, content, stage_fine_style, config, shared, network)
    elif fine_images is not None and stage:  # one per member (a "fine_style" axis, scaled to this stage)
        per_member = [_style_targets(params, content, image, config, shared, network) for image in fine_images]
        fine_targets = jax.tree.map(lambda *t: jnp.stack(t), *per_member)
        if not style_batched:  # every member's targets, then: the style's repeated
            style_targets = jax.tree.map(lambda t: jnp.broadcast_to(t, (len(configs), *t.shape)), style_targets)
            style_batched = True
    if fine_targets is not None:
        style_targets = dict(style_targets)
        for layer in (layer for layer in config.fine_style_layers if layer in fine_targets):
            target = fine_targets[layer]  # (a layer no member's swept set has weighs zero: it is skipped)
            if style_batched and target.ndim == style_targets[layer].ndim - 1:
                target = jnp.broadcast_to(target, (len(configs), *target.shape))
            style_targets[layer] = target
    column = lambda values: jnp.asarray(values, jnp.float32)
    weights_size = max(final) if base.content_targets else None  # as make_objective's: textures at 512 px
    objectives = base.replace(
        style_targets=style_targets,
        content_weight=column([c.content_weight for c in configs]),
        style_weight=column([c.style_weight for c in configs]),
        tv_weight=column([c.tv_weight for c in configs]),
        layer_weights={
            layer: column([w[i] for w in (_weights_over(c, union, network, weights_size) for c in configs)])
            for i, layer in enumerate(union)
        },
    )
    flat_axis = any(c.flat_content_weight != config.flat_content_weight for c in configs)
    if flat_axis and content is not None and base.content_targets and base.style_targets:
        # A flat_content_weight axis: each member's weights over the content's flat regions (1: uniform).
        flat = flatness(content, config.flat_fraction)  # flat_fraction is shared: found once
        per_member = [flat_weights(flat, base.content_targets, c.flat_content_weight) for c in configs]
        objectives = objectives.replace(content_weights=jax.tree.map(lambda *w: jnp.stack(w), *per_member))
    if anchor is not None and config.anchor_weight > 0:  # each member keeps its own first stage's composition
        objectives = with_anchor(objectives, anchor, config.anchor_weight)
    reference = jnp.zeros((*final, 3), jnp.float32) if content is None else jnp.asarray(content, jnp.float32)
    start_from = config.init if content is not None or config.init != "content" else "noise"
    style_images = styles or [style] * len(configs)
    if init is None:
        images = jnp.stack(
            [
                jnp.clip(initial_image(start_from, reference, None if s is None else jnp.asarray(s), c.seed), 0.0, 1.0)
                for c, s in zip(configs, style_images, strict=True)
            ]
        )
    elif jnp.shape(init) != (len(configs), *reference.shape):
        raise ValueError(
            f"`init` must be [{len(configs)}, {', '.join(map(str, reference.shape))}], got {jnp.shape(init)}"
        )
    else:
        images = jnp.clip(jnp.asarray(init, jnp.float32), 0.0, 1.0)

    devices = list(devices or jax.devices())
    mesh = Mesh(np.array(devices), ("batch",))
    optimizer = None if config.optimizer == "lbfgs" else optim.make_optimizer(config.optimizer, config.lr)
    total = len(configs)
    run = _BatchRunner(objectives, images, config, style_batched, optimizer, mesh)
    size = run.choose_batch_size(total, batch_size, memory_fraction)
    if dry_run:
        return SweepPlan(
            shape=(int(final[0]), int(final[1])), members=total, batch_size=size, devices=len(devices),
            bytes_per_device=run.bytes_per_device, limit_bytes=run.limit_bytes,
            memory_fraction=memory_fraction,
        )  # fmt: skip

    outputs = []
    iterations = 0
    num_batches = math.ceil(total / size)
    for b in range(num_batches):
        chosen = range(b * size, min((b + 1) * size, total))
        state, count = run(chosen, size, b, num_batches, callback, start)
        outputs.append(state)
        iterations += count
    state = jax.tree.map(lambda *x: np.concatenate(x)[:total], *outputs)
    mean_squares = {k: np.broadcast_to(optim.to_host(v), (total,)) for k, v in target_mean_squares(objectives).items()}
    weighted, raw = state["weighted"], state["raw"]
    axis_labels = {
        name: _label(list(v.keys()) if isinstance(v, Mapping) else list(v)) for name, v in (axes or {}).items()
    }
    return SweepResult(
        images=np.clip(state["image"], 0.0, 1.0),
        settings=[{k: _label(v) for k, v in member.items()} for member in settings],
        losses=state["value"],
        terms=[{k: float(v[i]) for k, v in weighted.items()} for i in range(total)],
        layer_losses=[
            {k: float(v[i]) for k, v in raw.items() if k.startswith(("content/", "style/"))} for i in range(total)
        ],
        target_mean_squares=[{k: float(v[i]) for k, v in mean_squares.items()} for i in range(total)],
        steps=state["steps"],
        evals=state["evals"],
        iterations=iterations,
        batch_size=size,
        bytes_per_device=run.bytes_per_device,
        seconds=time.perf_counter() - start,
        axes=axis_labels,
        product=product,
        config=config,
        network=network,
    )


def _style_targets(params, content, image, config: StyleConfig, shared: StyleConfig, network) -> dict:
    """A style image's Gram targets at the union of the sweep's layers (style_scale and colour matching
    applied against ``content``, as the members' styles are)."""
    if content is not None:
        image = prepare_styles(image, jnp.shape(content)[:2], config, content=content)[0]
    return make_objective(params, None, image, shared, network=network).style_targets


def _coarse_to_fine(inputs: schedule.Inputs, config: StyleConfig, axes, options) -> SweepResult:
    """The sweep at each stage of :mod:`nst_jax.schedule` in turn, every member continuing from its own
    upsampled result (``inputs.init``: ``[B, h, w, 3]`` images the first stage starts from, or ``None``)."""
    result: SweepResult | None = None
    totals: tuple | None = None
    anchor = None  # each member's first-stage thumbnail, whose composition the later stages keep
    for stage in schedule.stages(config, inputs.shape):
        stage_inputs = schedule.at_stage(inputs, stage)
        stage_axes = dict(axes or {})
        for name in _IMAGE_AXES:  # the images scaled with the stage, as stylize scales its styles
            if isinstance(stage_axes.get(name), Mapping):
                stage_axes[name] = {
                    label: schedule.scaled(image, stage.ratio) for label, image in stage_axes[name].items()
                }
            elif name in stage_axes:
                stage_axes[name] = [(label, schedule.scaled(image, stage.ratio)) for label, image in stage_axes[name]]
        previous = inputs.init if result is None else result.images
        init_images = None if previous is None else jnp.stack([resize(image, stage.shape) for image in previous])
        stage_options = dict(options)
        stage_callback = None
        if options.get("callback") is not None:
            stage_callback = stage_options["callback"] = schedule.StageCallback(options["callback"], stage)
        stage_result = _sweep(
            stage_inputs.content,
            None if stage_inputs.styles is None else stage_inputs.styles[0],
            stage.config,
            stage_axes,
            shape=stage.shape,
            init=init_images,
            anchor=anchor,
            stage_fine_style=None if stage_inputs.fine_styles is None else stage_inputs.fine_styles[0],
            stage=stage.number,
            **stage_options,
        )
        assert isinstance(stage_result, SweepResult)  # not a dry run
        result = stage_result
        if stage.number == 0:
            anchor = anchor_thumbnail(result.images)
        stage_totals = (result.steps, result.evals, result.iterations, result.seconds)
        totals = stage_totals if totals is None else tuple(a + b for a, b in zip(totals, stage_totals, strict=True))
        if stage_callback is not None and stage_callback.stopped:
            break  # as stylize: a callback's stop ends the whole sweep, not just its stage
    assert result is not None and totals is not None  # there is always a stage
    steps, evals, iterations, seconds = totals
    return result._replace(steps=steps, evals=evals, iterations=iterations, seconds=seconds, config=config)


class _BatchRunner:
    """Compiles the batched programs for one batch size and runs batches of members through them."""

    def __init__(self, objectives, images, config, style_batched, optimizer, mesh):
        self.objectives, self.images, self.config = objectives, images, config
        self.style_batched, self.optimizer, self.mesh = style_batched, optimizer, mesh
        self.statics = dict(style_batched=style_batched, optimizer=optimizer)

    def _batch(self, chosen: range, size: int):
        """Members ``chosen``, padded to ``size`` by repeating the last one, placed on the mesh."""
        index = np.array([*chosen, *[chosen[-1]] * (size - len(chosen))])
        batched = NamedSharding(self.mesh, PartitionSpec("batch"))
        shared = NamedSharding(self.mesh, PartitionSpec())
        take = lambda ax, tree: jax.tree.map(
            lambda x: optim.put(x if ax is None else x[index], shared if ax is None else batched), tree
        )
        objectives = jax.tree.map(
            take, _objective_axes(self.objectives, self.style_batched), self.objectives, is_leaf=lambda x: x is None
        )
        return objectives, optim.put(self.images[index], batched)

    def _compile(self, size: int):
        objectives, images = self._batch(range(min(size, self.images.shape[0])), size)
        steps = jnp.asarray(self.config.num_steps, jnp.int32)
        memory = self.config.memory_size if self.optimizer is None else None
        init = _init_batch.lower(objectives, images, steps, memory_size=memory, **self.statics).compile()
        initial = lambda o, x: _init_batch(o, x, steps, memory_size=memory, **self.statics)
        state = jax.eval_shape(initial, objectives, images)
        state = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(self.mesh, PartitionSpec("batch"))),
            state,
        )
        run = _run_batch.lower(objectives, state, steps, steps, **self.statics).compile()
        return init, run

    def choose_batch_size(self, total: int, batch_size: int | None, memory_fraction: float) -> int:
        """The largest batch (a multiple of the device count) whose program fits (:func:`nst_jax.memory.batch_size`);
        compiles it."""
        self.limit_bytes = memory.available_memory(self.mesh.devices.flat[0])

        def needed(size: int) -> int:
            self.programs = self._compile(size)
            self.bytes_per_device = max(optim.program_bytes(p) for p in self.programs)
            return self.bytes_per_device

        return memory.batch_size(total, batch_size, self.mesh.devices.size, self.limit_bytes, memory_fraction, needed)

    def __call__(self, chosen: range, size: int, batch: int, num_batches: int, callback, start: float):
        init, run = self.programs
        objectives, images = self._batch(chosen, size)
        steps = jnp.asarray(self.config.num_steps, jnp.int32)
        # Pinned to the batch sharding the loop was compiled for (XLA may lay out small leaves otherwise).
        batched = NamedSharding(self.mesh, PartitionSpec("batch"))
        state = jax.tree.map(lambda x: optim.put(x, batched), init(objectives, images, steps))
        count = 0
        while not bool(jnp.all(_done(state, steps))):
            state, chunk = run(objectives, state, steps, jnp.asarray(self.config.chunk_size, jnp.int32))
            count += int(chunk)
            if callback is not None:
                member_steps, _ = _steps_evals(state)
                progress = SweepProgress(
                    batch,
                    num_batches,
                    chosen,
                    optim.to_host(member_steps)[: len(chosen)],
                    optim.to_host(state.value)[: len(chosen)],
                    count,
                    time.perf_counter() - start,
                    jnp.clip(state.image[: len(chosen)], 0.0, 1.0) if jax.process_count() == 1 else None,
                )
                if callback(progress):
                    break
        member_steps, evals = _steps_evals(state)
        weighted, raw = _final_terms(objectives, state.image, self.style_batched)
        out = {
            "image": state.image,
            "value": state.value,
            "steps": member_steps,
            "evals": evals,
            "weighted": weighted,
            "raw": raw,
        }
        return jax.tree.map(lambda x: optim.to_host(x)[: len(chosen)], out), count  # gathered from every process


def value_label(value) -> str:
    """A swept value as a short label: 1e-05, relu1_1+relu2_1, 0.5:0:1, starry_night."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ("+" if all(isinstance(v, str) for v in value) else ":").join(value_label(v) for v in value)
    return str(value)


def _file_name(index: int, member: dict, extension: str) -> str:
    parts = [f"{index:03d}"] + [f"{name}={value_label(value)}" for name, value in member.items()]
    safe = "".join(ch if ch.isalnum() or ch in "._+=-:" else "-" for ch in "_".join(parts))
    return safe.replace(":", "~") + extension


def _grid(result: SweepResult) -> tuple[list[np.ndarray], list[str], list[str], str, str]:
    """Images in sheet order and the labels of rows and columns (first axis down, the others across)."""
    names = list(result.axes)
    if not result.product:
        rows = [", ".join(f"{k}={value_label(v)}" for k, v in s.items()) for s in result.settings]
        return list(result.images), rows, [""], "", ""
    if len(names) == 1:
        columns = [value_label(v) for v in result.axes[names[0]]]
        return list(result.images), [""], columns, "", names[0]
    rows = [value_label(v) for v in result.axes[names[0]]]
    columns = [
        ", ".join(value_label(v) for v in combo) for combo in itertools.product(*(result.axes[n] for n in names[1:]))
    ]
    return list(result.images), rows, columns, names[0], ", ".join(names[1:])


def failed_members(result: SweepResult) -> list[str]:
    """One description per member whose loss is not finite or that took no step (a sweep with any is not a success)."""
    failed = []
    for i, (loss, steps) in enumerate(zip(result.losses, result.steps, strict=True)):
        if not np.isfinite(loss):
            failed.append(f"{_file_name(i, result.settings[i], '')} (loss {float(loss)})")
        elif int(steps) == 0:
            failed.append(f"{_file_name(i, result.settings[i], '')} (no step taken)")
    return failed


def save_sweep(
    directory: str | os.PathLike,
    result: SweepResult,
    config: StyleConfig | None = None,
    *,
    extension: str = ".png",
    **metadata: Any,
) -> Path:
    """Writes every image (its settings in its file name), ``sweep.json`` and the contact sheet ``grid.png``.

    Every file is written atomically; ``sweep.json`` (written last) lists each member's
    file, settings, final loss, weighted terms, unweighted per-layer losses, steps and
    evaluations. ``metadata`` (e.g. input paths) is stored in it as given.

    ``directory`` must be new, empty or an earlier sweep's output (it holds our marker file);
    files of an earlier sweep with the same names are replaced. The settings recorded are
    ``result.config``, the ones the sweep ran with; ``config`` is accepted for older callers
    and must equal it.

    Returns:
      The path of ``sweep.json``.
    """
    from nst_jax.files import check_output_folder, write_marker
    from nst_jax.io import contact_sheet, output_format, save_image, save_json

    if config is not None and config != result.config:
        changed = [
            f.name for f in dataclasses.fields(StyleConfig) if getattr(config, f.name) != getattr(result.config, f.name)
        ]
        raise ValueError(
            f"`config` differs from the one the sweep ran with in {', '.join(changed)}; "
            "leave it out: save_sweep records result.config"
        )
    config = result.config
    directory = Path(directory)
    output_format(Path("x" + extension), "extension")  # a bad extension fails before anything is written
    check_output_folder(directory, KIND)  # new, empty or an earlier sweep's: never a folder of the user's
    directory.mkdir(parents=True, exist_ok=True)
    write_marker(directory, KIND)
    records = []
    height, width = result.images.shape[1:3]
    member_configs, _ = _member_configs(config, result.settings, result.network)
    for i, (member, member_config) in enumerate(zip(result.settings, member_configs, strict=True)):
        name = _file_name(i, member, extension)
        alpha = beta = None  # the paper's alpha and beta are VGG's (its channels and poolings)
        if result.network is None:
            alpha, beta = paper_weights(member_config, height, width, result.target_mean_squares[i])
        save_image(directory / name, result.images[i])
        with_content = any(k.startswith("content/") for k in result.layer_losses[i])  # else a texture: 512 px
        weights_size = max(result.images.shape[1:3]) if with_content else None
        records.append(
            {
                "index": i,
                "file": name,
                "settings": member,
                "loss": float(result.losses[i]),
                "terms": result.terms[i],
                "layer_losses": result.layer_losses[i],
                "steps": int(result.steps[i]),
                "evals": int(result.evals[i]),
                "weights": {
                    "content_weight": member_config.content_weight,
                    "style_weight": member_config.style_weight,
                    "style_layers": list(member_config.style_layers),
                    "layer_weights": list(
                        member_config.layer_weights
                        or default_layer_weights(
                            member_config.style_layers,
                            member_config.loss_scale,
                            result.network,
                            weights_size,
                        )
                    ),
                    "tv_weight": member_config.tv_weight,
                },
                "paper_alpha": alpha,
                "paper_beta_w": beta,
            }
        )
    images, rows, columns, row_title, column_title = _grid(result)
    sheet = contact_sheet(images, rows, columns, row_title=row_title, column_title=column_title)
    save_image(directory / "grid.png", sheet)
    config_json = {k: v for k, v in dataclasses.asdict(config).items()}
    return save_json(
        directory / "sweep.json",
        {
            **metadata,
            "config": config_json,
            "axes": result.axes,
            "product": result.product,
            "members": records,
            "batched_evals": result.iterations,
            "batch_size": result.batch_size,
            "bytes_per_device": result.bytes_per_device,
            "seconds": result.seconds,
            "devices": [str(d) for d in jax.devices()],
        },
    )
