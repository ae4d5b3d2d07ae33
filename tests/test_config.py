import pytest

from nst_jax import StyleConfig


def test_defaults_are_valid():
    config = StyleConfig()
    assert config.optimizer == "lbfgs" and config.pooling == "avg" and config.padding == "zeros"
    assert config.content_layers == ("relu4_2",)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"size": 8}, r"`size` must be an integer >= 16, got 8"),
        ({"num_steps": -1}, r"`num_steps` must be an integer >= 0, got -1"),
        ({"style_weight": -1.0}, r"`style_weight` must be a finite number >= 0, got -1.0"),
        ({"content_weight": float("nan")}, r"`content_weight` must be a finite number >= 0"),
        ({"pooling": "sum"}, r"`pooling` must be one of \('avg', 'max'\), got 'sum'"),
        ({"optimizer": "sgd"}, r"`optimizer` must be one of \('lbfgs', 'adam'\), got 'sgd'"),
        ({"style_layers": ("relu1_1", "pool1")}, r"`style_layers` has pooling layer 'pool1'; use conv\* or relu\*"),
        ({"style_layers": ("relu9_1",)}, r"`style_layers` has unknown layer 'relu9_1'; valid layers are"),
        ({"layer_weights": (1.0, 2.0)}, r"`layer_weights` has 2 values for 5 style layers"),
        ({"layer_weights": (1.0, 1.0, 1.0, 1.0, -1.0)}, r"`layer_weights` must all be finite numbers >= 0"),
        ({"layer_weights": (float("inf"), 1.0, 1.0, 1.0, 1.0)}, r"`layer_weights` must all be finite numbers >= 0"),
        ({"seed": 2**70}, r"`seed` must be an integer in \[0, 2\*\*32\), got 1180591620717411303424"),
        ({"seed": -1}, r"`seed` must be an integer in \[0, 2\*\*32\)"),
        ({"lr": 0.0}, r"`lr` must be a positive number or None, got 0.0"),
        ({"box": "wrap"}, r"`box` must be one of \('penalty', 'clip', 'none'\), got 'wrap'"),
        ({"style_layers": (), "content_layers": ()}, "there is nothing to optimise"),
    ],
)
def test_errors_name_the_argument(changes, match):
    with pytest.raises(ValueError, match=match):
        StyleConfig(**changes)


def test_every_field_has_help():
    import dataclasses

    for field in dataclasses.fields(StyleConfig):
        assert field.metadata.get("help"), field.name
