"""nst-jax: neural style transfer (Gatys, Ecker, Bethge) in JAX/Flax.

Images are float32 ``[height, width, 3]`` RGB in [0, 1]. ``features`` and ``gram``
take any leading batch axes; ``perceptual_loss`` gives per-item losses of a batch for
training loops; the objective is per image (batch it with ``jax.vmap``).
"""

# The deprecated modules nst_jax.stylize and nst_jax.sweep (now transfer and sweeps) load first, so
# that importing one later cannot rebind the names below, the functions, to a module.
import nst_jax.stylize
import nst_jax.sweep  # noqa: F401
from nst_jax.checkpoint import CheckpointError
from nst_jax.config import INITS, OPTIMIZERS, StyleConfig
from nst_jax.image import fit_long_side, initial_image, match_colour, resize
from nst_jax.io import load_image, load_proof_profile, save_image, soft_proof
from nst_jax.losses import content_loss, gram, style_layer_loss, style_loss, total_variation
from nst_jax.memory import MemoryLimitError
from nst_jax.network import FeatureNetwork, from_flax
from nst_jax.objective import Objective, default_layer_weights, make_objective
from nst_jax.optim import LoopState, image_mesh, init_loop, make_optimizer, run_chunk
from nst_jax.perceptual import PerceptualLoss, perceptual_loss
from nst_jax.sweeps import SWEEP_AXES, SweepPlan, SweepProgress, SweepResult, save_sweep, sweep
from nst_jax.transfer import Interrupted, Progress, Result, optimize, stylize
from nst_jax.vgg import LAYERS, PADDINGS, POOLINGS, VGG19, features
from nst_jax.weights import WeightsInfo, cache_dir, load_params

__version__ = "0.1.0"

__all__ = [
    "INITS",
    "LAYERS",
    "OPTIMIZERS",
    "PADDINGS",
    "POOLINGS",
    "SWEEP_AXES",
    "VGG19",
    "CheckpointError",
    "FeatureNetwork",
    "Interrupted",
    "LoopState",
    "MemoryLimitError",
    "Objective",
    "PerceptualLoss",
    "Progress",
    "Result",
    "StyleConfig",
    "SweepPlan",
    "SweepProgress",
    "SweepResult",
    "WeightsInfo",
    "cache_dir",
    "content_loss",
    "default_layer_weights",
    "features",
    "fit_long_side",
    "from_flax",
    "gram",
    "image_mesh",
    "init_loop",
    "initial_image",
    "load_image",
    "load_params",
    "load_proof_profile",
    "make_objective",
    "make_optimizer",
    "match_colour",
    "optimize",
    "perceptual_loss",
    "resize",
    "run_chunk",
    "save_image",
    "save_sweep",
    "soft_proof",
    "style_layer_loss",
    "style_loss",
    "stylize",
    "sweep",
    "total_variation",
]
