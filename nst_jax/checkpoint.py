"""Saving and restoring the optimisation loop's state (image and optimiser state) as orbax checkpoints.

A checkpoint directory holds ``state/`` (the :class:`~nst_jax.optim.LoopState` pytree,
optimiser state included) and ``run.json`` (the loss history and the image shape). It is
written beside its final path and renamed into place, so it appears whole or not at all;
a run resumed from it continues exactly where the saved one was (bit-identical on CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol, TypeVar

import jax
import numpy as np

from nst_jax.files import write_folder


class _State(Protocol):  # what a checkpoint restores into: an optim.LoopState
    @property
    def image(self) -> Any: ...


T = TypeVar("T", bound=_State)

_STATE = "state"
_RUN = "run.json"
KIND = "checkpoint"  # what our marker file says (nst_jax.files.MARKER)
CHECKPOINT_FILES = (_STATE, _RUN)  # what a checkpoint folder holds besides the marker


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: missing, damaged, or of other inputs or settings."""


def write_directory(directory: str | os.PathLike, pytree, name: str, metadata: dict, kind: str) -> Path:
    """Writes ``pytree`` (orbax, in ``directory/name``) and ``metadata`` (name -> JSON) so ``directory`` appears whole.

    ``directory`` must be new, empty, or an earlier output of ours of the same ``kind``
    (:func:`nst_jax.files.write_folder`); anything else is refused, nothing is deleted.
    """
    import orbax.checkpoint as ocp

    def fill(staging: Path) -> None:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / name, jax.tree.map(np.asarray, pytree))
        for file, data in metadata.items():
            (staging / file).write_text(json.dumps(data, indent=1, sort_keys=True))

    return write_folder(directory, kind, fill, allowed={name, *metadata})


def _digest(tree) -> str:
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.data.cast("B"))
    return digest.hexdigest()


# What each part of an Objective stands for, in a resume error.
_PARTS = {
    "weights": "network weights",
    "content": "content image (or content layers, size or colour setting)",
    "style": "style images (or style layers, style scale, colour setting or masks)",
    "content_weights": "content image's flat regions (flat_content_weight, flat_fraction)",
    "anchor": "first coarse-to-fine stage (the composition the later stages keep)",
    "objective": "objective",
}


def fingerprint(objective, config) -> dict:
    """What a checkpoint must agree on with the run that resumes it: the settings, and digests of the targets.

    The settings are the optimiser's and (for an :class:`~nst_jax.objective.Objective`) the
    loss weights and network options, by name; the arrays (weights, content and style
    targets) by sha256 digest. Any other objective is digested whole.
    """
    from nst_jax.objective import Objective

    settings = {name: getattr(config, name) for name in ("optimizer", "lr", "memory_size", "box")}
    extra: dict[str, Any] = {}
    if isinstance(objective, Objective):
        scalar = lambda x: None if x is None else float(np.asarray(x))
        settings.update(
            content_weight=scalar(objective.content_weight),
            style_weight=scalar(objective.style_weight),
            tv_weight=scalar(objective.tv_weight),
            layer_weights={k: scalar(v) for k, v in sorted(objective.layer_weights.items())},
            loss_scale=objective.loss_scale,
            pooling=objective.pooling,
            padding=objective.padding,
            precision=objective.precision,
            network=None if objective.network is None else objective.network.name,
        )
        parts: dict[str, Any] = {
            "weights": objective.params,
            "content": objective.content_targets,
            "style": (objective.style_targets, objective.style_masks, objective.region_weights),
        }
        if objective.content_weights is not None:  # the flat regions' weights (flat_content_weight)
            parts["content_weights"] = objective.content_weights
        if objective.anchor is not None:
            settings["anchor_weight"] = scalar(objective.anchor_weight)
            parts["anchor"] = objective.anchor
            # A resumed last stage skips the first one: it reads the anchor back (read_anchor).
            extra["anchor"] = np.asarray(objective.anchor, np.float32).tolist()
    else:  # any callable: its array leaves (none for a plain function) and its name
        settings["objective"] = getattr(objective, "__qualname__", type(objective).__qualname__)
        parts = {"objective": [leaf for leaf in jax.tree.leaves(objective) if hasattr(leaf, "shape")]}
    return {"settings": settings, "arrays": {name: _digest(tree) for name, tree in parts.items()}, **extra}


def save_checkpoint(directory: str | os.PathLike, state, history: list[tuple[int, float]], fingerprint=None) -> Path:
    """Writes ``state`` (a pytree of arrays), ``history`` and the run's ``fingerprint`` atomically to ``directory``."""
    run = {
        "history": [[int(s), float(v)] for s, v in history],
        "image_shape": list(np.shape(state.image)),
        "fingerprint": fingerprint,
    }
    return write_directory(directory, state, _STATE, {_RUN: run}, KIND)


def _check_fingerprint(directory: Path, saved, ours) -> None:
    if ours is None:
        return
    if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
        raise CheckpointError(
            f"`resume`: {str(directory)!r} has no record of its inputs and settings (an older nst-jax wrote it); "
            "start afresh"
        )
    for name, value in ours["settings"].items():
        theirs = saved["settings"].get(name)
        if json.loads(json.dumps(value)) != theirs:
            raise CheckpointError(
                f"`resume`: the checkpoint was made with {name}={theirs!r}, this run has {value!r}; "
                "use the same settings or start afresh"
            )
    for name, digest in ours["arrays"].items():
        if saved.get("arrays", {}).get(name) != digest:
            raise CheckpointError(
                f"`resume`: the checkpoint was made with a different {_PARTS.get(name, name)}; "
                "use the same inputs or start afresh"
            )


def read_anchor(directory: str | os.PathLike) -> np.ndarray | None:
    """The coarse-to-fine anchor (the first stage's thumbnail) a checkpoint was made with, or ``None``.

    Trusts nothing in the file: a thumbnail that is not ``[h, w, 3]`` finite numbers with
    sides of 1 to ``ANCHOR_SIZE`` is refused.

    Raises:
      CheckpointError: no readable ``run.json``, or an anchor that is not such a thumbnail.
    """
    from nst_jax.config import ANCHOR_SIZE

    path = Path(directory).absolute() / _RUN
    try:
        fingerprint = json.loads(path.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"`resume`: {str(path)!r} cannot be read ({type(e).__name__}: {e})") from None
    anchor = fingerprint.get("anchor") if isinstance(fingerprint, dict) else None
    if anchor is None:
        return None
    try:
        array = np.asarray(anchor, np.float64)
    except (ValueError, TypeError):
        array = np.zeros((0,))
    if (
        array.ndim != 3
        or array.shape[2] != 3
        or not all(1 <= n <= ANCHOR_SIZE for n in array.shape[:2])
        or not np.isfinite(array).all()
    ):
        raise CheckpointError(f"`resume`: {str(path)!r} has a damaged anchor (the first stage's thumbnail)")
    return array.astype(np.float32)


def restore_checkpoint(directory: str | os.PathLike, like: T, fingerprint=None) -> tuple[T, list[tuple[int, float]]]:
    """Reads a checkpoint into the structure and types of ``like`` (a fresh state of the same run).

    With ``fingerprint`` (:func:`fingerprint` of this run), a checkpoint of other inputs or
    settings is refused, naming the first thing that differs.

    Raises:
      CheckpointError: (a ValueError) no checkpoint there, a damaged one, or one of
        another image shape, optimiser, inputs or settings; one line each.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if not (directory / _RUN).is_file():
        raise CheckpointError(f"`resume`: no checkpoint in {str(directory)!r} (expected {_STATE}/ and {_RUN})")
    try:
        run = json.loads((directory / _RUN).read_text())
        history = [(int(s), float(v)) for s, v in run["history"]]
        saved = tuple(int(n) for n in run["image_shape"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"`resume`: {str(directory / _RUN)!r} is damaged ({type(e).__name__}: {e})") from None
    ours = tuple(np.shape(like.image))
    if saved != ours:
        raise CheckpointError(
            f"`resume`: the checkpoint's image is {saved}, this run's is {ours}; use the same inputs and size"
        )
    _check_fingerprint(directory, run.get("fingerprint"), fingerprint)
    if not (directory / _STATE).is_dir():
        raise CheckpointError(f"`resume`: {str(directory)!r} has no {_STATE}/ folder; the checkpoint is incomplete")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            state = checkpointer.restore(directory / _STATE, abstract)
        except Exception as e:  # orbax raises several types for a foreign or damaged tree
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(
                f"`resume`: {directory} does not fit this run's optimiser state ({message})"
            ) from None
    state = jax.tree.map(lambda x, ref: jax.numpy.asarray(x, dtype=np.asarray(ref).dtype), state, like)
    return state, history
