"""Deprecated: this module is now :mod:`nst_jax.sweeps` (the function ``nst_jax.sweep`` shadowed its name).

Kept for one release so that ``from nst_jax.sweep import ...`` still works, with a
``DeprecationWarning``; the function ``nst_jax.sweep`` is unchanged.
"""

import warnings

from nst_jax import sweeps as _new_home


def __getattr__(name: str):
    if name.startswith("__"):  # the import system's own questions (``__path__``): not a name moved
        raise AttributeError(name)
    warnings.warn(
        f"the module nst_jax.sweep is now nst_jax.sweeps: import {name} from nst_jax.sweeps "
        "(nst_jax.sweep goes in the next release)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_new_home, name)
