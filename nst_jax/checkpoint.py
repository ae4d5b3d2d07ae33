"""Saving and restoring the optimisation loop's state (image and optimiser state) as orbax checkpoints.

A checkpoint directory holds ``state/`` (the :class:`~nst_jax.optim.LoopState` pytree,
optimiser state included) and ``run.json`` (the loss history and the image shape). It is
written beside its final path and renamed into place, so it appears whole or not at all;
a run resumed from it continues exactly where the saved one was (bit-identical on CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

_STATE = "state"
_RUN = "run.json"


def write_directory(directory: str | os.PathLike, pytree, name: str, metadata: dict) -> Path:
    """Writes ``pytree`` (orbax, in ``directory/name``) and ``metadata`` (JSON) so ``directory`` appears whole.

    Everything is written to a staging directory beside ``directory`` and renamed into place;
    an existing ``directory`` is moved aside first and removed only after the rename.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / name, jax.tree.map(np.asarray, pytree))
        for file, data in metadata.items():
            (staging / file).write_text(json.dumps(data, indent=1, sort_keys=True))
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(staging, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def save_checkpoint(directory: str | os.PathLike, state, history: list[tuple[int, float]]) -> Path:
    """Writes ``state`` (any pytree of arrays) and ``history`` atomically to ``directory``."""
    run = {"history": [[int(s), float(v)] for s, v in history], "image_shape": list(np.shape(state.image))}
    return write_directory(directory, state, _STATE, {_RUN: run})


def restore_checkpoint(directory: str | os.PathLike, like) -> tuple[object, list[tuple[int, float]]]:
    """Reads a checkpoint into the structure and types of ``like`` (a fresh state of the same run).

    Raises:
      FileNotFoundError: no checkpoint there.
      ValueError: the checkpoint is of another image shape or optimiser.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if not (directory / _RUN).is_file():
        raise FileNotFoundError(f"`resume`: no checkpoint in {str(directory)!r} (expected {_STATE}/ and {_RUN})")
    run = json.loads((directory / _RUN).read_text())
    saved, ours = tuple(run["image_shape"]), tuple(np.shape(like.image))
    if saved != ours:
        raise ValueError(
            f"`resume`: the checkpoint's image is {saved}, this run's is {ours}; use the same inputs and size"
        )
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            state = checkpointer.restore(directory / _STATE, abstract)
        except Exception as e:  # orbax raises several types for a foreign tree
            raise ValueError(f"`resume`: {directory} does not fit this run's optimiser state ({e})") from None
    state = jax.tree.map(lambda x, ref: jax.numpy.asarray(x, dtype=np.asarray(ref).dtype), state, like)
    return state, [(int(s), float(v)) for s, v in run["history"]]
