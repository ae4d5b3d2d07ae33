"""The VGG-19 of Gatys et al. in Flax and a pure ``features(params, image, layers)``.

Array conventions (said once for the whole package): images are float32
``[height, width, 3]`` RGB in ``[0, 1]``. :func:`features` and
:func:`nst_jax.losses.gram` also take any leading batch axes (``[B, h, w, 3]``);
the objective and the per-image losses take one image (batch them with ``jax.vmap``,
or use :mod:`nst_jax.perceptual` for training losses over a batch). The network's own input space (for the default
weights: mean-subtracted BGR in 0..255) never leaves this module: a leading 1x1
convolution named ``preprocess`` maps RGB [0, 1] into it, so every weight set
carries its own preprocessing and nothing else has to know about it.

Parameters are a plain pytree ``{"preprocess": {"kernel", "bias"}, "conv1_1":
..., "conv5_4": ...}`` with kernels in HWIO layout.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from nst_jax.checks import check_choice  # its home since the move (vgg.check_choice still works)

# (block, number of convolutions, channels) of VGG-19 (configuration E) and VGG-16 (D).
_BLOCKS = {
    19: ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512)),
    16: ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)),
}
DEPTHS = tuple(_BLOCKS)  # the VGG variants the model builds: 19 (the paper's) and 16


def conv_channels(depth: int = 19) -> dict[str, int]:
    """Output channels of each 3x3 convolution of VGG-``depth``, in network order."""
    check_choice("depth", depth, DEPTHS)
    return {f"conv{b}_{i}": channels for b, n, channels in _BLOCKS[depth] for i in range(1, n + 1)}


def layers_of(depth: int = 19) -> tuple[str, ...]:
    """Every layer of VGG-``depth`` whose output :func:`features` can return, in network order."""
    check_choice("depth", depth, DEPTHS)
    return tuple(
        name
        for b, n, _ in _BLOCKS[depth]
        for name in (*(f"{kind}{b}_{i}" for i in range(1, n + 1) for kind in ("conv", "relu")), f"pool{b}")
    )


def depth_of(params: Mapping) -> int:
    """19 or 16: which VGG a parameter tree is, from its layer names.

    19 when it has one of VGG-19's own convolutions (conv3_4, conv4_4, conv5_4) or lacks
    conv5_3 (a tree of the first layers only is the same in both); else 16.
    """
    if any(name in params for name in ("conv3_4", "conv4_4", "conv5_4")) or "conv5_3" not in params:
        return 19
    return 16


CONV_CHANNELS: dict[str, int] = conv_channels(19)
"""Output channels of each 3x3 convolution of VGG-19, in network order (VGG-16: :func:`conv_channels`)."""

LAYERS: tuple[str, ...] = layers_of(19)
"""Every layer whose output ``features`` can return, in network order (VGG-19's; VGG-16 has a subset).

``convB_I`` is the convolution's output before rectification, ``reluB_I`` after.
The paper's "conv4_2" means the rectified response, which is ``relu4_2`` here.
"""


def block_of(layer: str) -> int:
    """The VGG block a layer belongs to (1-based): ``conv3_2``, ``relu3_1`` and ``pool3`` -> 3."""
    return int(layer[len(layer.rstrip("0123456789_")) :].split("_")[0])


def min_side(layers: Sequence[str]) -> int:
    """The smallest image side (pixels) whose feature maps at ``layers`` are at least 1 x 1.

    Each 2x2 pooling halves the side (rounding down); ``reluB_I`` comes after B-1 poolings,
    ``poolB`` after B.
    """
    poolings = 0
    for layer in layers:
        block = block_of(layer)
        poolings = max(poolings, block if layer.startswith("pool") else block - 1)
    return 2**poolings


POOLINGS = ("avg", "max", "mixed")
PADDINGS = ("zeros", "reflect", "circular")  # circular: the image wraps around (seamless tiles)
# Arithmetic of the convolutions (Gram matrices and losses are always float32):
# highest: float32 everywhere; tf32: lax.Precision.HIGH (TensorFloat-32 on NVIDIA GPUs,
# bf16x3 on TPUs, float32 on CPUs); bf16: bfloat16 activations and weights with float32
# accumulation and float32 outputs.
PRECISIONS = ("highest", "tf32", "bf16")


def check_layers(argument: str, layers: Sequence[str]) -> tuple[str, ...]:
    """Returns ``layers`` as a tuple; raises naming ``argument`` if a name is unknown."""
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    for layer in layers:
        if layer not in LAYERS:
            raise ValueError(f"`{argument}` has unknown layer {layer!r}; valid layers are {', '.join(LAYERS)}")
    return layers


def _arithmetic(precision: str, *operands: jax.Array) -> tuple[dict, tuple[jax.Array, ...]]:
    """``precision``/``preferred_element_type`` keywords of a conv or matmul, and its operands cast for it."""
    if precision == "bf16":
        return {"preferred_element_type": jnp.float32}, tuple(a.astype(jnp.bfloat16) for a in operands)
    level = jax.lax.Precision.HIGH if precision == "tf32" else jax.lax.Precision.HIGHEST
    return {"precision": level}, operands


def _conv(x: jax.Array, kernel: jax.Array, padding, precision: str = "highest", kernel_layout="HWIO") -> jax.Array:
    keywords, (x, kernel) = _arithmetic(precision, x, kernel)
    dims = ("NHWC", kernel_layout, "NHWC")
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=dims, **keywords)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv2d(
    x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], tuple[int, int]], precision: str = "highest"
) -> jax.Array:
    """Stride-1 NHWC/HWIO convolution whose input gradient stays on XLA:CPU's fast path.

    Numerically the same as ``lax.conv_general_dilated``, with the same derivatives in
    both modes (``grad``, ``jvp``, ``linearize``, ``jacfwd``, ``hessian``). Why a custom
    JVP: JAX's input gradient of a convolution is a convolution labelled with the kernel's
    in/out axes swapped (HWOI), and XLA:CPU runs that one outside its fast convolution
    library; inside the optimiser's ``while_loop`` a whole L-BFGS step then took 2.1-2.6x
    as long (``scripts/bench_autodiff.py``). The JVP below writes the tangent with the
    kernel stored ``[h, w, out, in]`` and labelled HWOI, so that JAX's transposition of it
    (the input gradient) comes out labelled HWIO: the fast path. Forward-mode tangents
    take the HWOI convolution instead (a JVP of the whole objective at 256 px measured
    from 15% slower to 37% faster than plain JAX's in three runs: no reliable difference).
    ``precision`` is one of :data:`PRECISIONS` (for bf16 see :func:`_tangent_conv`).
    """
    return _conv(x, kernel, padding, precision)


def _tangent_conv(x, kernel, padding, precision, kernel_layout="HWIO"):
    """A convolution inside the JVP, linear in either operand, whose transposition JAX can do.

    For ``"bf16"`` it takes bfloat16 operands to a bfloat16 result, cast to float32 after:
    JAX transposes a convolution with a ``preferred_element_type`` by mixing a float32
    cotangent with bfloat16 operands (an error in jax 0.4.30; in later versions the backward
    convolution is done in float32). Departure from the forward pass's arithmetic: the
    derivatives' convolutions round their outputs to bfloat16 (relative 2^-9; the inputs'
    rounding is of the same size).
    """
    if precision != "bf16":
        return _conv(x, kernel, padding, precision, kernel_layout)
    dims = ("NHWC", kernel_layout, "NHWC")
    x, kernel = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=dims).astype(jnp.float32)


def _conv2d_jvp(padding, precision, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    out = _conv(x, kernel, padding, precision)
    tangent = jnp.zeros_like(out)
    if not isinstance(dx, SymbolicZero):
        tangent = _tangent_conv(dx, kernel.transpose(0, 1, 3, 2), padding, precision, kernel_layout="HWOI")
    if not isinstance(dkernel, SymbolicZero):
        tangent = tangent + _tangent_conv(x, dkernel, padding, precision)
    return out, tangent


conv2d.defjvp(_conv2d_jvp, symbolic_zeros=True)


def _line_conv(v: jax.Array, taps: jax.Array, mode: str, precision: str) -> jax.Array:
    """A 3-tap convolution along axis 1 of ``v`` [n, length, c] with ``taps`` [3, c, o], padded by ``mode``."""
    length = v.shape[1]
    padded = jnp.pad(v, ((0, 0), (1, 1), (0, 0)), mode=mode)
    shifted = jnp.concatenate([padded[:, i : i + length] for i in range(3)], axis=-1)
    keywords, (shifted, taps) = _arithmetic(precision, shifted, taps.reshape(-1, taps.shape[-1]))
    return jnp.matmul(shifted, taps, **keywords)


def padded_conv3x3(x: jax.Array, kernel: jax.Array, padding: str, precision: str = "highest") -> jax.Array:
    """A 'same' 3x3 convolution of ``x`` [n, h, w, c] whose border is padded by ``padding``.

    ``"reflect"`` and ``"circular"`` are computed as the zero-padded convolution plus the
    convolution of the one-pixel ring by which the padded input differs from the
    zero-padded one (four thin strips: rows 0 and h-1, columns 0 and w-1 of the output).
    Why: XLA:CPU runs a convolution without its own padding (``jnp.pad`` then a
    'valid' convolution) about 3x slower than a padded one, which made reflect padding
    cost 1.9x per evaluation; the strips cost 2% at 512 px, 10% at 256 px (measured).
    They lengthen the first compilation (4.6 s instead of 1.5 s at 512 px; cached after).
    """
    same = ((1, 1), (1, 1))
    h, w = x.shape[1:3]
    if padding == "zeros":
        return conv2d(x, kernel, same, precision)
    mode = "reflect" if padding == "reflect" else "wrap"
    if min(h, w) < 2:  # nothing to reflect from: pad explicitly (tiny maps only)
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=mode)
        return conv2d(padded, kernel, same, precision)[:, 1:-1, 1:-1]
    top, bottom = (1, h - 2) if mode == "reflect" else (h - 1, 0)  # rows that padding puts above/below
    left, right = (1, w - 2) if mode == "reflect" else (w - 1, 0)
    out = conv2d(x, kernel, same, precision)
    # The padded rows (corners included) feed output rows 0 and h-1 through kernel rows 0 and 2...
    out = out.at[:, 0].add(_line_conv(x[:, top], kernel[0], mode, precision))
    out = out.at[:, -1].add(_line_conv(x[:, bottom], kernel[2], mode, precision))
    # ...and the padded columns (corners excluded: counted above) feed columns 0 and w-1.
    out = out.at[:, :, 0].add(_line_conv(x[:, :, left], kernel[:, 0], "constant", precision))
    return out.at[:, :, -1].add(_line_conv(x[:, :, right], kernel[:, 2], "constant", precision))


class _Conv(nn.Module):
    """A convolution with ``kernel`` (HWIO) and ``bias`` parameters, as ``nn.Conv`` names them."""

    features: int
    size: int
    padding: str = "zeros"
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (self.size, self.size, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.size == 1:
            return conv2d(x, kernel, ((0, 0), (0, 0)), self.precision) + bias
        return padded_conv3x3(x, kernel, self.padding, self.precision) + bias


class VGG19(nn.Module):
    """VGG-19 feature extractor (no classifier): ``[..., h, w, 3]`` images in, a dict of features out.

    Attributes:
      depth: 19 (the paper's network) or 16 (VGG-16: three convolutions in blocks 3-5).
      pooling: ``"avg"`` (the paper: "replacing the max-pooling operation by
        average pooling improves the gradient flow"), ``"max"``, or ``"mixed"`` (the mean of the two).
      padding: ``"zeros"`` (the original network's), ``"reflect"``, or ``"circular"`` (every
        convolution and pooling window wraps around: the image is a seamless tile).
      precision: the convolutions' arithmetic, one of :data:`PRECISIONS`.
    """

    pooling: str = "avg"
    padding: str = "zeros"
    precision: str = "highest"
    depth: int = 19

    @nn.compact
    def __call__(self, image: jax.Array, layers: Sequence[str] | None = None) -> dict[str, jax.Array]:
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("padding", self.padding, PADDINGS)
        check_choice("precision", self.precision, PRECISIONS)
        names = layers_of(self.depth)
        layers = check_layers("layers", names if layers is None else layers)
        for layer in layers:
            if layer not in names:
                raise ValueError(f"`layers` has {layer!r}, which VGG-{self.depth} does not have; its layers are "
                                 f"{', '.join(names)}")  # fmt: skip
        if image.ndim < 3 or image.shape[-1] != 3:
            raise ValueError(f"`image` must have shape [..., height, width, 3], got {image.shape}")
        batch = image.shape[:-3]  # any leading batch axes, folded into the convolutions' N
        preprocess = _Conv(3, 1, precision=self.precision, name="preprocess")
        x = preprocess(image.reshape(-1, *image.shape[-3:]))
        deepest = max(names.index(layer) for layer in layers)
        channels = conv_channels(self.depth)
        out = {}
        for name in names[: deepest + 1]:
            if name.startswith("conv"):
                x = _Conv(channels[name], 3, self.padding, self.precision, name=name)(x)
            elif name.startswith("relu"):
                x = nn.relu(x)
            else:
                if self.padding == "circular":
                    # An odd side wraps its last window around to the first row/column.
                    x = jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)), mode="wrap")
                if self.pooling == "mixed":  # departure: half average, half maximum (docs/loss.md)
                    x = 0.5 * (nn.avg_pool(x, (2, 2), strides=(2, 2)) + nn.max_pool(x, (2, 2), strides=(2, 2)))
                else:
                    pool = nn.avg_pool if self.pooling == "avg" else nn.max_pool
                    x = pool(x, (2, 2), strides=(2, 2))
            if name in layers:
                out[name] = x.reshape(*batch, *x.shape[1:])
        return out


def features(
    params: Mapping,
    image: jax.Array,
    layers: Sequence[str],
    *,
    pooling: str = "avg",
    padding: str = "zeros",
    precision: str = "highest",
) -> dict[str, jax.Array]:
    """Feature maps of an image or a batch, computed only as deep as the deepest requested layer.

    Args:
      params: VGG-19 or VGG-16 parameters (see module docstring; which one, from their layer names).
      image: float32 ``[..., height, width, 3]`` RGB in ``[0, 1]``: one image, or any leading
        batch axes (folded into one batched convolution, the fast way; ``jax.vmap`` does the same).
      layers: names from :data:`LAYERS`.
      pooling: one of :data:`POOLINGS`.
      padding: one of :data:`PADDINGS`.
      precision: one of :data:`PRECISIONS` (outputs are float32 in every case).

    Returns:
      ``{layer: [..., h, w, channels]}`` for each requested layer, with the image's leading axes.
    """
    if isinstance(layers, str):  # one layer, not its letters
        layers = (layers,)
    model = VGG19(pooling=pooling, padding=padding, precision=precision, depth=depth_of(params))
    out: dict[str, jax.Array] = model.apply({"params": params}, image, tuple(layers))  # type: ignore[assignment]
    return out


def param_shapes(depth: int = 19) -> dict[str, dict[str, tuple[int, ...]]]:
    """Expected parameter shapes of VGG-``depth``, from ``jax.eval_shape`` of the model's init."""
    check_choice("depth", depth, DEPTHS)
    return {layer: dict(leaves) for layer, leaves in _param_shapes(depth).items()}  # a copy the caller may change


@functools.cache
def _param_shapes(depth: int) -> dict[str, dict[str, tuple[int, ...]]]:  # tracing the init costs ~0.12 s
    model = VGG19(depth=depth)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((32, 32, 3), jnp.float32))["params"])
    return {layer: {k: tuple(v.shape) for k, v in leaves.items()} for layer, leaves in abstract.items()}


def init_params(key: jax.Array, depth: int = 19) -> dict:
    """Random parameters of VGG-``depth`` (for tests and fixtures, not for stylising)."""
    return VGG19(depth=depth).init(key, jnp.zeros((32, 32, 3), jnp.float32))["params"]


def check_params(params) -> None:
    """Checks names and shapes against ``jax.eval_shape`` of the model, and that every value is finite.

    The model is VGG-19, or VGG-16 when the parameters have none of VGG-19's own
    convolutions (conv3_4, conv4_4, conv5_4).

    Raises:
      ValueError: naming the first missing, unexpected, misshapen or non-finite parameter.
    """
    depth = depth_of(params)
    expected = param_shapes(depth)
    unexpected = [layer for layer in params if layer not in expected]
    if unexpected:
        raise ValueError(f"parameters have unexpected layer {unexpected[0]!r} (VGG-{depth}'s: {', '.join(expected)})")
    for layer, leaves in expected.items():
        if layer not in params:
            raise ValueError(f"parameters lack layer {layer!r} (expected layers: {', '.join(expected)})")
        for leaf, shape in leaves.items():
            if leaf not in params[layer]:
                raise ValueError(f"parameters lack {layer}/{leaf}")
            got = tuple(np.shape(params[layer][leaf]))
            if got != shape:
                raise ValueError(f"{layer}/{leaf} has shape {got}, the model expects {shape}")
            values = np.asarray(params[layer][leaf], np.float32)  # float32 overflow shows as inf here
            if not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                raise ValueError(f"{layer}/{leaf} has {bad} NaN or infinite values (or values beyond float32's range)")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise ValueError(f"parameters have unexpected layer {extra[0]!r}")
