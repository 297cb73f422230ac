"""The original's write path, the baseline every daemon ratio is taken against.

OpenJarvis's own ``SessionStore`` (``openjarvis.learning.spec_search``, released
package) when it is installed: its connection (``sqlite3.connect`` defaults: WAL,
foreign keys, a 5 s busy timeout), its INSERT and its commit per save, fed with
its own model objects. Where it is not installed, :class:`PlainStore` is the same
path written out here: plain ``sqlite3``, WAL, foreign keys, one INSERT and one
commit per save, 5 s timeout, on the original's schema. This project's
``SessionStore`` does more per save (a request-id row, a digest, a savepoint) and
is measured as a second row, not as the baseline: it would flatter the ratios.
"""

from __future__ import annotations

import importlib
import json
import sqlite3
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol

from sessionstore import schema
from sessionstore.benchmarks import data
from sessionstore.errors import ConfigError

DirectWriter = Literal["openjarvis", "sqlite3", "ours"]
"""Who writes in a direct phase: OpenJarvis's store, its plain-sqlite3 equivalent, or ours."""
PACKAGE = "openjarvis.learning.spec_search"
STORE_MODULE = f"{PACKAGE}.storage.session_store"
MODELS_MODULE = f"{PACKAGE}.models"
BUSY_TIMEOUT = 5.0
"""``sqlite3.connect``'s default timeout, which the original relies on."""

# The original's statements, written out (they are not ours to import when the
# package is missing); the columns are the original's, as in schema.OUTCOME_COLUMNS.
_INSERT_SESSION = (
    f"INSERT OR REPLACE INTO learning_sessions ({', '.join(schema.SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(schema.SESSION_COLUMNS))})"
)
_INSERT_OUTCOME = (
    f"INSERT INTO edit_outcomes ({', '.join(schema.OUTCOME_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(schema.OUTCOME_COLUMNS))})"
)


class Writer(Protocol):
    def save_session(self, session: Any) -> None: ...
    def save_outcome(
        self,
        session_id: str,
        outcome: Any,
        *,
        pillar: str,
        op: str,
        target: str,
        risk_tier: str,
        rationale: str = "",
    ) -> None: ...
    def close(self) -> None: ...


def openjarvis_version() -> str | None:
    """The installed openjarvis release whose store imports, or None."""
    try:
        installed = version("openjarvis")
        importlib.import_module(STORE_MODULE)
        importlib.import_module(MODELS_MODULE)
    except (PackageNotFoundError, ImportError):
        return None
    return installed


def choose(asked: str) -> tuple[DirectWriter, str | None]:
    """``auto``: OpenJarvis's store when installed, else the plain equivalent; with its version."""
    found = openjarvis_version()
    if asked == "sqlite3" or (asked == "auto" and found is None):
        return "sqlite3", None
    if found is None:
        raise ConfigError(
            f"invalid --direct-writer openjarvis: {STORE_MODULE} does not import "
            "(pip install --no-deps openjarvis==1.0.4)"
        )
    return "openjarvis", found


def describe(writer: DirectWriter, found: str | None) -> str:
    return {
        "openjarvis": f"{STORE_MODULE}.SessionStore (openjarvis {found})",
        "sqlite3": "plain sqlite3 written out in the bench (openjarvis not installed)",
        "ours": "sessionstore.SessionStore (this project's, direct)",
    }[writer]


class PlainStore:
    """The original's write path in plain ``sqlite3``: what its ``SessionStore`` does per save."""

    def __init__(self, db_path: str | Path) -> None:
        self._conn = sqlite3.connect(str(db_path), timeout=BUSY_TIMEOUT, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        for statement in dict(schema.MIGRATIONS)[1]:  # the original's tables and indexes
            self._conn.execute(statement)
        self._conn.commit()

    def save_session(self, session: Any) -> None:
        from sessionstore.records import session_row

        self._conn.execute(_INSERT_SESSION, session_row(session))
        self._conn.commit()

    def save_outcome(
        self,
        session_id: str,
        outcome: Any,
        *,
        pillar: str,
        op: str,
        target: str,
        risk_tier: str,
        rationale: str = "",
    ) -> None:
        applied = outcome.applied_at
        self._conn.execute(
            _INSERT_OUTCOME,
            (
                session_id, outcome.edit_id, pillar, op, target, risk_tier, outcome.status,
                outcome.benchmark_delta, json.dumps(outcome.cluster_deltas), rationale,
                outcome.error, applied.isoformat() if applied is not None else None,
            ),
        )  # fmt: skip
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()


def models(writer: DirectWriter) -> ModuleType:
    """The model classes a caller of ``writer`` builds its records with."""
    name = MODELS_MODULE if writer == "openjarvis" else "sessionstore.models"
    return importlib.import_module(name)


def open_writer(
    writer: DirectWriter, db_path: str | Path, durability: str, busy_timeout: float = BUSY_TIMEOUT
) -> Writer:
    """A direct writer on ``db_path``; durability set as the daemon's (FULL is SQLite's default).

    ``busy_timeout`` applies to ours only: the original's is sqlite3's default, 5 s.
    """
    store: Any
    if writer == "openjarvis":
        store = importlib.import_module(STORE_MODULE).SessionStore(db_path)
        conn = store._conn
    elif writer == "sqlite3":
        store = PlainStore(db_path)
        conn = store._conn
    else:
        from sessionstore.store import SessionStore

        return SessionStore(db_path, durability=durability, busy_timeout=busy_timeout)  # type: ignore[arg-type]
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
    return store  # type: ignore[no-any-return]


def save_sessions(
    writer: DirectWriter, db_path: Path, session_ids: list[str], durability: str
) -> None:
    """What the original usage does first: one process creates the file and saves the sessions."""
    store = open_writer(writer, db_path, durability)
    session_class = models(writer).LearningSession
    try:
        for n, sid in enumerate(session_ids):
            ours = data.session(sid, n)
            store.save_session(session_class.model_validate(ours.model_dump(mode="json")))
    finally:
        store.close()
