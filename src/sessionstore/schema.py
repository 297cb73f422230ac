"""The index schema: the original OpenJarvis tables, and ordered additive migrations.

Version 1 is exactly the original ``SessionStore`` schema (same tables, columns and
indexes, all ``IF NOT EXISTS``), so a database file made by the original library
(``user_version`` 0) migrates by recording the version and adding our own tables;
the original library can still open a file we have migrated, because nothing it
reads was changed. Every later version only adds.
"""

from __future__ import annotations

import sqlite3

from sessionstore.errors import SchemaError

SESSION_COLUMNS = (
    "id",
    "parent_session_id",
    "trigger",
    "trigger_metadata",
    "status",
    "autonomy_mode",
    "started_at",
    "ended_at",
    "diagnosis_path",
    "plan_path",
    "benchmark_before",
    "benchmark_after",
    "git_checkpoint_pre",
    "git_checkpoint_post",
    "teacher_cost_usd",
    "error",
)

OUTCOME_COLUMNS = (
    "session_id",
    "edit_id",
    "pillar",
    "op",
    "target",
    "risk_tier",
    "status",
    "benchmark_delta",
    "cluster_deltas",
    "rationale",
    "error",
    "applied_at",
)

_V1_ORIGINAL = [
    """CREATE TABLE IF NOT EXISTS learning_sessions (
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
)""",
    """CREATE TABLE IF NOT EXISTS edit_outcomes (
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
)""",
    "CREATE INDEX IF NOT EXISTS idx_sessions_started_at ON learning_sessions(started_at)",
    "CREATE INDEX IF NOT EXISTS idx_sessions_status ON learning_sessions(status)",
    "CREATE INDEX IF NOT EXISTS idx_outcomes_session ON edit_outcomes(session_id)",
    "CREATE INDEX IF NOT EXISTS idx_outcomes_op ON edit_outcomes(op)",
]

# Version 2: the memory of applied request ids, so a retried save is recognised
# after a daemon restart (it lives in the same transaction as the write it marks).
_V2_APPLIED_REQUESTS = [
    """CREATE TABLE applied_requests (
    request_id TEXT PRIMARY KEY,
    op TEXT NOT NULL,
    applied_at REAL NOT NULL
) WITHOUT ROWID""",
    "CREATE INDEX idx_applied_requests_at ON applied_requests(applied_at)",
]

# Version 3: what reconcile saw of each session.json last time, for incremental passes.
_V3_RECONCILE_FILES = [
    """CREATE TABLE reconcile_files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    session_id TEXT,
    scanned_at REAL NOT NULL
) WITHOUT ROWID""",
]

# Version 4: a digest of each applied save's content, so the same request id with other
# content is refused instead of acknowledged as a duplicate. Ids applied before it have
# NULL there (see batch._same_save); they age out after request_id_retention.
_V4_REQUEST_DIGESTS = [
    "ALTER TABLE applied_requests ADD COLUMN digest BLOB",
]
# Version 5: why reconcile could not use a file, so an unchanged one is not read again.
_V5_RECONCILE_PROBLEMS = ["ALTER TABLE reconcile_files ADD COLUMN problem TEXT"]

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, _V1_ORIGINAL),
    (2, _V2_APPLIED_REQUESTS),
    (3, _V3_RECONCILE_FILES),
    (4, _V4_REQUEST_DIGESTS),
    (5, _V5_RECONCILE_PROBLEMS),
]
LATEST_VERSION = MIGRATIONS[-1][0]


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to LATEST_VERSION in one IMMEDIATE transaction; return the old version.

    The version is read again after taking the write lock, so two processes opening
    the same new file at once do not both run a migration.
    """
    if schema_version(conn) == LATEST_VERSION:
        return LATEST_VERSION
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = schema_version(conn)
        if found > LATEST_VERSION:
            raise SchemaError(
                f"index schema version {found} is newer than this sessionstore "
                f"understands ({LATEST_VERSION}); upgrade sessionstore"
            )
        for version, statements in MIGRATIONS:
            if version > found:
                for statement in statements:
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def check_readable(conn: sqlite3.Connection) -> None:
    """Refuse (clearly) a file that is not an index, or one from a newer sessionstore."""
    found = schema_version(conn)
    if found > LATEST_VERSION:
        raise SchemaError(
            f"index schema version {found} is newer than this sessionstore "
            f"understands ({LATEST_VERSION}); upgrade sessionstore"
        )
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = {"learning_sessions", "edit_outcomes"} - tables
    if missing:
        raise SchemaError(
            f"not a sessionstore index (missing table(s) {', '.join(sorted(missing))}); "
            "open it writable once to create the schema"
        )
