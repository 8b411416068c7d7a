"""What the ``gpjax`` commands share: the one-line usage error, argument types, tables."""

from __future__ import annotations

import argparse
import json


class UsageError(ValueError):
    """A command line that cannot run; printed as one line, exit status 2."""


def json_object(text: str) -> dict:
    """An argparse type: a JSON object (``--model-kwargs '{"width": 64}'``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive integers (``1,32,1024``)."""
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 1,32,1024, got {text!r}") \
            from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows``: ``cols`` are ``(dotted key, header, format)``; a missing
    value prints as ``-``."""
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r
            for part in key.split("."):
                v = v.get(part) if isinstance(v, dict) else None
            cells.append("-" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
