"""Targets from content and style images, and the objective ``f(image) -> (loss, aux)``.

:class:`Objective` is an immutable pytree (like an equinox Module): its leaves are
the VGG parameters, the targets and the weights, so it can be passed *into*
``jax.jit``/``jax.vmap`` as an argument instead of being baked into the compiled
program as constants, and the weights can carry a batch axis for sweeps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import losses, vgg
from nst_jax.checks import check_image
from nst_jax.config import ANCHOR_SIZE, StyleConfig
from nst_jax.image import as_images, fit_long_side, flatness, layer_mask, resize
from nst_jax.network import FeatureNetwork


def _check_image(argument: str, image) -> jax.Array:
    """The library's one image check (:func:`~nst_jax.checks.check_image`), then the image as a JAX array.

    Integer arrays are refused, as everywhere else: this used to cast them to float32, so a
    0-255 uint8 image was taken for a very bright float one.
    """
    check_image(image, argument)
    return jnp.asarray(image)


class Objective(flax.struct.PyTreeNode):
    """The style-transfer loss of one image; call it as ``objective(image) -> (loss, aux)``.

    ``aux`` maps each term (``"content/relu4_2"``, ``"style/relu1_1"``, ...,
    ``"tv"``, ``"box"``, and ``"anchor"`` with an anchor) to its weighted contribution, so the
    terms add up to ``loss``.
    """

    params: dict
    content_targets: dict  # layer -> [h, w, c] features of the content image
    style_targets: dict  # layer -> [c, c] Gram matrix of the style image
    content_weight: jax.Array
    style_weight: jax.Array
    layer_weights: dict  # style layer -> weight
    tv_weight: jax.Array
    box_weight: jax.Array
    # Spatial control (Gatys et al. CVPR 2017): with masks, each style target is [R, c, c]
    # (one guided Gram matrix per region) and style_masks[layer] is [R, h_l, w_l].
    style_masks: dict | None = None
    region_weights: jax.Array | None = None  # [R]: each region's share of the image (0: no style there)
    # StyleConfig.flat_content_weight below 1: content layer -> [h_l, w_l] weight of each position
    # (flat_weights: flat_content_weight where the content is flat, 1 elsewhere, mean 1; [B, h_l, w_l]
    # in a sweep with a flat_content_weight axis); None: uniform, as the paper.
    content_weights: dict | None = None
    # Coarse to fine: the first stage's picture as a thumbnail [h', w', 3] that later stages keep
    # (losses.anchor_loss, weighted by anchor_weight); None: no such term.
    anchor: jax.Array | None = None
    anchor_weight: jax.Array | None = None
    # "relative": every content and style term is divided by its target's mean square.
    loss_scale: str = flax.struct.field(pytree_node=False, default="relative")
    pooling: str = flax.struct.field(pytree_node=False, default="avg")
    padding: str = flax.struct.field(pytree_node=False, default="zeros")
    precision: str = flax.struct.field(pytree_node=False, default="highest")
    # None: VGG-19/VGG-16 (vgg.features, with pooling, padding and precision); else any
    # nst_jax.network.FeatureNetwork (those three options are then the network's own business).
    network: Any = flax.struct.field(pytree_node=False, default=None)

    def __call__(self, image: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        order = vgg.LAYERS if self.network is None else self.network.layers
        layers = tuple(name for name in order if name in self.content_targets or name in self.style_targets)
        feats = network_features(
            self.params,
            image,
            layers,
            self.network,
            pooling=self.pooling,
            padding=self.padding,
            precision=self.precision,
        )
        # Departure (see StyleConfig.loss_scale): by default each term is a squared relative
        # distance, ||F - P||^2 / ||P||^2 and ||G - A||^2 / ||A||^2, instead of the paper's
        # plain sums, so the weights mean the same for every layer and every image.
        scale = losses.inverse_mean_square if self.loss_scale == "relative" else lambda target: 1.0
        aux: dict[str, jax.Array] = {}
        for layer, target in self.content_targets.items():
            where = None if self.content_weights is None else self.content_weights[layer]
            aux[f"content/{layer}"] = (
                self.content_weight * losses.content_loss(feats[layer], target, where) * scale(target)
            )
        for layer, target in self.style_targets.items():
            weight = self.style_weight * self.layer_weights[layer]
            if self.style_masks is None:
                loss = losses.style_layer_loss(feats[layer], target) * scale(target)
            else:

                def region_loss(mask, a, f=feats[layer]):
                    return jnp.mean(jnp.square(losses.masked_gram(f, mask) - a)) * scale(a)

                loss = jnp.sum(self.region_weights * jax.vmap(region_loss)(self.style_masks[layer], target))
            aux[f"style/{layer}"] = weight * loss
        aux["tv"] = self.tv_weight * losses.total_variation(image, circular=self.padding == "circular")
        aux["box"] = self.box_weight * losses.box_penalty(image)
        if self.anchor is not None and self.anchor_weight is not None:
            aux["anchor"] = self.anchor_weight * losses.anchor_loss(image, self.anchor)
        terms = list(aux.values())
        return sum(terms[1:], terms[0]), aux

    def value(self, image: jax.Array) -> jax.Array:
        """The scalar loss alone (what optimisers and line searches need)."""
        # Through a jit of its own: the zoom line search differentiates the loss in several
        # places, and each would otherwise trace the whole network again (~0.3 s per trace at
        # every start; XLA inlines the call, so the compiled program is the same).
        return _value(self, image)


@jax.jit
def _value(objective: Objective, image: jax.Array) -> jax.Array:
    return objective(image)[0]


# Departure: the paper weights conv1_1..conv5_1 equally. With relative terms the fifth block,
# whose Gram matrices come from a few hundred positions (32 x 24 at 512 px, 8 x 6 at the
# 128 px stage), then copies whole objects of the painting into the picture (Starry Night's
# moon in Tubingen's sky) and pulls the content distance up by 0.1-0.15 (measured at 256 px);
# at a fifth of the others' weight it is fitted about as closely as the classic tool fits it.
DEEPEST_BLOCK_SHARE = 0.2
# Departure: the long side at which the weights above hold as written (the gallery's size,
# where they were chosen). A layer's receptive field is fixed in pixels, so at half that size
# each layer sees what the next deeper one sees at full size: at 256 px relu4_1 reads the
# picture's layout as relu5_1 does at 512 px, and fitting it at full weight repaints the
# layout (measured: Tubingen's buildings and the demo's tower gone at 256 px, kept at 512 px).
# So a layer's weight follows the share of the picture it sees: its block index plus
# log2(WEIGHTS_SIZE / size), full weight up to the fourth block's share, divided by
# 1 / DEEPEST_BLOCK_SHARE for every pooling level beyond it (docs/loss.md).
WEIGHTS_SIZE = 512


def _scale_weight(level: float) -> float:
    """The weight of a style layer seeing the share of the picture that block ``level`` (0-based) sees at 512 px."""
    return DEEPEST_BLOCK_SHARE ** max(0.0, level - 3.0)


def default_layer_weights(
    style_layers: Sequence[str],
    loss_scale: str = "relative",
    network: FeatureNetwork | None = None,
    size: int | None = None,
) -> tuple[float, ...]:
    """The default per-layer weights (see ``StyleConfig.layer_weights``) for a picture of long side ``size``.

    With relative terms and VGG, at ``WEIGHTS_SIZE`` (512 px) equal weights (the paper's)
    except the fifth block's, which get :data:`DEEPEST_BLOCK_SHARE` of the others',
    normalised to sum to 1. At another ``size`` each layer takes the weight of the block that
    sees the same share of the picture at 512 px (block index + log2(512 / size), each level
    beyond the fourth block's dividing the weight by 5), over the same normalisation: at
    256 px relu4_1 gets 0.2 and relu5_1 0.04 of relu1_1's weight; at 1024 px every layer the
    same. ``size=None``: as at 512 px. Any other ``network``: equal weights at every size.
    With absolute terms, 1/N_l, N_l the layer's channel count, at every size.
    """
    if loss_scale == "relative":
        if network is not None:
            return tuple(1.0 / len(style_layers) for _ in style_layers)
        shift = 0.0 if size is None else math.log2(WEIGHTS_SIZE / size)
        total = sum(_scale_weight(vgg.block_of(layer) - 1) for layer in style_layers)
        return tuple(_scale_weight(vgg.block_of(layer) - 1 + shift) / total for layer in style_layers)
    channels = _channels if network is None else network.channels.__getitem__
    return tuple(1.0 / channels(layer) for layer in style_layers)


def _channels(layer: str) -> int:
    """Channels N_l of any layer's output: those of the last convolution at or before it."""
    convs = [name for name in vgg.LAYERS[: vgg.LAYERS.index(layer) + 1] if name.startswith("conv")]
    return vgg.CONV_CHANNELS[convs[-1]]


def network_features(
    params, image, layers, network: FeatureNetwork | None, *, pooling: str, padding: str, precision: str
) -> dict[str, jax.Array]:
    """``vgg.features`` (``network`` None) or ``network.features``."""
    if network is None:
        return vgg.features(params, image, layers, pooling=pooling, padding=padding, precision=precision)
    return network.features(params, image, layers)


_STATIC = ("layers", "network", "pooling", "padding", "precision")
_features_jit = jax.jit(network_features, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _grams_jit(params, image, layers, network, pooling, padding, precision):
    """Gram matrices of one style image in one program (not one per layer: each costs start-up time)."""
    feats = network_features(params, image, layers, network, pooling=pooling, padding=padding, precision=precision)
    return {layer: losses.gram(f) for layer, f in feats.items()}


def _jit_features(params, image, layers, config: StyleConfig, grams: bool = False, network=None):
    """Target features (or their Gram matrices), computed in the same arithmetic as the objective's."""
    return (_grams_jit if grams else _features_jit)(
        params, image, layers=layers, network=network, pooling=config.pooling, padding=config.padding,
        precision=config.precision,
    )  # fmt: skip


def check_network(config: StyleConfig, network: FeatureNetwork | None) -> None:
    """``config.network`` and ``network`` agree, and the config's layers are the network's."""
    if network is None and config.network == "custom":
        raise ValueError(
            "`config.network` is 'custom' but no `network` was given: pass network=nst_jax.network.from_flax(module)"
        )
    if network is not None:
        if not isinstance(network, FeatureNetwork):
            raise TypeError(f"`network` must be an nst_jax.network.FeatureNetwork, got {type(network).__name__}")
        if config.network != "custom":
            raise ValueError("`network` is given but `config.network` is 'vgg': use StyleConfig(network='custom', ...)")
        network.check_layers("content_layers", config.content_layers)
        network.check_layers("style_layers", config.style_layers)


def make_objective(
    params: Mapping,
    content: jax.Array | None,
    style: jax.Array | Sequence[jax.Array | None] | None,
    config: StyleConfig = StyleConfig(),
    *,
    masks: jax.Array | None = None,
    style_masks: Sequence[jax.Array | None] | None = None,
    network: FeatureNetwork | None = None,
    size: int | None = None,
) -> Objective:
    """Computes the targets once and returns the pure objective.

    Args:
      params: VGG-19 parameters (:func:`nst_jax.load_params`).
      content: the content image ``[h, w, 3]`` in [0, 1], or ``None`` for no content loss.
      style: the style image ``[h', w', 3]`` in [0, 1] (any size), a sequence of style images
        (their Gram targets are mixed by ``config.style_blend``, equal weights by default), or
        ``None`` for no style loss.
      config: layers, weights, pooling and padding (other fields are ignored).
      masks: ``[R, h, w]`` region masks of the output (spatial control): region r takes its
        style from ``style[r]`` (a sequence of R images; ``None`` entries leave a region
        without style), through guided Gram matrices.
      style_masks: optional sequence of R ``[h', w']`` masks choosing the part of each style
        image its Gram matrices come from (``None``: the whole image).
      network: a :class:`~nst_jax.network.FeatureNetwork` (e.g. ``network.from_flax(module)``)
        whose parameters ``params`` are, with ``config.network == "custom"``; ``None``: VGG.
      size: the long side of the picture to be optimised, which the default per-layer weights
        follow (:func:`default_layer_weights`); default: the content's. Without content and
        without ``size`` (a texture), the weights as at 512 px at every size.

    Returns:
      An :class:`Objective`; ``objective(image)`` is pure, jit-compatible,
      differentiable and vmappable over the image (and over its own leaves).

    References:
      Gatys, Ecker, Bethge, "Image Style Transfer Using Convolutional Neural Networks", CVPR 2016, eqs. 1-7.
    """
    check_network(config, network)
    content_layers = config.content_layers if content is not None else ()
    style_layers = config.style_layers if style is not None else ()
    if not content_layers and not style_layers:
        raise ValueError("`content` and `style` are both None (or have no layers): there is nothing to match")
    content_targets: dict[str, jax.Array] = {}
    style_targets: dict[str, jax.Array] = {}
    if size is None and content is not None and content_layers:
        size = max(jnp.shape(content)[:2])
    # Without content and without ``size`` (a texture) the weights stay as at 512 px: the
    # weights follow the size to keep the deep layers from repainting the content's layout, and
    # a texture has none to keep (not measured with shifted weights). A caller whose content
    # comes later (perceptual_loss) passes ``size``.
    content_weights = None
    if content_layers:
        image = _check_image("content", content)
        content_targets = dict(_jit_features(params, image, content_layers, config, network=network))
        if config.flat_content_weight != 1 and style_layers:  # it makes room for the style: none, no room
            flat = flatness(image, config.flat_fraction)
            content_weights = flat_weights(flat, content_targets, config.flat_content_weight)
    if style_layers and masks is not None:
        shape = content.shape[:2] if content is not None else masks.shape[1:]
        objective = _with_masks(
            params, content_targets, style, masks, style_masks, shape, style_layers, config, network, size
        )
        return objective.replace(content_weights=content_weights)
    if style_layers:
        styles = as_images(style)
        blend = _blend_weights(config.style_blend, len(styles))
        for i, (image, weight) in enumerate(zip(styles, blend, strict=True)):
            argument = "style" if len(styles) == 1 else f"style[{i}]"
            grams = _jit_features(params, _check_image(argument, image), style_layers, config, True, network)
            for layer in style_layers:
                gram = grams[layer] if len(styles) == 1 else weight * grams[layer]
                style_targets[layer] = gram if i == 0 else style_targets[layer] + gram
    objective = _assemble(params, content_targets, style_targets, style_layers, config, network, size)
    return objective.replace(content_weights=content_weights)


def flat_weights(flat: jax.Array, content_targets: Mapping, flat_content_weight: float) -> dict:
    """Each content layer's ``[h_l, w_l]`` position weights: ``flat_content_weight`` where the
    content is flat (``flat``, :func:`nst_jax.image.flatness` of it), 1 elsewhere, area-averaged
    to the layer, then divided by their mean.

    Departure (beside the weights themselves): the mean of 1 keeps the content term's total weight
    the paper's, moved from the flat regions to the rest. Without it the term lost a third of its
    weight at the defaults, and Seated Nude's 512 px content distance rose over the classic
    output's (0.858 against 0.831; with it 0.823): docs/loss.md, "Flat regions".
    """
    low = jnp.float32(flat_content_weight)
    weights = {
        layer: 1.0 - (1.0 - low) * layer_mask(flat, tuple(t.shape[-3:-1])) for layer, t in content_targets.items()
    }
    return {layer: w / jnp.mean(w) for layer, w in weights.items()}


def _assemble(params, content_targets, style_targets, style_layers, config, network=None, size=None) -> Objective:
    layer_weights = config.layer_weights or default_layer_weights(style_layers, config.loss_scale, network, size)
    scalar = lambda x: jnp.asarray(x, jnp.float32)
    return Objective(
        params=params,
        content_targets=content_targets,
        style_targets=style_targets,
        content_weight=scalar(config.content_weight),
        style_weight=scalar(config.style_weight),
        layer_weights={layer: scalar(w) for layer, w in zip(style_layers, layer_weights, strict=True)},
        tv_weight=scalar(config.tv_weight),
        box_weight=scalar(config.box_weight if config.box == "penalty" else 0.0),
        loss_scale=config.loss_scale,
        pooling=config.pooling,
        padding=config.padding,
        precision=config.precision,
        network=network,
    )


def _with_masks(
    params, content_targets, style, masks, style_masks, shape, style_layers, config, network, size
) -> Objective:
    """The objective with one guided Gram target per region (Gatys et al. CVPR 2017, section 4)."""
    masks = jnp.asarray(masks, jnp.float32)
    styles = as_images(style)
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(shape):
        raise ValueError(f"`masks` must be [regions, {shape[0]}, {shape[1]}] (the output's size), got {masks.shape}")
    if len(styles) != masks.shape[0]:
        raise ValueError(f"`masks` has {masks.shape[0]} regions for {len(styles)} style images: give one per region")
    if config.style_blend is not None:
        raise ValueError("`style_blend` cannot be combined with `masks`: each region has its own style")
    style_masks = [None] * len(styles) if style_masks is None else list(style_masks)
    if len(style_masks) != len(styles):
        raise ValueError(f"`style_masks` has {len(style_masks)} masks for {len(styles)} style images")
    probe = jax.eval_shape(
        lambda x: _jit_features(params, x, style_layers, config, network=network),
        jax.ShapeDtypeStruct((*shape, 3), jnp.float32),
    )
    output_masks = {layer: jnp.stack([layer_mask(m, probe[layer].shape[:2]) for m in masks]) for layer in style_layers}
    targets: dict[str, list[jax.Array]] = {layer: [] for layer in style_layers}
    for i, (image, mask) in enumerate(zip(styles, style_masks, strict=True)):
        if image is None:
            for layer in style_layers:
                channels = probe[layer].shape[-1]
                targets[layer].append(jnp.zeros((channels, channels), jnp.float32))
            continue
        image = _check_image(f"style[{i}]", image)
        feats = _jit_features(params, image, style_layers, config, network=network)
        for layer in style_layers:
            guide = jnp.ones(feats[layer].shape[:2]) if mask is None else layer_mask(mask, feats[layer].shape[:2])
            targets[layer].append(losses.masked_gram(feats[layer], guide))
    area = masks.reshape(masks.shape[0], -1).mean(axis=1)
    styled = jnp.asarray([image is not None for image in styles], jnp.float32)
    stacked = {k: jnp.stack(v) for k, v in targets.items()}
    base = _assemble(params, content_targets, stacked, style_layers, config, network, size)
    return base.replace(style_masks=output_masks, region_weights=area * styled)


def anchor_thumbnail(picture: jax.Array | np.ndarray) -> jax.Array:
    """The thumbnail of ``picture`` (long side ``ANCHOR_SIZE``, its aspect ratio) that an anchor keeps.

    ``picture`` is ``[h, w, 3]`` or a batch ``[B, h, w, 3]`` (one per sweep member).
    """
    picture = jnp.asarray(picture, jnp.float32)
    shape = fit_long_side(picture.shape[-3:-1], ANCHOR_SIZE)
    return resize(picture, shape) if picture.ndim == 3 else jnp.stack([resize(p, shape) for p in picture])


def with_anchor(objective: Objective, thumbnail: jax.Array, weight: float) -> Objective:
    """``objective`` plus ``weight`` times :func:`~nst_jax.losses.anchor_loss` from ``thumbnail``.

    With :func:`anchor_thumbnail` of a picture, the optimised image keeps that picture's
    composition and is free in its finer detail.
    """
    return objective.replace(anchor=jnp.asarray(thumbnail, jnp.float32), anchor_weight=jnp.asarray(weight, jnp.float32))


def _blend_weights(blend, count: int) -> list[float]:
    """Normalised blend weights for ``count`` style images (equal by default)."""
    if count == 0:
        raise ValueError("`style` is an empty sequence: give one or more style images, or None")
    if blend is None:
        return [1.0 / count] * count
    if len(blend) != count:
        raise ValueError(f"`style_blend` has {len(blend)} weights for {count} style images: give one per style")
    total = sum(blend)
    return [w / total for w in blend]


def _spatial_size(layer: str, height: int, width: int) -> int:
    """Positions M_l of a layer's feature map for an input of ``height x width`` (VALID pooling floors)."""
    for name in vgg.LAYERS[: vgg.LAYERS.index(layer) + 1]:
        if name.startswith("pool"):
            height, width = height // 2, width // 2
    return height * width


def target_mean_squares(objective: Objective) -> dict[str, jax.Array]:
    """Each target's mean square, keyed like the loss terms (``"content/relu4_2"``, ``"style/relu1_1"``, ...).

    With ``loss_scale="relative"`` each term is divided by these (see :func:`paper_weights`).
    A leading batch axis on the style targets (a sweep's) gives one value per member.
    """
    content = {f"content/{k}": jnp.mean(jnp.square(v)) for k, v in objective.content_targets.items()}
    style = {f"style/{k}": jnp.mean(jnp.square(v), axis=(-2, -1)) for k, v in objective.style_targets.items()}
    return {**content, **style}


def paper_weights(
    config: StyleConfig, height: int, width: int, mean_squares: Mapping[str, float | jax.Array] | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """The paper's alpha and beta * w_l that give exactly this config's loss at this image size.

    The paper writes ``alpha * 1/2 sum (F - P)^2 + beta * sum_l w_l / (4 N_l^2 M_l^2) sum (G_l - A_l)^2``
    with unnormalised Gram matrices; ours uses means and Gram/M (see :mod:`nst_jax.losses`), so
    ``alpha_c = 2 * content_weight / (N_c M_c)`` per content layer and
    ``beta * w_l = 4 * style_weight * layer_weight_l``, each divided by its target's mean
    square with ``loss_scale="relative"`` (then ``mean_squares``, from
    :func:`target_mean_squares`, is needed: the weights depend on the images).

    Returns:
      ``({content layer: alpha}, {style layer: beta * w_l})``.
    """
    if config.loss_scale == "relative" and mean_squares is None:
        raise ValueError("`mean_squares` is needed with loss_scale 'relative' (see target_mean_squares)")
    relative = config.loss_scale == "relative" and mean_squares is not None
    divide = lambda term: float(mean_squares[term]) if relative and mean_squares is not None else 1.0
    with_content = mean_squares is None or any(k.startswith("content/") for k in mean_squares)  # textures: 512 px
    layer_weights = config.layer_weights or default_layer_weights(
        config.style_layers, config.loss_scale, size=max(height, width) if with_content else None
    )
    alpha = {
        layer: 2.0
        * config.content_weight
        / (_channels(layer) * _spatial_size(layer, height, width))
        / divide(f"content/{layer}")
        for layer in config.content_layers
    }
    beta = {
        layer: 4.0 * config.style_weight * weight / divide(f"style/{layer}")
        for layer, weight in zip(config.style_layers, layer_weights, strict=True)
    }
    return alpha, beta
