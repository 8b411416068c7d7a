"""Where datasets are cached, and the small helpers every loader uses to cache them safely.

* :func:`data_dir`: the cache directory, ``$GPJAX_DATA_DIR`` or ``~/.cache/gpjax``;
* :class:`DataUnavailableError`: no source of a dataset can be reached (the message says how
  to provide one);
* :func:`file_lock`: an exclusive lock on a cache directory (parallel test workers, concurrent
  runs);
* :func:`read_npz` / :func:`write_npz`: a cached ``.npz`` read back (a damaged one removed so
  it is rebuilt), written to a temporary file and renamed (an interrupted or concurrent run
  never leaves a partial cache);
* :func:`file_sha256`: a file's SHA-256, to check a downloaded archive.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

__all__ = ["DataUnavailableError", "data_dir", "file_lock", "file_sha256", "read_npz",
           "write_npz"]


class DataUnavailableError(RuntimeError):
    """Raised when no source of a dataset can be reached."""


def data_dir() -> Path:
    """The cache directory: ``$GPJAX_DATA_DIR`` or ``~/.cache/gpjax``."""
    return Path(os.environ.get("GPJAX_DATA_DIR", Path.home() / ".cache" / "gpjax"))


@contextlib.contextmanager
def file_lock(directory: str | os.PathLike, name: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``directory / name`` (created, with the directory) while open.

    Args:
      directory: the cache directory.
      name: the lock file's name, e.g. ``".mnist.lock"``.

    Yields:
      None, holding the lock.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """All arrays of a cached ``.npz``; ``None`` if it is missing or damaged (then removed).

    Args:
      path: the file.

    Returns:
      ``{name: array}`` read into memory, or ``None`` (so the caller rebuilds the cache).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        path.unlink(missing_ok=True)  # a truncated or damaged cache: rebuild it
        return None


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Writes ``arrays`` as an uncompressed ``.npz`` at ``path`` atomically.

    The arrays go to a temporary file in the same directory (created if needed), which is then
    renamed over ``path``: readers see the old file or the complete new one, never a part.

    Args:
      path: the destination.
      arrays: ``{name: array}``.

    Returns:
      ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz.tmp", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
