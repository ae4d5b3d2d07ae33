import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import weight_files
from conftest import one_line_error, random_image

from nst_jax import vgg
from nst_jax.converters import FORMATS, convert, detect_format
from nst_jax.converters.normalize import mean_activations, normalize_params
from nst_jax.weights import load_params

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu5_1")

# (fixture id, format detected, reference preprocessing, writer)
CASES = {
    "torchvision-zip": ("torchvision", "torchvision", lambda p, c, r: weight_files.write_torchvision(p, c, r)),
    "torchvision-legacy": (
        "torchvision",
        "torchvision",
        lambda p, c, r: weight_files.write_torchvision(p, c, r, zip_format=False),
    ),
    "caffe-v2": ("caffe", "caffe", lambda p, c, r: weight_files.write_caffemodel(p, c, version=2)),
    "caffe-v1": ("caffe", "caffe", lambda p, c, r: weight_files.write_caffemodel(p, c, version=1)),
    "keras": ("keras", "keras", lambda p, c, r: weight_files.write_keras_h5(p, c)),
    "keras1-names": ("keras", "keras", lambda p, c, r: weight_files.write_keras_h5(p, c, keras1_names=True)),
    "matconvnet": ("matconvnet", "matconvnet", lambda p, c, r: weight_files.write_matconvnet(p, c)),
    "matconvnet-beta16": (
        "matconvnet",
        "matconvnet",
        lambda p, c, r: weight_files.write_matconvnet(p, c, old_layout=True),
    ),
}


def _needs(case):
    if case.startswith("keras"):
        pytest.importorskip("h5py")
    if case.startswith("matconvnet"):
        pytest.importorskip("scipy.io")


@pytest.fixture(scope="module")
def convs():
    return weight_files.random_convs(np.random.default_rng(1))


@pytest.fixture(scope="module")
def convs_0_255():
    return weight_files.random_convs(np.random.default_rng(1), input_scale=1 / 100)  # for 0..255 inputs


def _relative_error(got, want):
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


@pytest.mark.parametrize("case", list(CASES))
def test_each_format_converts_to_the_features_of_its_original(tmp_path, case, convs, convs_0_255, rng):
    _needs(case)
    format_name, source, write = CASES[case]
    weights = convs if source == "torchvision" else convs_0_255
    path = tmp_path / "weights.bin"  # the extension never decides the format
    write(path, weights, rng)
    assert detect_format(path) == ("torch" if source == "torchvision" else format_name)
    params, used = convert(path)
    assert used == format_name
    image = random_image(rng, 20, 24)
    got = vgg.features(params, jnp.asarray(image), LAYERS, pooling="max")
    want = weight_files.reference_features(weights, image, source, LAYERS)
    for layer in LAYERS:
        assert np.abs(want[layer]).max() > 0  # not trivially zero
        assert _relative_error(got[layer], want[layer]) < 1e-5, layer


def test_format_override_and_bad_format_name(tmp_path, convs, rng):
    path = tmp_path / "vgg19.pth"
    weight_files.write_torchvision(path, convs, rng)
    assert convert(path, "torchvision")[1] == "torchvision"
    with pytest.raises(ValueError, match=r"`format` must be one of \('torch', 'torchvision', 'caffe'"):
        convert(path, "onnx")


def test_unknown_and_empty_files_are_named(tmp_path):
    unknown, empty = tmp_path / "a.pth", tmp_path / "b.caffemodel"
    unknown.write_bytes(b"\x00\x01garbage" * 10)
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"a.pth: unknown weight format .* `nst-jax convert --format` takes torch"):
        detect_format(unknown)
    with pytest.raises(ValueError, match="empty file"):
        detect_format(empty)


@pytest.mark.parametrize("case", ["caffe-v2", "caffe-v1", "keras", "matconvnet", "torchvision-zip"])
def test_truncated_files_give_one_clear_error(tmp_path, case, convs, rng):
    _needs(case)
    _, _, write = CASES[case]
    path = tmp_path / "w"
    write(path, convs, rng)
    weight_files.truncate(path, 0.6)
    with pytest.raises((ValueError, pickle.UnpicklingError), match="not a readable|truncated|corrupt"):
        convert(path, CASES[case][0])


@pytest.mark.parametrize("case", ["torchvision-zip", "caffe-v2", "caffe-v1", "keras", "keras1-names", "matconvnet"])
def test_vgg16_files_convert_to_the_features_of_their_original(tmp_path, case, rng):
    """torchvision's vgg16, Caffe's VGG_ILSVRC_16_layers and Keras' VGG16 layouts: 13 convolutions."""
    _needs(case)
    format_name, source, write = CASES[case]
    weights = weight_files.random_convs(
        np.random.default_rng(2), input_scale=1.0 if source == "torchvision" else 1 / 100, depth=16
    )
    path = tmp_path / "vgg16.bin"
    write(path, weights, rng)
    params, used = convert(path)
    assert used == format_name and vgg.depth_of(params) == 16 and "conv5_4" not in params
    image = random_image(rng, 20, 24)
    layers = (*LAYERS, "relu5_3")
    got = vgg.features(params, jnp.asarray(image), layers, pooling="max")
    want = weight_files.reference_features(weights, image, source, layers)
    for layer in layers:
        assert _relative_error(got[layer], want[layer]) < 1e-5, layer


@pytest.mark.parametrize("case", ["caffe-v2", "keras", "matconvnet", "torchvision-zip"])
def test_wrong_layer_count_and_wrong_shapes_are_named(tmp_path, case, convs, rng):
    _needs(case)
    format_name, _, write = CASES[case]
    write(tmp_path / "short", convs[:-1], rng)
    with pytest.raises(
        ValueError, match=r"expected 16 3x3 convolutions \(conv1_1..conv5_4; 13 for a VGG-16\), found 15"
    ):
        convert(tmp_path / "short", format_name)
    wrong = list(convs)
    wrong[3] = (np.zeros((128, 32, 3, 3), np.float32), np.zeros(128, np.float32))  # conv2_2 with 32 inputs
    wrong[4] = (np.zeros((256, 128, 3, 3), np.float32), np.zeros(256, np.float32))
    write(tmp_path / "wrong", wrong, rng)
    with pytest.raises(ValueError, match=r"-> conv2_2\) has kernel shape \(3, 3, 32, 128\), the model expects"):
        convert(tmp_path / "wrong", format_name)


def test_a_vgg19_bn_checkpoint_is_refused(tmp_path, convs):
    import torch_files

    state = {f"features.{i}.weight": k for i, (k, _) in zip(weight_files.TORCHVISION_INDICES, convs, strict=True)}
    state["features.1.running_mean"] = np.zeros(64, np.float32)
    torch_files.save_zip(tmp_path / "bn.pth", state)
    with pytest.raises(ValueError, match="batch-norm VGG"):
        convert(tmp_path / "bn.pth")


def test_load_params_converts_any_format_once_and_caches_it(tmp_path, convs_0_255, rng, monkeypatch):
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "VGG_ILSVRC_19_layers.caffemodel"
    weight_files.write_caffemodel(path, convs_0_255)
    params, info = load_params(path)
    assert info.converted
    assert json.loads((tmp_path / "cache" / "weights" / info.sha256 / "source.json").read_text())["format"] == "caffe"
    again, info = load_params(path)
    assert not info.converted
    jax.tree.map(np.testing.assert_array_equal, params, again)


def test_a_failed_conversion_writes_nothing(tmp_path, convs, rng, monkeypatch):
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "short.caffemodel"
    weight_files.write_caffemodel(path, convs[:-2])
    with pytest.raises(ValueError, match="found 14"):
        load_params(path)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))


def test_a_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch):
    import importlib

    from nst_jax.converters import MissingDependencyError

    real = importlib.import_module

    def fake(name, *args):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    path = tmp_path / "w.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(MissingDependencyError, match=r"needs h5py: pip install 'nst-jax\[converters\]'"):
        convert(path)


def test_normalisation_makes_mean_activations_one_and_only_rescales_features(tiny_params, rng):
    images = [random_image(rng, 24, 24), random_image(rng, 20, 28)]
    normalised, scales = normalize_params(tiny_params, images)
    means = mean_activations(normalised, images)
    for layer, mean in means.items():
        alive = scales[layer] != 1.0
        np.testing.assert_allclose(mean[alive], 1.0, rtol=1e-3)  # float32 features
    layers = tuple(name.replace("conv", "relu") for name in weight_files.CONVS)
    before = vgg.features(tiny_params, jnp.asarray(images[0]), layers)
    after = vgg.features(normalised, jnp.asarray(images[0]), layers)
    for conv, relu in zip(weight_files.CONVS, layers, strict=True):
        np.testing.assert_allclose(after[relu] * scales[conv], before[relu], rtol=1e-4, atol=1e-5 * before[relu].max())


def test_normalisation_of_a_converted_torchvision_vgg(tmp_path, convs, rng):
    weight_files.write_torchvision(tmp_path / "tv.pth", convs, rng)
    params, _ = convert(tmp_path / "tv.pth")
    images = [random_image(rng, 32, 32)]
    normalised, _ = normalize_params(params, images)
    for layer, mean in mean_activations(normalised, images).items():
        np.testing.assert_allclose(mean[mean > 0], 1.0, rtol=1e-3, err_msg=layer)
    with pytest.raises(ValueError, match="`images` is empty"):
        normalize_params(params, [])


def test_real_torch_save_of_the_torchvision_layout_matches_torch(tmp_path, convs, rng):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    state = {}
    for index, (kernel, bias) in zip(weight_files.TORCHVISION_INDICES, convs, strict=True):
        state[f"features.{index}.weight"] = torch.from_numpy(kernel)
        state[f"features.{index}.bias"] = torch.from_numpy(bias)
    state["classifier.6.weight"] = torch.zeros(10, 4096)
    torch.save(state, tmp_path / "vgg19-dcbb9e9d.pth")
    params, used = convert(tmp_path / "vgg19-dcbb9e9d.pth")
    assert used == "torchvision"
    image = random_image(rng, 24, 24)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    x = (x - torch.tensor(weight_files.IMAGENET_MEAN).view(1, 3, 1, 1).float()) / torch.tensor(
        weight_files.IMAGENET_STD
    ).view(1, 3, 1, 1).float()
    with torch.no_grad():
        for index in weight_files.TORCHVISION_INDICES[:5]:  # up to relu3_1, with torch's own max pooling
            if index in (5, 10):
                x = F.max_pool2d(x, 2)
            x = F.relu(F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1))
    ours = vgg.features(params, jnp.asarray(image), ("relu3_1",), pooling="max")["relu3_1"]
    want = x[0].permute(1, 2, 0).numpy()
    assert _relative_error(ours, want) < 1e-5


def test_formats_constant_lists_every_reader():
    assert FORMATS == ("torch", "torchvision", "caffe", "keras", "matconvnet")


def test_cli_convert_and_normalize(tmp_path, capsys, convs_0_255, rng, monkeypatch):
    from nst_jax import cli, save_image

    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "vgg.caffemodel"
    weight_files.write_caffemodel(source, convs_0_255)
    assert cli.main(["convert", str(source), "-o", str(tmp_path / "converted")]) == 0
    params, _ = load_params(tmp_path / "converted")
    direct, _ = convert(source)
    jax.tree.map(np.testing.assert_array_equal, params, direct)

    (tmp_path / "images").mkdir()
    for i in range(2):
        save_image(tmp_path / "images" / f"{i}.png", random_image(rng, 24, 24))
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    argv = ["normalize", str(tmp_path / "converted"), "-o", str(tmp_path / "norm"), "--images"]
    assert cli.main([*argv, str(tmp_path / "images"), "--size", "24"]) == 0
    normalised, _ = load_params(tmp_path / "norm")
    assert not np.allclose(normalised["conv1_1"]["kernel"], params["conv1_1"]["kernel"])


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["convert", "missing.pth", "-o", "out"], "no such file"),
        (["convert", "{junk}", "-o", "out"], "unknown weight format"),
        (["convert", "{junk}", "-o", "out", "--format", "onnx"], "`format` must be one of"),
        (["normalize", "{junk}", "-o", "out", "--images", "nowhere"], "`--images`: no such directory"),
    ],
)
def test_cli_convert_mistakes_are_one_line(tmp_path, capsys, argv, match, monkeypatch):

    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk").write_bytes(b"\x00junk" * 20)
    argv = [a.replace("{junk}", str(tmp_path / "junk")) for a in argv]
    one_line_error(capsys, argv, match)
    assert not (tmp_path / "out").exists()
