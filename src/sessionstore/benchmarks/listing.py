"""Listing benchmark: ``list_sessions()`` in two queries versus one query per session.

The original OpenJarvis store selected the sessions and then, for each one, its
outcomes (``WHERE session_id = ? ORDER BY id``), building every model by calling
its constructor on the row; ``SessionStore.list_sessions`` fetches every listed
session's outcomes in one query and validates them in one pydantic-core call. The
per-session way is written out here in full, so changes to ``records`` cannot
speed it up. This fills a fresh index and times both ways over the same file,
best of three.

    python -m sessionstore.benchmarks.listing [--sessions N]
        [--outcomes-per-session M] [--workdir D]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sessionstore import schema
from sessionstore.benchmarks import data
from sessionstore.models import (
    BenchmarkSnapshot,
    EditOutcome,
    LearningSession,
    SessionStatus,
)
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


def _outcome_per_row(row: Sequence[Any]) -> EditOutcome:
    return EditOutcome(
        edit_id=row[0],
        status=row[1],
        benchmark_delta=row[2],
        cluster_deltas=json.loads(row[3]),
        error=row[4],
        applied_at=row[5],
    )


def _session_per_row(row: Sequence[Any], outcomes: list[EditOutcome]) -> LearningSession:
    # The snapshots are parsed with model_validate_json as this benchmark always did;
    # OpenJarvis json.loads'ed them, which measures a little slower still.
    return LearningSession(
        id=row[0],
        parent_session_id=row[1],
        trigger=row[2],
        trigger_metadata=json.loads(row[3]),
        status=row[4],
        autonomy_mode=row[5],
        started_at=row[6],
        ended_at=row[7],
        diagnosis_path=row[8],
        plan_path=row[9],
        benchmark_before=BenchmarkSnapshot.model_validate_json(row[10]),
        benchmark_after=(
            BenchmarkSnapshot.model_validate_json(row[11]) if row[11] is not None else None
        ),
        edit_outcomes=outcomes,
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
        outcome_rows = conn.execute(
            "SELECT edit_id, status, benchmark_delta, cluster_deltas, error, applied_at "
            "FROM edit_outcomes WHERE session_id = ? ORDER BY id",
            (row[0],),
        ).fetchall()
        sessions.append(_session_per_row(row, [_outcome_per_row(o) for o in outcome_rows]))
    return sessions


def _best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best = float("inf")
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def bench_listing(workdir: Path, sessions: int = 2000, outcomes_per_session: int = 10) -> dict:
    """Fill a fresh index in ``workdir`` and time both listing paths (best of 3 each)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / DB_NAME
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)

    store = SessionStore(db_path, durability="normal")
    naive_conn = sqlite3.connect(str(db_path))
    try:
        fill(store, sessions, outcomes_per_session)
        batched_seconds, batched = _best_of(REPEATS, store.list_sessions)
        per_session_seconds, per_session = _best_of(
            REPEATS, lambda: list_sessions_per_session(naive_conn)
        )
    finally:
        naive_conn.close()
        store.close()
    if batched != per_session:
        raise RuntimeError("bench_listing: the two listing paths returned different sessions")
    return {
        "sessions": len(batched),
        "outcomes": sum(len(s.edit_outcomes) for s in batched),
        "batched_seconds": batched_seconds,
        "per_session_seconds": per_session_seconds,
        "speedup": per_session_seconds / batched_seconds if batched_seconds > 0 else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sessionstore.benchmarks.listing", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--outcomes-per-session", type=int, default=10)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build the index (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.workdir is not None:
        result = bench_listing(args.workdir, args.sessions, args.outcomes_per_session)
    else:
        with tempfile.TemporaryDirectory(prefix="sessionstore-bench-") as tmp:
            result = bench_listing(Path(tmp), args.sessions, args.outcomes_per_session)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
