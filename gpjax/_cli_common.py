"""What the ``gpjax`` commands share: the one-line usage error, argument types, tables."""

from __future__ import annotations

import argparse
import errno
import json
import re
from typing import NamedTuple


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


class DiskFault(NamedTuple):
    """A write the file system refused: ``errno`` (ENOSPC, EACCES, EPERM, EROFS, EDQUOT),
    the path it names (None when unknown) and what it is, in words."""

    errno: int
    path: str | None
    what: str


_FAULTS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
           errno.EROFS: "read-only file system"}
# How the same errors read inside other libraries' exceptions (Orbax, TensorStore, absl).
_TEXTS = (("No space left on device", errno.ENOSPC), ("Disk quota exceeded", errno.EDQUOT),
          ("Read-only file system", errno.EROFS), ("Permission denied", errno.EACCES),
          ("Operation not permitted", errno.EPERM))
_PATH = re.compile(r"""["'](/[^"'\n]+)["']|\b(?:file://)?(/[\w.@+,=~/-]+)""")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during (groups included)."""
    out, todo = [], [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is o for o in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return out


def disk_fault(exc: BaseException) -> DiskFault | None:
    """The disk fault behind ``exc`` (an ``OSError`` with one of the errnos, or a library
    exception whose message reports one: "No space left on device", "RESOURCE_EXHAUSTED:
    ... writing ...", "Permission denied", "Read-only file system"), or None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FAULTS:
            return DiskFault(e.errno, e.filename and str(e.filename), _FAULTS[e.errno])
    for e in _chain(exc):
        text = str(e)
        code = next((c for t, c in _TEXTS if t in text), None)
        if code is None and "RESOURCE_EXHAUSTED" in text and "writ" in text.lower() \
                and "memory" not in text.lower():
            code = errno.ENOSPC
        if code is not None:
            m = _PATH.search(text)
            return DiskFault(code, (m.group(1) or m.group(2)) if m else None, _FAULTS[code])
    return None


def disk_fault_message(fault: DiskFault, where: str, retry: str) -> str:
    """One line for a disk fault: what, where, and the fix.

    Args:
      fault: from :func:`disk_fault`.
      where: the directory the command writes (named when the fault names no path).
      retry: how to continue once fixed ("rerun the same command with --resume").
    """
    fix = {errno.ENOSPC: "free space on that file system",
           errno.EDQUOT: "free space (or raise the quota)",
           errno.EROFS: "remount it read-write, or copy the directory to a writable place",
           }.get(fault.errno, "make it writable for this user (or use another directory)")
    return (f"{fault.what}: {fault.path or where}; {where} keeps what it held before this "
            f"command. Fix: {fix}, then {retry}")
