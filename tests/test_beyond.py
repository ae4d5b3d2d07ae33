"""Textures, reconstructions, colour preservation, style blends and style scale (the follow-up papers)."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_NETWORK_CONFIG, one_line_error, random_image

from nst_jax import StyleConfig, cli, make_objective, samples, save_image, stylize
from nst_jax.image import (
    match_colour,
    match_luminance,
    resize,
    rgb_to_yiq,
    scaled_shape,
    with_content_colour,
    yiq_to_rgb,
)
from nst_jax.losses import gram
from nst_jax.transfer import prepare_styles
from nst_jax.vgg import features

TINY = StyleConfig(num_steps=6, chunk_size=3, coarse_steps=6)


def test_yiq_round_trip_and_grey_has_no_chroma(rng):
    image = random_image(rng, 8, 8)
    np.testing.assert_allclose(yiq_to_rgb(rgb_to_yiq(image)), image, atol=1e-5)
    grey = np.repeat(rng.random((8, 8, 1)), 3, axis=-1).astype(np.float32)
    yiq = np.asarray(rgb_to_yiq(grey))
    np.testing.assert_allclose(yiq[..., 0], grey[..., 0], atol=1e-5)
    np.testing.assert_allclose(yiq[..., 1:], 0.0, atol=1e-5)


@pytest.mark.parametrize("mode", ["cholesky", "eigen"])
def test_colour_matching_gives_the_targets_mean_and_covariance(rng, mode):
    source = (0.2 + 0.3 * rng.random((32, 32, 3)) * np.array([1.0, 0.5, 0.8])).astype(np.float32)
    target = (0.3 + 0.4 * rng.random((32, 32, 3)) @ np.array([[1, 0.3, 0], [0, 1, 0.2], [0.1, 0, 1]])).astype(
        np.float32
    )
    target = np.clip(target, 0, 1)
    out = np.asarray(match_colour(source, target, mode)).reshape(-1, 3).astype(np.float64)
    t = target.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(out.mean(0), t.mean(0), atol=1e-4)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.cov(t, rowvar=False), atol=1e-4)
    with pytest.raises(ValueError, match=r"`mode` must be one of \('cholesky', 'eigen'\), got 'lab'"):
        match_colour(source, target, "lab")


def test_luminance_transfer_keeps_the_contents_chroma(rng):
    content, style = random_image(rng, 16, 16), random_image(rng, 20, 20)
    matched = np.asarray(match_luminance(style, content))
    np.testing.assert_allclose(matched[..., 0], matched[..., 1])  # grey
    y_c = np.asarray(rgb_to_yiq(content))[..., 0]
    np.testing.assert_allclose([matched[..., 0].mean(), matched[..., 0].std()], [y_c.mean(), y_c.std()], rtol=1e-4)
    result = np.full((16, 16, 3), 0.5, np.float32)
    combined = np.asarray(rgb_to_yiq(with_content_colour(result, content)))
    inside = np.all(
        (np.asarray(with_content_colour(result, content)) > 0) & (with_content_colour(result, content) < 1), -1
    )
    np.testing.assert_allclose(combined[inside][:, 1:], np.asarray(rgb_to_yiq(content))[inside][:, 1:], atol=1e-5)


def test_stylize_with_luminance_keeps_content_colours(real_params):
    content, style = samples.village(24, 32), samples.swirls(24, 32)
    result = stylize(content, style, TINY.replace(preserve_colour="luminance"), params=real_params)
    out_iq = np.asarray(rgb_to_yiq(result.image))[..., 1:]
    content_iq = np.asarray(rgb_to_yiq(content))[..., 1:]
    inside = np.all((result.image > 0.01) & (result.image < 0.99), -1)
    np.testing.assert_allclose(out_iq[inside], content_iq[inside], atol=2e-3)


def test_histogram_preservation_recolours_the_style_before_transfer(rng):
    content, style = random_image(rng, 16, 16) * 0.5, random_image(rng, 20, 20)
    (recoloured,) = prepare_styles(style, (16, 16), StyleConfig(preserve_colour="histogram"), content=content)
    np.testing.assert_allclose(np.asarray(recoloured).reshape(-1, 3).mean(0), content.reshape(-1, 3).mean(0), atol=1e-3)


def test_style_blend_mixes_gram_targets(tiny_params, rng):
    content, a, b = random_image(rng, 16, 16), random_image(rng, 20, 20), random_image(rng, 24, 16)
    config = StyleConfig(style_layers=("relu1_1", "relu2_1"), style_blend=(3.0, 1.0))
    mixed = make_objective(tiny_params, content, [a, b], config)
    for layer in config.style_layers:
        ga = gram(features(tiny_params, jnp.asarray(a), (layer,))[layer])
        gb = gram(features(tiny_params, jnp.asarray(b), (layer,))[layer])
        np.testing.assert_allclose(mixed.style_targets[layer], 0.75 * ga + 0.25 * gb, rtol=1e-5, atol=1e-7)
    only_a = make_objective(tiny_params, content, [a, b], config.replace(style_blend=(1.0, 0.0)))
    single = make_objective(tiny_params, content, a, config.replace(style_blend=None))
    np.testing.assert_allclose(only_a.style_targets["relu2_1"], single.style_targets["relu2_1"], rtol=1e-6)
    with pytest.raises(ValueError, match="`style_blend` has 2 weights for 3 style images"):
        make_objective(tiny_params, content, [a, b, a], config)
    with pytest.raises(ValueError, match="`style_blend` must be 1 to 256 weights >= 0 with a positive sum"):
        StyleConfig(style_blend=(0.0, 0.0))


def test_style_scale_resizes_relative_to_the_output(rng):
    style = random_image(rng, 40, 60)
    (scaled,) = prepare_styles(style, (100, 200), StyleConfig(style_scale=0.5))
    assert scaled.shape == (67, 100, 3)
    (unchanged,) = prepare_styles(style, (100, 200), StyleConfig())
    assert unchanged.shape == style.shape
    with pytest.raises(ValueError, match=r"`style_scale` must be a number in \(0, 16\], got 0"):
        StyleConfig(style_scale=0)


def test_texture_has_the_asked_size_whatever_the_style_size(real_params):
    style = samples.swirls(40, 24)
    result = stylize(None, style, TINY, params=real_params, shape=(20, 36))
    assert result.image.shape == (20, 36, 3)
    assert result.history[-1][1] < result.history[0][1]


def test_content_reconstruction_from_one_layer_approaches_the_image(real_params):
    content = samples.village(24, 32)
    config = StyleConfig(num_steps=30, content_layers=("relu1_1",), init="noise", box="penalty")
    result = stylize(content, None, config, params=real_params)
    start = np.abs(np.asarray(stylize(content, None, config.replace(num_steps=0), params=real_params).image) - content)
    assert np.abs(result.image - content).mean() < 0.5 * start.mean()


def test_cli_texture_and_reconstruct(tmp_path, real_params):
    style, photo = tmp_path / "s.png", tmp_path / "c.png"
    save_image(style, samples.swirls(32, 48))
    save_image(photo, samples.village(24, 32))
    assert (
        cli.main(["texture", str(style), "-o", str(tmp_path / "t.png"), "--size", "40x24", "--steps", "2", "-q"]) == 0
    )
    from PIL import Image

    with Image.open(tmp_path / "t.png") as image:
        assert image.size == (40, 24)
    # --size 32: the default 512 px would run 200-step coarse stages first (minutes)
    argv = ["reconstruct", str(photo), "-o", str(tmp_path / "r.png"), "--layers", "relu2_1", "--steps", "2", "-q"]
    assert cli.main([*argv, "--size", "32"]) == 0
    argv = ["reconstruct", str(photo), "-o", str(tmp_path / "g.png"), "--from", "style", "--layers", "relu1_1,relu2_1"]
    assert cli.main([*argv, "--steps", "2", "-q", "--size", "32"]) == 0
    assert (tmp_path / "r.png").exists() and (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["texture", "{s}", "-o", "{o}", "--size", "40x4"], "expected WIDTHxHEIGHT with both sides >= 16"),
        (["texture", "{s}", "-o", "{o}", "--size", "big"], "expected WIDTHxHEIGHT (e.g. 512x384)"),
        (["stylize", "{s}", "{s}", "-o", "{o}", "--style-blend", "1,2,3"], "`style_blend` has 3 weights for 1 style"),
        (["stylize", "{s}", "{s}", "-o", "{o}", "--preserve-colour", "hue"], "invalid choice: 'hue'"),
        (["reconstruct", "{s}", "-o", "{o}", "--layers", "relu9_9"], "unknown layer 'relu9_9'"),
    ],
)
def test_cli_mistakes_in_the_new_commands(tmp_path, capsys, argv, match):
    style = tmp_path / "s.png"
    save_image(style, samples.swirls(16, 16))
    argv = [a.replace("{s}", str(style)).replace("{o}", str(tmp_path / "out.png")) for a in argv]
    one_line_error(capsys, argv, match)
    assert not (tmp_path / "out.png").exists()


def _seam_and_interior(image):
    """Mean |difference| across the wrapped seams and between interior neighbours."""
    image = np.asarray(image, np.float64)
    seam = np.abs(image[:, 0] - image[:, -1]).mean() + np.abs(image[0] - image[-1]).mean()
    interior = np.abs(np.diff(image, axis=1)).mean() + np.abs(np.diff(image, axis=0)).mean()
    return seam, interior


def test_tileable_textures_have_no_seam(real_params):
    style = samples.swirls(32, 32)
    config = StyleConfig(num_steps=40, padding="circular", tv_weight=1.0, init="noise")
    tile = stylize(None, style, config, params=real_params, shape=(32, 32)).image
    seam, interior = _seam_and_interior(tile)
    assert seam < 1.5 * interior, (seam, interior)
    tiled = np.tile(tile, (2, 2, 1))  # the seams inside a 2x2 tiling look like the interior
    middle_seam = np.abs(tiled[:, 31] - tiled[:, 32]).mean()
    assert middle_seam < 1.5 * np.abs(np.diff(tile, axis=1)).mean()


def test_circular_total_variation_counts_the_wrapped_pairs():
    from nst_jax.losses import total_variation

    image = np.zeros((4, 4, 3), np.float32)
    image[:, 0] = 1.0  # a column that only differs from its right neighbour... and its wrapped left one
    assert float(total_variation(image)) == pytest.approx(np.mean(np.ones((4, 3, 3)) * [[1], [0], [0]]) * 1.0)
    assert float(total_variation(image, circular=True)) == pytest.approx(2 * 4 * 3 / (4 * 4 * 3))


def test_cli_tileable_flag(tmp_path, real_params):
    style = tmp_path / "s.png"
    save_image(style, samples.swirls(32, 32))
    argv = ["texture", str(style), "-o", str(tmp_path / "t.png"), "--size", "32x32", "--steps", "2", "--tileable"]
    assert cli.main([*argv, "-q"]) == 0
    args = cli._build_parser().parse_args([*argv[:-1], "--tileable"])
    assert args.padding == "circular"


def test_coarse_to_fine_runs_every_scale_and_ends_at_the_last(real_params):
    content, style = samples.village(48, 64), samples.swirls(30, 40)
    stages = []
    config = TINY.replace(scales=(32, 64), coarse_steps=3)
    result = stylize(content, style, config, params=real_params, callback=stages.append)
    assert result.image.shape == (48, 64, 3)
    assert {p.image.shape[:2] for p in stages} == {(24, 32), (48, 64)}
    assert {(p.stage, p.num_stages, p.num_steps) for p in stages} == {(0, 2, 3), (1, 2, TINY.num_steps)}
    assert result.num_steps == 3 + TINY.num_steps
    steps = [s for s, _ in result.history]
    assert steps == sorted(steps) and steps[-1] == 3 + TINY.num_steps
    stopped = stylize(content, style, config, params=real_params, callback=lambda p: True)
    assert stopped.num_steps == 3 and stopped.image.shape == (24, 32, 3)  # a stop ends the run, not the stage
    with pytest.raises(
        ValueError, match=r"`scales` must be at most 32 increasing integers in \[16, 16384\], got \(64, 32\)"
    ):
        StyleConfig(scales=(64, 32))


def test_stage_sizes_climb_from_the_base_size_in_steps_of_at_most_sqrt2():
    assert StyleConfig(size=512).stage_sizes() == (256, 362, 512)
    assert StyleConfig(size=768).stage_sizes() == (256, 337, 443, 584, 768)
    assert StyleConfig(size=1024).stage_sizes() == (256, 362, 512, 724, 1024)
    assert StyleConfig(size=300).stage_sizes() == (256, 300)
    assert StyleConfig(size=256).stage_sizes() == (256,)
    assert StyleConfig().stage_sizes(192) == (192,)  # at or below the base: one stage
    for size in (300, 384, 512, 640, 768, 1024, 2048, 4096):  # every ratio at most sqrt(2), the first at the base
        sizes = StyleConfig(size=size).stage_sizes()
        assert sizes[0] == 256 and sizes[-1] == size
        assert all(b / a <= 2**0.5 * 1.002 for a, b in itertools.pairwise(sizes)), sizes  # rounding
    assert StyleConfig(size=1024, num_scales=3).stage_sizes() == (256, 512, 1024)
    assert StyleConfig(size=512, num_scales=1).stage_sizes() == (512,)
    assert StyleConfig(size=512, base_size=128).stage_sizes() == (128, 181, 256, 362, 512)
    assert StyleConfig(scales=(100, 200)).stage_sizes() == (100, 200)
    with pytest.raises(ValueError, match=r"`num_scales` must be an integer in \[0, 32\], got -1"):
        StyleConfig(num_scales=-1)
    with pytest.raises(ValueError, match=r"`base_size` must be an integer in \[16, 16384\], got 8"):
        StyleConfig(base_size=8)


def test_stage_steps_default_to_num_steps():
    assert [StyleConfig(num_steps=7).stage_steps(i, 3) for i in range(3)] == [7, 7, 7]
    assert [StyleConfig(num_steps=7, coarse_steps=2).stage_steps(i, 3) for i in range(3)] == [2, 2, 7]


def test_a_preview_is_the_first_stage_of_its_print(real_params):
    """The 32 px run (base 32) equals, bit for bit, the first stage of the 64 px run with the same settings."""
    content, style = samples.village(48, 64), samples.swirls(48, 64)
    config = TINY.replace(base_size=32, coarse_steps=None)
    stages = []
    printed = stylize(content, style, config, params=real_params, callback=stages.append)
    assert {p.image.shape[:2] for p in stages} == {(24, 32), (34, 45), (48, 64)}  # 32, 45, 64 px
    # As each stage sees them: the content at the stage's shape, the style scaled by its ratio
    # (a style under 64 px is kept as it is: its deepest maps would vanish).
    preview = stylize(resize(content, (24, 32)), resize(style, scaled_shape((48, 64), 0.5)), config, params=real_params)
    first = [p for p in stages if p.stage == 0][-1]
    np.testing.assert_array_equal(np.asarray(first.image), preview.image)
    assert "anchor" in printed.terms and "anchor" not in preview.terms  # the later stages keep its composition
    free = stylize(content, style, config.replace(anchor_weight=0.0), params=real_params)
    assert "anchor" not in free.terms


def test_coarse_to_fine_with_masks_checkpoints_and_resume(small_network, tmp_path):
    """Masks are resized per stage; only the last stage is checkpointed and resume skips the others."""
    _, network, params = small_network
    content, style = samples.village(32, 48), samples.swirls(32, 48)
    masks = np.zeros((2, 32, 48), np.float32)
    masks[0, :, :24], masks[1, :, 24:] = 1, 1
    config = SMALL_NETWORK_CONFIG.replace(
        scales=(24, 48), coarse_steps=4, num_steps=8, chunk_size=4, checkpoint_every=4
    )
    run = lambda **kw: stylize(
        content, [style, None], config, params=params, masks=masks, network=network, **kw
    )  # fmt: skip
    whole = run()
    assert whole.image.shape == (32, 48, 3) and whole.num_steps == 12
    checkpoint = str(tmp_path / "ckpt")
    first = run(checkpoint=checkpoint, callback=lambda p: p.stage == 1 and p.step >= 4)
    assert first.num_steps == 8
    resumed = run(checkpoint=checkpoint, resume=checkpoint)
    np.testing.assert_array_equal(resumed.image, whole.image)
    assert resumed.num_steps == 8  # the last stage only


def test_luminance_transfer_starts_from_the_grey_of_an_image_init(real_params, rng):
    """A coarser stage's (recoloured) result, or any init image, becomes its luminance, as the content does."""
    from nst_jax.schedule import Inputs
    from nst_jax.transfer import _setup

    content, style, init = samples.village(24, 32), samples.swirls(24, 32), random_image(rng, 24, 32)
    config = StyleConfig(preserve_colour="luminance")
    _, image, _ = _setup(Inputs(content, [style], (24, 32), init), config, real_params)
    np.testing.assert_allclose(
        image, np.repeat(init @ np.array([0.299, 0.587, 0.114], np.float32)[:, None], 3, -1), atol=1e-5
    )


def test_cli_scales_set_the_output_size(tmp_path, real_params):
    photo, style = tmp_path / "c.png", tmp_path / "s.png"
    save_image(photo, samples.village(48, 64))
    save_image(style, samples.swirls(48, 64))
    out = tmp_path / "o.png"
    assert (
        cli.main(
            [
                "stylize",
                str(photo),
                str(style),
                "-o",
                str(out),
                "--scales",
                "24,40",
                "--steps",
                "2",
                "--coarse-steps",
                "2",
                "-q",
            ]
        )
        == 0
    )
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (40, 30)


def test_interrupted_and_resumed_run_is_bit_identical(real_params, tmp_path):
    content, style = samples.village(24, 32), samples.swirls(24, 32)
    config = StyleConfig(num_steps=12, chunk_size=5, checkpoint_every=4)
    whole = stylize(content, style, config, params=real_params)
    checkpoint = str(tmp_path / "ckpt")
    first = stylize(content, style, config, params=real_params, checkpoint=checkpoint, callback=lambda p: p.step >= 8)
    assert first.num_steps == 8
    resumed = stylize(content, style, config, params=real_params, checkpoint=checkpoint, resume=checkpoint)
    np.testing.assert_array_equal(resumed.image, whole.image)
    assert resumed.loss == whole.loss and resumed.num_evals == whole.num_evals
    assert resumed.history == whole.history
    with pytest.raises(
        ValueError, match=r"`resume`: the checkpoint's image is \(24, 32, 3\), this run's is \(16, 16, 3\)"
    ):
        stylize(samples.village(16, 16), style, config, params=real_params, resume=checkpoint)
    with pytest.raises(ValueError, match="`resume`: no checkpoint in"):
        stylize(content, style, config, params=real_params, resume=str(tmp_path / "none"))


def test_ctrl_c_saves_image_and_checkpoint_and_resume_finishes(tmp_path, monkeypatch, capsys, real_params):
    from PIL import Image

    from nst_jax import optim

    photo, style = tmp_path / "c.png", tmp_path / "s.png"
    save_image(photo, samples.village(24, 32))
    save_image(style, samples.swirls(24, 32))
    argv = ["stylize", str(photo), str(style), "--size", "32", "--steps", "9", "--chunk-size", "3", "-q"]
    assert cli.main([*argv, "-o", str(tmp_path / "whole.png")]) == 0

    real_run_chunk, calls = optim.run_chunk, []

    def interrupted_on_the_second_chunk(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_chunk(*args)

    monkeypatch.setattr(optim, "run_chunk", interrupted_on_the_second_chunk)
    out = tmp_path / "out.png"
    assert cli.main([*argv, "-o", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 3; saved the image so far to" in err and "--resume" in err
    assert "out.png was not written" in err
    assert not out.exists(), "only a finished run may write the named output"
    assert (tmp_path / "out.interrupted.png").exists() and (tmp_path / "out.png.ckpt" / "run.json").exists()
    monkeypatch.setattr(optim, "run_chunk", real_run_chunk)
    assert cli.main([*argv, "-o", str(out), "--resume", str(tmp_path / "out.png.ckpt")]) == 0
    with Image.open(out) as a, Image.open(tmp_path / "whole.png") as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_masked_gram_with_a_full_mask_is_the_gram(rng):
    from nst_jax.losses import masked_gram

    feats = jnp.asarray(rng.random((6, 5, 4)), jnp.float32)
    np.testing.assert_allclose(masked_gram(feats, jnp.ones((6, 5))), gram(feats), rtol=1e-6)
    half = np.zeros((6, 5), np.float32)
    half[:3] = 1
    np.testing.assert_allclose(masked_gram(feats, half), gram(feats[:3]), rtol=1e-6)


def test_region_masks_order_dark_to_bright_and_absorb_antialiasing():
    from nst_jax.image import region_masks

    labels = np.zeros((4, 6, 3), np.float32)
    labels[:, 3:] = [1.0, 1.0, 1.0]
    labels[:, 2] = [0.1, 0.1, 0.1]  # an anti-aliased edge, nearer to black
    masks = region_masks(labels, 2)
    np.testing.assert_array_equal(masks[0][:, :3], 1)
    np.testing.assert_array_equal(masks[1][:, 3:], 1)
    with pytest.raises(ValueError, match="`masks` has 3 colours for 4 style images"):
        region_masks(labels, 4)


def test_one_full_region_is_the_unmasked_objective(real_params, rng):
    content, style = samples.village(24, 32), samples.swirls(24, 32)
    image = jnp.asarray(random_image(rng, 24, 32))
    plain = make_objective(real_params, content, style, StyleConfig())
    masked = make_objective(real_params, content, [style], StyleConfig(), masks=np.ones((1, 24, 32), np.float32))
    np.testing.assert_allclose(masked(image)[0], plain(image)[0], rtol=1e-5)
    with pytest.raises(ValueError, match="`masks` has 1 regions for 2 style images"):
        make_objective(real_params, content, [style, style], StyleConfig(), masks=np.ones((1, 24, 32)))


def test_spatial_control_styles_only_its_region(real_params):
    content, style = samples.village(32, 48), samples.swirls(32, 48)
    masks = np.zeros((2, 32, 48), np.float32)
    masks[0, :, :24], masks[1, :, 24:] = 1, 1
    config = StyleConfig(num_steps=30, style_weight=1e4)
    result = stylize(content, [style, None], config, params=real_params, masks=masks)
    change = np.abs(result.image - content).mean(axis=(0, 2))
    assert change[:20].mean() > 2 * change[28:].mean()


def test_cli_masks(tmp_path, capsys, real_params):
    photo, style, mask = tmp_path / "c.png", tmp_path / "s.png", tmp_path / "m.png"
    save_image(photo, samples.village(24, 32))
    save_image(style, samples.swirls(24, 32))
    labels = np.zeros((24, 32, 3), np.float32)
    labels[:, 16:] = 1
    save_image(mask, labels)
    argv = ["stylize", str(photo), str(style), "none", "-o", str(tmp_path / "o.png"), "--masks", str(mask)]
    assert cli.main([*argv, "--steps", "2", "--size", "32", "-q"]) == 0
    bad = [
        "stylize",
        str(photo),
        str(style),
        str(style),
        str(style),
        "-o",
        str(tmp_path / "x.png"),
        "--masks",
        str(mask),
    ]
    assert cli.main(bad) == 2
    assert "`masks` has 2 colours for 3 style images" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_scale_control_restyles_the_stages_after_the_first(small_network):
    """Gatys et al. 2017's scale control: the first stage made with `style`; in the later ones the
    fine style sets `fine_style_layers` and `style` the others."""
    _, network, params = small_network
    content, coarse = samples.village(32, 48), samples.swirls(32, 48)
    fine = np.ascontiguousarray(samples.swirls(48, 32).transpose(1, 0, 2)[:, ::-1])  # another texture
    config = SMALL_NETWORK_CONFIG.replace(scales=(24, 48), coarse_steps=4, num_steps=6, chunk_size=2)
    split = config.replace(fine_style_layers=("c1",))  # c1 from the fine style, c2 from `style`
    run = lambda config=split, **kw: stylize(content, coarse, config, params=params, network=network, **kw)
    plain, same = run(), run(fine_style=coarse)
    np.testing.assert_array_equal(same.image, plain.image)  # fine_style = style: the run as without it
    seen = []
    scaled = run(fine_style=fine, callback=lambda p: seen.append(p.stage))
    assert sorted(set(seen)) == [0, 1] and scaled.num_steps == plain.num_steps
    # The first stage is the same run; only the later one sees the fine style.
    first = lambda **kw: run(callback=lambda p: p.stage == 0 and p.step >= 4, **kw).image  # stops after stage 0
    assert first().shape == (16, 24, 3)
    np.testing.assert_array_equal(first(fine_style=fine), first())
    assert not np.allclose(scaled.image, plain.image)
    every = run(config.replace(fine_style_layers=("c1", "c2")), fine_style=fine)  # the authors' form
    final = (content.shape[0], content.shape[1])
    grams = lambda image, layer: gram(network.features(params, jnp.asarray(image), (layer,))[layer])
    gap = lambda image, target, layer: float(jnp.linalg.norm(grams(image, layer) - grams(resize(target, final), layer)))
    assert gap(scaled.image, fine, "c1") < gap(plain.image, fine, "c1")  # its fine texture moved towards the fine style
    assert gap(scaled.image, coarse, "c2") < gap(every.image, coarse, "c2")  # c2 kept closer to `style`
    assert gap(every.image, fine, "c2") < gap(scaled.image, fine, "c2")


def test_scale_control_is_refused_where_it_cannot_be_honoured(small_network, tmp_path, capsys):
    _, network, params = small_network
    content, style = samples.village(32, 48), samples.swirls(32, 48)
    config = SMALL_NETWORK_CONFIG.replace(num_steps=2)
    run = lambda config, **kw: stylize(content, style, config, params=params, network=network, **kw)
    with pytest.raises(ValueError, match=r"`fine_style` restyles the coarse-to-fine stages after the first, but this"):
        run(config, fine_style=style)  # 48 px: one stage, at the output's size
    staged = config.replace(scales=(24, 48))
    with pytest.raises(ValueError, match=r"`style_blend` has 2 weights, which mix `style` and `fine_style` alike"):
        stylize(content, [style, style], staged.replace(style_blend=(1.0, 1.0)), params=params, network=network,
                fine_style=style)  # fmt: skip
    with pytest.raises(ValueError, match=r"does not combine with spatial control"):
        run(staged, fine_style=style, masks=np.ones((1, 32, 48), np.float32))
    with pytest.raises(ValueError, match=r"`fine_style`.*NaN"):
        run(staged, fine_style=np.full((32, 48, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"`fine_style_layers` \(relu1_1, relu2_1\) must be among the style"):
        run(staged, fine_style=style)  # the default layers are VGG's; this network's are c1, c2
    with pytest.raises(ValueError, match=r"`fine_style_layers` is empty; give one or more style layers"):
        staged.replace(fine_style_layers=())
    content_path, style_path = save_image(tmp_path / "c.png", content), save_image(tmp_path / "s.png", style)
    args = ["stylize", str(content_path), str(style_path), "--fine-style", str(style_path), "--size", "64"]
    (tmp_path / "out").mkdir()
    one_line_error(capsys, [*args, "-o", str(tmp_path / "out" / "x.png")], "this run has one stage (output 64 px")
    assert not any((tmp_path / "out").iterdir())
