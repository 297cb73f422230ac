"""The lock that makes one process (a daemon, or ``sessionstore rebuild``) the index's owner.

It follows the *file*, not its name. A lock keyed on the path let a second daemon
open the index through a hard link: SQLite kept two WALs for one database and the
index read as malformed within seconds. So the owner holds two ``flock`` locks, both
dropped by the kernel when it dies (even by SIGKILL), so a stale lock never blocks a
restart:

- on the index file itself. ``flock`` locks the open file's inode, so it conflicts
  with every other open of the same file: through a hard link, a symlink, a bind
  mount or a relative path. The holder is named from ``/proc/locks``.
- on ``<index>.lock``, as before: it records the owner's pid, and it is what a
  daemon or rebuild of an earlier version locks, so they keep refusing each other.

On Linux ``flock`` and the POSIX (``fcntl``) locks SQLite uses are independent, so
the lock on the index does not disturb SQLite's locking of it (on NFS ``flock`` is
emulated with POSIX locks, but SQLite's WAL does not work there anyway). POSIX locks
do have one trap: closing *any* descriptor of a file drops all of the process's
locks on it. So the owner acquires before it opens SQLite connections on the index
and releases after it has closed them all (the daemon and rebuild do).

``sessionstore rebuild`` swaps a new file in under the index's name. A process that
opened the old file just before the swap and locked it just after would hold a lock
on a file nobody uses, so :meth:`IndexLock.acquire` checks that the name still leads
to the locked file, and starts over if it does not.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sessionstore.errors import SessionStoreError

_PROC_LOCKS = "/proc/locks"
_ATTEMPTS = 5  # each retry means the index was replaced while we locked it: rare


class IndexBusy(SessionStoreError):
    """Another process (a running daemon) owns this index."""

    code = "busy"


class IndexLock:
    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.path = Path(f"{db_path}.lock")
        self._fd: int | None = None
        self._index_fd: int | None = None

    def acquire(self) -> None:
        """Lock ``<index>.lock`` and the index file (created empty and 0600 if missing)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not _try_lock(fd):
                raise self._busy(_pid_written_in(fd), "")
            self._index_fd = self._lock_index()
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop both locks; only once this process has closed its SQLite connections."""
        for fd in (self._index_fd, self._fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._index_fd = None

    def __enter__(self) -> IndexLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _lock_index(self) -> int:
        for _ in range(_ATTEMPTS):
            # An empty file is an empty database to SQLite: creating it here changes
            # nothing, except that it is owner-only whatever the umask.
            fd = os.open(self.db_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if not _try_lock(fd):
                    raise self._busy(
                        _flock_holder(fd),
                        " under another name (a hard link, symlink or bind mount of the same file)",
                    )
                if _same_file(fd, self.db_path):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # replaced under us (a rebuild's swap): lock the new file
        raise IndexBusy(f"index {self.db_path} keeps being replaced; is a rebuild running?")

    def _busy(self, pid: int | None, how: str) -> IndexBusy:
        holder = f"pid {pid}" if pid else "another process"
        return IndexBusy(
            f"index {self.db_path} is in use by a running sessiond or rebuild ({holder}){how}"
        )


def _try_lock(fd: int) -> bool:
    """``flock(LOCK_EX | LOCK_NB)``: False if another open file holds the lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _pid_written_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _flock_holder(fd: int) -> int | None:
    """The pid holding an flock on ``fd``'s file, from /proc/locks (None if not found).

    Lines read ``1: FLOCK  ADVISORY  WRITE 1234 fe:00:2146739 0 EOF``: the device as
    hex major:minor, then the inode.
    """
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open(_PROC_LOCKS) as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
                    pid = int(fields[4])
                    return pid if pid > 0 else None
    except (OSError, ValueError):
        pass
    return None
