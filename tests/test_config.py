import pytest

from nst_jax import StyleConfig


def test_defaults_are_valid():
    config = StyleConfig()
    assert config.optimizer == "lbfgs" and config.pooling == "avg" and config.padding == "zeros"
    assert config.content_layers == ("relu4_2",)


NUMBER = r"must be a finite number in \[0, 1e\+12\]"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"size": 8}, r"`size` must be an integer in \[16, 16384\], got 8"),
        ({"size": float("nan")}, r"`size` must be an integer in \[16, 16384\], got nan"),
        ({"size": 2**20}, r"`size` must be an integer in \[16, 16384\], got 1048576"),
        ({"num_steps": -1}, r"`num_steps` must be an integer in \[0, 1000000\], got -1"),
        # The cases of issue 25: each hung a run, took gigabytes or overflowed a counter.
        ({"memory_size": 2**31}, r"`memory_size` must be an integer in \[1, 100\], got 2147483648"),
        ({"memory_size": 50000}, r"`memory_size` must be an integer in \[1, 100\]"),
        ({"num_steps": 2**31}, r"`num_steps` must be an integer in \[0, 1000000\], got 2147483648"),
        ({"num_steps": 1e308}, r"`num_steps` must be an integer in \[0, 1000000\], got 1e\+308"),
        ({"coarse_steps": 2**63}, r"`coarse_steps` must be an integer in \[0, 1000000\]"),
        ({"chunk_size": 10**6}, r"`chunk_size` must be an integer in \[1, 10000\]"),
        ({"save_every": 2**40}, r"`save_every` must be an integer in \[0, 1000000\]"),
        ({"num_scales": 1000}, r"`num_scales` must be an integer in \[0, 32\]"),
        ({"seed": 10**5000}, r"`seed` must be an integer in \[0, 4294967295\], got an integer of 16610 bits"),
        ({"seed": 2**70}, r"`seed` must be an integer in \[0, 4294967295\], got 1180591620717411303424"),
        ({"seed": -1}, r"`seed` must be an integer in \[0, 4294967295\]"),
        ({"seed": 1.5}, r"`seed` must be an integer"),
        ({"style_weight": -1.0}, rf"`style_weight` {NUMBER}, got -1.0"),
        ({"style_weight": 10**400}, rf"`style_weight` {NUMBER}, got 1000000000"),  # shown by its start
        ({"tv_weight": float("inf")}, rf"`tv_weight` {NUMBER}, got inf"),
        ({"content_weight": float("nan")}, rf"`content_weight` {NUMBER}"),
        ({"anchor_weight": "10"}, rf"`anchor_weight` {NUMBER}, got '10'"),
        ({"scales": tuple(range(16, 60))}, r"`scales` must be at most 32 increasing integers"),
        ({"scales": (64, 2**20)}, r"`scales` must be at most 32 increasing integers in \[16, 16384\]"),
        ({"style_blend": (1.0,) * 300}, r"`style_blend` must be 1 to 256 weights"),
        ({"style_blend": (1.0, float("nan"))}, rf"`style_blend` {NUMBER}, got nan"),
        ({"pooling": "sum"}, r"`pooling` must be one of \('avg', 'max', 'mixed'\), got 'sum'"),
        ({"optimizer": "sgd"}, r"`optimizer` must be one of \('lbfgs', 'adam'\), got 'sgd'"),
        ({"style_layers": ("relu1_1", "pool1")}, r"`style_layers` has pooling layer 'pool1'; use conv\* or relu\*"),
        ({"style_layers": ("relu9_1",)}, r"`style_layers` has unknown layer 'relu9_1'; valid layers are"),
        ({"layer_weights": (1.0, 2.0)}, r"`layer_weights` has 2 values for 5 style layers"),
        ({"layer_weights": (1.0, 1.0, 1.0, 1.0, -1.0)}, rf"`layer_weights` {NUMBER}, got -1.0"),
        ({"layer_weights": (float("inf"), 1.0, 1.0, 1.0, 1.0)}, rf"`layer_weights` {NUMBER}, got inf"),
        ({"lr": 0.0}, r"`lr` must be a finite number in \(0, 1e\+06\] or None \(a line search\), got 0.0"),
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
