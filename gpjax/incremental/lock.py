"""One writer per directory: an advisory lock held for as long as a run or an update writes.

The lock is ``fcntl.flock`` on a file in the directory, so the operating system releases it when
the process ends, however it ends: a lock left by a killed process is free again, and the next
writer takes it over (the file still names the dead process, which is reported as taken over).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_FILE = ".gpjax.lock"


class DirectoryLockedError(RuntimeError):
    """Another process is writing the directory."""


class DirectoryLock:
    """``with DirectoryLock(path, what="run"): ...`` holds ``path``'s lock, or raises.

    Args:
      directory: the directory (created if missing).
      what: what is written there, for the error message ("run", "model store").

    Raises:
      DirectoryLockedError: another process holds the lock; the message names it.
    """

    def __init__(self, directory: str | os.PathLike, *, what: str = "run") -> None:
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None
        self.previous_owner = ""

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def acquire(self) -> DirectoryLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DirectoryLockedError(
                f"{self.directory} is being written by {owner} (another {self.what}); wait for "
                f"it to finish, or use another directory") from None
        self.previous_owner = os.pread(fd, 200, 0).decode(errors="replace").strip()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["DirectoryLock", "DirectoryLockedError", "LOCK_FILE"]
