import importlib
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import SMALL_NETWORK_CONFIG, one_line_error
from PIL import Image

from nst_jax import StyleConfig, memory, optim, samples, stylize
from nst_jax.files import MARKER
from nst_jax.image import fit_long_side, resize
from nst_jax.io import contact_sheet
from nst_jax.objective import anchor_thumbnail
from nst_jax.sweeps import MemoryLimitError, check_axes, members, save_sweep, sweep

sweep_module = importlib.import_module("nst_jax.sweeps")
SMALL = StyleConfig(num_steps=12, chunk_size=5)
NET = SMALL_NETWORK_CONFIG.replace(num_steps=12, chunk_size=5)  # for the small network


@pytest.fixture(scope="module")
def pictures():
    return samples.village(32, 40), samples.swirls(32, 40), samples.swirls(40, 32)[::-1].copy()


def test_members_are_the_product_first_axis_slowest_or_zipped():
    got = members({"ratio": [1e-4, 1e-3], "seed": [0, 1, 2]})
    assert [(m["ratio"], m["seed"]) for m in got] == [(1e-4, 0), (1e-4, 1), (1e-4, 2), (1e-3, 0), (1e-3, 1), (1e-3, 2)]
    zipped = members({"ratio": [1e-4, 1e-3], "seed": [5, 6]}, product=False)
    assert zipped == [{"ratio": 1e-4, "seed": 5}, {"ratio": 1e-3, "seed": 6}]


@pytest.mark.parametrize(
    ("axes", "product", "config", "match"),
    [
        ({}, True, SMALL, "`axes` is empty"),
        ({"style_weight": []}, True, SMALL, r"`axes\['style_weight'\]` is empty"),
        ({"alpha": [1]}, True, SMALL, "unknown axis 'alpha'; valid axes are content_weight, style_weight, ratio"),
        ({"ratio": [1, 2], "seed": [1]}, False, SMALL.replace(init="noise"), "same length, got lengths"),
        ({"style_layers": [("relu1_1",), ("relu9_1",)]}, True, SMALL, "`style_layers` has unknown layer 'relu9_1'"),
        ({"style_layers": [()]}, True, SMALL, "empty layer set"),
        (
            {"style_weight": [1.0, -2.0]},
            True,
            SMALL,
            r"`style_weight` must be a finite number in \[0, 1e\+12\], got -2.0",
        ),
        ({"tv_weight": [float("nan")]}, True, SMALL, r"`tv_weight` must be a finite number in \[0, 1e\+12\]"),
        ({"ratio": [0.0]}, True, SMALL, "`ratio` must be a finite number > 0, got 0.0"),
        ({"ratio": [1e-3], "style_weight": [1.0]}, True, SMALL, "both 'ratio' and 'style_weight'"),
        ({"seed": [0, 1]}, True, SMALL, "sweeps 'seed' but `init` is 'content'"),
        ({"layer_weights": [(1.0, 2.0)]}, True, SMALL, "`layer_weights` has 2 values for 5 style layers"),
        ({"style_weight": [1.0]}, True, SMALL.replace(box="clip"), "`box` 'clip' is not available in sweeps"),
        ({"style_weight": "1,2"}, True, SMALL, "must be a list of values"),
        ({"ratio": [1e-3]}, True, SMALL.replace(preserve_colour="luminance"), "`preserve_colour` 'luminance' is not"),
    ],
)
def test_bad_sweeps_fail_before_any_compilation(axes, product, config, match):
    with pytest.raises(ValueError, match=match):
        check_axes(config, axes, product)


def test_batched_run_matches_independent_runs(small_network, pictures):
    content, style, _ = pictures
    _, network, params = small_network
    axes = {"style_layers": [("c1",), ("c1", "c2")], "ratio": [1e-4, 1e-2]}
    batched = sweep(content, style, NET, axes, params=params, network=network)
    assert batched.losses.shape == (4,) and batched.images.shape == (4, 32, 40, 3)
    assert (batched.steps == NET.num_steps).all()
    for i, member in enumerate(members(axes)):
        alone = sweep(content, style, NET, {k: [v] for k, v in member.items()}, params=params, network=network)
        # Same algorithm, same settings; only the batched convolutions' rounding differs.
        np.testing.assert_allclose(batched.losses[i], alone.losses[0], rtol=2e-3)
        np.testing.assert_allclose(batched.images[i], alone.images[0], atol=2e-2)
    # Layers outside a member's set carry zero weight: their weighted terms vanish.
    assert batched.terms[0]["style/c2"] == 0.0 and batched.terms[0]["style/c1"] > 0
    assert batched.layer_losses[0]["style/c2"] > 0  # measured, unweighted
    assert batched.settings[1] == {"style_layers": ["c1"], "ratio": 1e-2}


def test_network_settings_reach_every_member(real_params, pictures):
    """Padding and precision are static fields of the batched objective; a member equals its own run."""
    content, style, _ = pictures
    config = SMALL.replace(
        padding="reflect", precision="bf16", num_steps=2, style_layers=("relu1_1",), content_layers=("relu2_1",)
    )
    batched = sweep(content, style, config, {"ratio": [1e-3, 1e-2]}, params=real_params)
    alone = sweep(content, style, config, {"ratio": [1e-2]}, params=real_params)
    np.testing.assert_allclose(batched.losses[1], alone.losses[0], rtol=1e-2)  # bf16 rounding differs


def test_sweep_optimises_every_member_and_counts_evaluations(real_params, pictures):
    content, style, _ = pictures
    result = sweep(content, style, SMALL, {"style_weight": [1e2, 1e4]}, params=real_params)
    start = sweep(content, style, SMALL.replace(num_steps=0), {"style_weight": [1e2, 1e4]}, params=real_params)
    assert (result.losses < 0.5 * start.losses).all()
    assert (result.evals >= result.steps + 1).all() and result.iterations >= SMALL.num_steps
    assert result.iterations <= 2 * SMALL.num_steps
    assert start.iterations == 0 and (start.steps == 0).all()


def test_swept_styles_match_runs_with_each_style(small_network, pictures):
    content, style_a, style_b = pictures
    _, network, params = small_network
    run = lambda style, axes: sweep(content, style, NET, axes, params=params, network=network)
    both = run(None, {"style": {"a": style_a, "b": style_b}})
    assert [s["style"] for s in both.settings] == ["a", "b"]
    for i, style in enumerate((style_a, style_b)):
        alone = run(style, {"style_weight": [NET.style_weight]})
        np.testing.assert_allclose(both.losses[i], alone.losses[0], rtol=2e-3)


def test_coarse_to_fine_sweep_continues_each_member_from_its_own_result(small_network, pictures):
    content, style_a, style_b = pictures
    _, network, params = small_network
    config = NET.replace(scales=(20, 40), coarse_steps=5, num_steps=4)
    axes = {"style": {"a": style_a, "b": style_b}}
    seen = []
    staged = sweep(content, None, config, axes, params=params, network=network, callback=seen.append)
    assert staged.images.shape == (2, 32, 40, 3) and list(staged.steps) == [9, 9]
    # The callback sees each stage and the members' current images (the web page's grid fills from them).
    assert [(p.stage, p.num_stages, np.shape(p.images)) for p in (seen[0], seen[-1])] == [
        (0, 2, (2, 16, 20, 3)),
        (1, 2, (2, 32, 40, 3)),
    ]
    np.testing.assert_array_equal(np.asarray(seen[-1].images), staged.images)
    small = lambda image: resize(image, fit_long_side(image.shape[:2], 20))
    single = config.replace(scales=(), num_scales=1)
    # the content is halved; styles under 64 px are kept as they are (their deepest maps would vanish)
    first = sweep(small(content), None, single.replace(num_steps=5), axes, params=params, network=network)
    init = np.stack([np.asarray(resize(image, (32, 40))) for image in first.images])
    # The second stage keeps each member's own first-stage composition (its anchor).
    anchor = anchor_thumbnail(first.images)
    second = sweep_module._sweep(content, None, single, axes, params=params, network=network, init=init, anchor=anchor)
    np.testing.assert_array_equal(staged.images, second.images)
    assert all("anchor" in terms for terms in staged.terms) and not any("anchor" in t for t in first.terms)
    free = sweep_module._sweep(content, None, single, axes, params=params, network=network, init=init)
    assert not np.array_equal(free.images, second.images)
    assert staged.iterations == first.iterations + second.iterations
    with pytest.raises(ValueError, match=r"`init` must be \[2, 32, 40, 3\], got \(1, 32, 40, 3\)"):
        sweep(content, None, single, axes, params=params, network=network, init=init[:1])


def test_a_stop_in_a_coarser_stage_ends_the_sweep(small_network, pictures):
    """As stylize: the page's cancel of a staged sweep does not go on to the next stage."""
    content, style, _ = pictures
    _, network, params = small_network
    seen = []
    stop = lambda progress: seen.append(progress.stage) or True
    config = NET.replace(scales=(20, 40), coarse_steps=10, num_steps=10, chunk_size=2)
    result = sweep(content, style, config, {"style_weight": [1.0, 10.0]}, params=params, network=network, callback=stop)
    assert seen == [0] and result.images.shape == (2, 16, 20, 3)
    assert (result.steps <= 2).all() and result.config == config


def test_scale_control_in_a_sweep_sets_the_fine_layers_of_every_member(small_network, pictures):
    """Issue 29: `fine_style` in a sweep, as in stylize: the first stage composes with each member's
    style; the later ones take `fine_style_layers` from the fine style, the rest from the style."""
    content, style_a, style_b = pictures
    _, network, params = small_network
    config = NET.replace(scales=(20, 40), coarse_steps=4, num_steps=4, fine_style_layers=("c1",))
    axes = {"style": {"a": style_a, "b": style_b}}
    run = lambda **kw: sweep(content, None, config, axes, params=params, network=network, **kw)
    plain, scaled = run(), run(fine_style=style_b)
    np.testing.assert_array_equal(scaled.images[1], plain.images[1])  # member b: its fine style is its style
    assert not np.allclose(scaled.images[0], plain.images[0])
    # The second stage by hand: member a's c1 target is style_b's, its c2 target style_a's.
    first = sweep(content, None, config.replace(scales=(20,), num_steps=4), axes, params=params, network=network)
    init = np.stack([np.asarray(resize(image, (32, 40))) for image in first.images])
    single = config.replace(scales=(), num_scales=1)
    second = sweep_module._sweep(
        content, None, single, axes, params=params, network=network, init=init,
        anchor=anchor_thumbnail(first.images), stage_fine_style=style_b,
    )  # fmt: skip
    np.testing.assert_array_equal(scaled.images, second.images)
    shared = sweep(content, style_a, config, {"style_weight": [1.0, 5.0]}, params=params, network=network,
                   fine_style=style_b)  # fmt: skip
    assert shared.images.shape == (2, 32, 40, 3) and np.isfinite(shared.images).all()
    with pytest.raises(ValueError, match=r"`fine_style` restyles the coarse-to-fine stages after the first"):
        sweep(content, style_a, NET, {"style_weight": [1.0]}, params=params, network=network, fine_style=style_b)
    # A "fine_style" axis: one fine style per member; each member is the run with that fine style alone.
    swept = sweep(content, style_a, config, {"fine_style": {"a": style_a, "b": style_b}}, params=params,
                  network=network)  # fmt: skip
    one = lambda **kw: sweep(
        content, style_a, config, {"tv_weight": [config.tv_weight]}, params=params, network=network, **kw
    ).images[0]
    np.testing.assert_allclose(swept.images[0], one(), atol=2e-2)  # its fine style is its style
    np.testing.assert_allclose(swept.images[1], one(fine_style=style_b), atol=2e-2)
    assert np.abs(swept.images[0] - swept.images[1]).max() > 0.04 and swept.settings[1] == {"fine_style": "b"}
    plan = sweep(content, style_a, config, {"fine_style": {"a": style_a, "b": style_b}}, params=params,
                 network=network, dry_run=True)  # fmt: skip
    assert plan.shape == (32, 40) and plan.batch_size == 2
    with pytest.raises(ValueError, match=r"`fine_style` and a 'fine_style' axis were both given"):
        sweep(content, style_a, config, {"fine_style": {"b": style_b}}, params=params, network=network,
              fine_style=style_b)  # fmt: skip


def test_noise_seeds_and_adam(real_params, pictures):
    content, style, _ = pictures
    config = SMALL.replace(init="noise", optimizer="adam", num_steps=6)
    result = sweep(content, style, config, {"seed": [0, 1, 0]}, params=real_params)
    np.testing.assert_allclose(result.images[0], result.images[2], atol=1e-6)
    assert np.abs(result.images[0] - result.images[1]).max() > 0.1
    assert (result.steps == 6).all() and (result.evals == 7).all()
    assert result.num_steps is result.steps and result.num_evals is result.evals  # Result's names


def test_batches_run_in_turn_and_too_large_a_batch_is_refused(small_network, pictures, monkeypatch):
    content, style, _ = pictures
    _, network, params = small_network
    axes = {"style_weight": [1e2, 1e3, 1e4]}
    whole = sweep(content, style, NET, axes, params=params, network=network)
    parts = sweep(content, style, NET, axes, params=params, network=network, batch_size=2)
    assert parts.batch_size == 2
    np.testing.assert_allclose(parts.losses, whole.losses, rtol=2e-3)
    monkeypatch.setattr(memory, "available_memory", lambda device: 1 << 20)
    with pytest.raises(MemoryLimitError, match=r"`batch_size` 2 needs about .* GiB per device, more than 80% of"):
        sweep(content, style, NET, axes, params=params, network=network, batch_size=2)


def test_auto_batch_size_halves_until_it_fits(small_network, pictures, monkeypatch):
    content, style, _ = pictures
    _, network, params = small_network
    measure = optim.program_bytes
    needed = []
    monkeypatch.setattr(optim, "program_bytes", lambda compiled: needed.append(measure(compiled)) or needed[-1])
    config, axes = NET.replace(num_steps=1), {"style_weight": [1, 2, 3, 4]}
    assert sweep(content, style, config, axes, params=params, network=network).batch_size == 4
    four = max(needed)
    needed.clear()
    assert sweep(content, style, config, axes, params=params, network=network, batch_size=2).batch_size == 2
    two = max(needed)
    assert two < four
    monkeypatch.setattr(memory, "available_memory", lambda device: int((two + four) / 2 / 0.8))
    result = sweep(content, style, config, axes, params=params, network=network)
    assert result.batch_size == 2 and len(result.losses) == 4


def test_save_sweep_writes_images_json_and_a_labelled_grid(tmp_path, real_params, pictures):
    content, style, _ = pictures
    axes = {"style_layers": [("relu1_1",), ("relu1_1", "relu2_1")], "ratio": [1e-4, 1e-3, 1e-2]}
    result = sweep(content, style, SMALL.replace(num_steps=2), axes, params=real_params)
    with pytest.raises(ValueError, match="`config` differs from the one the sweep ran with in num_steps"):
        save_sweep(tmp_path / "out", result, SMALL)  # the README's old mistake: not what the sweep used
    assert not (tmp_path / "out").exists()
    assert result.config == SMALL.replace(num_steps=2)
    path = save_sweep(tmp_path / "out", result, content="c.png")
    data = json.loads(path.read_text())
    assert data["config"]["num_steps"] == 2, "sweep.json records the settings the sweep ran with"
    assert data["content"] == "c.png" and data["axes"]["ratio"] == [1e-4, 1e-3, 1e-2]
    assert [m["file"] for m in data["members"]][:2] == [
        "000_style_layers=relu1_1_ratio=0.0001.png",
        "001_style_layers=relu1_1_ratio=0.001.png",
    ]
    first = data["members"][0]
    assert set(first) >= {"settings", "loss", "terms", "layer_losses", "steps", "evals"}
    assert first["steps"] == 2
    for member in data["members"]:
        with Image.open(tmp_path / "out" / member["file"]) as image:
            assert image.size == (40, 32)
    with Image.open(tmp_path / "out" / "grid.png") as grid:
        assert grid.width > 3 * 40 and grid.height > 2 * 32
    hidden = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("."))
    assert hidden == [MARKER], "no temporary files left; the marker says the folder is a sweep's"


def test_contact_sheet_places_tiles_and_checks_counts():
    tiles = [np.full((10, 12, 3), v, np.float32) for v in (0.0, 0.25, 0.5, 1.0)]
    sheet = contact_sheet(tiles, ["a", "b"], ["x", "y"], row_title="rows", column_title="cols")
    assert sheet.shape[2] == 3 and sheet.shape[0] > 20 and sheet.shape[1] > 24
    with pytest.raises(ValueError, match="`images` has 4 images for 3 rows x 2 columns"):
        contact_sheet(tiles, ["a", "b", "c"], ["x", "y"])


_SHARDED = """
import jax, numpy as np
from nst_jax import StyleConfig, load_params, samples
from nst_jax.sweeps import sweep
assert len(jax.devices()) == 4, jax.devices()
params, _ = load_params()
content, style = samples.village(24, 24), samples.swirls(24, 24)
config = StyleConfig(num_steps=6)
axes = {"style_weight": [1e2, 1e3, 1e4, 3e3, 5e2]}
sharded = sweep(content, style, config, axes, params=params)
single = sweep(content, style, config, axes, params=params, devices=jax.devices()[:1])
assert sharded.batch_size == 8 and single.batch_size == 5, (sharded.batch_size, single.batch_size)
# Per-device batches of 2 vs one of 5 reduce in another order: float32 trajectories drift by a few 1e-4
# after 6 L-BFGS steps (CI saw 3.3e-4 on one member with the style weight 36 / TV 40 defaults).
np.testing.assert_allclose(sharded.losses, single.losses, rtol=1e-3)
np.testing.assert_allclose(sharded.images, single.images, atol=5e-3)
print("ok")
"""


@pytest.mark.slow
def test_sharded_over_four_devices_equals_one_device(real_params):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SHARDED)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_cli_sweep(tmp_path, capsys, real_params):
    from nst_jax import cli, save_image

    content, style_a, style_b = tmp_path / "c.png", tmp_path / "a.png", tmp_path / "b.png"
    save_image(content, samples.village(24, 32))
    save_image(style_a, samples.swirls(24, 32))
    save_image(style_b, samples.swirls(32, 24))
    out = tmp_path / "out"
    argv = ["sweep", str(content), str(style_a), str(style_b), "-o", str(out), "--size", "32", "--steps", "3", "-q"]
    assert cli.main([*argv, "--vary", "style_weight=1e2,1e4"]) == 0
    data = json.loads((out / "sweep.json").read_text())
    assert [m["settings"] for m in data["members"]] == [
        {"style_weight": 100.0, "style": "a"},
        {"style_weight": 100.0, "style": "b"},
        {"style_weight": 10000.0, "style": "a"},
        {"style_weight": 10000.0, "style": "b"},
    ]
    assert (out / "grid.png").exists() and len(list(out.glob("0*.png"))) == 4


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--vary", "alpha=1,2"], "--vary has unknown axis 'alpha'; valid axes are content_weight"),
        (["--vary", "ratio"], "--vary must look like NAME=V1,V2"),
        (["--vary", "ratio=a,b"], "--vary ratio: cannot read 'a,b'"),
        (["--vary", "style_layers=relu1_1,relu1_1+relu7_1"], "`style_layers` has unknown layer 'relu7_1'"),
        (["--vary", "style_weight=-1,2"], "`style_weight` must be a finite number in [0, 1e+12], got -1.0"),
        ([], "nothing to sweep"),
        (["--vary", "ratio=1e-3", "--vary", "ratio=1e-2"], "--vary names an axis twice"),
    ],
)
def test_cli_sweep_mistakes_are_one_line(tmp_path, capsys, extra, match):
    from nst_jax import save_image

    content = tmp_path / "c.png"
    save_image(content, samples.village(16, 16))
    out = tmp_path / "out"
    one_line_error(capsys, ["sweep", str(content), str(content), "-o", str(out), *extra], match)
    assert not out.exists()


def test_compiled_once_for_repeated_sweeps(real_params):
    content, style = samples.village(24, 28), samples.swirls(24, 28)  # a shape no other test compiles
    compiles = []

    def listener(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        sweep(content, style, SMALL.replace(num_steps=1), {"style_weight": [1, 2]}, params=real_params)
        first = len(compiles)
        sweep(content, style, SMALL.replace(num_steps=2), {"style_weight": [3, 4]}, params=real_params)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert first > 0 and len(compiles) == first


def test_style_scale_and_histogram_colour_apply_to_sweeps_as_to_stylize(real_params, pictures):
    content, style, _ = pictures
    config = SMALL.replace(num_steps=0, style_scale=0.5, preserve_colour="histogram")
    weight = {"style_weight": [config.style_weight]}
    swept = sweep(content, style, config, weight, params=real_params)
    plain = sweep(content, style, SMALL.replace(num_steps=0), weight, params=real_params)
    from nst_jax.objective import make_objective
    from nst_jax.transfer import prepare_styles

    prepared = prepare_styles(style, content.shape[:2], config, content=content)[0]
    expected = make_objective(real_params, content, prepared, config)(content)[0]
    np.testing.assert_allclose(swept.losses[0], expected, rtol=1e-4)
    assert abs(swept.losses[0] - plain.losses[0]) > 1e-3 * plain.losses[0]


def test_cli_sweep_fine_style_is_checked_before_the_run(tmp_path, capsys):
    from nst_jax import save_image

    content = save_image(tmp_path / "c.png", samples.village(16, 16))
    out = tmp_path / "out"
    argv = ["sweep", str(content), str(content), "-o", str(out), "--fine-style", str(content), "--vary", "ratio=1,2"]
    one_line_error(capsys, [*argv, "--size", "200"], "`fine_style` restyles the coarse-to-fine stages after the first")
    one_line_error(capsys, [*argv, "--fine-style-layers", "relu4_2"], "`fine_style_layers` (relu4_2) must be among")
    assert not out.exists()


def test_a_sweep_member_is_the_picture_stylize_makes(small_network, pictures):
    """The sweep's batched L-BFGS (nst_jax.lbfgs) and stylize's (optax) take the same path (issue 24's goal 3)."""
    content, style, _ = pictures
    _, network, params = small_network
    config = NET.replace(num_steps=30, chunk_size=10)
    alone = stylize(content, style, config, params=params, network=network)
    member = sweep(content, style, config, {"style_weight": [config.style_weight]}, params=params, network=network)
    assert float(member.losses[0]) == pytest.approx(float(alone.loss), rel=1e-3)
    difference = np.abs(np.asarray(member.images[0]) - np.asarray(alone.image))
    assert difference.mean() < 1e-3 and difference.max() < 2e-2
