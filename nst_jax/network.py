"""Any feature network for the losses: the small interface they need, and a user's Flax module as one.

The losses need four things of a network: its layer names (in network order), each layer's
channels, how much smaller than the input each layer's maps are (for the smallest image
it can take), and how to apply it to images. VGG-19 and VGG-16 are built in
(:func:`nst_jax.vgg.features`, chosen by the parameters' layer names); :func:`from_flax`
turns any Flax module that maps ``[N, h, w, 3]`` RGB images in [0, 1] to a dict of
``[N, h', w', c]`` feature maps into a :class:`FeatureNetwork`, which ``make_objective``,
``stylize``, ``sweep`` and ``perceptual_loss`` take as ``network=`` (with
``StyleConfig(network="custom", style_layers=..., content_layers=...)`` naming its layers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureNetwork:
    """A feature network: what the losses need to know of it.

    Hashable by identity, so it can be a static argument of ``jax.jit`` (one compiled
    program per network object, as per function).
    """

    name: str  # for messages
    layers: tuple[str, ...]  # every layer `apply` returns, in network order
    channels: Mapping[str, int]  # output channels of each layer
    strides: Mapping[str, int]  # each layer's maps are about 1/stride of the input's side
    apply: Callable[[Any, jax.Array], Mapping[str, jax.Array]]  # (params, [N, h, w, 3]) -> {layer: [N, h', w', c]}
    input: str = "RGB in [0, 1], [N, height, width, 3]"  # the input convention `apply` expects

    def check_layers(self, argument: str, layers: Sequence[str] | str) -> tuple[str, ...]:
        """``layers`` as a tuple (a single name is one layer); raises naming ``argument`` for an unknown one."""
        layers = (layers,) if isinstance(layers, str) else tuple(layers)
        for layer in layers:
            if layer not in self.layers:
                raise ValueError(
                    f"`{argument}` has {layer!r}, which network {self.name!r} does not have; its layers are "
                    f"{', '.join(self.layers)}"
                )
        return layers

    def min_side(self, layers: Sequence[str]) -> int:
        """The smallest image side whose maps at ``layers`` are at least 1 x 1."""
        return max((self.strides[layer] for layer in layers), default=1)

    def features(self, params: Any, image: jax.Array, layers: Sequence[str] | str) -> dict[str, jax.Array]:
        """Feature maps of ``[..., h, w, 3]`` images at ``layers`` (the leading axes kept), as vgg.features."""
        layers = self.check_layers("layers", layers)
        image = jnp.asarray(image)
        if image.ndim < 3 or image.shape[-1] != 3:
            raise ValueError(f"`image` must have shape [..., height, width, 3], got {image.shape}")
        batch = image.shape[:-3]
        out = self.apply(params, image.reshape(-1, *image.shape[-3:]))
        missing = [layer for layer in layers if layer not in out]
        if missing:
            raise ValueError(f"network {self.name!r} returned no {missing[0]!r} (it returned {', '.join(out)})")
        return {layer: out[layer].reshape(*batch, *out[layer].shape[1:]) for layer in layers}


def from_flax(module: Any, *, name: str | None = None, probe: tuple[int, int] = (64, 64)) -> FeatureNetwork:
    """A :class:`FeatureNetwork` of a Flax module (linen) ``module(images) -> {layer: maps}``.

    The module takes ``[N, h, w, 3]`` RGB images in [0, 1] (fold any preprocessing into it)
    and returns a dict of ``[N, h', w', c]`` feature maps; its parameters are the
    ``"params"`` collection (``variables["params"]``), which is what ``params=`` takes.
    Layer names, channels and strides are read from ``jax.eval_shape`` of the module on a
    ``probe``-sized image (nothing is computed).
    """
    apply = lambda params, images: module.apply({"params": params}, images)
    shapes = jax.eval_shape(
        lambda x: module.init_with_output(jax.random.key(0), x)[0], jax.ShapeDtypeStruct((1, *probe, 3), jnp.float32)
    )
    if not isinstance(shapes, Mapping) or not shapes:
        raise ValueError(f"`module` must return a dict of feature maps, got {type(shapes).__name__}")
    for layer, shape in shapes.items():
        if len(shape.shape) != 4 or shape.shape[0] != 1:
            raise ValueError(f"`module` returned {layer!r} of shape {shape.shape}; feature maps are [N, h, w, c]")
    return FeatureNetwork(
        name=name or type(module).__name__,
        layers=tuple(shapes),
        channels={layer: int(shape.shape[-1]) for layer, shape in shapes.items()},
        strides={layer: max(1, probe[0] // max(1, shape.shape[1])) for layer, shape in shapes.items()},
        apply=apply,
    )
