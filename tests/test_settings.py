"""The settings layer the command line and the web page share (nst_jax.settings)."""

import dataclasses

import pytest

from nst_jax import cli, jobs, settings
from nst_jax.config import StyleConfig


def test_every_field_is_a_setting_with_its_kind():
    found = {s.name: s for s in settings.settings(skip=())}
    assert list(found) == [f.name for f in dataclasses.fields(StyleConfig)]
    assert (found["size"].kind, found["size"].item, found["size"].optional) == ("int", int, False)
    assert (found["style_weight"].kind, found["style_weight"].item) == ("float", float)
    assert (found["style_layers"].kind, found["style_layers"].item) == ("list", str)
    assert (found["layer_weights"].kind, found["layer_weights"].item, found["layer_weights"].optional) == (
        "list",
        float,
        True,
    )
    assert (found["coarse_steps"].kind, found["coarse_steps"].optional) == ("int", True)
    assert found["optimizer"].choices == ("lbfgs", "adam")
    assert "network" not in {s.name for s in settings.settings()}  # a Python object: library only


def test_unknown_setting_is_named():
    with pytest.raises(ValueError, match=r"unknown setting 'sise'; valid settings are .*size"):
        settings.setting("sise")


def test_the_command_and_the_page_offer_the_same_settings():
    """Both read StyleConfig's fields through nst_jax.settings: the page offers what the CLI does, less its own."""
    parser = cli._build_parser()
    stylize = parser._subparsers._group_actions[0].choices["stylize"]
    flags = {a.dest for a in stylize._actions}
    page = {o["name"] for o in jobs.options()}
    assert page == {s.name for s in settings.settings()} - set(jobs.SERVER_ONLY_FIELDS)
    assert page <= flags


def test_config_from_takes_the_size_from_the_last_scale():
    assert settings.config_from({"scales": (128, 256, 300)}).size == 300
    assert settings.config_from({"size": 200}).size == 200
    with pytest.raises(ValueError, match="size"):
        settings.config_from({"size": 1})


def test_check_style_blend_counts_the_styles():
    settings.check_style_blend(StyleConfig(style_blend=(1.0, 2.0)), 2)
    settings.check_style_blend(StyleConfig(), 3)
    with pytest.raises(ValueError, match=r"`style_blend` has 2 weights for 3 style images"):
        settings.check_style_blend(StyleConfig(style_blend=(1.0, 2.0)), 3)


def test_check_shapes_refuses_a_style_too_small():
    settings.check_shapes(StyleConfig(size=64), (48, 64), [(64, 64)])
    with pytest.raises(ValueError, match="style"):
        settings.check_shapes(StyleConfig(size=64), (48, 64), [(4, 4)])
