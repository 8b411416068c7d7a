"""Run configs as JSON: normalising, completing with defaults, and naming what differs.

The checkpoint and results guards (:mod:`gpjax.incremental.checkpoint`,
:func:`gpjax.incremental.loop.check_results`) compare a stored run config with the one given
now through these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["config_diff", "flatten_dict", "jsonable", "with_defaults"]



def jsonable(obj: Any, what: str) -> Any:
    """``obj`` normalised through a JSON round trip (tuples become lists, keys strings)."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{what} must be JSON-serialisable (dicts, lists, str, numbers, bools, None): {e}. "
            f"Convert dataclasses with dataclasses.asdict and arrays with .tolist() first."
        ) from e


def flatten_dict(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten_dict(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix or "<root>": d}


def with_defaults(stored: Any, defaults: Any) -> Any:
    """``stored`` with every key it lacks (at any depth) taken from ``defaults``.

    A run config saved before a field existed holds no value for it; the run then behaved as
    the field's default does, so a resume with the default value is the same run.

    Args:
      stored: a JSON config as saved.
      defaults: a JSON config of the same layout holding every field's default.

    Returns:
      ``stored`` completed; keys already present, and keys ``defaults`` lacks, are kept as
      they are.
    """
    if not (isinstance(stored, Mapping) and isinstance(defaults, Mapping)):
        return stored
    out = dict(stored)
    for k, v in defaults.items():
        out[k] = with_defaults(stored[k], v) if k in stored else v
    return out


def config_diff(old: Any, new: Any) -> list[str]:
    """Human-readable differences between two JSON configs, one line per dotted key.

    Args:
      old: the stored config.
      new: the config given now.

    Returns:
      Lines ``"key: old=... new=..."`` (``<absent>`` where a key exists on one side only).
    """
    a, b = flatten_dict(old), flatten_dict(new)
    lines = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb:
            lines.append(f"{k}: old={va!r} new={vb!r}")
    return lines
