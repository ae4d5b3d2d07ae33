"""PyTorch VGG-19 state dicts: the normalised ``nn.Sequential`` layout and torchvision's ``vgg19``.

Both are read with the restricted unpickler of :mod:`nst_jax.converters.torch_pickle`
(the only pickle path: a weight file can never run code).
"""

from __future__ import annotations

import logging
import re

import numpy as np

from nst_jax import vgg
from nst_jax.converters.common import assemble, log, torchvision_preprocess

# The normalised layout's renaming messages keep the logger they had in nst_jax.weights.
_sequential_log = logging.getLogger("nst_jax.weights")

_TORCHVISION_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")


def is_torchvision(state_dict: dict) -> bool:
    return any(_TORCHVISION_KEY.match(key) for key in state_dict)


def convert_torchvision(state_dict: dict[str, np.ndarray]) -> dict:
    """torchvision ``vgg19`` (``features.N.weight``; input normalised by ImageNet mean/std) -> canonical.

    The mean/std normalisation is folded into ``preprocess``; ``classifier.*`` keys are ignored
    (logged). A ``vgg19_bn`` (batch norm) checkpoint is refused: its convolutions are not VGG-19's.
    """
    if any(key.endswith("running_mean") for key in state_dict):
        raise ValueError("this is a batch-norm VGG (vgg19_bn): its features differ from VGG-19's; use plain vgg19")
    indices = sorted({int(m.group(1)) for key in state_dict if (m := _TORCHVISION_KEY.match(key))})
    ignored = sorted(key for key in state_dict if not _TORCHVISION_KEY.match(key))
    if ignored:
        log.info("ignored %d keys outside `features` (%s, ...)", len(ignored), ignored[0])
    convs = []
    for index in indices:
        weight, bias = f"features.{index}.weight", f"features.{index}.bias"
        if weight not in state_dict or bias not in state_dict:
            raise ValueError(f"`features.{index}` needs both {weight!r} and {bias!r}")
        kernel = np.asarray(state_dict[weight], np.float32)
        if kernel.ndim != 4:
            raise ValueError(f"{weight}: expected a 4-d convolution kernel, got shape {kernel.shape}")
        convs.append((weight, kernel.transpose(2, 3, 1, 0), state_dict[bias]))  # OIHW -> HWIO
    return assemble(convs, torchvision_preprocess())


def _numeric_key(name: str) -> tuple[int, str]:
    head = name.split(".")[0]
    return (int(head), name) if head.isdigit() else (1 << 30, name)


def convert_sequential_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
    """Maps a PyTorch ``nn.Sequential`` VGG-19 state dict of the normalised layout to Flax parameters.

    The layout is that of ``vgg_normalised.pth``: convolution weights under
    numeric keys (``"0.weight"``, ``"2.weight"``, ...), the first a 1x1 conv
    from RGB [0, 1] into the network's input space, then the sixteen 3x3 convs.
    Kernels go from OIHW to HWIO. Every renamed key is logged.

    Raises:
      ValueError: naming the first key or shape that does not fit.
    """
    weights = sorted((k for k in state_dict if k.endswith(".weight")), key=_numeric_key)
    # 17 convolutions: VGG-19; 14: VGG-16 (the same layout, three convolutions fewer).
    depth = 16 if len(weights) == 1 + len(vgg.conv_channels(16)) else 19
    names = ("preprocess", *vgg.conv_channels(depth))
    if len(weights) != len(names):
        raise ValueError(
            f"expected {len(names)} convolution weights (a 1x1 `preprocess` conv, then conv1_1..conv5_4; "
            f"{1 + len(vgg.conv_channels(16))} for a VGG-16), found {len(weights)}: "
            f"{weights[:4]}{'...' if len(weights) > 4 else ''}"
        )
    params = {}
    for key, name in zip(weights, names, strict=True):
        prefix = key[: -len(".weight")]
        kernel = np.asarray(state_dict[key], np.float32)
        bias_key = f"{prefix}.bias"
        if kernel.ndim != 4:
            raise ValueError(f"{key}: expected a 4-d convolution kernel, got shape {kernel.shape}")
        if bias_key not in state_dict:
            raise ValueError(f"{key} has no bias {bias_key!r}")
        params[name] = {
            "kernel": np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)),
            "bias": np.asarray(state_dict[bias_key], np.float32),
        }
        _sequential_log.info("renamed %s, %s -> %s/kernel (OIHW->HWIO), %s/bias", key, bias_key, name, name)
    vgg.check_params(params)
    return params
