"""Video: a clip styled without flicker, its frames optimised together.

Ruder, Dosovitskiy and Brox ("Artistic style transfer for videos", GCPR 2016) add to each
frame's style-transfer loss a *temporal* term: the per-pixel squared difference between the
frame and the previous stylised frame warped along the optical flow, where the flow is
reliable (:mod:`nst_jax.flow`). They optimise the frames one after another, each from the
warped previous result.

Departure: a *window* of frames can be one optimisation. :class:`ClipObjective` is the mean
of the frames' own objectives (one :class:`~nst_jax.objective.Objective` per frame, batched
with ``jax.vmap``) plus the temporal terms between neighbours, all in one jitted loss of the
window's ``[W, h, w, 3]`` pixels, so each temporal term pulls on both of its frames (as the
paper's forward-and-backward multi-pass algorithm does, in one pass) and every evaluation
steps every frame of the window at once. Windows follow one another: the first frame of a
window is held to the last finished frame of the one before, so a clip of any length is never
held in memory all at once. ``window=1``, the default, is the paper's frame-after-frame
algorithm with its warped initialisation: measured on this project's CPU it fits each frame's
style closer at the same number of evaluations (docs/video.md), and a CPU gains nothing from
the batch. A larger window is for accelerators, where W frames cost about one frame's time.

Every frame runs the coarse-to-fine schedule of :func:`~nst_jax.transfer.stylize` (the
window's stages one after another), so a frame of the clip is the picture ``stylize`` makes
of it, held to its neighbours.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import field
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from nst_jax import flow, memory, schedule
from nst_jax.checks import check_choice, check_image
from nst_jax.config import MAX_STEPS, MAX_WEIGHT, StyleConfig
from nst_jax.flow import CUT_SHARE, FLOWS
from nst_jax.image import as_images, luminance_image, resize, with_content_colour
from nst_jax.network import FeatureNetwork
from nst_jax.objective import Objective, anchor_thumbnail, check_network, with_anchor

MAX_FRAMES = 100_000  # frames of one clip (an hour at 25 fps is 90 000)
MAX_WINDOW = 256  # frames optimised together (the memory plan decides what fits below it)
MAX_OFFSET = 64  # the furthest frame back a long-term term reaches (each offset costs two flows a frame)
MAX_PASSES = 64  # passes over a clip (the paper uses up to 15)


def _f(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    """The video settings that :class:`~nst_jax.config.StyleConfig` does not hold (``nst-jax video``'s own options)."""

    # Departure: the paper's temporal weight (200 against its content 5 and style 100, on sums
    # over pixels) belongs to its absolute terms; here the term is a mean over pixels and
    # channels of [0, 1] values against relative content and style terms (docs/video.md).
    temporal_weight: float = _f(
        500.0, "weight of the temporal loss: a frame against its warped stylised neighbour (0: frames apart)"
    )
    window: int = _f(
        1, "frames optimised together (one L-BFGS over their pixels; the memory plan may lower it; 1: one by one)"
    )
    flow: str = _f("dis", "optical flow: dis or farneback (OpenCV)", choices=FLOWS)
    cut_share: float = _f(
        CUT_SHARE, "a frame whose flow is reliable on less than this share of the picture starts a new shot"
    )
    # The paper's long-term consistency (its eq. 8): frame t is also held to frames t-j for these
    # offsets, each where no nearer offset already covers the pixel, so a stroke that was
    # occluded for a few frames comes back as it was.
    long_term: tuple[int, ...] = _f((1,), "frame offsets the temporal loss reaches back to, e.g. 1,2,4 (1: the last)")
    # The paper's multi-pass algorithm (its section 3.3): after the first pass, passes alternate
    # backward and forward over the clip, each frame starting from a blend of its last result and
    # its neighbour in this pass, warped (the paper's eq. 9), and held to that neighbour.
    # Departure: the first pass is the full single-pass run (coarse-to-fine, --steps); the
    # later ones refine at the output's size only, `pass_steps` steps a frame (the paper runs
    # every pass at full size with an equal share of its iterations).
    passes: int = _f(1, "passes over the clip: 1, frame after frame; more: then backward, forward, ... (multi-pass)")
    pass_steps: int = _f(40, "optimiser steps a frame in each pass after the first (at the output's size)")
    blend: float = _f(
        0.5, "in a pass after the first, the share of a frame's start kept from its last result (the paper's delta)"
    )

    def __post_init__(self):
        if not (0.0 <= self.temporal_weight <= MAX_WEIGHT) or math.isnan(self.temporal_weight):
            raise ValueError(f"`temporal_weight` must be in [0, {MAX_WEIGHT:g}], got {self.temporal_weight!r}")
        if not isinstance(self.window, int) or isinstance(self.window, bool) or not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"`window` must be an integer from 1 to {MAX_WINDOW}, got {self.window!r}")
        check_choice("flow", self.flow, FLOWS)
        if not (0.0 <= self.cut_share <= 1.0):
            raise ValueError(f"`cut_share` must be in [0, 1], got {self.cut_share!r}")
        offsets = tuple(self.long_term)
        if (
            not offsets or offsets[0] != 1 or list(offsets) != sorted(set(offsets))
            or not all(isinstance(j, int) and 1 <= j <= MAX_OFFSET for j in offsets)
        ):  # fmt: skip
            raise ValueError(
                f"`long_term` must be increasing frame offsets from 1 to {MAX_OFFSET} starting with 1, e.g. (1, 2, 4); "
                f"got {self.long_term!r}"
            )
        object.__setattr__(self, "long_term", offsets)
        if not isinstance(self.passes, int) or isinstance(self.passes, bool) or not 1 <= self.passes <= MAX_PASSES:
            raise ValueError(f"`passes` must be an integer from 1 to {MAX_PASSES}, got {self.passes!r}")
        if (
            not isinstance(self.pass_steps, int) or isinstance(self.pass_steps, bool)
            or not 1 <= self.pass_steps <= MAX_STEPS
        ):  # fmt: skip
            raise ValueError(f"`pass_steps` must be an integer from 1 to {MAX_STEPS}, got {self.pass_steps!r}")
        if not (0.0 <= self.blend <= 1.0):
            raise ValueError(f"`blend` must be in [0, 1], got {self.blend!r}")

    def replace(self, **changes) -> VideoConfig:
        return dataclasses.replace(self, **changes)


class ClipObjective(flax.struct.PyTreeNode):
    """The loss of a window of W frames: ``objective(images [W, h, w, 3]) -> (loss, aux)``.

    ``loss = mean_t frame_loss_t(x_t) + temporal_weight * sum_j mean_t mean(c_jt (x_t - warp(x_{t-j}, b_jt))^2)``
    over the offsets j (``offsets``; (1,) without long-term terms), ``x_{t-j}`` before the window
    taken from ``held`` (the finished frames, fixed; their masks zero where there are none); in a
    later pass, plus ``temporal_weight * mean_t mean(s_t (x_t - stay_t)^2)``.
    ``aux`` holds the frames' terms averaged over the window and ``"temporal"``.
    """

    params: dict
    frames: Objective  # the frames' objectives, every leaf stacked on a leading axis; params None
    flows: jax.Array  # [J, W, h, w, 2]: backward flow of frame t to frame t - offsets[j]
    masks: jax.Array  # [J, W, h, w]: where that flow is reliable and no nearer offset covers the pixel (1), or 0
    held: jax.Array  # [max(offsets), h, w, 3]: the finished frames before the window, oldest first
    temporal_weight: jax.Array
    offsets: tuple[int, ...] = flax.struct.field(pytree_node=False, default=(1,))
    # In a later pass: the frames' last results [W, h, w, 3], and [W, h, w] where no neighbour
    # holds a pixel (1 - the masks' sum): there it is held to where it was, so a pass does not
    # undo at its disocclusions what the pass the other way made consistent.
    stay: jax.Array | None = None
    stay_masks: jax.Array | None = None

    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        params = self.params

        def one(objective, image):
            return objective.replace(params=params)(image)

        losses, aux = jax.vmap(one)(self.frames, images)
        reach, count = self.held.shape[0], images.shape[0]
        clip = jnp.concatenate([self.held, images])
        temporal = sum(
            jnp.mean(temporal_errors(images, clip[reach - j : reach - j + count], self.flows[k], self.masks[k]))
            for k, j in enumerate(self.offsets)
        )
        if self.stay is not None:
            assert self.stay_masks is not None
            temporal = temporal + jnp.mean(self.stay_masks[..., None] * jnp.square(images - self.stay))
        terms = {name: jnp.mean(value) for name, value in aux.items()}
        terms["temporal"] = self.temporal_weight * temporal
        return jnp.mean(losses) + terms["temporal"], terms

    def value(self, images: jax.Array) -> jax.Array:
        return self(images)[0]


def temporal_errors(images, before, flows, masks) -> jax.Array:
    """Per frame, ``mean(c_t * (x_t - warp(before_t, flow_t))^2)`` over pixels and channels ([W])."""
    warped = jax.vmap(flow.warp)(before, flows)
    return jnp.mean(masks[..., None] * jnp.square(images - warped), axis=(1, 2, 3))


class VideoProgress(NamedTuple):
    """What a :func:`stylize_video` callback sees between chunks."""

    frames: range  # the frames of the window being optimised
    num_frames: int  # frames in the clip
    stage: int  # coarse-to-fine stage of the window (0-based)
    num_stages: int
    step: int  # steps taken in this stage
    num_steps: int  # steps of this stage
    loss: float
    images: Any  # [len(frames), h, w, 3] the window's current frames, clipped to [0, 1]
    seconds: float  # since the clip started
    pass_number: int = 0  # the pass over the clip (0-based; odd passes go backward: ``frames`` counts down)
    num_passes: int = 1


class VideoResult(NamedTuple):
    """Outcome of :func:`stylize_video`."""

    frames: np.ndarray  # [T, h, w, 3] in [0, 1]
    cuts: list[int]  # frames that start a new shot (no temporal term to the frame before)
    temporal_error: np.ndarray  # [T] mean |x_t - warp(x_{t-1})| over reliable pixels (0 for the first and cuts)
    evaluations: float  # full-size evaluation-equivalents per frame (stage evaluations weighted by pixels)
    batched_evaluations: int  # loss+gradient evaluations of whole windows, summed over windows and stages
    seconds: float  # wall time, compilation and flow included
    flow_seconds: float  # of which optical flow
    window: int  # frames optimised together


class VideoInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a callback's stop) in :func:`stylize_video`; ``result`` holds the frames finished so far."""

    def __init__(self, result: VideoResult):
        super().__init__("interrupted")
        self.result = result


def check_frames(frames) -> np.ndarray:
    """The clip as a float32 ``[T, h, w, 3]`` array in [0, 1]; refuses anything else, naming what is wrong."""
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("`frames` is empty: give at least one frame")
        shapes = {tuple(np.shape(f)) for f in frames}
        if len(shapes) > 1:
            raise ValueError(f"`frames` differ in shape: {sorted(shapes)[:3]}; every frame must have one size")
        check_image(frames[0], "frames[0]")
        frames = np.stack([np.asarray(f, np.float32) for f in frames])
    shape = tuple(np.shape(frames))
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"`frames` has shape {shape}; a clip is [frames, height, width, 3]")
    if not 1 <= shape[0] <= MAX_FRAMES:
        raise ValueError(f"`frames` has {shape[0]} frames; a clip has 1 to {MAX_FRAMES}")
    check_image(np.asarray(frames[0]), "frames[0]")
    frames = np.asarray(frames, np.float32)
    if not np.isfinite(frames).all() or frames.min() < -0.5 or frames.max() > 1.5:
        raise ValueError("`frames` has values outside [0, 1] (or NaN): frames are floats in [0, 1]")
    return np.clip(frames, 0.0, 1.0)


def window_that_fits(config: StyleConfig, shape: tuple[int, int], asked: int, devices: int = 1) -> int:
    """The window (frames optimised together): ``asked``, halved until the memory plan's guess fits.

    A window's program holds every frame's activations, so it needs about ``window`` times one
    frame's (:func:`nst_jax.memory.rough_bytes`), split over ``devices`` when its frames are
    (a window of ``devices`` frames at least); it may use half the free memory of each.
    """
    free = memory.limit_per_device(False)
    window = asked
    if free is None:
        return window
    while window > max(1, devices) and window / devices * memory.rough_bytes(*shape) > free / 2:
        window //= 2
    return window


def stylize_video(
    frames,
    style,
    config: StyleConfig = StyleConfig(),
    video: VideoConfig = VideoConfig(),
    *,
    params=None,
    network: FeatureNetwork | None = None,
    fine_style=None,
    flows: tuple[np.ndarray, np.ndarray, list[int]] | None = None,
    finished=None,
    callback: Callable[[VideoProgress], bool | None] | None = None,
    on_window: Callable[[range, np.ndarray], None] | None = None,
    on_pass: Callable[[int, np.ndarray], None] | None = None,
    mesh: Mesh | None = None,
) -> VideoResult:
    """Styles a clip: each frame as :func:`~nst_jax.transfer.stylize` would, held to its neighbours.

    Args:
      frames: ``[T, h, w, 3]`` RGB in [0, 1] (or a list of frames), used at the size given.
      style: a style image or a sequence of them (blended by ``config.style_blend``).
      config: every setting of :func:`~nst_jax.transfer.stylize` (but masks). With luminance-only
        colour preservation the frames are optimised in luminance, the temporal terms too, and
        each frame takes its own content's colours back.
      video: the temporal settings (:class:`VideoConfig`).
      params: VGG parameters (``None``: ``config.weights``); ``network`` as for ``stylize``.
      fine_style: scale control, as for ``stylize``.
      flows: ``(flows, masks, cuts)`` as :func:`nst_jax.flow.frame_flows` returns them, to skip
        computing them (e.g. a clip's known motion).
      finished: the first frames, already styled (``[k, h, w, 3]``, from an interrupted run):
        the run starts at frame k, coupled to ``finished[-1]``.
      callback: called between chunks with a :class:`VideoProgress`; ``True`` stops the run
        (:class:`VideoInterrupted`, with the finished frames).
      on_window: called with ``(frames range, styled frames)`` as each window of the first pass
        is finished (to save them: ``finished`` resumes the first pass).
      on_pass: with ``video.passes`` > 1, called with ``(pass number, all frames)`` as each later
        pass is finished (1-based: 2 for the first backward pass).
      mesh: several devices (:func:`nst_jax.optim.image_mesh`): each window's frames are split
        over them (a batch over devices; ``video.window`` must be a multiple of their number).
        A last window too short to divide runs on one device.

    Returns:
      A :class:`VideoResult`.
    """
    from nst_jax import transfer
    from nst_jax.weights import params_or_default

    check_network(config, network)
    if not isinstance(video, VideoConfig):
        raise TypeError(f"`video` must be a VideoConfig, got {type(video).__name__}")
    frames = check_frames(frames)
    count, h, w = frames.shape[:3]
    styles = as_images(style)
    for i, s in enumerate(styles):
        check_image(s, "style" if len(styles) == 1 else f"style[{i}]")
    fine_styles = None if fine_style is None else as_images(fine_style)
    transfer.check_fine_style(config, (h, w), fine_styles, style, None)
    style_shapes = [jnp.shape(s)[:2] for s in styles] + [jnp.shape(s)[:2] for s in fine_styles or []]
    transfer.check_sizes(config, (h, w), style_shapes, True, network=network)
    memory.check_roughly(config, (h, w), style_shapes)
    done = 0 if finished is None else len(finished)
    if finished is not None:
        finished = check_frames(finished)
        if finished.shape[1:] != frames.shape[1:] or done > count:
            raise ValueError(
                f"`finished` has shape {finished.shape}; it must be at most {count} frames of {h}x{w}, the clip's"
            )
    devices = 1 if mesh is None else mesh.size
    if video.window % devices:
        raise ValueError(
            f"`video.window` is {video.window}: to split each window's frames over the mesh's {devices} devices "
            f"it must be a multiple of {devices}"
        )
    window = window_that_fits(config, (h, w), video.window, devices)
    params = params_or_default(params, config, network)
    start = time.perf_counter()
    given = None
    if flows is not None:
        given = (np.asarray(flows[0], np.float32), np.asarray(flows[1], np.float32))
        if given[0].shape != (count, h, w, 2) or given[1].shape != (count, h, w):
            raise ValueError(
                f"`flows` must be ([{count}, {h}, {w}, 2], [{count}, {h}, {w}], cuts), got {given[0].shape} and "
                f"{given[1].shape}"
            )
        if video.long_term != (1,) or video.passes > 1:
            raise ValueError(
                f"`flows` gives the flow to the previous frame only; `long_term` {video.long_term} and `passes` "
                f"{video.passes} > 1 need more"
            )
    cuts: list[int] = [] if flows is None else [int(c) for c in flows[2]]
    reach = max(video.long_term)
    out = np.zeros_like(frames)
    errors = np.zeros(count, np.float32)
    if finished is not None:
        out[:done] = finished
    evaluations, later, batched, flow_seconds = 0.0, 0.0, 0, 0.0
    stages = schedule.stages(config, (h, w))
    first = done
    result = lambda upto: VideoResult(
        out[:upto], sorted(cuts), errors[:upto], evaluations / max(1, upto - done) + later / count, batched,
        time.perf_counter() - start, flow_seconds, window,
    )  # fmt: skip

    def run_pass(ordered, buffer, first, pass_stages, number=0, starts=None, backward=False):
        """Optimises ``ordered`` window after window into ``buffer`` from frame ``first``; yields each window.

        Yields ``(span, images, evaluations, calls)``. The first pass (``number`` 0) takes
        ``flows`` when given; every other pass computes them on its own frame order. A forward
        pass also writes its frames' flicker figures into ``errors``.
        """
        nonlocal flow_seconds
        while first < count:
            span = range(first, min(first + window, count))
            held = _held_before(buffer, first, reach)
            if given is None or number > 0:  # the window's flows only: a long clip's are never all held
                began = time.perf_counter()
                window_flows, window_masks, found = flow.span_flows(
                    ordered, span, video.long_term, video.flow, video.cut_share
                )
                flow_seconds += time.perf_counter() - began
                if not backward:  # a forward pass (the first, or a later one after a resume) finds the cuts
                    cuts.extend(c for c in found if c not in cuts)
            else:
                window_flows = given[0][None, first : span.stop]
                window_masks = given[1][None, first : span.stop]
            shown = range(count - 1 - span.start, count - 1 - span.stop, -1) if backward else None
            window_starts = None if starts is None else starts[span.start : span.stop]
            images, evals, calls = _window(
                ordered, span, held, window_flows, window_masks, styles, fine_styles, config, video, params,
                network, pass_stages, callback, start, count, starts=window_starts, shown=shown,
                pass_number=number, mesh=mesh,
            )  # fmt: skip
            buffer[span.start : span.stop] = images
            if not backward:  # the flicker figure looks one frame back, along these forward flows
                previous = buffer[span.start - 1] if span.start > 0 else None
                errors[span.start : span.stop] = _window_errors(images, previous, window_flows[0], window_masks[0])
            yield span, images, evals, calls
            first = span.stop

    try:
        for span, images, evals, calls in run_pass(frames, out, first, stages):
            evaluations += evals * len(span)
            batched += calls
            if on_window is not None:
                on_window(span, images)
            first = span.stop
    except KeyboardInterrupt:
        raise VideoInterrupted(result(first)) from None
    if video.passes == 1 or count == 1:
        return result(count)
    last = stages[-1]  # the later passes refine at the output's size only
    refine = [last._replace(number=0, num_stages=1, config=last.config.replace(num_steps=video.pass_steps))]
    try:
        for number in range(1, video.passes):
            backward = number % 2 == 1  # the paper's passes alternate: backward, forward, backward, ...
            order = np.arange(count)[::-1] if backward else np.arange(count)
            ordered = np.ascontiguousarray(frames[order]) if backward else frames
            refined = np.zeros_like(out)
            for span, _, evals, calls in run_pass(ordered, refined, 0, refine, number, out[order], backward):
                later += evals * len(span)
                batched += calls
            out = refined[order]  # in the clip's order again (a reversal is its own inverse)
            if on_pass is not None:
                on_pass(number + 1, out)
    except KeyboardInterrupt:  # the last finished pass stands
        raise VideoInterrupted(result(count)) from None
    if (video.passes - 1) % 2:  # the last pass ran backward; the flicker figure looks one frame back, along
        # the forward flows: computed again
        began = time.perf_counter()
        errors = _clip_errors(frames, out, video)
        flow_seconds += time.perf_counter() - began
    return result(count)


def _held_before(frames: np.ndarray, first: int, reach: int) -> np.ndarray:
    """The ``reach`` finished frames before frame ``first``, oldest first (zeros where the clip has none)."""
    held = np.zeros((reach, *frames.shape[1:]), np.float32)
    have = min(reach, first)
    if have:
        held[reach - have :] = frames[first - have : first]
    return held


def _clip_errors(frames: np.ndarray, styled: np.ndarray, video: VideoConfig) -> np.ndarray:
    """:func:`temporal_error` of a whole styled clip along its own flow (computed again)."""
    errors = np.zeros(len(frames), np.float32)
    for first in range(0, len(frames), 16):  # a few frames' flows at a time
        span = range(first, min(first + 16, len(frames)))
        flows, masks, _ = flow.span_flows(frames, span, (1,), video.flow, video.cut_share)
        previous = styled[first - 1] if first > 0 else None
        errors[span.start : span.stop] = _window_errors(styled[span.start : span.stop], previous, flows[0], masks[0])
    return errors


def _window_errors(images, previous, flows, masks) -> np.ndarray:
    """:func:`temporal_error` of a window's frames, the first against ``previous`` (0 without one)."""
    if previous is None:
        return temporal_error(images, flows, masks)
    zero_flow, zero_mask = np.zeros_like(flows[:1]), np.zeros_like(masks[:1])
    clip = np.concatenate([np.asarray(previous)[None], images])
    return temporal_error(clip, np.concatenate([zero_flow, flows]), np.concatenate([zero_mask, masks]))[1:]


def _window(frames, span, held, flows, masks, styles, fine_styles, config, video, params, network, stages,
            callback, start, count, starts=None, shown=None, pass_number=0, mesh=None):  # fmt: skip
    """Optimises the frames in ``span`` together through every stage.

    ``starts``: in a later pass, the frames' last results, which they start from (the first
    blended with the warped neighbour before it, the paper's eq. 9); ``shown``: the frames as
    progress reports them (a backward pass counts down).

    Returns (frames, full-size evaluation-equivalents per frame, batched evaluations).
    """
    from nst_jax import transfer

    if mesh is not None and (mesh.size == 1 or len(span) % mesh.size):
        mesh = None  # one device, or a last window too short to split

    h, w = frames.shape[1:3]
    grey = config.preserve_colour == "luminance"  # the frames are optimised in luminance (transfer._setup)
    images = None
    anchors: list[Any] = []
    evaluations, calls = 0.0, 0
    for stage in stages:
        shape, stage_config = stage.shape, stage.config
        objectives, inits = [], []
        for i, t in enumerate(span):
            inputs = schedule.Inputs(jnp.asarray(frames[t]), styles, (h, w), None, None, None, fine_styles)
            inputs = schedule.at_stage(inputs, stage)
            if images is not None:
                inputs = inputs._replace(init=resize(images[i], shape))
            elif starts is not None:
                inputs = inputs._replace(init=resize(jnp.asarray(starts[i]), shape))
            objective, init, _ = transfer._setup(inputs, stage_config, params, network)
            if anchors and config.anchor_weight > 0:
                objective = with_anchor(objective, anchors[i], config.anchor_weight)
            objectives.append(objective.replace(params=None))
            inits.append(init)
        stage_flows = jnp.stack([jnp.stack([flow.resize_flow(f, shape) for f in row]) for row in flows])
        stage_masks = jnp.stack([jnp.stack([flow.resize_mask(m, shape) for m in row]) for row in masks])
        stage_held = jnp.stack([resize(f, shape) for f in held])
        if grey:  # the finished frames as the network saw them
            stage_held = jnp.stack([luminance_image(f) for f in stage_held])
        if images is None and video.temporal_weight > 0:  # the paper's init: the warped previous frame where reliable
            mask = stage_masks[0, 0][..., None]
            warped = flow.warp(stage_held[-1], stage_flows[0, 0])
            if starts is None:
                inits[0] = mask * warped + (1 - mask) * inits[0]
            else:  # a later pass keeps `blend` of the last result where the neighbour is reliable, all of it elsewhere
                inits[0] = inits[0] + (1.0 - video.blend) * mask * (warped - inits[0])
        objective = ClipObjective(
            params=params,
            frames=jax.tree.map(lambda *leaves: jnp.stack(leaves), *objectives),
            flows=stage_flows,
            masks=stage_masks,
            held=stage_held,
            temporal_weight=jnp.asarray(video.temporal_weight, jnp.float32),
            offsets=video.long_term,
        )
        if starts is not None:  # a later pass
            stay = jnp.stack([resize(jnp.asarray(x), shape) for x in starts])
            if grey:
                stay = jnp.stack([luminance_image(x) for x in stay])
            objective = objective.replace(stay=stay, stay_masks=jnp.clip(1.0 - stage_masks.sum(axis=0), 0.0, 1.0))
        stopped: list[bool] = []

        def report(progress, stage=stage, stopped=stopped):
            seen = VideoProgress(
                span if shown is None else shown, count, stage.number, stage.num_stages, progress.step,
                progress.num_steps, progress.loss, progress.image, time.perf_counter() - start, pass_number,
                video.passes,
            )  # fmt: skip
            stopped.append(bool(callback(seen)))
            return stopped[-1]

        result = transfer.optimize(objective, jnp.stack(inits), stage_config, callback=callback and report, mesh=mesh)
        if any(stopped):
            raise KeyboardInterrupt
        images = result.image
        evaluations += result.num_evals * (shape[0] * shape[1]) / (h * w)
        calls += result.num_evals
        if stage.number == 0:
            anchors = [anchor_thumbnail(image) for image in images]
        if not result.finite:
            raise FloatingPointError(f"frames {span.start}-{span.stop - 1}: the loss became NaN or infinite")
    assert images is not None
    if grey:  # luminance-only transfer: each frame takes its own content's colours back
        images = np.stack(
            [np.asarray(with_content_colour(image, frames[t])) for image, t in zip(images, span, strict=True)]
        )
    return np.asarray(images), evaluations, calls


def temporal_error(frames: np.ndarray, flows: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per frame, the mean absolute difference to the previous frame warped by ``flows``, over ``masks`` (0-1 units).

    The flicker measure: with the clip's true motion as ``flows`` and the pixels visible in both
    frames as ``masks``; 0 for a frame with no reliable pixel (the first, a cut).
    """
    clip = jnp.asarray(frames, jnp.float32)
    errors = [0.0]
    for t in range(1, len(clip)):
        mask = jnp.asarray(masks[t], jnp.float32)
        if float(mask.sum()) == 0:
            errors.append(0.0)
            continue
        warped = flow.warp(clip[t - 1], jnp.asarray(flows[t]))
        diff = jnp.mean(jnp.abs(clip[t] - warped), axis=-1)
        errors.append(float(jnp.sum(mask * diff) / jnp.sum(mask)))
    return np.asarray(errors, np.float32)
