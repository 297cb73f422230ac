"""IndexMaintenance: what reconcile and the daemon's jobs ask of the index.

Reconcile's bookkeeping (file states, which ids and outcomes a session already
has, placeholder Edit fields to complete, outcome rows to correct) and the jobs'
housekeeping (request-id pruning, checkpoints, integrity checks, statistics).
:class:`~sessionstore.store.SessionStore` inherits it, so callers still see one
object, the daemon's only door to the index; it lives apart so ``store.py`` reads
as the drop-in API and the write path, and the upkeep reads on its own.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sessionstore import schema
from sessionstore.errors import InvalidRecord
from sessionstore.records import OUTCOME_VALUE_COLUMNS, OutcomeEdit


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    mode: str
    busy: bool
    wal_frames: int
    checkpointed_frames: int


_EDIT_MATCH = "target = ? AND pillar = ? AND op = ? AND risk_tier = ?"
INSERT_SESSION_ROW = (
    f"INSERT INTO learning_sessions ({', '.join(schema.SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(schema.SESSION_COLUMNS))})"
)
INSERT_OUTCOME_ROW = (
    f"INSERT INTO edit_outcomes ({', '.join(schema.OUTCOME_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(schema.OUTCOME_COLUMNS))})"
)


def _edit_key(edit: OutcomeEdit) -> tuple[str, str, str, str]:
    """``edit``'s fields in :data:`_EDIT_MATCH` order."""
    return (edit.target, edit.pillar, edit.op, edit.risk_tier)


class IndexMaintenance:
    """Maintenance calls over the connection, lock and write path of a SessionStore.

    A mixin, not a store of its own: it holds no state and opens nothing, so the
    one connection and its lock stay with :class:`SessionStore`.
    """

    if TYPE_CHECKING:
        # Provided by SessionStore; declared so mypy checks both sides agree.
        _lock: threading.RLock
        _db_path: Path

        def _read(
            self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
        ) -> sqlite3.Cursor: ...

        def _write_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> int: ...

        def _write_statements(
            self, statements: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]
        ) -> int: ...

        def _require_writable(self, action: str) -> None: ...

    def session_outcome_ids(self, session_id: str) -> set[str]:
        """The edit ids that already have an outcome row in this session."""
        with self._lock:
            rows = self._read(
                "SELECT edit_id FROM edit_outcomes WHERE session_id = ?", (session_id,)
            ).fetchall()
        return {row[0] for row in rows}

    def session_ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._read("SELECT id FROM learning_sessions")}

    def outcomes_with_edit(self, edit: OutcomeEdit) -> dict[str, list[str]]:
        """Per session, the edit id of each outcome row carrying ``edit``'s fields (rationale aside).

        Reconcile asks with its placeholder to find the rows a plan.json may now complete.
        """
        with self._lock:
            rows = self._read(
                f"SELECT session_id, edit_id FROM edit_outcomes WHERE {_EDIT_MATCH} ORDER BY id",
                _edit_key(edit),
            ).fetchall()
        found: dict[str, list[str]] = {}
        for session_id, edit_id in rows:
            found.setdefault(session_id, []).append(edit_id)
        return found

    def replace_outcome_edits(
        self, replacements: Sequence[tuple[str, str, OutcomeEdit]], *, only: OutcomeEdit
    ) -> int:
        """Give the outcome rows of (session id, edit id) new Edit fields; returns rows changed.

        Only rows still carrying ``only``'s fields (rationale aside) are touched: the
        guard is in the UPDATE itself, so a row with real edit metadata is never
        rewritten, whatever was read before.
        """
        self._require_writable("replace_outcome_edits")
        rows = [
            (e.pillar, e.op, e.target, e.risk_tier, e.rationale, sid, eid, *_edit_key(only))
            for sid, eid, e in replacements
        ]
        with self._lock:
            return self._write_many(
                "UPDATE edit_outcomes SET pillar = ?, op = ?, target = ?, risk_tier = ?, "
                f"rationale = ? WHERE session_id = ? AND edit_id = ? AND {_EDIT_MATCH}",
                rows,
            )

    def correct_outcomes(self, corrections: Sequence[tuple[str, str, tuple[Any, ...]]]) -> int:
        """Rewrite the outcome fields of each (session id, edit id) row from ``values``
        (:func:`~sessionstore.records.outcome_values` of the file's outcome); returns rows
        changed. Only where exactly one row has that edit id: a repeated edit id does not
        say which row the file means, so it is left alone (the guard is in the UPDATE
        itself). The Edit fields are kept."""
        self._require_writable("correct_outcomes")
        rows = [(*values, sid, eid, sid, eid) for sid, eid, values in corrections]
        assign = ", ".join(f"{column} = ?" for column in OUTCOME_VALUE_COLUMNS)
        with self._lock:
            return self._write_many(
                f"UPDATE edit_outcomes SET {assign} WHERE session_id = ? AND edit_id = ? AND "
                "(SELECT count(*) FROM edit_outcomes WHERE session_id = ? AND edit_id = ?) = 1",
                rows,
            )

    # -- rebuild's carrying of sessions only an old index holds ---------------------------

    def session_rows(self, session_id: str) -> tuple[tuple[Any, ...] | None, list[tuple[Any, ...]]]:
        """The session's row and its outcome rows exactly as stored (all of the original's
        columns, outcomes in insertion order); (None, []) for an unknown id."""
        with self._lock:
            row = self._read(
                f"SELECT {', '.join(schema.SESSION_COLUMNS)} FROM learning_sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
            outcomes = self._read(
                f"SELECT {', '.join(schema.OUTCOME_COLUMNS)} FROM edit_outcomes "
                "WHERE session_id = ? ORDER BY id",
                (session_id,),
            ).fetchall()
        return (tuple(row) if row is not None else None), [tuple(o) for o in outcomes]

    def session_parents(self) -> dict[str, str | None]:
        """Every session's parent id (None for none), in one query."""
        with self._lock:
            rows = self._read("SELECT id, parent_session_id FROM learning_sessions").fetchall()
        return {row[0]: row[1] for row in rows}

    def insert_rows(
        self,
        session_rows: Sequence[tuple[Any, ...]],
        outcome_rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Insert session rows, then outcome rows, as they are, in one transaction.

        No validation and no conversion: a rebuild carries what the old index held,
        byte for byte, even a row our models would refuse. Each parent must be in the
        index already or come earlier in ``session_rows`` (the foreign key is enforced).
        """
        self._require_writable("insert_rows")
        with self._lock:
            self._write_statements(
                [(INSERT_SESSION_ROW, session_rows), (INSERT_OUTCOME_ROW, outcome_rows)]
            )

    def file_states(self) -> dict[str, tuple[int, int]]:
        """What reconcile recorded per file path: (size, mtime_ns)."""
        with self._lock:
            rows = self._read("SELECT path, size, mtime_ns FROM reconcile_files").fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    def file_problems(self) -> dict[str, str]:
        """Per file path recorded as unusable for what it holds: the reason."""
        with self._lock:
            rows = self._read(
                "SELECT path, problem FROM reconcile_files WHERE problem IS NOT NULL"
            ).fetchall()
        return {row[0]: row[1] for row in rows}

    def record_file_states(
        self,
        states: Iterable[tuple[str, int, int, str | None]],
        *,
        problems: Mapping[str, str] | None = None,
    ) -> None:
        """Remember (path, size, mtime_ns, session_id) for files reconcile has handled;
        ``problems`` gives the reason for those recorded as unusable (by path)."""
        self._require_writable("record_file_states")
        problems = problems or {}
        now = time.time()
        with self._lock:
            self._write_many(
                "INSERT INTO reconcile_files (path, size, mtime_ns, session_id, scanned_at, "
                "problem) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                "size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "session_id = excluded.session_id, scanned_at = excluded.scanned_at, "
                "problem = excluded.problem",
                [(*state, now, problems.get(state[0])) for state in states],
            )

    def prune_applied_requests(self, older_than_seconds: float) -> int:
        """Forget request ids applied longer ago than this; returns how many went."""
        self._require_writable("prune_applied_requests")
        cutoff = time.time() - older_than_seconds
        with self._lock:
            return self._write_many(
                "DELETE FROM applied_requests WHERE applied_at < ?", [(cutoff,)]
            )

    def set_autocheckpoint(self, pages: int) -> None:
        """SQLite's own checkpoint after commits past ``pages`` WAL pages; 0 turns it off
        (for ``checkpoint_mode = "off"``, when an external replicator owns checkpoints)."""
        with self._lock:
            self._read(f"PRAGMA wal_autocheckpoint = {int(pages)}")

    def checkpoint(self, mode: str = "PASSIVE", *, wait: bool = True) -> CheckpointResult:
        """Run ``PRAGMA wal_checkpoint(mode)``; ``busy`` means a reader blocked completion.

        FULL, RESTART and TRUNCATE wait (up to the busy timeout) for readers to move
        past the WAL. ``wait=False`` does not: it copies what it can and reports
        ``busy`` at once. The daemon's loop checkpoints that way, since its reader
        threads, or any analytics process, may be mid-read, and the loop must not
        stop saving for them.
        """
        mode = mode.upper()
        if mode not in {"PASSIVE", "FULL", "RESTART", "TRUNCATE"}:
            raise InvalidRecord(
                f"checkpoint mode: {mode!r} is not PASSIVE, FULL, RESTART or TRUNCATE"
            )
        with self._lock:
            if wait:
                row = self._read(f"PRAGMA wal_checkpoint({mode})").fetchone()
            else:
                row = self._checkpoint_now(mode)
        return CheckpointResult(mode, bool(row[0]), int(row[1]), int(row[2]))

    def _checkpoint_now(self, mode: str) -> Any:
        busy_ms = self._read("PRAGMA busy_timeout").fetchone()[0]
        self._read("PRAGMA busy_timeout = 0")
        try:
            return self._read(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            self._read(f"PRAGMA busy_timeout = {int(busy_ms)}")

    def quick_check(self) -> list[str]:
        """``PRAGMA quick_check``: ``['ok']`` when the file is sound."""
        with self._lock:
            return [row[0] for row in self._read("PRAGMA quick_check")]

    def integrity_check(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._read("PRAGMA integrity_check")]

    def counts(self) -> dict[str, int]:
        """Row counts for status reports."""
        with self._lock:
            sessions = self._read("SELECT count(*) FROM learning_sessions").fetchone()[0]
            outcomes = self._read("SELECT count(*) FROM edit_outcomes").fetchone()[0]
        return {"sessions": int(sessions), "outcomes": int(outcomes)}

    def file_sizes(self) -> dict[str, int]:
        """Bytes on disk of the database and its WAL (0 when absent)."""
        sizes = {}
        for key, suffix in (("db_bytes", ""), ("wal_bytes", "-wal")):
            try:
                sizes[key] = os.stat(f"{self._db_path}{suffix}").st_size
            except FileNotFoundError:
                sizes[key] = 0
        return sizes
