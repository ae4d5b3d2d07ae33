"""Readers for foreign VGG-19 weight files (installed as ``nst_jax.converters``).

Converters stay outside the hot path: each turns one file format into the project's one
canonical form (Flax parameters: ``preprocess`` from RGB [0, 1], then ``conv1_1..conv5_4``)
and is never imported by the optimisation loop. The format is detected from the file's
content (:func:`detect_format`), never its name.
"""

from __future__ import annotations

import os
import zipfile

from nst_jax.converters.common import MAX_FILE_BYTES, MissingDependencyError, first_line
from nst_jax.converters.torch_pickle import ALLOWED_GLOBALS, UnsafePickleError, load_torch_state_dict

# Format names, as `nst-jax convert --format` takes them.
FORMATS = ("torch", "torchvision", "caffe", "keras", "matconvnet")

_HDF5 = b"\x89HDF\r\n\x1a\n"
_PICKLE_PROTOCOL_2 = b"\x80\x02"


def detect_format(path: str | os.PathLike) -> str:
    """Which of :data:`FORMATS` a file is, from its first bytes and structure.

    ``torch`` covers both torch layouts; :func:`convert` tells torchvision's ``features.N``
    keys from the normalised sequential layout by the keys.
    """
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        raise ValueError(f"{path}: empty file, not a weight file")
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):
        return "torch"
    if head.startswith(_PICKLE_PROTOCOL_2):
        return "torch"
    if head.startswith(_HDF5) or head[512:520] == _HDF5:
        return "matconvnet" if head.startswith(b"MATLAB") else "keras"
    if head.startswith(b"MATLAB 5.0 MAT-file"):
        return "matconvnet"
    # A caffemodel is a bare protobuf NetParameter: its first field is name (1), layers (2),
    # input (3) or layer (100), all length-delimited.
    if head[:1] in (b"\x0a", b"\x12", b"\x1a") or head[:2] == b"\xa2\x06":
        return "caffe"
    raise ValueError(
        f"{path}: unknown weight format (not a PyTorch, Caffe, Keras HDF5 or MatConvNet file); "
        f"to force one, `nst-jax convert --format` takes {', '.join(FORMATS)}"
    )


def convert(path: str | os.PathLike, format: str | None = None) -> tuple[dict, str]:
    """Reads any supported VGG-19 file into canonical parameters.

    Args:
      path: the weight file.
      format: one of :data:`FORMATS`; ``None`` detects it from the content.

    Returns:
      ``(params, format)``; ``format`` is the one used (``"torchvision"`` or ``"torch"`` for torch files).
    """
    from nst_jax.checks import check_choice

    if format is not None:
        check_choice("format", format, FORMATS)
    else:
        format = detect_format(path)
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a weight file may have")
    if format in ("keras", "matconvnet"):  # C libraries read these: in a child process with limits
        from nst_jax.converters.isolated import convert_isolated

        return convert_isolated(path, format), format
    try:
        return _convert_here(path, format)
    except (KeyError, TypeError, IndexError, AttributeError, OverflowError, RecursionError, MemoryError) as e:
        raise ValueError(f"{path}: not a readable {format} weight file ({first_line(e)})") from None


def _convert_here(path, format: str) -> tuple[dict, str]:
    """The readers written in Python (torch pickles, Caffe protobuf), run in this process."""
    if format in ("torch", "torchvision"):
        from nst_jax.converters.torch_vgg import convert_sequential_state_dict, convert_torchvision, is_torchvision

        state_dict = load_torch_state_dict(path)
        if format == "torchvision" or is_torchvision(state_dict):
            return convert_torchvision(state_dict), "torchvision"
        return convert_sequential_state_dict(state_dict), "torch"
    from nst_jax.converters.caffe import convert_caffe

    return convert_caffe(path), format


__all__ = [
    "ALLOWED_GLOBALS",
    "FORMATS",
    "MissingDependencyError",
    "UnsafePickleError",
    "convert",
    "detect_format",
    "load_torch_state_dict",
]
