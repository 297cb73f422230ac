"""The listing scenario: ``list_sessions()`` in two queries versus one query per session.

The original OpenJarvis store listed sessions by selecting them, then, for each
one, building the session from its row (``TriggerKind(...)``,
``datetime.fromisoformat``, ``Path(...)``, the snapshots by
``model_validate_json``), selecting its outcomes (``WHERE session_id = ? ORDER
BY id``, each built from ``json.loads`` and ``fromisoformat``) and attaching them
with ``model_copy(update=...)``. That way is written out here step for step, so
changes to ``records`` cannot speed it up. ``SessionStore.list_sessions`` fetches
every listed session's outcomes in one query and validates all rows in two
pydantic-core calls.

Two more timings show where the time goes: ``rows_seconds`` brings the same rows
into Python and builds nothing, and ``unvalidated_seconds`` also builds the same
objects with no validation at all (instances assembled by hand from the parsed
rows). ``per_session_seconds`` over the latter, ``speedup_ceiling``, is the
speed-up a listing would have if validating cost nothing. Each timing is the best
of three on the same freshly filled index.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic_core import from_json

from sessionstore import schema
from sessionstore.benchmarks import data
from sessionstore.models import (
    AutonomyMode,
    BenchmarkSnapshot,
    EditOutcome,
    LearningSession,
    SessionStatus,
    TriggerKind,
)
from sessionstore.records import gc_paused
from sessionstore.store import OutcomeWrite, SessionStore, SessionWrite, Write

DB_NAME = "bench-listing.db"
REPEATS = 3
WRITES_PER_BATCH = 1000

_STATUSES = ("applied", "rejected_by_gate", "pending_review", "skipped")


def _writes(sessions: int, outcomes_per_session: int) -> Iterator[Write]:
    """Finished sessions (benchmark_after, ended_at, post checkpoint) and their outcomes."""
    for n in range(sessions):
        base = data.session(f"bench-{n:06d}", n)
        started = base.started_at
        yield SessionWrite(
            base.model_copy(
                update={
                    "status": SessionStatus.COMPLETED,
                    "ended_at": started + timedelta(seconds=40),
                    "benchmark_after": base.benchmark_before.model_copy(
                        update={"overall_score": 0.65, "elapsed_seconds": 29.0}
                    ),
                    "git_checkpoint_post": f"{n + 1:040x}",
                }
            )
        )
        for k in range(outcomes_per_session):
            yield OutcomeWrite(
                base.id,
                EditOutcome(
                    edit_id=f"e{k}",
                    status=_STATUSES[k % len(_STATUSES)],  # type: ignore[arg-type]
                    benchmark_delta=0.001 * k,
                    cluster_deltas={"math": 0.01, "code": -0.002},
                    applied_at=started + timedelta(seconds=10 + k),
                ),
                data.EDIT,
            )


def fill(store: SessionStore, sessions: int, outcomes_per_session: int) -> None:
    """Write the benchmark sessions and outcomes through ``apply_batch``."""
    batch: list[Write] = []
    for write in _writes(sessions, outcomes_per_session):
        batch.append(write)
        if len(batch) >= WRITES_PER_BATCH:
            _apply(store, batch)
            batch = []
    if batch:
        _apply(store, batch)


def _apply(store: SessionStore, batch: list[Write]) -> None:
    failed = [r.error for r in store.apply_batch(batch) if not r.ok]
    if failed:
        raise RuntimeError(f"bench_listing: fill failed: {failed[0]}")


def _iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _outcomes_per_session(conn: sqlite3.Connection, session_id: str) -> list[EditOutcome]:
    rows = conn.execute(
        "SELECT edit_id, status, benchmark_delta, cluster_deltas, error, applied_at "
        "FROM edit_outcomes WHERE session_id = ? ORDER BY id",
        (session_id,),
    ).fetchall()
    return [
        EditOutcome(
            edit_id=row[0],
            status=row[1],
            benchmark_delta=row[2],
            cluster_deltas=json.loads(row[3]),
            error=row[4],
            applied_at=_iso(row[5]),
        )
        for row in rows
    ]


def _session_per_row(row: Sequence[Any]) -> LearningSession:
    return LearningSession(
        id=row[0],
        parent_session_id=row[1],
        trigger=TriggerKind(row[2]),
        trigger_metadata=json.loads(row[3]),
        status=SessionStatus(row[4]),
        autonomy_mode=AutonomyMode(row[5]),
        started_at=datetime.fromisoformat(row[6]),
        ended_at=_iso(row[7]),
        diagnosis_path=Path(row[8]),
        plan_path=Path(row[9]),
        benchmark_before=BenchmarkSnapshot.model_validate_json(row[10]),
        benchmark_after=(
            BenchmarkSnapshot.model_validate_json(row[11]) if row[11] is not None else None
        ),
        edit_outcomes=[],
        git_checkpoint_pre=row[12],
        git_checkpoint_post=row[13],
        teacher_cost_usd=row[14],
        error=row[15],
    )


def list_sessions_per_session(conn: sqlite3.Connection) -> list[LearningSession]:
    """The original way: one SELECT for the sessions, then one per session for its outcomes."""
    rows = conn.execute(
        f"SELECT {', '.join(schema.SESSION_COLUMNS)} FROM learning_sessions "
        "ORDER BY started_at DESC"
    ).fetchall()
    sessions = []
    for row in rows:
        session = _session_per_row(row)
        outcomes = _outcomes_per_session(conn, session.id)
        sessions.append(session.model_copy(update={"edit_outcomes": outcomes}))
    return sessions


M = TypeVar("M", bound=BaseModel)


def _bare(model: type[M], fields: dict[str, Any]) -> M:
    """An instance holding ``fields`` as they are: what validation would leave, minus its work."""
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", fields)
    object.__setattr__(instance, "__pydantic_fields_set__", set(fields))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


def _snapshot(text: str | None) -> BenchmarkSnapshot | None:
    return None if text is None else _bare(BenchmarkSnapshot, from_json(text))


def list_sessions_unvalidated(store: SessionStore) -> list[LearningSession]:
    """The listing's rows turned into the same objects with no validation: the floor."""
    rows, outcome_rows = _fetch_rows(store)
    by_session: dict[str, list[EditOutcome]] = {row[0]: [] for row in rows}
    for o in outcome_rows:
        by_session[o[-1]].append(
            _bare(
                EditOutcome,
                {
                    "edit_id": o[0],
                    "status": o[1],
                    "benchmark_delta": o[2],
                    "cluster_deltas": from_json(o[3]),
                    "error": o[4],
                    "applied_at": _iso(o[5]),
                },
            )
        )
    return [
        _bare(
            LearningSession,
            {
                "id": row[0],
                "parent_session_id": row[1],
                "trigger": TriggerKind(row[2]),
                "trigger_metadata": from_json(row[3]),
                "status": SessionStatus(row[4]),
                "autonomy_mode": AutonomyMode(row[5]),
                "started_at": datetime.fromisoformat(row[6]),
                "ended_at": _iso(row[7]),
                "diagnosis_path": Path(row[8]),
                "plan_path": Path(row[9]),
                "benchmark_before": _snapshot(row[10]),
                "benchmark_after": _snapshot(row[11]),
                "edit_outcomes": by_session[row[0]],
                "git_checkpoint_pre": row[12],
                "git_checkpoint_post": row[13],
                "teacher_cost_usd": row[14],
                "error": row[15],
            },
        )
        for row in rows
    ]


def _fetch_rows(store: SessionStore) -> tuple[list[Any], list[Any]]:
    return store._fetch_listing("", " ORDER BY started_at DESC", [])


def _best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best = float("inf")
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def bench_listing(workdir: Path, sessions: int = 2000, outcomes_per_session: int = 10) -> dict:
    """Fill a fresh index in ``workdir`` and time each way of listing it (best of 3 each)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / DB_NAME
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)

    store = SessionStore(db_path, durability="normal")
    per_session_conn = sqlite3.connect(str(db_path))
    try:
        fill(store, sessions, outcomes_per_session)
        batched_seconds, batched = _best_of(REPEATS, store.list_sessions)
        per_session_seconds, per_session = _best_of(
            REPEATS, lambda: list_sessions_per_session(per_session_conn)
        )
        with gc_paused():  # as list_sessions does: the floor should not pay for the collector
            rows_seconds, _ = _best_of(REPEATS, lambda: _fetch_rows(store))
            unvalidated_seconds, unvalidated = _best_of(
                REPEATS, lambda: list_sessions_unvalidated(store)
            )
    finally:
        per_session_conn.close()
        store.close()
    if not batched == per_session == unvalidated:
        raise RuntimeError("bench listing: the listing paths returned different sessions")
    return {
        "sessions": len(batched),
        "outcomes": sum(len(s.edit_outcomes) for s in batched),
        "batched_seconds": batched_seconds,
        "per_session_seconds": per_session_seconds,
        "rows_seconds": rows_seconds,
        "unvalidated_seconds": unvalidated_seconds,
        "speedup": _ratio(per_session_seconds, batched_seconds),
        "speedup_ceiling": _ratio(per_session_seconds, unvalidated_seconds),
    }


def _ratio(top: float, bottom: float) -> float:
    return top / bottom if bottom > 0 else float("inf")
