"""The coarse-to-fine schedule that :func:`~nst_jax.transfer.stylize` and :func:`~nst_jax.sweeps.sweep` share.

A run optimises at each of ``config.stage_sizes`` (long sides) in turn, each stage starting
from the last one's result, upsampled. Every stage sees the content, the styles and the
masks scaled by its size over the output's, so the style's strokes keep their size relative
to the image; every stage after the first keeps the first one's composition
(``config.anchor_weight``, applied by the caller). Coarser stages take ``config.coarse_steps``
steps (default ``num_steps``), the last ``config.num_steps``.

References:
  Gatys, Ecker, Bethge, Hertzmann, Shechtman, "Controlling Perceptual Factors in Neural
  Style Transfer", CVPR 2017, section 5 (coarse-to-fine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp

from nst_jax.config import StyleConfig
from nst_jax.image import fit_long_side, resize, scaled_shape


class Inputs(NamedTuple):
    """What a run optimises from: the images it matches and where it starts."""

    content: Any  # [h, w, 3] in [0, 1], or None for a style-only image (texture) of ``shape``
    styles: Sequence[Any] | None  # the style images, any size (None entries: regions left unstyled); or None
    shape: tuple[int, int]  # (height, width) of the output: the content's, or a texture's
    init: Any = None  # where the first stage starts: a name or an image (a sweep's: one per member); None: the config's
    masks: Any = None  # [R, h, w] output regions for spatial control, at ``shape``
    style_masks: Sequence[Any] | None = None  # per-style masks (None entries allowed), each at its style's size
    fine_styles: Sequence[Any] | None = None  # scale control: the later stages' styles of the fine layers (None: none)


class Stage(NamedTuple):
    """One stage of the schedule."""

    number: int  # 0 for the coarsest
    num_stages: int  # how many stages the run has
    shape: tuple[int, int]  # (height, width) of this stage's image, in the output's proportions
    ratio: float  # this stage's long side over the output's: how much every input is scaled
    config: StyleConfig  # the run's config at this stage: one scale, its size, its number of steps

    @property
    def last(self) -> bool:
        """Whether this is the output's stage."""
        return self.number == self.num_stages - 1


def stages(config: StyleConfig, shape: tuple[int, ...]) -> list[Stage]:
    """The stages of a run whose output is ``shape`` (``config.stage_sizes`` of its long side)."""
    sizes = config.stage_sizes(max(shape))
    return [
        Stage(
            index,
            len(sizes),
            fit_long_side(shape, size),
            size / max(shape),
            config.replace(scales=(), num_scales=1, size=size, num_steps=config.stage_steps(index, len(sizes))),
        )
        for index, size in enumerate(sizes)
    ]


def is_staged(config: StyleConfig, shape: tuple[int, ...]) -> bool:
    """Whether a run of ``shape`` goes through stages: several, or one at another size than the output's."""
    sizes = config.stage_sizes(max(shape))
    return len(sizes) > 1 or sizes[-1] != max(shape)


def scaled(image, ratio: float):
    """``image`` (``[h, w, c]``) resized by ``ratio``, in its own proportions."""
    return resize(image, scaled_shape(jnp.shape(image)[:2], ratio))


def at_stage(inputs: Inputs, stage: Stage) -> Inputs:
    """The inputs as ``stage`` sees them: the content and the masks at its shape, the styles (and a
    later stage's ``fine_styles``; the first stage's are None) and their masks scaled by its ratio.
    The init is left as it is (the caller starts a later stage from the previous one's result)."""
    content, styles, masks, style_masks = inputs.content, inputs.styles, inputs.masks, inputs.style_masks
    # Scale control: the first stage composes with the styles alone; the later ones also see the
    # fine styles, which set the layers in config.fine_style_layers (transfer._setup).
    fine = None if stage.number == 0 or inputs.fine_styles is None else inputs.fine_styles
    if content is not None:
        content = resize(content, stage.shape)
    if styles is not None:
        styles = [None if s is None else scaled(s, stage.ratio) for s in styles]
    if fine is not None:
        fine = [scaled(s, stage.ratio) for s in fine]
    if masks is not None:
        masks = jnp.stack([resize(m[..., None], stage.shape)[..., 0] for m in jnp.asarray(masks, jnp.float32)])
    if style_masks is not None:
        style_masks = [
            None if m is None else scaled(jnp.asarray(m)[..., None], stage.ratio)[..., 0] for m in style_masks
        ]
    return inputs._replace(
        content=content, styles=styles, shape=stage.shape, masks=masks, style_masks=style_masks, fine_styles=fine
    )


class StageCallback:
    """Passes a stage's progress on with the stage and the number of stages filled in; remembers any stop."""

    def __init__(self, callback: Callable[[Any], bool | None], stage: Stage):
        self.callback, self.stage, self.stopped = callback, stage, False

    def __call__(self, progress) -> bool:
        stop = bool(self.callback(progress._replace(stage=self.stage.number, num_stages=self.stage.num_stages)))
        self.stopped = self.stopped or stop  # a stop anywhere in the stage (a sweep goes on to its next batch)
        return stop
