"""SessionStore: the SQLite index of learning sessions and their edit outcomes.

A drop-in for OpenJarvis's distillation ``SessionStore`` (same methods, same
tables), plus what a single-writer daemon needs: a batch entry point that applies
many saves in one transaction with a SAVEPOINT each, idempotent request ids kept
in the database, a read-only mode and schema versioning. The maintenance calls
reconcile and the daemon's jobs use (checkpoint, integrity check, statistics,
reconcile's bookkeeping) come from :class:`~sessionstore.maintenance.IndexMaintenance`,
which ``SessionStore`` inherits: one object, so the daemon never touches SQL itself,
with the upkeep in its own module so this one reads as the API and the write path.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import quote

from sessionstore import schema
from sessionstore.batch import (
    OutcomeRowsWrite,
    OutcomeWrite,
    SessionRowWrite,
    SessionWrite,
    Write,
    WriteResult,
    apply_writes,
)
from sessionstore.errors import ReadOnlyStore, StorageFailure
from sessionstore.inputs import listing_args, query_id, valid_outcome, valid_session
from sessionstore.maintenance import CheckpointResult, IndexMaintenance
from sessionstore.models import EditOutcome, LearningSession, SessionStatus
from sessionstore.records import (
    gc_paused,
    outcomes_from_rows,
    read_models,
    session_from_row,
    sessions_from_rows,
)

Durability = Literal["full", "normal"]

_SESSION_SELECT = f"SELECT {', '.join(schema.SESSION_COLUMNS)} FROM learning_sessions"
_OUTCOME_FIELDS = "edit_id, status, benchmark_delta, cluster_deltas, error, applied_at"

SessionKey = tuple[str, str]
"""A session's place in a listing: its ``started_at`` as stored, and its id."""


def _storage_failure(action: str, err: sqlite3.Error) -> StorageFailure:
    return StorageFailure(f"{action}: {err}")


class SessionStore(IndexMaintenance):
    """The SQLite index; ``session.json`` files stay the authority.

    ``readonly=True`` opens the file with ``mode=ro`` for analytics processes: reads
    work, and every write raises :class:`ReadOnlyStore` before touching the file.

    Saves take any ``LearningSession`` / ``EditOutcome`` with our fields, OpenJarvis's
    included. Reads return ``sessionstore.models`` objects, or with ``models=`` (a
    module such as ``openjarvis.learning.spec_search.models``, or its name) that
    module's ``LearningSession`` and ``EditOutcome``, so the original's own checks,
    ``store.get_session(s.id) == s`` among them, hold for the caller's objects.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        readonly: bool = False,
        durability: Durability = "full",
        busy_timeout: float = 5.0,
        models: ModuleType | str | None = None,
    ) -> None:
        self._models = read_models(models)
        self._db_path = Path(db_path).expanduser()  # "~/..." as a shell would read it
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
        self._apply_single(SessionWrite(valid_session(session), request_id))

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
        sid, valid, edit = valid_outcome(
            session_id, outcome, pillar, op, target, risk_tier, rationale
        )
        self._apply_single(OutcomeWrite(sid, valid, edit, request_id))

    def get_session(self, session_id: str) -> LearningSession | None:
        """The session with this id and its outcomes, or None."""
        sid = query_id(session_id)
        if sid is None:
            return None
        with self._read_transaction():
            row = self._read(f"{_SESSION_SELECT} WHERE id = ?", (sid,)).fetchone()
            if row is None:
                return None
            outcome_rows = self._outcome_rows(sid)
        return session_from_row(row, outcomes_from_rows(outcome_rows, self._models), self._models)

    def list_sessions(
        self, status: SessionStatus | None = None, limit: int | None = None
    ) -> list[LearningSession]:
        """Sessions newest ``started_at`` first, outcomes attached, in two queries in all."""
        where, order, params = _listing_query(status, limit)
        with gc_paused():  # ~100k objects allocated and none freed: see gc_paused
            rows, outcome_rows = self._fetch_listing(where, order, params)
            return sessions_from_rows(rows, outcome_rows, self._models)

    def iter_sessions(
        self,
        status: SessionStatus | None = None,
        limit: int | None = None,
        *,
        chunk: int = 256,
        after: SessionKey | None = None,
    ) -> Generator[list[tuple[SessionKey, LearningSession]], None, None]:
        """:meth:`list_sessions`, ``chunk`` sessions at a time, all from one read transaction,
        each with its :data:`SessionKey`; ``after`` starts past that key (keyset paging).

        For the daemon's readers, which encode each chunk and let it go: a listing
        then holds its reply and one chunk of models, not every model at once (8,000
        sessions with 80,000 outcomes took a reader ~300 MB). One outcome query per
        chunk. Close the iterator (or exhaust it) to end the read transaction.

        The key is the stored ``started_at`` text and the id, the listing's order: a
        page that ends at a key and a next page that starts ``after`` it neither repeat
        nor skip a session whose key did not change in between, whatever was saved.
        """
        where, order, params = _listing_query(status, limit, after)
        with self._read_transaction():
            cursor = self._read(f"{_SESSION_SELECT}{where}{order}", params)
            while rows := cursor.fetchmany(chunk):
                marks = ",".join("?" * len(rows))
                outcome_rows = self._read(
                    f"SELECT {_OUTCOME_FIELDS}, session_id FROM edit_outcomes "
                    f"WHERE session_id IN ({marks}) ORDER BY session_id, id",
                    [row[0] for row in rows],
                ).fetchall()
                sessions = sessions_from_rows(rows, outcome_rows, self._models)
                yield [((row[6], row[0]), s) for row, s in zip(rows, sessions, strict=True)]

    def iter_outcomes(
        self, session_id: str, *, after: int | None = None, chunk: int = 256
    ) -> Generator[list[tuple[int, EditOutcome]], None, None]:
        """:meth:`list_outcomes` ``chunk`` rows at a time from one read transaction, each
        with its row id; ``after`` starts past that row id (keyset paging: outcome rows
        are only ever added, with growing ids, so pages neither repeat nor skip one)."""
        with self._read_transaction():
            cursor = self._read(
                f"SELECT {_OUTCOME_FIELDS}, id FROM edit_outcomes "
                "WHERE session_id = ? AND id > ? ORDER BY id",
                (session_id, -1 if after is None else after),
            )
            while rows := cursor.fetchmany(chunk):
                outcomes = outcomes_from_rows(rows, self._models)
                yield [(row[-1], o) for row, o in zip(rows, outcomes, strict=True)]

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
        sid = query_id(session_id)
        if sid is None:
            return []
        with self._lock:
            rows = self._outcome_rows(sid)
        return outcomes_from_rows(rows, self._models)

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

    def _write_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """Run ``sql`` once per row in one write transaction; the maintenance writes use it."""
        return self._write_statements([(sql, rows)])

    def _write_statements(self, statements: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]) -> int:
        """Run each (sql, rows) pair, each sql once per row, all in one write transaction;
        returns the rows the last statement changed."""
        self._check_file_identity()
        conn = self._conn
        changed = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, rows in statements:
                changed = conn.executemany(sql, rows).rowcount
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise _storage_failure(f"cannot write index {self._db_path}", err) from err
        return changed


def _listing_query(
    status: object, limit: object, after: SessionKey | None = None
) -> tuple[str, str, list[object]]:
    """The WHERE and ORDER/LIMIT clauses of a listing, and their parameters; bad values raise.

    Newest ``started_at`` first, ties by id (also newest first), so the order is total
    and a listing can be paged by key (``after``).
    """
    status_value, count = listing_args(status, limit)
    conditions, params = list[str](), list[object]()
    if status_value is not None:
        conditions.append("status = ?")
        params.append(status_value)
    if after is not None:
        conditions.append("(started_at, id) < (?, ?)")
        params += after
    where = " WHERE " + " AND ".join(conditions) if conditions else ""
    order = " ORDER BY started_at DESC, id DESC"
    if count is not None:
        order += " LIMIT ?"
        params.append(count)
    return where, order, params


# The write types are the store's interface too (the daemon builds them); they live in batch.
# CheckpointResult lives with the maintenance calls and is re-exported here.
__all__ = [
    "CheckpointResult",
    "Durability",
    "SessionKey",
    "OutcomeRowsWrite",
    "OutcomeWrite",
    "SessionRowWrite",
    "SessionStore",
    "SessionWrite",
    "Write",
    "WriteResult",
]
