"""Fixture weight files in each foreign format, written from the formats' public structure.

Each writer takes the same random VGG-19 (``random_convs``: 16 ``(OIHW kernel, bias)``) and
stores it the way that format does; :func:`reference_features` is a numpy forward pass in
the *source's* own conventions (its layout and its input preprocessing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch_files

from nst_jax import vgg

CONVS = tuple(vgg.CONV_CHANNELS)  # conv1_1 .. conv5_4
TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
TORCHVISION16_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision's vgg16 `features`
BLOCKS = {name: (int(name[4]), int(name[6])) for name in CONVS}


def conv_names(convs) -> tuple[str, ...]:
    """conv1_1.. of the VGG these convolutions make: 13 are a VGG-16, else a VGG-19 (or a broken one)."""
    return tuple(vgg.conv_channels(16 if len(convs) == 13 else 19))


def _ends_block(name: str, names: tuple[str, ...]) -> bool:
    i = names.index(name)
    return i == len(names) - 1 or names[i + 1][4] != name[4]


IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def random_convs(rng, input_scale=1.0, depth=19) -> list[tuple[np.ndarray, np.ndarray]]:
    """He-scaled random VGG-``depth`` convolutions (OIHW, float32); ``input_scale`` damps conv1_1 for 0..255 inputs."""
    convs, channels = [], 3
    for name, out in vgg.conv_channels(depth).items():
        kernel = rng.normal(0, np.sqrt(2.0 / (9 * channels)), (out, channels, 3, 3))
        if name == "conv1_1":
            kernel = kernel * input_scale
        convs.append((kernel.astype(np.float32), rng.normal(0, 0.05, out).astype(np.float32)))
        channels = out
    return convs


def reference_features(convs, image_rgb01, source: str, layers=("relu1_1", "relu2_1", "relu3_1", "relu5_1")):
    """Forward pass of the original network in float64, with the source's preprocessing and max pooling."""
    x = image_rgb01.astype(np.float64)
    if source == "torchvision":
        x = (x - IMAGENET_MEAN) / IMAGENET_STD
    elif source in ("caffe", "keras"):
        x = x[..., ::-1] * 255.0 - CAFFE_MEAN_BGR
    elif source == "matconvnet":
        x = x * 255.0 - CAFFE_MEAN_BGR[::-1]
    out, index = {}, 0
    names = vgg.layers_of(16 if len(convs) == 13 else 19)
    for name in names[: max(names.index(layer) for layer in layers) + 1]:
        if name.startswith("conv"):
            kernel, bias = convs[index]
            index += 1
            xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
            h, w = x.shape[:2]
            y = np.zeros((h, w, kernel.shape[0]))
            for i in range(3):
                for j in range(3):
                    y += xp[i : i + h, j : j + w] @ kernel[:, :, i, j].T.astype(np.float64)
            x = y + bias
        elif name.startswith("relu"):
            x = np.maximum(x, 0)
        else:
            h, w, c = x.shape
            x = x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).max((1, 3))
        if name in layers:
            out[name] = x
    return out


def write_torchvision(path, convs, rng, zip_format=True):
    state = {}
    indices = TORCHVISION16_INDICES if len(convs) == 13 else TORCHVISION_INDICES
    for index, (kernel, bias) in zip(indices, convs, strict=False):
        state[f"features.{index}.weight"] = kernel
        state[f"features.{index}.bias"] = bias
    state["classifier.0.weight"] = rng.normal(size=(8, 16)).astype(np.float32)  # shrunk classifier
    state["classifier.0.bias"] = np.zeros(8, np.float32)
    (torch_files.save_zip if zip_format else torch_files.save_legacy)(path, state)
    return state


# ---- protobuf wire format (Caffe) ----
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | int | str) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(array: np.ndarray, legacy: bool) -> bytes:
    data = _field(5, array.astype("<f4").tobytes())
    if legacy:  # num/channels/height/width, biases as (1, 1, 1, n)
        dims = array.shape if array.ndim == 4 else (1, 1, 1, array.size)
        return b"".join(_field(i + 1, d) for i, d in enumerate(dims)) + data
    return _field(7, _field(1, b"".join(_varint(d) for d in array.shape))) + data


def write_caffemodel(path, convs, version: int = 2):
    """A NetParameter with V2 ``layer`` (100) or V1 ``layers`` (2) messages, conv/relu/pool/fc as in VGG."""
    messages = []

    def layer(name, kind, blobs=()):
        if version == 2:
            body = _field(1, name) + _field(2, kind[0]) + b"".join(_field(7, _blob(b, False)) for b in blobs)
            messages.append(_field(100, body))
        else:
            body = _field(4, name) + _field(5, kind[1]) + b"".join(_field(6, _blob(b, True)) for b in blobs)
            messages.append(_field(2, body))

    names = conv_names(convs)
    for name, (kernel, bias) in zip(names, convs, strict=False):
        layer(name, ("Convolution", 4), (kernel, bias))
        layer(name.replace("conv", "relu"), ("ReLU", 18))
        if _ends_block(name, names):
            layer(f"pool{name[4]}", ("Pooling", 17))
    layer("fc6", ("InnerProduct", 14), (np.ones((4, 6), np.float32), np.zeros(4, np.float32)))
    with open(path, "wb") as f:
        f.write(_field(1, "VGG_ILSVRC_19_layers") + b"".join(messages))


def write_keras_h5(path, convs, keras1_names=False):
    import h5py

    with h5py.File(path, "w") as f:
        names = ["input_1"]
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        conv_list = conv_names(convs)
        for name, (kernel, bias) in zip(conv_list, convs, strict=False):
            block, index = BLOCKS[name]
            layer = f"block{block}_conv{index}"
            group = f.create_group(layer)
            weight_names = (
                [f"{layer}_W_1:0", f"{layer}_b_1:0"] if keras1_names else [f"{layer}/kernel:0", f"{layer}/bias:0"]
            )
            group.attrs["weight_names"] = np.array([n.encode() for n in weight_names])
            group[weight_names[0]] = kernel.transpose(2, 3, 1, 0)  # Keras kernels are HWIO
            group[weight_names[1]] = bias
            names.append(layer)
            if _ends_block(name, conv_list):
                f.create_group(f"block{block}_pool").attrs["weight_names"] = np.array([], dtype="S1")
                names.append(f"block{block}_pool")
        fc = f.create_group("fc1")
        fc.attrs["weight_names"] = np.array([b"fc1/kernel:0", b"fc1/bias:0"])
        fc["fc1/kernel:0"] = np.ones((6, 4), np.float32)
        fc["fc1/bias:0"] = np.zeros(4, np.float32)
        names.append("fc1")
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.attrs["backend"] = b"tensorflow"


def write_matconvnet(path, convs, old_layout=False):
    import scipy.io

    layers = []
    for name, (kernel, bias) in zip(conv_names(convs), convs, strict=False):
        weights = np.empty((1, 2), dtype=object)
        weights[0, 0], weights[0, 1] = kernel.transpose(2, 3, 1, 0), bias.reshape(-1, 1)  # FH x FW x C x K
        layers.append({"name": name, "type": "conv", "weights": weights, "stride": [1, 1], "pad": [1, 1, 1, 1]})
        layers.append({"name": name.replace("conv", "relu"), "type": "relu"})
    fc = np.empty((1, 2), dtype=object)
    fc[0, 0], fc[0, 1] = np.ones((7, 7, 512, 4), np.float32), np.zeros((4, 1), np.float32)
    layers.append({"name": "fc6", "type": "conv", "weights": fc})
    cells = np.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cells[0, i] = layer
    average = np.broadcast_to(CAFFE_MEAN_BGR[::-1], (4, 4, 3)).astype(np.float32)
    normalization = {"averageImage": average, "imageSize": [224, 224, 3]}
    data = {"layers": cells}
    if old_layout:
        data["normalization"] = normalization
    else:
        data["meta"] = {"normalization": normalization}
    scipy.io.savemat(path, data)


def truncate(path, keep: float = 0.5):
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: int(len(raw) * keep)])
