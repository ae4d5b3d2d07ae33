"""Deprecated: this module is now :mod:`nst_jax.transfer` (the function ``nst_jax.stylize`` shadowed its name).

Kept for one release so that ``from nst_jax.stylize import ...`` still works, with a
``DeprecationWarning``; the function ``nst_jax.stylize`` is unchanged.
"""

import warnings

from nst_jax import transfer as _new_home


def __getattr__(name: str):
    if name.startswith("__"):  # the import system's own questions (``__path__``): not a name moved
        raise AttributeError(name)
    warnings.warn(
        f"the module nst_jax.stylize is now nst_jax.transfer: import {name} from nst_jax.transfer "
        "(nst_jax.stylize goes in the next release)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_new_home, name)
