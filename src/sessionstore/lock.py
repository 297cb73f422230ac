"""An advisory lock that marks an index as owned by a running daemon.

The daemon holds ``<index>.lock`` (``flock``) for its whole life; the kernel drops
it when the process dies, even by SIGKILL, so a stale lock never blocks a restart.
``sessionstore rebuild`` and a second ``serve`` on the same index use it to refuse
clearly instead of racing the owner.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sessionstore.errors import SessionStoreError


class IndexBusy(SessionStoreError):
    """Another process (a running daemon) owns this index."""

    code = "busy"


class IndexLock:
    def __init__(self, db_path: Path) -> None:
        self.path = Path(f"{db_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise IndexBusy(
                f"index {self.path.with_suffix('')} is in use by a running sessiond (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> IndexLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
