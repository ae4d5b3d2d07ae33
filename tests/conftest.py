import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import StyleConfig, from_flax, vgg


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test session converts the default weights into its own cache."""
    old = os.environ.get("NST_JAX_CACHE")
    os.environ["NST_JAX_CACHE"] = str(tmp_path_factory.mktemp("nst-jax-cache"))
    yield
    if old is None:
        os.environ.pop("NST_JAX_CACHE", None)
    else:
        os.environ["NST_JAX_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_params():
    """Random VGG-19 parameters, scaled so activations stay O(1) through the net."""
    params = vgg.init_params(jax.random.key(0))
    return jax.tree.map(lambda x: x * 1.0, params)


@pytest.fixture(scope="session")
def real_params(_isolated_cache):
    from nst_jax.weights import load_params

    params, _ = load_params()
    return jax.tree.map(jnp.asarray, params)


class SmallCNN(nn.Module):
    """A random two-stage CNN: 'c1' at full size, 'c2' at half size."""

    @nn.compact
    def __call__(self, x):
        c1 = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x - 0.5))
        c2 = nn.relu(nn.Conv(12, (3, 3), name="conv2")(nn.avg_pool(c1, (2, 2), strides=(2, 2))))
        return {"c1": c1, "c2": c2}


# Settings for SmallCNN: orchestration tests (batching, stages, masks, checkpoints) run on it,
# where VGG-19's numbers are not the point; each VGG-19 program costs seconds of compiling.
SMALL_NETWORK_CONFIG = StyleConfig(network="custom", content_layers=("c2",), style_layers=("c1", "c2"))


@pytest.fixture(scope="session")
def small_network():
    """(module, FeatureNetwork, params) of :class:`SmallCNN`."""
    module = SmallCNN()
    params = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
    return module, from_flax(module, name="small"), params


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_image(rng, h=32, w=32):
    return rng.random((h, w, 3)).astype(np.float32)


def one_line_error(capsys, argv, match):
    """Runs the CLI and checks a user mistake: exit 2 and one line ``nst-jax: error: ...`` containing ``match``."""
    from nst_jax import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nst-jax: error: "), err
    assert match in err, err
