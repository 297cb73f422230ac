"""Applying a batch of saves inside an open transaction: the daemon's write path.

Each save fails alone when refused (unknown session, constraint, a value the
driver cannot bind, a deadline already passed, a request id reused for other
content) and the rest commit together; the caller owns BEGIN/COMMIT. Kept apart
from :mod:`sessionstore.store` so the hot path reads on its own.

Every save with a request id leaves its id and a digest of its content in
``applied_requests``: the same id again is a duplicate (acknowledged, not
re-applied) when the content is the same, and refused when it is not.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any

from pydantic_core import to_json

from sessionstore import schema
from sessionstore.errors import (
    DeadlineExpired,
    IntegrityViolation,
    InvalidRecord,
    RequestIdConflict,
    SessionStoreError,
    UnknownSession,
    shorten,
)
from sessionstore.models import EditOutcome, LearningSession
from sessionstore.records import OutcomeEdit, outcome_row, session_row

UPSERT_SESSION = (
    f"INSERT INTO learning_sessions ({', '.join(schema.SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(schema.SESSION_COLUMNS))}) ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in schema.SESSION_COLUMNS[1:])
)
INSERT_OUTCOME = (
    f"INSERT INTO edit_outcomes ({', '.join(schema.OUTCOME_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(schema.OUTCOME_COLUMNS))})"
)
INSERT_APPLIED = (
    "INSERT INTO applied_requests (request_id, op, applied_at, digest) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(request_id) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class SessionWrite:
    """One ``save_session`` for :meth:`SessionStore.apply_batch` (session already validated)."""

    session: LearningSession
    request_id: str | None = None
    deadline: float | None = None
    """Unix time after which the write is refused unapplied (its sender gave up); None: never."""


@dataclass(frozen=True, slots=True)
class OutcomeWrite:
    """One ``save_outcome`` for :meth:`SessionStore.apply_batch` (fields already validated)."""

    session_id: str
    outcome: EditOutcome
    edit: OutcomeEdit
    request_id: str | None = None
    deadline: float | None = None
    """Unix time after which the write is refused unapplied (its sender gave up); None: never."""


@dataclass(frozen=True, slots=True)
class OutcomeRowWrite:
    """One ``save_outcome`` decoded straight to its row (the daemon's fast path,
    :mod:`sessionstore.fastpath`): applied exactly as the :class:`OutcomeWrite` the
    strict decoder would have made, whose ``outcome_row`` ``row`` is."""

    session_id: str
    edit_id: str
    row: tuple[Any, ...]
    request_id: str | None = None
    deadline: float | None = None
    """Unix time after which the write is refused unapplied (its sender gave up); None: never."""


@dataclass(frozen=True, slots=True)
class SessionRowWrite:
    """A session row encoded already (reconcile's: parsed and encoded off the loop)."""

    session_id: str
    parent_session_id: str | None
    row: tuple[Any, ...]
    request_id: None = None
    deadline: None = None


@dataclass(frozen=True, slots=True)
class OutcomeRowsWrite:
    """Outcome rows of one session encoded already (reconcile's); applied or refused together."""

    session_id: str
    rows: list[tuple[Any, ...]]
    request_id: None = None
    deadline: None = None


Write = SessionWrite | OutcomeWrite | OutcomeRowWrite | SessionRowWrite | OutcomeRowsWrite
_OUTCOME_SAVES = (OutcomeWrite, OutcomeRowWrite)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The fate of one write in a batch: applied, already applied earlier, or refused."""

    ok: bool
    duplicate: bool = False
    error: SessionStoreError | None = None


# Batches at least this big take the set-wise path (see _apply_outcomes_together).
SET_WISE_MIN = 16
# What refuses a single write (it fails alone); any other sqlite3.Error fails the batch.
_REFUSALS = (SessionStoreError, sqlite3.IntegrityError, ValueError, OverflowError, RecursionError)


def apply_writes(conn: sqlite3.Connection, writes: Sequence[Write]) -> list[WriteResult]:
    """Apply every write inside the open transaction, each failing alone if refused.

    A write whose deadline has passed is refused unapplied (see :func:`_settle_expired`);
    the clock is read here, after the caller's BEGIN IMMEDIATE took the write lock,
    so a wait for that lock counts against the deadline too.
    """
    now = time.time()
    expired = [w.deadline is not None and w.deadline <= now for w in writes]
    if any(expired):
        pairs = list(zip(writes, expired, strict=True))
        results = iter(_apply_live(conn, [w for w, late in pairs if not late]))
        # one lookup for them all: after a stall, a backlog of thousands expires at once
        applied = _applied(conn, [w.request_id for w, late in pairs if late])
        return [_settle_expired(w, now, applied) if late else next(results) for w, late in pairs]
    return _apply_live(conn, writes)


def _apply_live(conn: sqlite3.Connection, writes: Sequence[Write]) -> list[WriteResult]:
    """Optimistic: in the common case no write is refused, so all are applied under
    one savepoint instead of one each (two statements fewer per save, measured
    about a tenth of the loop's time). On the first refusal that savepoint is
    rolled back and the writes are redone one savepoint each, which isolates it.
    """
    if not writes:
        return []
    conn.execute("SAVEPOINT batch")
    try:
        duplicates = _apply_outcomes_together(conn, writes)
        if duplicates is None:
            duplicates = [_apply_one(conn, write) for write in writes]
    except _REFUSALS:
        conn.execute("ROLLBACK TO batch")
        conn.execute("RELEASE batch")
        return [_apply_in_savepoint(conn, write) for write in writes]
    conn.execute("RELEASE batch")
    return [WriteResult(ok=True, duplicate=duplicate) for duplicate in duplicates]


def _apply_outcomes_together(
    conn: sqlite3.Connection, writes: Sequence[Write]
) -> list[bool] | None:
    """The pipeline's case, a batch of outcome saves only, in a few set-wise statements.

    One lookup of the ids already applied, one of the sessions, then ``executemany``
    inserts: per save, two statement executions fewer than :meth:`_apply_one` and
    no Python round trip per statement. Returns None (apply one by one) for any
    batch it would not answer exactly like that path: session saves, an id twice,
    a session the index does not hold or an id reused for other content (whose
    refusals must name the save), and small batches, where the extra lookups cost
    more than they save (a direct ``save_outcome`` would get slower).
    """
    if len(writes) < SET_WISE_MIN or not all(type(w) in _OUTCOME_SAVES for w in writes):
        return None
    outcome_writes: list[OutcomeWrite | OutcomeRowWrite] = writes  # type: ignore[assignment]
    ids = [w.request_id for w in outcome_writes if w.request_id is not None]
    if len(set(ids)) != len(ids):
        return None
    seen = _applied(conn, ids)
    if _existing(conn, "learning_sessions", "id", {w.session_id for w in outcome_writes}) != {
        w.session_id for w in outcome_writes
    }:
        return None
    rows = [_outcome_row(w) for w in outcome_writes]
    digests = [
        None if w.request_id is None else content_digest(row)
        for w, row in zip(outcome_writes, rows, strict=True)
    ]
    duplicates = [w.request_id in seen for w in outcome_writes]
    if seen:  # resends among them: each must be the very save applied under its id
        for w, digest in zip(outcome_writes, digests, strict=True):
            applied = seen.get(w.request_id) if w.request_id is not None else None
            if applied is not None and not _same_save("save_outcome", digest, applied):
                return None
        rows = [row for row, dup in zip(rows, duplicates, strict=True) if not dup]
    now = time.time()
    conn.executemany(
        INSERT_APPLIED,
        [
            (w.request_id, "save_outcome", now, d)
            for w, d, dup in zip(outcome_writes, digests, duplicates, strict=True)
            if w.request_id is not None and not dup
        ],
    )
    conn.executemany(INSERT_OUTCOME, rows)
    return duplicates


def _rows(conn: sqlite3.Connection, select: str, keys: Iterable[str | None]) -> Iterator[Any]:
    """The rows of ``select … IN (keys)`` (chunked under SQLite's variable limit)."""
    wanted = [k for k in keys if k is not None]
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        yield from conn.execute(f"{select} IN ({','.join('?' * len(chunk))})", chunk)


def _existing(
    conn: sqlite3.Connection, table: str, column: str, keys: Iterable[str | None]
) -> set[str]:
    """Which of ``keys`` are present in ``table.column``."""
    return {row[0] for row in _rows(conn, f"SELECT {column} FROM {table} WHERE {column}", keys)}


_Applied = tuple[str, bytes | None, float]
"""What ``applied_requests`` remembers of an applied id: op, content digest, applied_at."""


def _applied(conn: sqlite3.Connection, ids: Iterable[str | None]) -> dict[str, _Applied]:
    select = "SELECT request_id, op, digest, applied_at FROM applied_requests WHERE request_id"
    return {row[0]: (row[1], row[2], row[3]) for row in _rows(conn, select, ids)}


def _apply_in_savepoint(conn: sqlite3.Connection, write: Write) -> WriteResult:
    conn.execute("SAVEPOINT write")
    try:
        duplicate = _apply_one(conn, write)
    except SessionStoreError as err:
        conn.execute("ROLLBACK TO write")
        conn.execute("RELEASE write")
        return WriteResult(ok=False, error=err)
    except sqlite3.IntegrityError as err:
        conn.execute("ROLLBACK TO write")
        conn.execute("RELEASE write")
        return WriteResult(ok=False, error=IntegrityViolation(f"{_describe(write)}: {err}"))
    except (ValueError, OverflowError, RecursionError) as err:
        # A value the SQLite driver cannot bind (a caller that skipped validation):
        # this write fails alone instead of failing its whole batch.
        conn.execute("ROLLBACK TO write")
        conn.execute("RELEASE write")
        return WriteResult(ok=False, error=InvalidRecord(f"{_describe(write)}: {err}"))
    conn.execute("RELEASE write")
    return WriteResult(ok=True, duplicate=duplicate)


def _apply_one(conn: sqlite3.Connection, write: Write) -> bool:
    """Apply one write inside the open savepoint; True if its request id was seen before."""
    if isinstance(write, SessionRowWrite | OutcomeRowsWrite):
        _apply_rows(conn, write)
        return False
    row = _row(write)
    if write.request_id is not None:
        op, digest = _op_and_digest(write, row)
        cursor = conn.execute(INSERT_APPLIED, (write.request_id, op, time.time(), digest))
        if cursor.rowcount == 0:
            _require_same_save(conn, write, op, digest)
            return True
    if isinstance(write, SessionWrite):
        session = write.session
        parent = session.parent_session_id
        if parent is not None and parent != session.id and not _has_session(conn, parent):
            raise UnknownSession(
                f"save_session {shorten(session.id)}: parent session {shorten(parent)} "
                "is not in the index"
            )
        conn.execute(UPSERT_SESSION, row)
    else:
        if not _has_session(conn, write.session_id):
            raise UnknownSession(
                f"save_outcome {shorten(_edit_id(write))}: session {shorten(write.session_id)} "
                "is not in the index (save the session first)"
            )
        conn.execute(INSERT_OUTCOME, row)
    return False


# -- what an applied request id remembers of its save ---------------------------------

DIGEST_BYTES = 8


def content_digest(row: tuple[Any, ...]) -> bytes:
    """The digest ``applied_requests`` keeps of a save: blake2b over pydantic-core's JSON
    of the row the save stores.

    The row, not the request: a retry carries a new deadline and may come another way
    (SessionStore directly, the daemon, a save_batch), and the row is what all of them
    store, so they agree. 8 bytes: this tells a resend from a different save under the
    same id (a caller's mistake, not an adversary's: anyone who can reach the socket
    can save what they like anyway). About 2 µs a save, measured (docs/retries.md).
    """
    return blake2b(to_json(row), digest_size=DIGEST_BYTES).digest()


def _op_and_digest(write: Write, row: tuple[Any, ...]) -> tuple[str, bytes]:
    op = "save_session" if isinstance(write, SessionWrite) else "save_outcome"
    return op, content_digest(row)


def _same_save(op: str, digest: bytes | None, applied: _Applied) -> bool:
    """Whether a save is the one applied under its id. Ids applied before digests were
    kept (schema version 3) have none: the same op counts as the same save, as it did."""
    applied_op, applied_digest, _ = applied
    return applied_op == op and (applied_digest is None or applied_digest == digest)


def _require_same_save(conn: sqlite3.Connection, write: Write, op: str, digest: bytes) -> None:
    assert write.request_id is not None
    applied = _applied(conn, [write.request_id])[write.request_id]
    if not _same_save(op, digest, applied):
        when = datetime.fromtimestamp(applied[2], UTC).isoformat(timespec="seconds")
        raise RequestIdConflict(
            f"{_describe(write)}: request id {write.request_id!r} was already used for a "
            f"different {applied[0]} (applied {when}); not applied: a new save needs a new id"
        )


def _settle_expired(write: Write, now: float, applied_ids: dict[str, _Applied]) -> WriteResult:
    """Refuse a write whose deadline passed, unless its id was applied already.

    Its sender gave up and reported it failed; applying it now would make that report
    false. But if an earlier copy of the same request was applied, "not applied" would be
    false too: that copy stands, and the answer is the duplicate it is.
    """
    if write.request_id is not None:
        applied = applied_ids.get(write.request_id)
        try:
            same = applied is not None and _same_save(*_op_and_digest(write, _row(write)), applied)
        except _REFUSALS:  # a row that cannot be built is no copy of an applied save
            same = False
        if same:
            return WriteResult(ok=True, duplicate=True)
    assert write.deadline is not None
    return WriteResult(
        ok=False,
        error=DeadlineExpired(
            f"{_describe(write)}: sessiond reached it {now - write.deadline:.3f} s after its "
            "deadline; not applied (sessiond was stalled for most of the caller's timeout, "
            "or the caller's clock is behind sessiond's)"
        ),
    )


def _row(write: Write) -> tuple[Any, ...]:
    if isinstance(write, SessionWrite):
        return session_row(write.session)
    if isinstance(write, _OUTCOME_SAVES):
        return _outcome_row(write)
    raise TypeError(f"{type(write).__name__} carries its rows already")  # reconcile's: no id


def _apply_rows(conn: sqlite3.Connection, write: SessionRowWrite | OutcomeRowsWrite) -> None:
    if isinstance(write, SessionRowWrite):
        parent = write.parent_session_id
        if parent is not None and parent != write.session_id and not _has_session(conn, parent):
            raise UnknownSession(
                f"session {write.session_id!r}: parent session {parent!r} is not in the index"
            )
        conn.execute(UPSERT_SESSION, write.row)
        return
    if not _has_session(conn, write.session_id):
        raise UnknownSession(f"outcomes of session {write.session_id!r}: it is not in the index")
    conn.executemany(INSERT_OUTCOME, write.rows)


def _has_session(conn: sqlite3.Connection, session_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM learning_sessions WHERE id = ?", (session_id,))
    return row.fetchone() is not None


def _describe(write: Write) -> str:
    if isinstance(write, SessionRowWrite | OutcomeRowsWrite):
        return f"rows of session {write.session_id!r}"
    if isinstance(write, SessionWrite):
        return f"save_session {shorten(write.session.id)}"
    return f"save_outcome {shorten(_edit_id(write))} for session {shorten(write.session_id)}"


def _outcome_row(write: OutcomeWrite | OutcomeRowWrite) -> tuple[Any, ...]:
    if type(write) is OutcomeRowWrite:
        return write.row
    return outcome_row(write.session_id, write.outcome, write.edit)  # type: ignore[union-attr]


def _edit_id(write: OutcomeWrite | OutcomeRowWrite) -> str:
    return write.edit_id if type(write) is OutcomeRowWrite else write.outcome.edit_id  # type: ignore[union-attr]
