"""Make an existing index and its side files owner-only.

The daemon creates the index 0600 whatever the umask, but an index first made by the
original library (or any SQLite user) under the usual umask 022 is 0644, readable by
every local user, and SQLite gives a new ``-wal`` and ``-shm`` the index's own mode.
So the daemon removes group and other permissions from the index, its side files and
its lock file at start, before SQLite opens them (:func:`tighten_index_files`).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Tightened:
    path: Path
    old_mode: int
    new_mode: int

    def __str__(self) -> str:
        return f"{self.path.name} {self.old_mode:04o} -> {self.new_mode:04o}"


def tighten_index_files(db_path: Path) -> list[Tightened]:
    """Remove group and other permissions from the index files that have them.

    SQLite names the side files after the index's real path (it resolves a
    symlink), so they are looked for there. A symlink among the side files is
    left alone: it is not what SQLite would have created.
    Raises OSError (e.g. EPERM: not the owner) naming the file.
    """
    real = Path(os.path.realpath(db_path))
    paths = [real, *(Path(f"{real}{suffix}") for suffix in SIDE_FILES), Path(f"{db_path}.lock")]
    return [done for path in paths if (done := _tighten(path)) is not None]


def _tighten(path: Path) -> Tightened | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode) or not mode & 0o077:
        return None
    try:
        os.chmod(path, mode & 0o700)
    except OSError as err:
        raise OSError(err.errno, f"cannot make {path} owner-only: {err.strerror}") from err
    return Tightened(path, mode, mode & 0o700)
