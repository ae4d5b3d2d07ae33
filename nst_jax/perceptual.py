"""Batch-first perceptual losses for training loops (Johnson, Alahi, Fei-Fei 2016).

A feed-forward style-transfer network is trained on Gatys et al.'s loss: the style's Gram
targets are computed once, each training item brings its own content image, and the loss
comes back per item. :class:`PerceptualLoss` is that loss as a pytree (pass it *into*
``jax.jit`` as an argument), built from the same :class:`~nst_jax.objective.Objective`
terms and weights as :func:`~nst_jax.transfer.stylize` uses, so a weight means the same
in both.

References:
  Johnson, Alahi, Fei-Fei, "Perceptual Losses for Real-Time Style Transfer and
  Super-Resolution", ECCV 2016.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp

from nst_jax.config import StyleConfig
from nst_jax.network import FeatureNetwork
from nst_jax.objective import Objective, make_objective, network_features


class PerceptualLoss(flax.struct.PyTreeNode):
    """``loss(images, contents) -> (losses [B], aux)``: Gatys et al.'s loss of each item of a batch.

    ``images`` and ``contents`` are ``[B, h, w, 3]`` in [0, 1] (``contents[i]`` is item i's
    content target); ``aux`` maps each term (``"content/relu4_2"``, ``"style/relu1_1"``, ...,
    ``"tv"``, ``"box"``) to its ``[B]`` weighted contributions. Take ``losses.mean()`` for a
    training step. Pure and jit/grad/vmap-compatible; its leaves are the VGG parameters, the
    style targets and the weights.
    """

    objective: Objective  # style targets and weights; its content targets are replaced per item
    content_layers: tuple[str, ...] = flax.struct.field(pytree_node=False, default=())

    def __call__(self, images: jax.Array, contents: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        images, contents = jnp.asarray(images), jnp.asarray(contents)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"`images` must be a [batch, height, width, 3] batch of RGB images, got {images.shape}")
        if contents.shape != images.shape:
            raise ValueError(f"`contents` must have the shape of `images` {images.shape}, got {contents.shape}")
        o = self.objective
        targets = {}
        if self.content_layers:
            # One batched pass for every item's content targets (the targets, not differentiated).
            targets = network_features(
                o.params, jax.lax.stop_gradient(contents), self.content_layers, o.network,
                pooling=o.pooling, padding=o.padding, precision=o.precision,
            )  # fmt: skip
        return jax.vmap(lambda image, target: o.replace(content_targets=target)(image))(images, targets)


def perceptual_loss(
    params: Mapping,
    style: jax.Array | None,
    config: StyleConfig = StyleConfig(),
    *,
    network: FeatureNetwork | None = None,
    size: int | None = None,
) -> PerceptualLoss:
    """The training loss for a style (or several, blended by ``config.style_blend``).

    Args:
      params: VGG-19 parameters (:func:`nst_jax.load_params`).
      style: the style image ``[h, w, 3]`` in [0, 1] (any size), a sequence of them, or
        ``None`` (content terms only: a plain feature-reconstruction loss).
      config: layers, weights, loss scale, pooling, padding and precision, as for
        :func:`~nst_jax.objective.make_objective` (``config.box`` "penalty" keeps the
        penalty on pixels outside [0, 1]; "none" drops it). ``config.flat_content_weight`` is
        not used: the contents change with every batch, so the content term weighs every
        position alike, as the paper's.
      network: any feature network (``config.network == "custom"``); ``None``: VGG.
      size: the long side of the training images, which the default per-layer weights follow
        (:func:`~nst_jax.objective.default_layer_weights`); ``None``: the weights as at 512 px.

    Returns:
      A :class:`PerceptualLoss`; its style targets are computed here, once.
    """
    if style is None and not config.content_layers:
        raise ValueError("`style` is None and `config.content_layers` is empty: there is nothing to match")
    # config.flat_content_weight is not used: it follows one photograph's flat regions, and a
    # perceptual loss's contents change with every batch, so every position weighs alike (the paper's).
    if style is None:
        # Content terms only: an objective with no style layers; content targets come per item.
        objective = make_objective(params, jnp.zeros((32, 32, 3), jnp.float32), None, config, network=network)
    else:
        objective = make_objective(params, None, style, config, network=network, size=size)
    return PerceptualLoss(objective.replace(content_targets={}), tuple(config.content_layers))
