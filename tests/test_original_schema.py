"""Database files are interchangeable with OpenJarvis's original distillation SessionStore.

The original schema and the original statements are written out literally here, so
these tests do not lean on our own code to build or read the "original" side.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sessionstore import schema
from sessionstore.models import EditOutcome, LearningSession
from sessionstore.store import SessionStore

MakeSession = Callable[..., LearningSession]
MakeOutcome = Callable[..., EditOutcome]

ORIGINAL_DDL = """
CREATE TABLE IF NOT EXISTS learning_sessions (
    id TEXT PRIMARY KEY,
    parent_session_id TEXT,
    trigger TEXT NOT NULL,
    trigger_metadata TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    autonomy_mode TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    diagnosis_path TEXT NOT NULL,
    plan_path TEXT NOT NULL,
    benchmark_before TEXT NOT NULL,
    benchmark_after TEXT,
    git_checkpoint_pre TEXT NOT NULL,
    git_checkpoint_post TEXT,
    teacher_cost_usd REAL NOT NULL DEFAULT 0.0,
    error TEXT,
    FOREIGN KEY (parent_session_id) REFERENCES learning_sessions(id)
);
CREATE TABLE IF NOT EXISTS edit_outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    edit_id TEXT NOT NULL,
    pillar TEXT NOT NULL,
    op TEXT NOT NULL,
    target TEXT NOT NULL,
    risk_tier TEXT NOT NULL,
    status TEXT NOT NULL,
    benchmark_delta REAL,
    cluster_deltas TEXT NOT NULL DEFAULT '{}',
    rationale TEXT NOT NULL DEFAULT '',
    error TEXT,
    applied_at TEXT,
    FOREIGN KEY (session_id) REFERENCES learning_sessions(id)
);
CREATE INDEX IF NOT EXISTS idx_sessions_started_at ON learning_sessions(started_at);
CREATE INDEX IF NOT EXISTS idx_sessions_status ON learning_sessions(status);
CREATE INDEX IF NOT EXISTS idx_outcomes_session ON edit_outcomes(session_id);
CREATE INDEX IF NOT EXISTS idx_outcomes_op ON edit_outcomes(op);
"""

ORIGINAL_SESSION_INSERT = """
INSERT OR REPLACE INTO learning_sessions (
    id, parent_session_id, trigger, trigger_metadata, status, autonomy_mode,
    started_at, ended_at, diagnosis_path, plan_path, benchmark_before,
    benchmark_after, git_checkpoint_pre, git_checkpoint_post, teacher_cost_usd, error
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

ORIGINAL_OUTCOME_INSERT = """
INSERT INTO edit_outcomes (
    session_id, edit_id, pillar, op, target, risk_tier, status,
    benchmark_delta, cluster_deltas, rationale, error, applied_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

EDIT = {
    "pillar": "tools",
    "op": "add_tool_to_agent",
    "target": "agents.simple.tools",
    "risk_tier": "review",
    "rationale": "arithmetic slips",
}


# -- the original library, as plain sqlite3 ---------------------------------------------


def original_connect(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(db_path))
    conn.row_factory = sqlite3.Row
    conn.executescript(ORIGINAL_DDL)
    return conn


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def original_save_session(conn: sqlite3.Connection, s: LearningSession) -> None:
    conn.execute(
        ORIGINAL_SESSION_INSERT,
        (
            s.id,
            s.parent_session_id,
            s.trigger.value,
            json.dumps(s.trigger_metadata),
            s.status.value,
            s.autonomy_mode.value,
            s.started_at.isoformat(),
            _iso(s.ended_at),
            str(s.diagnosis_path),
            str(s.plan_path),
            json.dumps(s.benchmark_before.model_dump()),
            json.dumps(s.benchmark_after.model_dump()) if s.benchmark_after else None,
            s.git_checkpoint_pre,
            s.git_checkpoint_post,
            s.teacher_cost_usd,
            s.error,
        ),
    )
    conn.commit()


def original_save_outcome(
    conn: sqlite3.Connection, session_id: str, o: EditOutcome, edit: dict[str, str]
) -> None:
    conn.execute(
        ORIGINAL_OUTCOME_INSERT,
        (
            session_id,
            o.edit_id,
            edit["pillar"],
            edit["op"],
            edit["target"],
            edit["risk_tier"],
            o.status,
            o.benchmark_delta,
            json.dumps(o.cluster_deltas),
            edit["rationale"],
            o.error,
            _iso(o.applied_at),
        ),
    )
    conn.commit()


def original_list_outcomes(conn: sqlite3.Connection, session_id: str) -> list[EditOutcome]:
    rows = conn.execute(
        "SELECT * FROM edit_outcomes WHERE session_id = ? ORDER BY id", (session_id,)
    ).fetchall()
    return [
        EditOutcome(
            edit_id=r["edit_id"],
            status=r["status"],
            benchmark_delta=r["benchmark_delta"],
            cluster_deltas=json.loads(r["cluster_deltas"]),
            error=r["error"],
            applied_at=r["applied_at"],
        )
        for r in rows
    ]


def _original_session(conn: sqlite3.Connection, r: sqlite3.Row) -> LearningSession:
    return LearningSession(
        id=r["id"],
        parent_session_id=r["parent_session_id"],
        trigger=r["trigger"],
        trigger_metadata=json.loads(r["trigger_metadata"]),
        status=r["status"],
        autonomy_mode=r["autonomy_mode"],
        started_at=r["started_at"],
        ended_at=r["ended_at"],
        diagnosis_path=r["diagnosis_path"],
        plan_path=r["plan_path"],
        benchmark_before=json.loads(r["benchmark_before"]),
        benchmark_after=json.loads(r["benchmark_after"]) if r["benchmark_after"] else None,
        edit_outcomes=original_list_outcomes(conn, r["id"]),
        git_checkpoint_pre=r["git_checkpoint_pre"],
        git_checkpoint_post=r["git_checkpoint_post"],
        teacher_cost_usd=r["teacher_cost_usd"],
        error=r["error"],
    )


def original_get_session(conn: sqlite3.Connection, session_id: str) -> LearningSession | None:
    row = conn.execute("SELECT * FROM learning_sessions WHERE id = ?", (session_id,)).fetchone()
    return _original_session(conn, row) if row is not None else None


def original_list_sessions(
    conn: sqlite3.Connection, status: str | None = None, limit: int | None = None
) -> list[LearningSession]:
    sql = "SELECT * FROM learning_sessions"
    params: list[Any] = []
    if status is not None:
        sql += " WHERE status = ?"
        params.append(status)
    sql += " ORDER BY started_at DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_original_session(conn, r) for r in conn.execute(sql, params).fetchall()]


def table_info(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]


def index_list(conn: sqlite3.Connection, table: str) -> set[tuple[str, str]]:
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL",
        (table,),
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def original_db(
    tmp_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> Iterator[tuple[Path, dict[str, LearningSession]]]:
    """A file written by the original library: user_version 0, its rows, its formats."""
    db_path = tmp_path / "distillation.db"
    conn = original_connect(db_path)
    root = make_session(status="completed", git_checkpoint_post="0" * 40)
    child = make_session(
        parent_session_id=root.id,
        trigger="cluster",
        status="failed",
        error="gate rejected every edit",
        benchmark_after=root.benchmark_before,
    )
    naive = make_session(  # older OpenJarvis builds wrote naive local datetimes
        status="awaiting_review",
        started_at=datetime(2026, 3, 2, 9, 30),
        ended_at=None,
    )
    expected: dict[str, LearningSession] = {}
    for session in (root, child, naive):
        original_save_session(conn, session)
        outcomes = [make_outcome(), make_outcome(status="skipped", applied_at=None)]
        for outcome in outcomes:
            original_save_outcome(conn, session.id, outcome, EDIT)
        expected[session.id] = session.model_copy(update={"edit_outcomes": outcomes})
    # the original re-saved a finished session with INSERT OR REPLACE
    finished = root.model_copy(update={"teacher_cost_usd": 2.5})
    original_save_session(conn, finished)
    expected[root.id] = finished.model_copy(
        update={"edit_outcomes": expected[root.id].edit_outcomes}
    )
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()
    yield db_path, expected


# -- an original file opens here ------------------------------------------------------------


def test_original_file_reads_back_as_equal_models(
    original_db: tuple[Path, dict[str, LearningSession]],
) -> None:
    db_path, expected = original_db
    store = SessionStore(db_path)
    try:
        for session_id, session in expected.items():
            assert store.get_session(session_id) == session
        listed = store.list_sessions()
        assert {s.id: s for s in listed} == expected
        assert [s.id for s in listed] == [
            s.id for s in sorted(expected.values(), key=lambda s: s.started_at.isoformat())
        ][::-1]
        assert store.list_sessions(status="failed") == [
            s for s in expected.values() if s.status.value == "failed"
        ]
    finally:
        store.close()


def test_original_file_is_migrated_to_the_latest_version_and_accepts_writes(
    original_db: tuple[Path, dict[str, LearningSession]],
    make_session: MakeSession,
    make_outcome: MakeOutcome,
) -> None:
    db_path, expected = original_db
    store = SessionStore(db_path)
    try:
        assert schema.schema_version(store._conn) == schema.LATEST_VERSION
        some_id = next(iter(expected))
        extra = make_outcome()
        store.save_outcome(some_id, extra, **EDIT, request_id="after-migration")
        new = make_session(parent_session_id=some_id)
        store.save_session(new)
        store.save_session(new.model_copy(update={"error": "resaved"}))

        loaded = store.get_session(some_id)
        assert loaded is not None
        assert loaded.edit_outcomes == [*expected[some_id].edit_outcomes, extra]
        assert store.get_session(new.id) == new.model_copy(update={"error": "resaved"})
    finally:
        store.close()

    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.LATEST_VERSION
    finally:
        conn.close()


def test_readonly_store_reads_an_unmigrated_original_file(
    original_db: tuple[Path, dict[str, LearningSession]],
) -> None:
    db_path, expected = original_db
    store = SessionStore(db_path, readonly=True)
    try:
        assert {s.id: s for s in store.list_sessions()} == expected
    finally:
        store.close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    finally:
        conn.close()


# -- and a file we wrote still opens in the original -------------------------------------------


def test_original_statements_read_everything_we_wrote(
    tmp_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    db_path = tmp_path / "distillation.db"
    store = SessionStore(db_path)
    parent = make_session(status="completed")
    child = make_session(parent_session_id=parent.id, status="failed", error="boom")
    expected: dict[str, LearningSession] = {}
    for session in (parent, child):
        store.save_session(session)
        outcomes = [make_outcome(), make_outcome(status="rolled_back")]
        for n, outcome in enumerate(outcomes):
            store.save_outcome(session.id, outcome, **EDIT, request_id=f"{session.id}-{n}")
        expected[session.id] = session.model_copy(update={"edit_outcomes": outcomes})
    store.save_session(parent.model_copy(update={"git_checkpoint_post": "c0ffee"}))
    expected[parent.id] = expected[parent.id].model_copy(update={"git_checkpoint_post": "c0ffee"})
    store.close()

    conn = original_connect(db_path)  # the original ran its CREATE ... IF NOT EXISTS on open
    try:
        for session_id, session in expected.items():
            assert original_get_session(conn, session_id) == session
        assert original_list_sessions(conn) == [expected[child.id], expected[parent.id]]
        assert original_list_sessions(conn, status="failed", limit=5) == [expected[child.id]]
        assert original_list_outcomes(conn, "unknown") == []

        # and the original can keep writing to it, which we then read
        later = make_outcome()
        original_save_outcome(conn, child.id, later, EDIT)
    finally:
        conn.close()
    store = SessionStore(db_path)
    try:
        loaded = store.get_session(child.id)
        assert loaded is not None
        assert loaded.edit_outcomes == [*expected[child.id].edit_outcomes, later]
    finally:
        store.close()


@pytest.mark.parametrize("table", ["learning_sessions", "edit_outcomes"])
def test_our_schema_keeps_the_original_tables_and_indexes_unchanged(
    tmp_path: Path, table: str
) -> None:
    reference = sqlite3.connect(":memory:")
    reference.executescript(ORIGINAL_DDL)
    SessionStore(tmp_path / "ours.db").close()
    ours = sqlite3.connect(tmp_path / "ours.db")
    try:
        assert table_info(ours, table) == table_info(reference, table)
        assert index_list(ours, table) == index_list(reference, table)
        assert [tuple(r) for r in ours.execute(f"PRAGMA foreign_key_list({table})")] == [
            tuple(r) for r in reference.execute(f"PRAGMA foreign_key_list({table})")
        ]
    finally:
        ours.close()
        reference.close()


def test_schema_module_declares_the_original_column_order() -> None:
    reference = sqlite3.connect(":memory:")
    try:
        reference.executescript(ORIGINAL_DDL)
        session_columns = [r[1] for r in table_info(reference, "learning_sessions")]
        outcome_columns = [r[1] for r in table_info(reference, "edit_outcomes")]
    finally:
        reference.close()
    assert tuple(session_columns) == schema.SESSION_COLUMNS
    assert tuple(outcome_columns[1:]) == schema.OUTCOME_COLUMNS  # [0] is the AUTOINCREMENT id
