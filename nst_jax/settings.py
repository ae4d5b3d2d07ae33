"""What the two apps share: :class:`~nst_jax.config.StyleConfig`'s fields as settings, and the checks before a run.

The command line (:mod:`nst_jax.cli`) makes an option of each setting, and the web page
(:mod:`nst_jax.jobs`) a form field; both read the fields here, build the config with
:func:`config_from` and check a run's sizes with :func:`check_shapes` from the images'
headers, before anything is decoded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, NamedTuple

from nst_jax.config import StyleConfig


class Setting(NamedTuple):
    """One :class:`StyleConfig` field as an app shows it."""

    name: str  # the field's name
    kind: str  # "int", "float", "str" or "list" (of ``item``)
    item: type  # the value's type, or a list's items' type
    optional: bool  # whether ``None`` is a value (the annotation is ``X | None``)
    default: Any  # the field's default
    help: str  # one line: what the field does
    choices: tuple | None  # the valid values, where there is a fixed set


def _kind(hint) -> tuple[str, type, bool]:
    """(kind, item type, optional) of a StyleConfig annotation: int, float, str or list (of item type)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional or typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return "list", typing.get_args(hint)[0], optional
    return hint.__name__, hint, optional


def settings(skip: Sequence[str] = ("network",)) -> list[Setting]:
    """Every :class:`StyleConfig` field but ``skip``, in the config's order.

    ``network`` is skipped by default: a custom feature network is a Python object, for the
    library only.
    """
    hints = typing.get_type_hints(StyleConfig)
    out = []
    for f in dataclasses.fields(StyleConfig):
        if f.name in skip:
            continue
        kind, item, optional = _kind(hints[f.name])
        choices = f.metadata.get("choices")
        out.append(Setting(f.name, kind, item, optional, f.default, f.metadata["help"], choices))
    return out


def setting(name: str) -> Setting:
    """The :class:`Setting` of one field."""
    found = [s for s in settings(skip=()) if s.name == name]
    if not found:
        valid = ", ".join(s.name for s in settings())
        raise ValueError(f"unknown setting {name!r}; valid settings are {valid}")
    return found[0]


def config_from(values: dict[str, Any]) -> StyleConfig:
    """A :class:`StyleConfig` of ``values`` (field -> value; the rest default).

    With ``scales``, the last scale is the output's long side: ``size`` is set to it (the
    images load at it), as the command line and the page both do.

    Raises:
      ValueError: a value :class:`StyleConfig` refuses, named.
    """
    config = StyleConfig(**values)
    return config.replace(size=config.scales[-1]) if config.scales else config


def check_shapes(
    config: StyleConfig,
    final: tuple[int, int],
    styles: Sequence[tuple[int, int]],
    content: bool = True,
    *,
    source: tuple[int, ...] | None = None,
    devices: int = 1,
    memory: bool = True,
) -> None:
    """Refuses, from shapes alone, a run too large for memory or with images too small for the layers.

    Args:
      final: ``(height, width)`` of the output.
      styles: ``(height, width)`` of each style image as loaded (at ``config.size``).
      content: whether there is a content image.
      source: the content image's own shape, for the size check's hint.
      devices: how many devices the output's rows are split over.
      memory: whether to check the memory (:func:`nst_jax.memory.check_roughly`); a dry run
        reports what does not fit instead.

    Raises:
      ValueError: from :func:`nst_jax.memory.check_roughly` or :func:`nst_jax.transfer.check_sizes`.
    """
    from nst_jax import memory as memory_plan
    from nst_jax.transfer import check_sizes

    if memory:
        memory_plan.check_roughly(config, final, styles, devices)
    check_sizes(config, final, styles, content, source=source)


def check_style_blend(config: StyleConfig, count: int) -> None:
    """Refuses a ``style_blend`` whose length is not the number of style images."""
    if config.style_blend is not None and len(config.style_blend) != count:
        raise ValueError(f"`style_blend` has {len(config.style_blend)} weights for {count} style images")
