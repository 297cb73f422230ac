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


def _empty(path: Path) -> bool:
    """Missing or of size 0: an SQLite file holding nothing."""
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True


def _remove_created(db_path: Path, created: list[str]) -> None:
    for suffix in created:
        side = Path(f"{db_path}{suffix}")
        with contextlib.suppress(FileNotFoundError):
            if suffix == "-shm" or side.stat().st_size == 0:
                side.unlink()


def open_old_index(db_path: Path) -> OldIndex | None:
    """The old index, read-only, or None when there is none (no file, or an empty one and
    no WAL); raises when it cannot be read.

    ``session_ids()`` is read here already, so an index whose table cannot be read at
    all fails now, before any work, rather than after the files were parsed. The
    caller makes sure no other process has it open (the rebuild holds the index lock).
    """
    if _empty(db_path) and _empty(Path(f"{db_path}-wal")):
        return None  # none yet, or the empty file the index lock creates to lock it
    old = OldIndex(db_path)
    try:
        old.session_ids()
    except BaseException:
        old.close()
        raise
    return old


CARRY_CHUNK = 500
"""Sessions copied per transaction of the new index."""


def carry_over(
    old: SessionStore,
    new: SessionStore,
    learning_root: Path,
    done: Carried,
    *,
    with_files: bool,
) -> int:
    """Copy into ``new`` each session of ``old`` that ``new`` lacks and whose parent is
    there by now (or comes with it); returns how many were copied. Without
    ``with_files`` only sessions with no session.json are copied: one with a file may
    still come from its file once its parent is in. Call again after ``new`` gained
    sessions: each call carries what it can, and ``done.failed`` keeps what no call could.
    """
    have = new.session_ids()
    with_file = _with_session_file(learning_root)
    wanted = sorted(
        sid
        for sid in old.session_ids() - have
        if sid not in done.failed and (with_files or sid not in with_file)
    )
    if not wanted:
        return 0
    order = _parents_first(_parents(old, wanted, done), have)
    carried = 0
    for start in range(0, len(order), CARRY_CHUNK):
        chunk = order[start : start + CARRY_CHUNK]
        carried += _carry_chunk(old, new, chunk, have, with_file, done)
    return carried


def parentless(old: SessionStore, new: SessionStore, done: Carried) -> None:
    """Record as failed the sessions still missing once no more can be carried: their
    parent is in neither index (an old index written without foreign keys), or could
    not be carried itself."""
    for sid in sorted(old.session_ids() - new.session_ids()):
        if sid in done.failed:
            continue
        try:
            row, outcomes = old.session_rows(sid)
        except SessionStoreError as err:
            done.failed[sid] = f"cannot read it from the old index: {err}"
            continue
        parent = row[1] if row is not None else None
        done.failed[sid] = f"its parent session {parent!r} is not in the rebuilt index"
        done.failed_outcomes += len(outcomes)


def _parents(old: SessionStore, wanted: list[str], done: Carried) -> dict[str, str | None]:
    """Each wanted session's parent id, in one query; row by row when that query fails
    (a damaged table), recording the sessions whose row cannot be read."""
    try:
        everyone = old.session_parents()
        return {sid: everyone[sid] for sid in wanted if sid in everyone}
    except SessionStoreError:
        pass
    parents: dict[str, str | None] = {}
    for sid in wanted:
        try:
            row, _ = old.session_rows(sid)
        except SessionStoreError as err:
            done.failed[sid] = f"cannot read it from the old index: {err}"
            continue
        if row is not None:
            parents[sid] = row[1]
    return parents


def _parents_first(parents: dict[str, str | None], have: set[str]) -> list[str]:
    """The sessions that can be carried now, each after its parent; the others wait."""
    children: dict[str, list[str]] = {}
    ready = []
    for sid, parent in parents.items():
        if parent is None or parent == sid or parent in have:
            ready.append(sid)
        elif parent in parents:
            children.setdefault(parent, []).append(sid)
    order = []
    while ready:
        sid = ready.pop()
        order.append(sid)
        ready.extend(children.pop(sid, []))
    return order


def _carry_chunk(
    old: SessionStore,
    new: SessionStore,
    chunk: list[str],
    have: set[str],
    with_file: set[str],
    done: Carried,
) -> int:
    """Read each session's rows from ``old`` and insert them into ``new`` in one
    transaction; a session that cannot be read fails alone, and its children wait."""
    session_rows: list[tuple[object, ...]] = []
    outcome_rows: list[tuple[object, ...]] = []
    counts = Carried()
    for sid in chunk:
        try:
            row, outcomes = old.session_rows(sid)
        except SessionStoreError as err:
            done.failed[sid] = f"cannot read it from the old index: {err}"
            continue
        parent = row[1] if row is not None else None
        if row is None or (parent is not None and parent != sid and parent not in have):
            continue  # gone meanwhile, or its parent could not be carried: it waits
        session_rows.append(row)
        outcome_rows += outcomes
        have.add(sid)
        counts.outcomes += len(outcomes)
        if sid in with_file:
            counts.unusable_file += 1
        else:
            counts.index_only += 1
    if session_rows:
        new.insert_rows(session_rows, outcome_rows)
    done.index_only += counts.index_only
    done.unusable_file += counts.unusable_file
    done.outcomes += counts.outcomes
    return len(session_rows)


def _with_session_file(learning_root: Path) -> set[str]:
    """The names under ``sessions/`` that have a ``session.json``, usable or not (an id
    that is no plain directory name, one with a slash say, is never among them)."""
    sessions = os.path.join(learning_root, SESSIONS_DIR)
    try:
        names = os.listdir(sessions)
    except OSError:
        return set()
    return {name for name in names if os.path.lexists(os.path.join(sessions, name, SESSION_FILE))}
