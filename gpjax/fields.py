"""Checks for config values (frozen dataclasses): every field of the declared type and range.

Configs check themselves when made (``__post_init__``), so a bad value set on the command line
(``--set batch_size=abc``, ``--set prune.percentile=150``) is refused before any data are
loaded or any checkpoint is written, with the field named.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A config field has a value of the wrong type or outside its range."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _accepts(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(t, value) for t in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin is typing.ClassVar:
        return True
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, tp)


def _name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_types(obj: Any) -> None:
    """Raises :class:`ConfigError` naming the first field whose value is not of its type."""
    for f in dataclasses.fields(obj):
        tp = _hints(type(obj)).get(f.name, Any)
        value = getattr(obj, f.name)
        if not _accepts(tp, value):
            raise ConfigError(f"{type(obj).__name__}.{f.name} must be {_name(tp)}, got "
                              f"{value!r}")


def check_range(obj: Any, name: str, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raises :class:`ConfigError` when ``obj.name`` (a number or None) is outside the range."""
    v = getattr(obj, name)
    if v is None:
        return
    bad = ((low is not None and (v <= low if low_open else v < low))
           or (high is not None and (v >= high if high_open else v > high)))
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        raise ConfigError(f"{type(obj).__name__}.{name} must be in {lo or '(-inf'}, "
                          f"{hi or 'inf)'}, got {v!r}")


__all__ = ["ConfigError", "check_range", "check_types"]
