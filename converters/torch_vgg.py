"""PyTorch VGG-19 state dicts: the normalised ``nn.Sequential`` layout and torchvision's ``vgg19``.

Both are read with the restricted unpickler of :mod:`nst_jax.converters.torch_pickle`
(the only pickle path: a weight file can never run code).
"""

from __future__ import annotations

import re

import numpy as np

from nst_jax.converters.common import assemble, log, torchvision_preprocess

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
