"""Rebuild: recreate the index from the ``session.json`` files alone, swapped in atomically."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from sessionstore.errors import StorageFailure
from sessionstore.reconcile import ReconcileResult, reconcile
from sessionstore.store import SessionStore

REBUILD_SLICE_FILES = 1000

_SIDE_FILES = ("-wal", "-shm", "-journal")


def rebuild(
    db_path: Path,
    learning_root: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ReconcileResult:
    """Recreate the index from the files alone and swap it in atomically.

    The new index is built in ``<db>.rebuild.tmp``, checkpointed (TRUNCATE) and
    closed, so it is one self-contained file. Then the old file's ``-wal``,
    ``-shm`` and ``-journal`` are deleted *before* ``os.replace``: SQLite would
    otherwise apply the old WAL's frames to the new file on next open. A crash in
    between leaves either the old index (perhaps without its last WAL commits,
    which a reconcile restores from the files) or the new one. The caller makes
    sure no daemon has the index open.

    The new file is 0600 whatever the umask (SQLite gives its ``-wal`` and ``-shm``
    the database file's mode), or the old index's mode when there was one.
    """
    db_path = Path(db_path)
    tmp = db_path.with_name(db_path.name + ".rebuild.tmp")
    _remove_db_files(tmp)
    _create_owner_only(tmp)
    store = SessionStore(tmp, durability="normal")
    try:
        result = reconcile(
            store, learning_root, full=True, slice_files=REBUILD_SLICE_FILES, progress=progress
        )
        store.checkpoint("TRUNCATE")
    except BaseException:
        store.close()
        _remove_db_files(tmp)
        raise
    store.close()
    try:
        leftover_wal = os.stat(f"{tmp}-wal").st_size
    except FileNotFoundError:
        leftover_wal = 0
    if leftover_wal:
        _remove_db_files(tmp)
        raise StorageFailure(f"rebuild: {tmp}-wal still holds {leftover_wal} bytes after close")
    _remove_side_files(tmp)
    _fsync_path(tmp)
    with contextlib.suppress(FileNotFoundError):  # keep the old index's permissions
        os.chmod(tmp, stat.S_IMODE(os.stat(db_path).st_mode))
    _remove_side_files(db_path)
    os.replace(tmp, db_path)
    _fsync_path(db_path.parent)
    return result


def _create_owner_only(db: Path) -> None:
    """Create ``db`` empty and 0600 before SQLite opens it (an empty file is a new database).

    Left to SQLite, it would be created 0644 under the usual umask 022: readable by
    every local user, and the index promises owner-only access. The mode is set with
    ``fchmod``, which the umask does not filter; the process umask is left alone.
    """
    fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _remove_side_files(db: Path) -> None:
    for suffix in _SIDE_FILES:
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _remove_db_files(db: Path) -> None:
    _remove_side_files(db)
    db.unlink(missing_ok=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
