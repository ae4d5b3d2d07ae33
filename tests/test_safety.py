"""Nothing the user owns is lost; outputs are checked before the long part; wrong inputs are refused (issue 13)."""

import errno
import json
import os
import struct
import zlib

import numpy as np
import pytest
from conftest import one_line_error

from nst_jax import cli, files, samples, save_image
from nst_jax.config import StyleConfig
from nst_jax.io import load_image


@pytest.fixture
def images(tmp_path):
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    save_image(content, samples.village(24, 32))
    save_image(style, samples.swirls(24, 32))
    return content, style


def _module(name):
    """The module ``nst_jax.<name>``."""
    import importlib

    return importlib.import_module(f"nst_jax.{name}")


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. data loss -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["folder", "cwd", "file"])
def test_convert_never_deletes_a_folder_or_file_of_the_users(tmp_path, capsys, monkeypatch, target):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    source = folder / "vgg.pth"
    source.write_bytes(b"weights of some kind")
    output = {"folder": folder, "cwd": ".", "file": folder / "notes.txt"}[target]
    monkeypatch.chdir(folder)
    before = _snapshot(tmp_path)
    one_line_error(capsys, ["convert", str(source), "-o", str(output)], "`output`:")
    assert _snapshot(tmp_path) == before


def test_write_folder_replaces_only_its_own_kind_and_nothing_foreign(tmp_path):
    folder = tmp_path / "out"
    files.write_folder(folder, "weights", lambda d: (d / "a.txt").write_text("1"), allowed={"a.txt"})
    files.write_folder(folder, "weights", lambda d: (d / "a.txt").write_text("2"), allowed={"a.txt"})
    assert (folder / "a.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging or old folder left behind"
    with pytest.raises(files.OutputError, match="holds nst-jax 'weights' output, not 'checkpoint'"):
        files.write_folder(folder, "checkpoint", lambda d: None, allowed=())
    (folder / "mine.txt").write_text("user's")
    with pytest.raises(files.OutputError, match="also holds 'mine.txt', which nst-jax did not write"):
        files.write_folder(folder, "weights", lambda d: (d / "a.txt").write_text("3"), allowed={"a.txt"})
    assert (folder / "a.txt").read_text() == "2" and (folder / "mine.txt").read_text() == "user's"


def test_stale_staging_of_a_dead_process_is_removed_a_live_ones_kept(tmp_path):
    dead = tmp_path / f".out{files._STAGING}999999999-abc"
    live = tmp_path / f".out{files._STAGING}{os.getpid()}-abc"
    dead.mkdir()
    live.mkdir()
    files.write_folder(tmp_path / "out", "weights", lambda d: None, allowed=())
    assert not dead.exists() and live.exists()


def test_a_checkpoint_folder_of_the_users_is_refused_before_the_run(tmp_path, capsys, images):
    user = tmp_path / "out.png.ckpt"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"photo")
    one_line_error(capsys, ["stylize", *map(str, images), "-o", str(tmp_path / "out.png")], "`checkpoint`:")
    assert (user / "holiday.jpg").read_bytes() == b"photo" and not (tmp_path / "out.png").exists()


def _fake_result(finite=True, steps=3):
    from nst_jax.transfer import Result

    image = samples.swirls(24, 32)
    return Result(image, 1.0, {}, [(0, 1.0)], steps, steps + 1, 0.1, finite)


def test_a_failed_run_leaves_the_named_output_alone(tmp_path, capsys, images, monkeypatch):

    out = tmp_path / "out.png"
    save_image(out, samples.village(24, 32))
    before = out.read_bytes()
    monkeypatch.setattr(_module("transfer"), "stylize", lambda *a, **k: _fake_result(finite=False))
    assert cli.main(["stylize", *map(str, images), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "saved the last finite image to" in err and "out.failed.png" in err and "was not written" in err
    assert out.read_bytes() == before and (tmp_path / "out.failed.png").exists()
    monkeypatch.setattr(_module("transfer"), "stylize", lambda *a, **k: _fake_result(finite=False, steps=0))
    assert cli.main(["stylize", *map(str, images), "-o", str(tmp_path / "other.png"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "not finite at the first step; nothing written" in err and "saved" not in err
    assert not (tmp_path / "other.png").exists() and not (tmp_path / "other.failed.png").exists()


def test_a_run_refused_for_memory_at_its_start_is_one_line(tmp_path, capsys, images, monkeypatch):
    """stylize() checks the memory plan itself: memory that shrank after the command's own check is exit 2."""
    from nst_jax import MemoryLimitError

    def refuse(*args, **kwargs):
        raise MemoryLimitError("`size` 32 (24x32 output) needs about 9.0 GiB, more than the 1.0 GiB free")

    out = tmp_path / "out.png"
    monkeypatch.setattr(_module("transfer"), "stylize", refuse)
    assert cli.main(["stylize", *map(str, images), "-o", str(out), "-q"]) == 2
    assert capsys.readouterr().err == (
        "nst-jax: error: `size` 32 (24x32 output) needs about 9.0 GiB, more than the 1.0 GiB free\n"
    )
    assert not out.exists()


def test_the_content_image_as_output_survives_a_failed_run(tmp_path, capsys, images, monkeypatch):

    before = images[0].read_bytes()
    monkeypatch.setattr(_module("transfer"), "stylize", lambda *a, **k: _fake_result(finite=False))
    assert cli.main(["stylize", *map(str, images), "-o", str(images[0]), "-q"]) == 1
    assert images[0].read_bytes() == before


# ---- 2. failing after the long part -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "match"),
    [
        ("folder", "is a folder; name a file inside it"),
        ("under_a_file", "is a file, not a folder"),
        ("/proc/nst-jax-out.png", "cannot write in '/proc'"),
        ("out.xbm", "cannot be written as an RGB image"),
        ("out.h5", "cannot be written as an RGB image"),
        ("out.msp", "cannot be written as an RGB image"),
    ],
)
def test_an_unwritable_output_is_refused_before_loading_anything(tmp_path, capsys, images, output, match, monkeypatch):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    path = {"folder": tmp_path / "folder", "under_a_file": tmp_path / "file" / "out.png"}.get(output, tmp_path / output)
    if output.startswith("/"):
        path = output

    monkeypatch.setattr(_module("weights"), "load_params", lambda *a: pytest.fail("checked after the weights"))
    one_line_error(capsys, ["stylize", *map(str, images), "-o", str(path)], match)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path, capsys, images):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    one_line_error(capsys, ["stylize", *map(str, images), "-o", str(folder / "out.png")], "cannot write in")


def test_demo_save_inputs_writes_nothing_when_a_later_check_fails(tmp_path, capsys):
    out = tmp_path / "demo.png"
    one_line_error(
        capsys, ["demo", "-o", str(out), "--save-inputs", "--init", str(tmp_path / "no.png")], "--init must be one of"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_at_the_end_rescues_the_result(tmp_path, capsys, images, monkeypatch):

    real_save = _module("io").save_image

    def disk_full_for_the_output(path, image, bits=None, profile=None):
        if str(path) == str(tmp_path / "out.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, image, bits, profile)

    monkeypatch.setattr(_module("transfer"), "stylize", lambda *a, **k: _fake_result())
    monkeypatch.setattr(_module("io"), "save_image", disk_full_for_the_output)
    assert cli.main(["stylize", *map(str, images), "-o", str(tmp_path / "out.png"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "could not write" in err and "No space left on device" in err
    rescued = err.rsplit("saved the result to ", 1)[1].strip()
    assert rescued.startswith(os.environ["NST_JAX_CACHE"]) and load_image(rescued).shape == (24, 32, 3)


def test_sweep_output_checks(tmp_path, capsys, images):
    (tmp_path / "file").write_text("x")
    args = ["sweep", *map(str, images), "--vary", "style_weight=1,2"]
    one_line_error(capsys, [*args, "-o", str(tmp_path / "file")], "is a file; name a new or empty folder")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "grid.png").write_bytes(b"the user's own")
    one_line_error(capsys, [*args, "-o", str(user)], "with files nst-jax did not write")
    one_line_error(capsys, [*args, "-o", str(tmp_path / "new"), "--extension", ".xbm"], "`--extension`")
    assert (user / "grid.png").read_bytes() == b"the user's own" and not (tmp_path / "new").exists()


def test_a_sweep_with_a_failed_member_exits_1_and_names_it(tmp_path, capsys, images, monkeypatch, real_params):

    real_sweep = _module("sweeps").sweep

    def one_diverges(*args, **kwargs):
        result = real_sweep(*args, **kwargs)
        return result._replace(losses=np.array([result.losses[0], np.inf]))

    monkeypatch.setattr(_module("sweeps"), "sweep", one_diverges)
    out = tmp_path / "sweep"
    argv = ["sweep", *map(str, images), "--vary", "style_weight=1,2", "--size", "32", "--steps", "2", "-o", str(out)]
    assert cli.main([*argv, "--num-scales", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "1 of 2 members failed: 001_style_weight=2 (loss inf)" in err
    assert (out / "sweep.json").exists() and (out / files.MARKER).exists()
    monkeypatch.setattr(_module("sweeps"), "sweep", real_sweep)
    assert cli.main([*argv, "--num-scales", "1", "-q"]) == 0, "a sweep's own folder may be written again"


# ---- 4 and 6. images, sizes and values ----------------------------------------------------------------------------


def _png(width, height, rows):
    chunk = lambda kind, data: (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )
    raw = b"".join(b"\0" + bytes(3 * width) for _ in range(rows))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("width", "height", "rows", "match"),
    [
        (40000, 40000, 1, "declares more than 80 megapixels"),
        (13000, 13000, 1, "declares 13000 x 13000 pixels"),
        (64, 48, 1, "is truncated"),
    ],
)
def test_hostile_image_headers_are_one_line(tmp_path, capsys, images, width, height, rows, match):
    bad = tmp_path / "bad.png"
    bad.write_bytes(_png(width, height, rows))
    out = tmp_path / "out.png"
    for argv in (
        ["stylize", str(bad), str(images[1])],
        ["stylize", str(images[0]), str(bad)],
        ["stylize", *map(str, images), "--init", str(bad)],
        ["stylize", *map(str, images), "--masks", str(bad)],
    ):
        one_line_error(capsys, [*argv, "-o", str(out)], match)
    assert not out.exists()


def test_a_png_cut_inside_its_pixels_is_one_line(tmp_path, capsys, images):
    # Found by the web page's upload test: reading a PNG's EXIF reads on through the pixels.
    whole = images[0].read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole[: len(whole) // 3])
    one_line_error(capsys, ["stylize", str(cut), str(images[1]), "-o", str(tmp_path / "o.png")], "cut.png")
    assert not (tmp_path / "o.png").exists()


def test_a_whole_png_is_read_whatever_its_layout(tmp_path):
    from PIL import Image

    for mode in ("RGB", "RGBA", "L", "P", "1", "I;16", "LA"):
        for interlace in (0, 1):
            Image.new(mode, (37, 23)).save(tmp_path / "ok.png", interlace=interlace)
            assert load_image(tmp_path / "ok.png").shape == (23, 37, 3)


def test_a_folder_given_as_an_image_says_so(tmp_path, capsys, images):
    one_line_error(capsys, ["stylize", str(tmp_path), str(images[1]), "-o", str(tmp_path / "o.png")], "is a folder")


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((8, 8, 3), np.uint8), "`content` has dtype uint8; images are floats in"),
        (np.full((8, 8, 3), 200.0, np.float32), "values from 200 to 200; images are in"),
        (np.full((8, 8, 3), np.nan, np.float32), "`content` has 192 NaN or infinite values"),
        (np.zeros((8, 8), np.float32), r"`content` has shape \(8, 8\)"),
    ],
)
def test_library_refuses_images_it_would_misread(image, match, tiny_params):
    from nst_jax import stylize

    with pytest.raises(ValueError, match=match):
        stylize(image, samples.swirls(16, 16), StyleConfig(num_steps=1), params=tiny_params)


def test_save_and_load_refuse_what_they_would_get_wrong(tmp_path):
    with pytest.raises(ValueError, match="values from 0 to 255"):
        save_image(tmp_path / "a.png", np.linspace(0, 255, 48, dtype=np.float32).reshape(4, 4, 3))
    with pytest.raises(ValueError, match="dtype uint8"):
        save_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    save_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="`size` must be a positive integer"):
        load_image(tmp_path / "a.png", size=0)
    assert not (tmp_path / "b.png").exists()


# ---- 5. checkpoints -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory, real_params):
    from nst_jax import stylize

    folder = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    config = StyleConfig(num_steps=4, chunk_size=2, checkpoint_every=2, num_scales=1)
    content, style = samples.village(24, 32), samples.swirls(24, 32)
    stylize(content, style, config, params=real_params, checkpoint=str(folder), callback=lambda p: p.step >= 2)
    return folder, content, style, config


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"style_weight": 99.0}, "made with style_weight=36.0, this run has 99.0"),
        ({"memory_size": 3}, "made with memory_size=10, this run has 3"),
        ({"style": "other"}, "different style images"),
        ({"content": "other"}, "different content image"),
        ({"flat_fraction": 0.2}, r"different content image's flat regions \(flat_content_weight, flat_fraction\)"),
    ],
)
def test_resume_refuses_other_inputs_or_settings_naming_them(saved_checkpoint, real_params, change, match):
    from nst_jax import stylize
    from nst_jax.checkpoint import CheckpointError

    folder, content, style, config = saved_checkpoint
    if change.get("style"):
        style = samples.stripes(24, 32) if hasattr(samples, "stripes") else 1.0 - style
    elif change.get("content"):
        content = 1.0 - content
    else:
        config = config.replace(**change)
    with pytest.raises(CheckpointError, match=match):
        stylize(content, style, config, params=real_params, resume=str(folder), checkpoint=str(folder))


def test_damaged_checkpoints_are_one_line(saved_checkpoint, real_params, tmp_path, capsys):
    import shutil

    from nst_jax import stylize
    from nst_jax.checkpoint import CheckpointError

    folder, content, style, config = saved_checkpoint
    copy = tmp_path / "copy.ckpt"
    shutil.copytree(folder, copy)
    (copy / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="run.json' is damaged"):
        stylize(content, style, config, params=real_params, resume=str(copy))
    shutil.rmtree(copy)
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "state")
    with pytest.raises(CheckpointError, match="has no state/ folder"):
        stylize(content, style, config, params=real_params, resume=str(copy))
    run = json.loads((folder / "run.json").read_text())
    assert set(run["fingerprint"]["arrays"]) == {"weights", "content", "content_weights", "style"}


# ---- sizes, option combinations and the cache ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--size", "16"], "`size`: the image is 12x16 px, smaller than layer relu5_1 needs (16 px a side)"),
        (["--scales", "20,40"], "15x20 px at coarse-to-fine stage 1 of 2, smaller than layer relu5_1"),
        (["--size", "40", "--content-layers", "pool5"], "30x40 px, smaller than layer pool5 needs (32 px a side)"),
        (["--size", "100000"], "`size` must be an integer in [16, 16384], got 100000"),
        (["--size", "16384"], "far more than the"),
        (["--scales", "16,16384"], "far more than the"),
        (["--size", "1024", "--style-scale", "16"], "for its features, more than the"),
        (["--style-blend", "1,1", "--masks", "MASK"], "`style_blend` cannot be combined with `masks`"),
    ],
)
def test_sizes_and_combinations_are_refused_before_any_image_is_decoded(tmp_path, capsys, images, extra, match):
    import time

    extra = [str(images[0]) if e == "MASK" else e for e in extra]
    styles = [str(images[1])] * (2 if "--style-blend" in extra else 1)
    start = time.perf_counter()
    one_line_error(capsys, ["stylize", str(images[0]), *styles, "-o", str(tmp_path / "o.png"), *extra], match)
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "o.png").exists()


def test_a_300x1_strip_and_a_huge_texture_are_one_line(tmp_path, capsys, images):
    strip = tmp_path / "strip.png"
    save_image(strip, np.full((1, 300, 3), 0.5, np.float32))
    one_line_error(capsys, ["stylize", str(strip), str(images[1]), "-o", str(tmp_path / "o.png")], "smaller than")
    one_line_error(
        capsys, ["texture", str(images[1]), "--size", "16384x16", "-o", str(tmp_path / "t.png")], "for its features"
    )


def test_reconstruct_from_content_with_init_style_is_one_line(tmp_path, capsys, images):
    argv = ["reconstruct", str(images[0]), "--layers", "relu2_1", "--init", "style", "-o", str(tmp_path / "r.png")]
    one_line_error(capsys, argv, "`init` is 'style' but there is no style image")


def test_a_cache_that_is_a_file_is_one_line(tmp_path, capsys, images, monkeypatch):
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "cache"))
    argv = ["stylize", *map(str, images), "-o", str(tmp_path / "o.png")]
    one_line_error(capsys, argv, "`NST_JAX_CACHE (the cache folder)`: ")


def test_a_damaged_cache_entry_is_converted_again_with_a_warning(tmp_path, monkeypatch, caplog):
    import sys as _sys

    _sys.path.insert(0, os.path.dirname(__file__))
    import torch_files
    import weight_files

    from nst_jax import weights

    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "cache"))
    convs = weight_files.random_convs(np.random.default_rng(0))
    state = {"0.weight": np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "0.bias": np.zeros(3, np.float32)}
    for i, (kernel, bias) in enumerate(convs):
        state[f"{2 * i + 2}.weight"], state[f"{2 * i + 2}.bias"] = kernel, bias
    torch_files.save_zip(tmp_path / "vgg.pth", state)
    params, info = weights.load_params(tmp_path / "vgg.pth")
    assert info.converted
    from pathlib import Path

    source_json = Path(info.checkpoint) / "source.json"
    record = json.loads(source_json.read_text())
    record["params_sha256"] = "0" * 64  # what a flipped bit in the arrays looks like to the check
    source_json.write_text(json.dumps(record))
    with pytest.raises(weights.DamagedWeightsError, match="do not match the checksum"):
        weights.restore_params(info.checkpoint)
    again, info2 = weights.load_params(tmp_path / "vgg.pth")
    assert info2.converted and "converting" in caplog.text and "damaged" in caplog.text
    np.testing.assert_array_equal(again["conv5_4"]["kernel"], params["conv5_4"]["kernel"])
    assert weights.load_params(tmp_path / "vgg.pth")[1].converted is False, "the new entry is trusted"


def test_two_writers_racing_for_one_folder_both_succeed(tmp_path):
    import threading

    errors = []

    def write(value):
        try:
            for _ in range(20):
                files.write_folder(tmp_path / "out", "weights", lambda d: (d / "a").write_text(value), allowed={"a"})
        except Exception as e:  # the test reports any failure
            errors.append(e)

    threads = [threading.Thread(target=write, args=(v,)) for v in "xy"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and (tmp_path / "out" / "a").read_text() in ("x", "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resume_with_another_style_is_one_line_from_the_cli(tmp_path, capsys, images):
    out = tmp_path / "out.png"
    argv = ["stylize", *map(str, images), "-o", str(out), "--size", "32", "--num-scales", "1", "-q"]
    assert cli.main([*argv, "--steps", "2", "--checkpoint-every", "2"]) == 0
    other = tmp_path / "other.png"
    save_image(other, samples.village(24, 32)[::-1])
    resume = ["--resume", str(tmp_path / "out.png.ckpt"), "--steps", "4"]
    one_line_error(capsys, ["stylize", str(images[0]), str(other), "-o", str(out), *argv[5:], *resume], "style images")
    one_line_error(capsys, [*argv, *resume, "--style-weight", "7"], "made with style_weight=36.0, this run has 7.0")
    assert cli.main([*argv, *resume]) == 0


def test_a_sweep_far_too_large_is_refused_from_the_headers(tmp_path, capsys, images):
    argv = ["sweep", *map(str, images), "--vary", "style_weight=1,2", "-o", str(tmp_path / "s"), "--size", "16384"]
    one_line_error(capsys, argv, "far more than the")
    assert not (tmp_path / "s").exists()


def test_normalize_size_zero_is_one_line(tmp_path, capsys):
    argv = ["normalize", str(tmp_path / "w"), "-o", str(tmp_path / "n"), "--images", str(tmp_path), "--size", "0"]
    one_line_error(capsys, argv, "`--size` must be at least 16 (pixels of the long side), got 0")
    assert not (tmp_path / "n").exists()
