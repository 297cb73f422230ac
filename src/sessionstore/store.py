"""SessionStore: the SQLite index of learning sessions and their edit outcomes.

A drop-in for OpenJarvis's distillation ``SessionStore`` (same methods, same
tables), plus what a single-writer daemon needs: a batch entry point that applies
many saves in one transaction with a SAVEPOINT each, idempotent request ids kept
in the database, a read-only mode, schema versioning, and maintenance calls
(checkpoint, integrity check, statistics) so the daemon never touches SQL itself.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel

from sessionstore import schema
from sessionstore.batch import (
    OutcomeWrite,
    SessionWrite,
    Write,
    WriteResult,
    apply_writes,
)
from sessionstore.errors import (
    InvalidRecord,
    ReadOnlyStore,
    StorageFailure,
)
from sessionstore.models import EditOutcome, LearningSession, SessionStatus
from sessionstore.records import (
    OUTCOME_VALUE_COLUMNS,
    OutcomeEdit,
    checked,
    checked_edit,
    checked_id,
    gc_paused,
    outcome_values,
    outcomes_from_rows,
    session_from_row,
    sessions_from_rows,
)

Durability = Literal["full", "normal"]

_SESSION_SELECT = f"SELECT {', '.join(schema.SESSION_COLUMNS)} FROM learning_sessions"
_OUTCOME_FIELDS = "edit_id, status, benchmark_delta, cluster_deltas, error, applied_at"


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    mode: str
    busy: bool
    wal_frames: int
    checkpointed_frames: int


def _storage_failure(action: str, err: sqlite3.Error) -> StorageFailure:
    return StorageFailure(f"{action}: {err}")


class SessionStore:
    """The SQLite index; ``session.json`` files stay the authority.

    ``readonly=True`` opens the file with ``mode=ro`` for analytics processes: reads
    work, and every write raises :class:`ReadOnlyStore` before touching the file.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        readonly: bool = False,
        durability: Durability = "full",
        busy_timeout: float = 5.0,
    ) -> None:
        self._db_path = Path(db_path)
        self._readonly = readonly
        self._lock = threading.RLock()
        try:
            self._conn = self._connect(busy_timeout)
        except sqlite3.Error as err:
            raise _storage_failure(f"cannot open index {self._db_path}", err) from err
        try:
            self._prepare(durability)
            st = os.stat(self._db_path)
        except BaseException:
            self._conn.close()
            raise
        self._file_identity = (st.st_dev, st.st_ino)

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        if self._readonly:
            uri = f"file:{quote(str(self._db_path.resolve()))}?mode=ro"
            conn = sqlite3.connect(
                uri, uri=True, timeout=busy_timeout, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA query_only = ON")
            return conn
        return sqlite3.connect(
            str(self._db_path), timeout=busy_timeout, check_same_thread=False, isolation_level=None
        )

    def _prepare(self, durability: Durability) -> None:
        conn = self._conn
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            if self._readonly:
                schema.check_readable(conn)
                return
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
            schema.migrate(conn)
        except sqlite3.Error as err:
            raise _storage_failure(f"cannot prepare index {self._db_path}", err) from err

    @property
    def db_path(self) -> Path:
        return self._db_path

    @property
    def readonly(self) -> bool:
        return self._readonly

    def close(self) -> None:
        """Close the underlying SQLite connection."""
        with self._lock:
            self._conn.close()

    # -- the original API -------------------------------------------------

    def save_session(self, session: LearningSession, *, request_id: str | None = None) -> None:
        """Insert or update a session (a true upsert: its outcomes survive the re-save)."""
        self._require_writable("save_session")
        _require_model(LearningSession, session, "save_session")
        valid = checked(LearningSession, session, "save_session")
        checked_id(valid.id, "id")
        self._apply_single(SessionWrite(valid, request_id))

    def save_outcome(
        self,
        session_id: str,
        outcome: EditOutcome,
        *,
        pillar: str,
        op: str,
        target: str,
        risk_tier: str,
        rationale: str = "",
        request_id: str | None = None,
    ) -> None:
        """Add one EditOutcome row; the Edit fields make ``WHERE op = ?`` possible.

        With ``request_id``, applying the same id again stores nothing new: the id
        is remembered in the database, so this holds across restarts too.
        """
        self._require_writable("save_outcome")
        sid = checked_id(session_id, "session_id")
        _require_model(EditOutcome, outcome, "save_outcome")
        valid = checked(EditOutcome, outcome, f"save_outcome for session {sid!r}")
        edit = checked_edit(pillar, op, target, risk_tier, rationale)
        self._apply_single(OutcomeWrite(sid, valid, edit, request_id))

    def get_session(self, session_id: str) -> LearningSession | None:
        """The session with this id and its outcomes, or None."""
        with self._read_transaction():
            row = self._read(f"{_SESSION_SELECT} WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                return None
            outcome_rows = self._outcome_rows(session_id)
        return session_from_row(row, outcomes_from_rows(outcome_rows))

    def list_sessions(
        self, status: SessionStatus | None = None, limit: int | None = None
    ) -> list[LearningSession]:
        """Sessions newest ``started_at`` first, outcomes attached, in two queries in all."""
        where, order, params = _listing_query(status, limit)
        with gc_paused():  # ~100k objects allocated and none freed: see gc_paused
            rows, outcome_rows = self._fetch_listing(where, order, params)
            return sessions_from_rows(rows, outcome_rows)

    def iter_sessions(
        self, status: SessionStatus | None = None, limit: int | None = None, *, chunk: int = 256
    ) -> Generator[list[LearningSession], None, None]:
        """:meth:`list_sessions`, ``chunk`` sessions at a time, all from one read transaction.

        For the daemon's readers, which encode each chunk and let it go: a listing
        then holds its reply and one chunk of models, not every model at once (8,000
        sessions with 80,000 outcomes took a reader ~300 MB). One outcome query per
        chunk. Close the iterator (or exhaust it) to end the read transaction.
        """
        where, order, params = _listing_query(status, limit)
        with self._read_transaction():
            cursor = self._read(f"{_SESSION_SELECT}{where}{order}", params)
            while rows := cursor.fetchmany(chunk):
                marks = ",".join("?" * len(rows))
                outcome_rows = self._read(
                    f"SELECT {_OUTCOME_FIELDS}, session_id FROM edit_outcomes "
                    f"WHERE session_id IN ({marks}) ORDER BY session_id, id",
                    [row[0] for row in rows],
                ).fetchall()
                yield sessions_from_rows(rows, outcome_rows)

    def _fetch_listing(
        self, where: str, order: str, params: list[object]
    ) -> tuple[list[Any], list[Any]]:
        """The listed session rows, and all their outcome rows (session id last)."""
        with self._read_transaction():
            rows = self._read(f"{_SESSION_SELECT}{where}{order}", params).fetchall()
            if not rows:
                return [], []
            # (session_id, id) is the order idx_outcomes_session already holds: no sort
            # step, and each session's outcomes still come in insertion order.
            outcome_rows = self._read(
                f"SELECT {_OUTCOME_FIELDS}, session_id FROM edit_outcomes WHERE session_id IN "
                f"(SELECT id FROM learning_sessions{where}{order}) ORDER BY session_id, id",
                params,
            ).fetchall()
        return rows, outcome_rows

    @contextlib.contextmanager
    def _read_transaction(self) -> Iterator[None]:
        """One read transaction around several queries, under this store's lock.

        A commit by another connection between two queries would otherwise give a
        session row from before it and outcomes from after it: a state never committed.
        """
        with self._lock:
            self._read("BEGIN")
            try:
                yield
            finally:
                self._read("COMMIT")

    def list_outcomes(self, session_id: str) -> list[EditOutcome]:
        """All outcomes of a session in insertion order ([] for an unknown id)."""
        with self._lock:
            rows = self._outcome_rows(session_id)
        return outcomes_from_rows(rows)

    def _outcome_rows(self, session_id: str) -> list[Any]:
        return self._read(
            f"SELECT {_OUTCOME_FIELDS} FROM edit_outcomes WHERE session_id = ? ORDER BY id",
            (session_id,),
        ).fetchall()

    # -- the daemon's batch entry point -------------------------------------

    def apply_batch(self, writes: Sequence[Write]) -> list[WriteResult]:
        """Apply writes in one transaction, a SAVEPOINT each; one result per write, in order.

        A write that is refused (unknown session, constraint) is rolled back to its
        savepoint and fails alone; the rest commit together. A storage failure
        (disk full, I/O error) aborts the whole transaction and raises
        :class:`StorageFailure`: nothing in the batch was committed.
        """
        self._require_writable("apply_batch")
        with self._lock:
            self._check_file_identity()
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise _storage_failure(f"index {self._db_path}: cannot begin a write", err) from err
            try:
                results = apply_writes(conn, writes)
                # Nothing applied (all refused or duplicates): ROLLBACK, so a refusal
                # costs no WAL frames and no fsync, and leaves the files byte-identical.
                applied = any(r.ok and not r.duplicate for r in results)
                conn.execute("COMMIT" if applied else "ROLLBACK")
            except sqlite3.Error as err:
                self._rollback()
                raise _storage_failure(f"index {self._db_path}: batch not committed", err) from err
            except BaseException:
                self._rollback()
                raise
        return results

    def _apply_single(self, write: Write) -> None:
        result = self.apply_batch([write])[0]
        if result.error is not None:
            raise result.error

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            # SQLite may already have rolled back (e.g. after SQLITE_FULL): nothing left to undo
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _check_file_identity(self) -> None:
        """Refuse writes once the index file was deleted or replaced under us.

        SQLite would go on committing into the unlinked inode, and the daemon would
        acknowledge saves that vanish at its next start.
        """
        try:
            st = os.stat(self._db_path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._file_identity:
            what = "deleted" if st is None else "replaced by another file"
            raise StorageFailure(
                f"index {self._db_path} was {what} while open: writes refused until "
                "sessiond restarts (reconcile then restores sessions from session.json)"
            )

    def _require_writable(self, action: str) -> None:
        if self._readonly:
            raise ReadOnlyStore(f"{action}: index {self._db_path} is open read-only")

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as err:
            raise _storage_failure(f"cannot read index {self._db_path}", err) from err

    # -- maintenance: what reconcile and the daemon's jobs need ---------------

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

    def correct_outcomes(self, corrections: Sequence[tuple[str, EditOutcome]]) -> int:
        """Rewrite the outcome fields of each (session id, outcome's edit id) row from
        ``outcome``; returns rows changed. Only where exactly one row has that edit id:
        a repeated edit id does not say which row the file means, so it is left alone
        (the guard is in the UPDATE itself). The Edit fields are kept."""
        self._require_writable("correct_outcomes")
        rows = [
            (*outcome_values(outcome), sid, outcome.edit_id, sid, outcome.edit_id)
            for sid, outcome in corrections
        ]
        assign = ", ".join(f"{column} = ?" for column in OUTCOME_VALUE_COLUMNS)
        with self._lock:
            return self._write_many(
                f"UPDATE edit_outcomes SET {assign} WHERE session_id = ? AND edit_id = ? AND "
                "(SELECT count(*) FROM edit_outcomes WHERE session_id = ? AND edit_id = ?) = 1",
                rows,
            )

    def file_states(self) -> dict[str, tuple[int, int]]:
        """What reconcile recorded per file path: (size, mtime_ns)."""
        with self._lock:
            rows = self._read("SELECT path, size, mtime_ns FROM reconcile_files").fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    def record_file_states(self, states: Iterable[tuple[str, int, int, str | None]]) -> None:
        """Remember (path, size, mtime_ns, session_id) for files reconcile has handled."""
        self._require_writable("record_file_states")
        now = time.time()
        with self._lock:
            self._write_many(
                "INSERT INTO reconcile_files (path, size, mtime_ns, session_id, scanned_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, session_id = excluded.session_id, "
                "scanned_at = excluded.scanned_at",
                [(*state, now) for state in states],
            )

    def prune_applied_requests(self, older_than_seconds: float) -> int:
        """Forget request ids applied longer ago than this; returns how many went."""
        self._require_writable("prune_applied_requests")
        cutoff = time.time() - older_than_seconds
        with self._lock:
            return self._write_many(
                "DELETE FROM applied_requests WHERE applied_at < ?", [(cutoff,)]
            )

    def _write_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> int:
        self._check_file_identity()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            changed = conn.executemany(sql, rows).rowcount
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise _storage_failure(f"cannot write index {self._db_path}", err) from err
        return changed

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


def _listing_query(status: object, limit: object) -> tuple[str, str, list[object]]:
    """The WHERE and ORDER/LIMIT clauses of a listing, and their parameters; bad values raise."""
    where, params = "", list[object]()
    if status is not None:
        where = " WHERE status = ?"
        try:
            params.append(SessionStatus(status).value)
        except ValueError:
            raise InvalidRecord(f"status: {status!r} is not a SessionStatus value") from None
    order = " ORDER BY started_at DESC"
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**63:
            raise InvalidRecord(f"limit: expected a non-negative integer, got {limit!r}")
        order += " LIMIT ?"
        params.append(limit)
    return where, order, params


_EDIT_MATCH = "target = ? AND pillar = ? AND op = ? AND risk_tier = ?"


def _edit_key(edit: OutcomeEdit) -> tuple[str, str, str, str]:
    """``edit``'s fields in :data:`_EDIT_MATCH` order."""
    return (edit.target, edit.pillar, edit.op, edit.risk_tier)


def _require_model(model: type[BaseModel], value: object, action: str) -> None:
    """Refuse a dict where a model is expected, as SessionStoreClient does (drop-in parity)."""
    if not isinstance(value, model):
        raise InvalidRecord(f"{action}: expected {model.__name__}, got {type(value).__name__}")


# The write types are the store's interface too (the daemon builds them); they live in batch.
__all__ = [
    "CheckpointResult",
    "Durability",
    "OutcomeWrite",
    "SessionStore",
    "SessionWrite",
    "Write",
    "WriteResult",
]
