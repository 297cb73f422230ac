"""Sessions only the old index holds, carried into a rebuilt one.

A rebuild makes the index from the ``session.json`` files, but not every session has
one: a running session has none yet, and OpenJarvis saves some sessions to the index
only (a cold-start failure, "no actionable clusters"). Dropping those would delete
sessions the index holds without anyone asking, so :func:`carry_over` copies each
session the new index lacks from the old one, row for row with its outcome rows,
parents before children. A session whose ``session.json`` exists but could not be
used is carried too (the file stays listed under ``invalid``).

Reading the old index is where this can fail: a file that is not an index, or rows
that cannot be read. :func:`open_old_index` and :func:`carry_over` report what could
not be carried, and the rebuild refuses to swap the index in unless told
``files_only`` (see :mod:`sessionstore.rebuild`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from sessionstore.errors import SessionStoreError
from sessionstore.filereading import SESSIONS_DIR
from sessionstore.sessiondirs import SESSION_FILE
from sessionstore.store import SessionStore


@dataclass(slots=True)
class Carried:
    """What came over from the old index, and what could not."""

    index_only: int = 0
    """Sessions with no session.json."""
    unusable_file: int = 0
    """Sessions whose session.json exists but could not be indexed."""
    outcomes: int = 0
    """Outcome rows that came with them."""
    failed: dict[str, str] = field(default_factory=dict)
    """Session id -> why it could not be carried (read error, parent nowhere)."""
    failed_outcomes: int = 0
    """Outcome rows of those, where they could be counted."""


_SIDE_FILES = ("-wal", "-shm")


class OldIndex(SessionStore):
    """The old index, open read-only; :meth:`close` also removes the ``-wal`` and ``-shm``
    files the read-only connection created (empty ones; none existed before), so a
    refused rebuild leaves the old index's directory as it found it."""

    def __init__(self, db_path: Path) -> None:
        self._created = [s for s in _SIDE_FILES if not os.path.lexists(f"{db_path}{s}")]
        try:
            super().__init__(db_path, readonly=True)
        except BaseException:
            _remove_created(db_path, self._created)
            raise

    def close(self) -> None:
        super().close()
        _remove_created(self.db_path, self._created)


def _remove_created(db_path: Path, created: list[str]) -> None:
    for suffix in created:
        side = Path(f"{db_path}{suffix}")
        with contextlib.suppress(FileNotFoundError):
            if suffix == "-shm" or side.stat().st_size == 0:
                side.unlink()


def open_old_index(db_path: Path) -> OldIndex | None:
    """The old index, read-only, or None when there is none; raises when it cannot be read.

    ``session_ids()`` is read here already, so an index whose table cannot be read at
    all fails now, before any work, rather than after the files were parsed. The
    caller makes sure no other process has it open (the rebuild holds the index lock).
    """
    if not db_path.exists():
        return None
    old = OldIndex(db_path)
    try:
        old.session_ids()
    except BaseException:
        old.close()
        raise
    return old


def carry_over(
    old: SessionStore,
    new: SessionStore,
    learning_root: Path,
    done: Carried,
    *,
    with_files: bool,
) -> int:
    """Copy into ``new`` each session of ``old`` that ``new`` lacks and whose parent is
    there by now; returns how many were copied. Without ``with_files`` only sessions
    with no session.json are copied: one with a file may still come from its file once
    its parent is in. Call again after ``new`` gained sessions: each call carries what
    it can, and ``done.failed`` keeps what no call could."""
    have = new.session_ids()
    waiting = {
        sid
        for sid in old.session_ids() - have
        if sid not in done.failed and (with_files or not _has_session_file(learning_root, sid))
    }
    carried = 0
    progress = True
    while waiting and progress:
        progress = False
        for sid in sorted(waiting):
            if _carry_one(old, new, sid, have, learning_root, done):
                have.add(sid)
                carried += 1
            if sid in have or sid in done.failed:
                waiting.discard(sid)
                progress = True
    return carried


def parentless(old: SessionStore, new: SessionStore, done: Carried) -> None:
    """Record as failed the sessions still missing once no more can be carried: their
    parent is in neither index (an old index written without foreign keys)."""
    for sid in sorted(old.session_ids() - new.session_ids()):
        if sid not in done.failed:
            row, outcomes = old.session_rows(sid)
            parent = row[1] if row is not None else None
            done.failed[sid] = f"its parent session {parent!r} is in neither index"
            done.failed_outcomes += len(outcomes)


def _carry_one(
    old: SessionStore,
    new: SessionStore,
    sid: str,
    have: set[str],
    learning_root: Path,
    done: Carried,
) -> bool:
    """Carry one session if its parent is present; False when it must wait or failed."""
    try:
        row, outcomes = old.session_rows(sid)
    except SessionStoreError as err:
        done.failed[sid] = f"cannot read it from the old index: {err}"
        return False
    if row is None:
        return False  # gone meanwhile: nothing to carry
    parent = row[1]
    if parent is not None and parent != sid and parent not in have:
        return False
    new.insert_rows(row, outcomes)
    done.outcomes += len(outcomes)
    if _has_session_file(learning_root, sid):
        done.unusable_file += 1
    else:
        done.index_only += 1
    return True


def _has_session_file(learning_root: Path, sid: str) -> bool:
    """Whether ``sessions/<sid>/session.json`` exists (an id that is no plain directory
    name, such as one with a slash, cannot have one)."""
    if not sid or sid in {".", ".."} or "/" in sid or "\0" in sid:
        return False
    return os.path.lexists(learning_root / SESSIONS_DIR / sid / SESSION_FILE)
