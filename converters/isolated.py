"""Runs the readers that rest on C libraries (HDF5 via h5py, scipy's MAT reader) in a child process.

Our own checks come first (declared shapes, links, sizes), but a mutated file can still
reach a bug in the library itself: a segfault, an allocation of what a header claims, a
loop. The child has an address-space limit and the parent a time limit, so the worst a
file can do is end the child; the parent reports it in one line. The child sends the
parameters back as an ``.npz`` read with ``allow_pickle=False``: nothing it writes can run
code in the parent.

Run as ``python -m nst_jax.converters.isolated FORMAT SOURCE OUT.npz``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Limits of the child: address space (the libraries, numpy and a whole VGG-19 with its
# classifier, 575 MB, read once and converted once, fit in about 2.5 GB) and wall time
# (a real file converts in 2-10 s).
MEMORY_LIMIT_BYTES = 4 << 30
TIME_LIMIT_SECONDS = 120.0


def _limit_memory() -> None:
    """Caps the child's address space, no core dumps (set by the child: forking a JAX process is unsafe)."""
    try:
        import resource
    except ImportError:  # not POSIX: the time limit still holds
        return
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def convert_isolated(path: str | os.PathLike, format: str) -> dict:
    """Converts ``path`` (``keras`` or ``matconvnet``) in a limited child process; returns canonical parameters.

    Raises:
      ValueError: one line for every way the child can fail (its own message, a crash,
        the memory or time limit).
    """
    from nst_jax.converters.common import require
    from nst_jax.vgg import check_params, param_shapes

    require(*{"keras": ("h5py", "h5py"), "matconvnet": ("scipy.io", "scipy")}[format])  # one line if missing
    path = Path(path).absolute()
    with tempfile.TemporaryDirectory(prefix="nst-jax-convert.") as folder:
        out = Path(folder) / "params.npz"
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore"}
        command = [sys.executable, "-m", "nst_jax.converters.isolated", format, str(path), str(out)]
        try:
            child = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=env,
                timeout=TIME_LIMIT_SECONDS,
                cwd=folder,  # `-m` puts the working folder first on sys.path: never a source checkout's nst_jax
            )
        except subprocess.TimeoutExpired:
            raise ValueError(f"{path}: reading took over {TIME_LIMIT_SECONDS:.0f} s; not a weight file") from None
        if child.returncode < 0:
            name = signal.Signals(-child.returncode).name
            raise ValueError(f"{path}: the {format} reader crashed on this file ({name}); it is damaged or hostile")
        if child.returncode != 0:
            lines = [line for line in child.stderr.strip().splitlines() if line.strip()]
            message = lines[-1] if lines else f"exit status {child.returncode}"
            if "MemoryError" in child.stderr or "Cannot allocate" in child.stderr:
                message = f"{path}: reading it needs more than {MEMORY_LIMIT_BYTES >> 30} GB; not a usable weight file"
            raise ValueError(message.removeprefix("ValueError: "))
        params: dict = {}
        with np.load(out, allow_pickle=False) as arrays:
            names = lambda depth: sorted(
                f"{layer}/{leaf}" for layer, leaves in param_shapes(depth).items() for leaf in leaves
            )
            if sorted(arrays.files) not in (names(19), names(16)):
                raise ValueError(f"{path}: the reader returned other arrays than VGG-19's or VGG-16's")
            for key in arrays.files:
                layer, leaf = key.split("/")
                params.setdefault(layer, {})[leaf] = np.asarray(arrays[key], np.float32)
    check_params(params)
    return params


def _main(format: str, source: str, out: str) -> int:
    _limit_memory()
    if format == "keras":
        from nst_jax.converters.keras_h5 import convert_keras_h5 as read
    elif format == "matconvnet":
        from nst_jax.converters.matconvnet import convert_matconvnet as read
    else:
        print(f"unknown format {format!r}", file=sys.stderr)
        return 2
    try:
        params = read(source)
    except ValueError as e:
        print(str(e).splitlines()[0] if str(e) else "ValueError", file=sys.stderr)
        return 2
    except MemoryError:
        print("MemoryError", file=sys.stderr)
        return 2
    np.savez(out, **{f"{layer}/{leaf}": value for layer, leaves in params.items() for leaf, value in leaves.items()})
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:4]))
