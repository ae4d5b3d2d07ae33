"""Readers for foreign VGG weight files (installed as ``nst_jax.converters``).

Converters stay outside the hot path: they turn a file into the project's one
canonical form (a dict of numpy arrays in PyTorch layout, then Flax parameters)
and are never imported by the optimisation loop.
"""

from nst_jax.converters.torch_pickle import (
    ALLOWED_GLOBALS,
    UnsafePickleError,
    load_torch_state_dict,
)

__all__ = ["ALLOWED_GLOBALS", "UnsafePickleError", "load_torch_state_dict"]
