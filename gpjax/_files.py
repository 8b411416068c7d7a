"""Atomic output files with the permissions an ordinary new file gets from the umask.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask; a result file renamed
from it would be unreadable to the group and others (a shared results directory, a web server
showing plots). :func:`atomic_write` writes a temporary file beside the target, gives it the
mode a new file gets from the umask (``0666 & ~umask``: 0644 under umask 022; also when it
replaces a file, so results written 0600 by older versions are repaired on their next write)
and renames it over the target, so a reader never sees a half-written file. :func:`save_figure`
does the same for matplotlib figures.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic swap (not thread-safe, but brief)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Permission bits of a new file under the current umask: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Writes ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which then
    gets :func:`new_file_mode` and replaces ``path``.

    Args:
      path: the target file (its directory must exist).
      write: called with the temporary file's name; writes the whole content there.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically, fsynced before the rename (:func:`atomic_write`);
    the directory is fsynced after it, so the rename itself survives a power loss."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
    fsync_dir(Path(path).parent)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a directory's entries (renames, new files) to disk; a no-op where directories
    cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (OSError, AttributeError):
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF):  # file systems without directory fsync
            raise
    finally:
        os.close(fd)


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Renames the directory ``src`` to ``dst`` (atomic on one file system) and makes the
    rename durable (:func:`fsync_dir` of the parent)."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """Saves a matplotlib figure as PNG at ``path``, atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
