"""An index's files on disk, for the commands that swap in a new one (rebuild, restore).

Both build the new index beside the old one and rename it into place; what must go
with it is the same: SQLite's side files of the old name (a stale ``-wal`` beside a new
index would be replayed into it), and an fsync of the file and its directory so that
the rename survives a crash.
"""

from __future__ import annotations

import os
from pathlib import Path

SIDE_FILES = ("-wal", "-shm", "-journal")


def remove_side_files(db: Path) -> None:
    """Remove the index's ``-wal``, ``-shm`` and ``-journal`` if they exist."""
    for suffix in SIDE_FILES:
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def remove_db_files(db: Path) -> None:
    """Remove the index and its side files (a half-built temporary one)."""
    remove_side_files(db)
    db.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory: so that a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
