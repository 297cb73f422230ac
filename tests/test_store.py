"""SessionStore: the original OpenJarvis behaviour, and what the single-writer daemon adds."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import random
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import from_json

from sessionstore import schema
from sessionstore.benchmarks.listing import (
    bench_listing,
    list_sessions_per_session,
    list_sessions_unvalidated,
)
from sessionstore.errors import (
    InvalidRecord,
    ReadOnlyStore,
    RequestIdConflict,
    SchemaError,
    SessionStoreError,
    StorageFailure,
    UnknownSession,
)
from sessionstore.models import (
    BenchmarkSnapshot,
    EditOutcome,
    LearningSession,
    SessionStatus,
)
from sessionstore.records import OutcomeEdit, gc_paused, json_text
from sessionstore.store import OutcomeWrite, SessionStore, SessionWrite, Write

MakeSession = Callable[..., LearningSession]
MakeOutcome = Callable[..., EditOutcome]

EDIT: dict[str, str] = {
    "pillar": "agent",
    "op": "patch_system_prompt",
    "target": "agents.simple.system_prompt",
    "risk_tier": "auto",
    "rationale": "teacher traces decompose the problem first",
}
OUTCOME_EDIT = OutcomeEdit(**EDIT)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "distillation.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SessionStore]:
    s = SessionStore(db_path)
    yield s
    s.close()


def dump_index(db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read through a separate plain connection."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("learning_sessions", "edit_outcomes", "applied_requests")
        }
    finally:
        conn.close()


def row_count(db_path: Path, table: str) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


@contextlib.contextmanager
def counting_selects(store: SessionStore) -> Iterator[list[str]]:
    """Record every SELECT the store's connection runs inside the block."""
    seen: list[str] = []

    def trace(sql: str) -> None:
        if sql.lstrip().upper().startswith("SELECT"):
            seen.append(sql)

    store._conn.set_trace_callback(trace)
    try:
        yield seen
    finally:
        store._conn.set_trace_callback(None)


# -- the original behaviour ---------------------------------------------------------


def test_saved_session_reads_back_equal_with_its_outcomes(
    store: SessionStore, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    session = make_session(
        trigger="user_flag",
        trigger_metadata={"flagged_by": "u", "trace_ids": ["t1", "t2"], "nested": {"a": [1, 2.5]}},
        benchmark_after=BenchmarkSnapshot(
            benchmark_version="bench-v3",
            overall_score=0.3 + 0.3,  # 0.6000000000000001: the exact float must come back
            cluster_scores={"math": 0.1 + 0.2},
            task_count=120,
            elapsed_seconds=31.25,
        ),
        git_checkpoint_post="f" * 40,
        teacher_cost_usd=1.0 / 3.0,
        error="partial: one edit timed out",
    )
    outcomes = [
        make_outcome(),
        make_outcome(status="rejected_by_gate", error="regression", applied_at=None),
        make_outcome(status="pending_review", benchmark_delta=None, cluster_deltas={}),
    ]
    store.save_session(session)
    for outcome in outcomes:
        store.save_outcome(session.id, outcome, **EDIT)

    loaded = store.get_session(session.id)

    assert loaded == session.model_copy(update={"edit_outcomes": outcomes})
    assert loaded is not None
    assert loaded.started_at.utcoffset() == timedelta(0)


def test_session_edit_outcomes_are_stored_only_through_save_outcome(
    store: SessionStore, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    """As in the original: the session row does not hold outcomes, edit_outcomes rows do."""
    session = make_session(edit_outcomes=[make_outcome()])
    store.save_session(session)
    loaded = store.get_session(session.id)
    assert loaded is not None
    assert loaded.edit_outcomes == []
    assert loaded == session.model_copy(update={"edit_outcomes": []})


def test_saving_a_session_again_updates_its_one_row(
    store: SessionStore, db_path: Path, make_session: MakeSession
) -> None:
    session = make_session(status="executing", ended_at=None)
    store.save_session(session)
    finished = session.model_copy(
        update={
            "status": SessionStatus.COMPLETED,
            "ended_at": session.started_at + timedelta(minutes=5),
            "git_checkpoint_post": "abc123",
        }
    )
    store.save_session(finished)

    assert row_count(db_path, "learning_sessions") == 1
    assert store.get_session(session.id) == finished


def test_data_survives_closing_and_reopening(
    db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    session = make_session()
    outcome = make_outcome()
    first = SessionStore(db_path)
    first.save_session(session)
    first.save_outcome(session.id, outcome, **EDIT)
    first.close()

    second = SessionStore(db_path)
    try:
        assert second.get_session(session.id) == session.model_copy(
            update={"edit_outcomes": [outcome]}
        )
    finally:
        second.close()


def test_list_sessions_is_newest_started_at_first(
    store: SessionStore, make_session: MakeSession
) -> None:
    sessions = [make_session() for _ in range(5)]
    for session in (sessions[2], sessions[0], sessions[4], sessions[1], sessions[3]):
        store.save_session(session)
    listed = store.list_sessions()
    assert [s.id for s in listed] == [s.id for s in reversed(sessions)]
    assert listed == list(reversed(sessions))


def test_list_sessions_filters_by_status(store: SessionStore, make_session: MakeSession) -> None:
    failed = [make_session(status="failed", error="boom") for _ in range(2)]
    completed = [make_session(status="completed") for _ in range(3)]
    for session in failed + completed:
        store.save_session(session)

    assert [s.id for s in store.list_sessions(status=SessionStatus.FAILED)] == [
        failed[1].id,
        failed[0].id,
    ]
    assert [s.id for s in store.list_sessions(status="completed")] == [
        s.id for s in reversed(completed)
    ]
    assert store.list_sessions(status=SessionStatus.ROLLED_BACK) == []


def test_list_sessions_limit_keeps_the_newest(
    store: SessionStore, make_session: MakeSession
) -> None:
    sessions = [make_session(status="failed" if i % 2 else "completed") for i in range(6)]
    for session in sessions:
        store.save_session(session)

    assert [s.id for s in store.list_sessions(limit=2)] == [sessions[5].id, sessions[4].id]
    assert [s.id for s in store.list_sessions(status="completed", limit=2)] == [
        sessions[4].id,
        sessions[2].id,
    ]
    assert store.list_sessions(limit=0) == []
    assert len(store.list_sessions(limit=100)) == 6


def test_outcomes_are_listed_in_insertion_order(
    store: SessionStore, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    session = make_session()
    store.save_session(session)
    outcomes = [make_outcome(edit_id=edit_id) for edit_id in ("e9", "e1", "e5", "e1")]
    for outcome in outcomes:
        store.save_outcome(session.id, outcome, **EDIT)

    assert store.list_outcomes(session.id) == outcomes
    loaded = store.get_session(session.id)
    assert loaded is not None
    assert loaded.edit_outcomes == outcomes


def test_listed_sessions_carry_their_own_outcomes(
    store: SessionStore, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    sessions = [make_session() for _ in range(3)]
    expected: dict[str, list[EditOutcome]] = {}
    for session in sessions:
        store.save_session(session)
        expected[session.id] = []
    # interleave the saves so insertion order differs from session order
    for round_ in range(3):
        for session in sessions:
            if session is sessions[1]:
                continue  # the middle session has no outcomes at all
            outcome = make_outcome(edit_id=f"{session.id}-e{round_}")
            store.save_outcome(session.id, outcome, **EDIT)
            expected[session.id].append(outcome)

    for listed in store.list_sessions():
        assert listed.edit_outcomes == expected[listed.id]
    limited = store.list_sessions(limit=1)
    assert [s.id for s in limited] == [sessions[2].id]
    assert limited[0].edit_outcomes == expected[sessions[2].id]


def test_child_session_references_its_saved_parent(
    store: SessionStore, make_session: MakeSession
) -> None:
    root = make_session()
    child = make_session(parent_session_id=root.id, trigger="cluster")
    grandchild = make_session(parent_session_id=child.id)
    for session in (root, child, grandchild):
        store.save_session(session)

    chain = []
    current = store.get_session(grandchild.id)
    while current is not None:
        chain.append(current.id)
        current = (
            store.get_session(current.parent_session_id) if current.parent_session_id else None
        )
    assert chain == [grandchild.id, child.id, root.id]


def test_unknown_ids_give_none_and_empty_list(
    store: SessionStore, make_session: MakeSession
) -> None:
    store.save_session(make_session())
    assert store.get_session("no-such-session") is None
    assert store.list_outcomes("no-such-session") == []


def test_empty_index_lists_nothing(store: SessionStore) -> None:
    assert store.list_sessions() == []
    assert store.list_sessions(status="failed", limit=3) == []


# -- additions: true upsert ----------------------------------------------------------


def test_outcomes_survive_session_resave(
    store: SessionStore, db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    """The original INSERT OR REPLACE deleted the row first: with foreign keys on that
    fails, without them the session's outcome rows point at a replaced row."""
    session = make_session(status="executing")
    store.save_session(session)
    outcomes = [make_outcome(), make_outcome()]
    for outcome in outcomes:
        store.save_outcome(session.id, outcome, **EDIT)

    for status in ("awaiting_review", "completed"):
        store.save_session(session.model_copy(update={"status": SessionStatus(status)}))

    loaded = store.get_session(session.id)
    assert loaded is not None
    assert loaded.status is SessionStatus.COMPLETED
    assert loaded.edit_outcomes == outcomes
    assert row_count(db_path, "edit_outcomes") == 2


def test_parent_session_can_be_resaved_under_its_children(
    store: SessionStore, make_session: MakeSession
) -> None:
    parent = make_session(status="executing")
    child = make_session(parent_session_id=parent.id)
    store.save_session(parent)
    store.save_session(child)
    store.save_session(parent.model_copy(update={"status": SessionStatus.COMPLETED}))
    loaded_parent = store.get_session(parent.id)
    assert loaded_parent is not None
    assert loaded_parent.status is SessionStatus.COMPLETED
    assert store.get_session(child.id) == child


# -- additions: listing in a constant number of queries -------------------------------


def _fill(
    store: SessionStore, make_session: MakeSession, make_outcome: MakeOutcome, n: int
) -> None:
    for _ in range(n):
        session = make_session(status="failed")
        store.save_session(session)
        for _ in range(2):
            store.save_outcome(session.id, make_outcome(), **EDIT)


@pytest.mark.parametrize(
    "kwargs", [{}, {"status": "failed"}, {"limit": 40}], ids=["all", "status", "limit"]
)
def test_list_sessions_runs_the_same_number_of_queries_for_3_and_50_sessions(
    tmp_path: Path, make_session: MakeSession, make_outcome: MakeOutcome, kwargs: dict[str, Any]
) -> None:
    counts = []
    for n in (3, 50):
        s = SessionStore(tmp_path / f"index-{n}.db")
        try:
            _fill(s, make_session, make_outcome, n)
            with counting_selects(s) as selects:
                listed = s.list_sessions(**kwargs)
            assert all(len(session.edit_outcomes) == 2 for session in listed)
            counts.append(len(selects))
        finally:
            s.close()
    assert counts[0] == counts[1]
    assert counts[0] <= 2


def test_listing_is_consistent_while_another_connection_writes(
    db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    """A commit landing between the listing's two queries must not break the listing."""
    writer = SessionStore(db_path)
    old = [make_session() for _ in range(3)]
    for session in old:
        writer.save_session(session)
    reader = SessionStore(db_path, readonly=True)
    newcomer = make_session()  # the newest started_at of all
    wrote: list[bool] = []

    def write_between_queries(sql: str) -> None:
        if "edit_outcomes" in sql and not wrote:
            wrote.append(True)
            writer.save_session(newcomer)
            writer.save_outcome(newcomer.id, make_outcome(), **EDIT)

    reader._conn.set_trace_callback(write_between_queries)
    try:
        first = reader.list_sessions()
        reader._conn.set_trace_callback(None)
        assert wrote == [True]
        assert first == list(reversed(old))
        assert [s.id for s in reader.list_sessions()] == [newcomer.id] + [
            s.id for s in reversed(old)
        ]
    finally:
        reader.close()
        writer.close()


def test_get_session_sees_one_commit_while_another_connection_writes(
    db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    """A commit between the row query and the outcome query must not mix two states."""
    writer = SessionStore(db_path)
    session = make_session()
    writer.save_session(session)
    writer.save_outcome(session.id, make_outcome(), **EDIT)
    reader = SessionStore(db_path, readonly=True)
    wrote: list[bool] = []

    def commit_between_queries(sql: str) -> None:
        if "edit_outcomes" in sql and not wrote:
            wrote.append(True)
            changed = session.model_copy(update={"error": "changed"})
            results = writer.apply_batch(
                [SessionWrite(changed), OutcomeWrite(session.id, make_outcome(), OUTCOME_EDIT)]
            )
            assert all(r.ok for r in results)

    reader._conn.set_trace_callback(commit_between_queries)
    try:
        got = reader.get_session(session.id)
        reader._conn.set_trace_callback(None)
        assert wrote == [True]
        assert got is not None and got.error is None and len(got.edit_outcomes) == 1
        after = reader.get_session(session.id)
        assert after is not None and after.error == "changed" and len(after.edit_outcomes) == 2
    finally:
        reader.close()
        writer.close()


def test_checkpoint_without_waiting_reports_a_reader_at_once_and_keeps_the_busy_timeout(
    db_path: Path, make_session: MakeSession
) -> None:
    store = SessionStore(db_path, busy_timeout=5.0)
    for _ in range(20):
        store.save_session(make_session())
    reader = sqlite3.connect(db_path)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM learning_sessions").fetchone()  # pins the WAL
        started = time.monotonic()
        result = store.checkpoint("TRUNCATE", wait=False)
        assert time.monotonic() - started < 2.5  # waiting would take the 5 s busy timeout
        assert result.busy is True
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert store.checkpoint("TRUNCATE", wait=False).busy is False
    assert Path(f"{db_path}-wal").stat().st_size == 0
    store.close()


def test_overlapping_gc_pauses_resume_the_collector_only_when_the_last_ends() -> None:
    """Two listings on two threads: the first to finish must not turn the collector on
    under the other, whose objects the next collection would then walk all at once."""
    was_enabled = gc.isenabled()
    gc.enable()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with gc_paused():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    thread = threading.Thread(target=first)
    try:
        thread.start()
        assert first_in.wait(5)
        with gc_paused():
            second_in.set()
            assert first_out.wait(5)
            assert not gc.isenabled(), "the first pause to end turned the collector back on"
        assert gc.isenabled()
    finally:
        thread.join(5)
        gc.enable() if was_enabled else gc.disable()


@pytest.mark.parametrize("chunk", [1, 3, 256])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"status": "completed"}, {"limit": 5}, {"limit": 0}, {"status": "failed", "limit": 2}],
    ids=["all", "status", "limit", "limit-0", "status-limit"],
)
def test_iter_sessions_gives_list_sessions_chunk_by_chunk(
    store: SessionStore,
    make_session: MakeSession,
    make_outcome: MakeOutcome,
    kwargs: dict[str, Any],
    chunk: int,
) -> None:
    for n in range(9):
        session = make_session(status=("completed", "failed", "executing")[n % 3])
        store.save_session(session)
        for _ in range(n % 4):  # some sessions without outcomes
            store.save_outcome(session.id, make_outcome(), **EDIT)
    chunks = list(store.iter_sessions(**kwargs, chunk=chunk))
    assert all(0 < len(c) <= chunk for c in chunks)
    assert [s for c in chunks for _, s in c] == store.list_sessions(**kwargs)
    assert all(key == (s.started_at.isoformat(), s.id) for c in chunks for key, s in c)


def test_iter_sessions_after_a_key_continues_the_listing_without_repeat_or_gap(
    store: SessionStore, make_session: MakeSession
) -> None:
    """Keyset paging: ties on started_at are ordered by id, so a page may end inside them."""
    for n in range(12):
        store.save_session(
            make_session(id=f"s{n:02d}", started_at=datetime(2026, 3, 1, n // 4, tzinfo=UTC))
        )
    whole = store.list_sessions()
    assert [s.id for s in whole[:4]] == ["s11", "s10", "s09", "s08"]  # ties: id descending
    listed, after = [], None
    while True:
        page = [pair for chunk in store.iter_sessions(limit=5, after=after) for pair in chunk]
        if not page:
            break
        listed += [s for _, s in page]
        after = page[-1][0]
    assert listed == whole


def test_iter_outcomes_after_a_row_id_continues_in_insertion_order(
    store: SessionStore, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    session = make_session()
    store.save_session(session)
    for _ in range(7):
        store.save_outcome(session.id, make_outcome(), **EDIT)
    pairs = [pair for chunk in store.iter_outcomes(session.id, chunk=3) for pair in chunk]
    assert [o for _, o in pairs] == store.list_outcomes(session.id)
    rest = [o for chunk in store.iter_outcomes(session.id, after=pairs[2][0]) for _, o in chunk]
    assert rest == store.list_outcomes(session.id)[3:]


def test_iter_sessions_ends_its_read_transaction_when_closed_early(
    store: SessionStore, db_path: Path, make_session: MakeSession
) -> None:
    for _ in range(5):
        store.save_session(make_session())
    chunks = store.iter_sessions(chunk=2)
    assert len(next(chunks)) == 2
    chunks.close()
    assert not store._conn.in_transaction
    with pytest.raises(InvalidRecord, match="status"):
        next(store.iter_sessions(status="exploded"))


def _corrupt(db_path: Path, sql: str, *params: object) -> None:
    """Change the index behind the store's back, as a broken writer or a bad disk would."""
    conn = sqlite3.connect(db_path)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("status", "exploded"),
        ("cluster_deltas", "{not json"),
        ("cluster_deltas", '{"math": "lots"}'),
        ("applied_at", "yesterday"),
        ("benchmark_delta", "big"),
    ],
)
def test_corrupt_outcome_row_is_refused_by_its_edit_id_on_every_read(
    store: SessionStore,
    db_path: Path,
    make_session: MakeSession,
    make_outcome: MakeOutcome,
    column: str,
    value: str,
) -> None:
    session = make_session()
    store.save_session(session)
    outcomes = [make_outcome() for _ in range(3)]
    for outcome in outcomes:
        store.save_outcome(session.id, outcome, **EDIT)
    bad = outcomes[1].edit_id
    _corrupt(db_path, f"UPDATE edit_outcomes SET {column} = ? WHERE edit_id = ?", value, bad)
    message = re.escape(f"index row for outcome {bad!r} is not a valid outcome")
    with pytest.raises(InvalidRecord, match=message):
        store.list_sessions()
    with pytest.raises(InvalidRecord, match=message):
        store.list_outcomes(session.id)
    with pytest.raises(InvalidRecord, match=message):
        store.get_session(session.id)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("status", "exploded"),
        ("trigger_metadata", "[1"),
        ("benchmark_before", "{}"),
        ("benchmark_after", "{not json"),
        ("started_at", "not a time"),
        ("teacher_cost_usd", -1.0),
    ],
)
def test_corrupt_session_row_is_refused_by_its_id(
    store: SessionStore,
    db_path: Path,
    make_session: MakeSession,
    make_outcome: MakeOutcome,
    column: str,
    value: object,
) -> None:
    sessions = [make_session() for _ in range(3)]
    for session in sessions:
        store.save_session(session)
        store.save_outcome(session.id, make_outcome(), **EDIT)
    bad = sessions[1].id
    _corrupt(db_path, f"UPDATE learning_sessions SET {column} = ? WHERE id = ?", value, bad)
    message = re.escape(f"index row for session {bad!r} is not a valid session")
    with pytest.raises(InvalidRecord, match=message):
        store.list_sessions()
    with pytest.raises(InvalidRecord, match=message):
        store.get_session(bad)
    assert store.get_session(sessions[0].id) is not None


# 0.1 + 0.2 and 1/3 need 17 digits; then subnormals, the extremes, and a large mantissa.
AWKWARD_FLOATS = [0.1 + 0.2, 1 / 3, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308]
AWKWARD_FLOATS += [123456789.12345679, -2.5e-7]


def _bits(values: list[float]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


def test_listing_returns_floats_bit_identical(
    store: SessionStore, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    session = make_session(teacher_cost_usd=0.1 + 0.2, trigger_metadata={"t": 1 / 3, "z": -0.0})
    store.save_session(session)
    for value in AWKWARD_FLOATS:
        outcome = make_outcome(benchmark_delta=value, cluster_deltas={"x": value, "z": -0.0})
        store.save_outcome(session.id, outcome, **EDIT)
    for listed in (store.list_sessions()[0], store.get_session(session.id)):
        assert listed is not None
        assert _bits([listed.teacher_cost_usd, *listed.trigger_metadata.values()]) == _bits(
            [0.1 + 0.2, 1 / 3, -0.0]
        )
        outcomes = listed.edit_outcomes
        assert _bits([o.benchmark_delta or 0.0 for o in outcomes]) == _bits(AWKWARD_FLOATS)
        assert _bits([o.cluster_deltas["x"] for o in outcomes]) == _bits(AWKWARD_FLOATS)
        assert _bits([o.cluster_deltas["z"] for o in outcomes]) == _bits([-0.0] * len(outcomes))


@pytest.mark.parametrize("enabled", [True, False], ids=["gc-on", "gc-off"])
def test_listing_leaves_the_garbage_collector_as_it_found_it(
    store: SessionStore,
    db_path: Path,
    make_session: MakeSession,
    make_outcome: MakeOutcome,
    enabled: bool,
) -> None:
    _fill(store, make_session, make_outcome, 3)
    was_enabled = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        assert len(store.list_sessions()) == 3
        assert gc.isenabled() is enabled
        _corrupt(db_path, "UPDATE edit_outcomes SET status = 'exploded'")
        with pytest.raises(InvalidRecord):
            store.list_sessions()
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was_enabled else gc.disable()


# Texts where JSON parsers tend to differ: json_text must give json.loads's answer for all.
JSON_TEXTS = [
    "{}",
    '{"a": 1, "a": 2, "b": 3}',
    '{"a": NaN, "b": Infinity, "c": -Infinity}',
    '{"a": nan}',
    '{"a": inf}',
    '{"a": +1}',
    '{"a": .5}',
    '{"a": 1.}',
    '{"a": 01}',
    "[1,]",
    "{'a': 1}",
    '{"a": 1} // note',
    '{"a": "\t"}',
    '{"a": "\\t"}',
    '{"a": "\\ud800"}',
    '{"a": "\\udc00\\ud800"}',
    '{"a": "\\ud83d\\ude00 \\u00e9 \\/ \\u0000"}',
    '{"a": "\\x"}',
    "\ufeff{}",
    " \n{}\r\t ",
    "{}\x0c",
    "{} {}",
    "-0",
    "-0.0",
    "1E5",
    "1e400",
    "-1e400",
    "1e-400",
    "2.4703282292062328e-324",
    "2.4703282292062327e-324",
    "9007199254740993",
    "9007199254740993.0",
    "9" * 400,
    "9" * 5000,
    "0.1000000000000000055511151231257827021181583404541015625",
    "1.000000000000000111022302462515654042363166809082031250000001",
    "[" * 3000 + "]" * 3000,
    "",
    "[1, 2",
    None,
    7,
]


def _parsed(parse: Callable[[Any], Any], text: object) -> tuple[str, object]:
    """What parse makes of text, with floats as their bits: ("ok", value) or ("error", type)."""

    def exact(value: object) -> object:
        if isinstance(value, float):
            return ("float", struct.pack("<d", value))
        if isinstance(value, dict):
            return [("key", k, exact(v)) for k, v in value.items()]
        if isinstance(value, list):
            return [exact(v) for v in value]
        return (type(value).__name__, value)

    try:
        return "ok", exact(parse(text))
    except Exception as err:
        return "error", type(err).__name__


@pytest.mark.parametrize("text", JSON_TEXTS)
def test_json_text_gives_what_json_loads_gives(text: object) -> None:
    assert _parsed(json_text, text) == _parsed(json.loads, text)


def test_json_text_parses_random_floats_bit_identically() -> None:
    rng = random.Random(20260301)
    texts = []
    with localcontext() as exact:
        exact.prec = 1200  # enough for any double's exact decimal expansion
        for _ in range(3000):
            value = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
            if math.isfinite(value):
                texts += [repr(value), f"{value:.17g}", f"{value:.25e}"]
                # the exact midpoint to the next double: round-half-even decides
                above = math.nextafter(value, math.inf)
                if math.isfinite(above):
                    texts.append(format((Decimal(value) + Decimal(above)) / 2, "e"))
    document = "[" + ", ".join(texts) + "]"
    expected = _parsed(json.loads, document)
    assert expected[0] == "ok"
    assert _parsed(from_json, document) == expected  # the fast path itself, no fallback
    assert _parsed(json_text, document) == expected


# -- additions: schema versioning -----------------------------------------------------


def test_new_index_is_at_the_latest_schema_version(store: SessionStore, db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.LATEST_VERSION
    finally:
        conn.close()


def test_index_from_a_newer_sessionstore_is_refused(db_path: Path) -> None:
    SessionStore(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {schema.LATEST_VERSION + 1}")
    conn.close()
    before = db_path.read_bytes()

    with pytest.raises(SchemaError, match=str(schema.LATEST_VERSION + 1)):
        SessionStore(db_path)
    with pytest.raises(SchemaError, match=str(schema.LATEST_VERSION + 1)):
        SessionStore(db_path, readonly=True)
    assert db_path.read_bytes() == before


def test_reopening_migrates_nothing_and_keeps_everything(
    db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    def schema_snapshot() -> tuple[int, list[tuple[Any, ...]]]:
        conn = sqlite3.connect(db_path)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            master = conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
            ).fetchall()
            return version, master
        finally:
            conn.close()

    first = SessionStore(db_path)
    session = make_session()
    first.save_session(session)
    first.save_outcome(session.id, make_outcome(), **EDIT, request_id="r1")
    first.close()
    after_first = (schema_snapshot(), dump_index(db_path))

    for _ in range(2):
        again = SessionStore(db_path)
        again.close()
        assert (schema_snapshot(), dump_index(db_path)) == after_first
    assert after_first[0][0] == schema.LATEST_VERSION


def test_migrate_on_a_current_connection_is_a_no_op(store: SessionStore) -> None:
    assert schema.migrate(store._conn) == schema.LATEST_VERSION
    assert schema.schema_version(store._conn) == schema.LATEST_VERSION


# -- additions: apply_batch -----------------------------------------------------------


def test_batch_write_for_unknown_session_fails_alone(
    store: SessionStore, db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    a, b = make_session(), make_session()
    good_outcome, orphan, later = make_outcome(), make_outcome(), make_outcome()
    results = store.apply_batch(
        [
            SessionWrite(a, "r-a"),
            OutcomeWrite(a.id, good_outcome, OUTCOME_EDIT, "r-good"),
            OutcomeWrite("ghost-session", orphan, OUTCOME_EDIT, "r-orphan"),
            SessionWrite(b, "r-b"),
            OutcomeWrite(b.id, later, OUTCOME_EDIT, "r-later"),
        ]
    )

    assert [r.ok for r in results] == [True, True, False, True, True]
    failed = results[2]
    assert isinstance(failed.error, UnknownSession)
    assert "ghost-session" in str(failed.error)
    assert all(r.error is None for i, r in enumerate(results) if i != 2)
    assert store.get_session(a.id) == a.model_copy(update={"edit_outcomes": [good_outcome]})
    assert store.get_session(b.id) == b.model_copy(update={"edit_outcomes": [later]})
    assert row_count(db_path, "edit_outcomes") == 2
    assert store.list_outcomes("ghost-session") == []
    # rolled back to its savepoint: not even its request id stayed, so once its
    # session exists the same save is applied, not taken for a duplicate
    ghost = make_session(id="ghost-session")
    retried = store.apply_batch(
        [SessionWrite(ghost), OutcomeWrite(ghost.id, orphan, OUTCOME_EDIT, "r-orphan")]
    )
    assert [(r.ok, r.duplicate) for r in retried] == [(True, False), (True, False)]
    assert store.list_outcomes("ghost-session") == [orphan]


def test_duplicate_request_id_in_one_batch_is_stored_once(
    store: SessionStore, db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    session = make_session()
    outcome = make_outcome()
    results = store.apply_batch(
        [
            SessionWrite(session, request_id="s-1"),
            OutcomeWrite(session.id, outcome, OUTCOME_EDIT, request_id="o-1"),
            OutcomeWrite(session.id, outcome, OUTCOME_EDIT, request_id="o-1"),
            SessionWrite(session, request_id="s-1"),
        ]
    )
    assert [(r.ok, r.duplicate) for r in results] == [
        (True, False),
        (True, False),
        (True, True),
        (True, True),
    ]
    assert store.list_outcomes(session.id) == [outcome]
    assert row_count(db_path, "learning_sessions") == 1


def test_duplicate_request_id_after_reopen_is_stored_once(
    db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    session = make_session()
    outcome = make_outcome()
    batch: list[Write] = [
        SessionWrite(session, request_id="s-1"),
        OutcomeWrite(session.id, outcome, OUTCOME_EDIT, request_id="o-1"),
    ]
    first = SessionStore(db_path)
    assert [r.duplicate for r in first.apply_batch(batch)] == [False, False]
    first.close()

    second = SessionStore(db_path)
    try:
        results = second.apply_batch(batch)
        assert [(r.ok, r.duplicate) for r in results] == [(True, True), (True, True)]
        assert second.list_outcomes(session.id) == [outcome]
    finally:
        second.close()


def test_save_outcome_retried_with_same_request_id_stores_one_row(
    db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    session = make_session()
    outcome = make_outcome()
    first = SessionStore(db_path)
    first.save_session(session)
    first.save_outcome(session.id, outcome, **EDIT, request_id="retry-me")
    first.save_outcome(session.id, outcome, **EDIT, request_id="retry-me")
    assert first.list_outcomes(session.id) == [outcome]
    first.close()

    second = SessionStore(db_path)
    try:
        second.save_outcome(session.id, outcome, **EDIT, request_id="retry-me")
        assert second.list_outcomes(session.id) == [outcome]
        # without a request id there is no deduplication: a second outcome row, as in the original
        second.save_outcome(session.id, outcome, **EDIT)
        assert second.list_outcomes(session.id) == [outcome, outcome]
    finally:
        second.close()
    assert row_count(db_path, "edit_outcomes") == 2


def test_retried_session_save_does_not_undo_a_newer_save(
    store: SessionStore, make_session: MakeSession
) -> None:
    running = make_session(status="executing")
    done = running.model_copy(update={"status": SessionStatus.COMPLETED})
    store.save_session(running, request_id="save-1")
    store.save_session(done, request_id="save-2")
    store.save_session(running, request_id="save-1")  # a late retry of the first request
    assert store.get_session(running.id) == done


def test_refused_write_does_not_use_up_its_request_id(
    store: SessionStore, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    session = make_session()
    outcome = make_outcome()
    write = OutcomeWrite(session.id, outcome, OUTCOME_EDIT, request_id="o-early")
    (early,) = store.apply_batch([write])
    assert not early.ok and isinstance(early.error, UnknownSession)

    store.save_session(session)
    (retried,) = store.apply_batch([write])
    assert (retried.ok, retried.duplicate) == (True, False)
    assert store.list_outcomes(session.id) == [outcome]


def test_disk_full_fails_the_whole_batch_and_the_store_keeps_working(
    store: SessionStore, db_path: Path, make_session: MakeSession
) -> None:
    """SQLITE_FULL from the real pager: max_page_count caps the file at its current size."""
    existing = make_session()
    store.save_session(existing)
    before = dump_index(db_path)
    small = make_session()
    huge = make_session(trigger_metadata={"blob": "x" * 500_000})
    page_count = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {page_count}")

    with pytest.raises(StorageFailure, match="full"):
        store.apply_batch([SessionWrite(small), SessionWrite(huge)])

    assert dump_index(db_path) == before
    assert store.get_session(small.id) is None
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    store.apply_batch([SessionWrite(small), SessionWrite(huge)])
    assert store.get_session(huge.id) == huge
    assert store.get_session(existing.id) == existing


# -- additions: read-only mode ---------------------------------------------------------


def _write_attempts(
    session: LearningSession, outcome: EditOutcome
) -> dict[str, Callable[..., Any]]:
    return {
        "save_session": lambda s: s.save_session(session),
        "save_outcome": lambda s: s.save_outcome(session.id, outcome, **EDIT),
        "apply_batch": lambda s: s.apply_batch([SessionWrite(session)]),
        "record_file_states": lambda s: s.record_file_states([("a/session.json", 1, 2, "x")]),
        "replace_outcome_edits": lambda s: s.replace_outcome_edits(
            [(session.id, outcome.edit_id, OUTCOME_EDIT)], only=OUTCOME_EDIT
        ),
        "prune_applied_requests": lambda s: s.prune_applied_requests(0.0),
    }


def test_readonly_store_reads_everything(
    db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    writer = SessionStore(db_path)
    sessions = [make_session(), make_session()]
    outcome = make_outcome()
    for session in sessions:
        writer.save_session(session)
    writer.save_outcome(sessions[0].id, outcome, **EDIT)
    writer.close()

    reader = SessionStore(db_path, readonly=True)
    try:
        assert reader.readonly
        expected_first = sessions[0].model_copy(update={"edit_outcomes": [outcome]})
        assert reader.get_session(sessions[0].id) == expected_first
        assert reader.list_sessions() == [sessions[1], expected_first]
        assert reader.list_outcomes(sessions[0].id) == [outcome]
        assert reader.counts() == {"sessions": 2, "outcomes": 1}
    finally:
        reader.close()


def test_readonly_store_refuses_every_write_and_leaves_the_file_unchanged(
    db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    writer = SessionStore(db_path)
    existing = make_session()
    writer.save_session(existing)
    writer.save_outcome(existing.id, make_outcome(), **EDIT, request_id="r0")
    writer.close()
    before_bytes = db_path.read_bytes()
    before_rows = dump_index(db_path)

    reader = SessionStore(db_path, readonly=True)
    try:
        attempts = _write_attempts(make_session(), make_outcome())
        for name, attempt in attempts.items():
            with pytest.raises(ReadOnlyStore, match=name):
                attempt(reader)
        assert len(attempts) == 6
    finally:
        reader.close()

    assert db_path.read_bytes() == before_bytes
    assert dump_index(db_path) == before_rows
    wal = Path(f"{db_path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_readonly_open_of_a_missing_file_fails_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(StorageFailure, match="nope.db"):
        SessionStore(missing, readonly=True)
    assert list(tmp_path.iterdir()) == []


def test_readonly_open_of_a_file_that_is_not_an_index_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="learning_sessions"):
        SessionStore(other, readonly=True)


# -- additions: bad input is refused by name and changes nothing ------------------------


def _mutated(session: LearningSession, **changes: Any) -> LearningSession:
    copy = session.model_copy(deep=True)
    for name, value in changes.items():
        setattr(copy, name, value)
    return copy


def _bad_snapshot() -> BenchmarkSnapshot:
    return BenchmarkSnapshot.model_construct(
        benchmark_version="v",
        overall_score=1.5,
        cluster_scores={},
        task_count=1,
        elapsed_seconds=1.0,
    )


BadWrite = Callable[[SessionStore, LearningSession, EditOutcome], Any]

BAD_WRITES: list[tuple[str, BadWrite, type[SessionStoreError], str]] = [
    (
        "session as dict",
        lambda s, sess, o: s.save_session(sess.model_dump()),
        InvalidRecord,
        "LearningSession",
    ),
    ("session as None", lambda s, sess, o: s.save_session(None), InvalidRecord, "LearningSession"),
    (
        "outcome passed as session",
        lambda s, sess, o: s.save_session(o),
        InvalidRecord,
        "EditOutcome",
    ),
    (
        "negative teacher_cost_usd after construction",
        lambda s, sess, o: s.save_session(_mutated(sess, teacher_cost_usd=-1.0)),
        InvalidRecord,
        "teacher_cost_usd",
    ),
    (
        "bad status after construction",
        lambda s, sess, o: s.save_session(_mutated(sess, status="done")),
        InvalidRecord,
        "status",
    ),
    (
        "id of wrong type after construction",
        lambda s, sess, o: s.save_session(_mutated(sess, id=123)),
        InvalidRecord,
        "id",
    ),
    (
        "started_at not a datetime",
        lambda s, sess, o: s.save_session(_mutated(sess, started_at="last tuesday")),
        InvalidRecord,
        "started_at",
    ),
    (
        "overall_score out of range via model_construct",
        lambda s, sess, o: s.save_session(
            LearningSession.model_construct(
                **{**dict(sess), "benchmark_before": _bad_snapshot(), "status": "failed"}
            )
        ),
        InvalidRecord,
        "benchmark_before.overall_score",
    ),
    (
        "negative task_count via model_construct",
        lambda s, sess, o: s.save_session(
            _mutated(
                sess,
                benchmark_after=BenchmarkSnapshot.model_construct(
                    benchmark_version="v",
                    overall_score=0.5,
                    cluster_scores={},
                    task_count=-3,
                    elapsed_seconds=1.0,
                ),
            )
        ),
        InvalidRecord,
        "benchmark_after.task_count",
    ),
    (
        "unknown parent_session_id",
        lambda s, sess, o: s.save_session(
            _mutated(sess, id="orphan-child", parent_session_id="missing-parent")
        ),
        UnknownSession,
        "missing-parent",
    ),
    (
        "outcome as dict",
        lambda s, sess, o: s.save_outcome(sess.id, o.model_dump(), **EDIT),
        InvalidRecord,
        "EditOutcome",
    ),
    (
        "outcome status not in the literal",
        lambda s, sess, o: s.save_outcome(sess.id, _mutated(o, status="maybe"), **EDIT),
        InvalidRecord,
        "status",
    ),
    (
        "benchmark_delta of wrong type",
        lambda s, sess, o: s.save_outcome(
            sess.id, EditOutcome.model_construct(**{**dict(o), "benchmark_delta": "big"}), **EDIT
        ),
        InvalidRecord,
        "benchmark_delta",
    ),
    (
        "unknown pillar",
        lambda s, sess, o: s.save_outcome(sess.id, o, **{**EDIT, "pillar": "memory"}),
        InvalidRecord,
        "pillar",
    ),
    (
        "unknown op",
        lambda s, sess, o: s.save_outcome(sess.id, o, **{**EDIT, "op": "drop_table"}),
        InvalidRecord,
        "op",
    ),
    (
        "unknown risk_tier",
        lambda s, sess, o: s.save_outcome(sess.id, o, **{**EDIT, "risk_tier": "low"}),
        InvalidRecord,
        "risk_tier",
    ),
    (
        "pillar of wrong type",
        lambda s, sess, o: s.save_outcome(sess.id, o, **{**EDIT, "pillar": 3}),
        InvalidRecord,
        "pillar",
    ),
    (
        "target of wrong type",
        lambda s, sess, o: s.save_outcome(sess.id, o, **{**EDIT, "target": 42}),
        InvalidRecord,
        "target",
    ),
    (
        "rationale None",
        lambda s, sess, o: s.save_outcome(sess.id, o, **{**EDIT, "rationale": None}),
        InvalidRecord,
        "rationale",
    ),
    (
        "session_id of wrong type",
        lambda s, sess, o: s.save_outcome(123, o, **EDIT),
        InvalidRecord,
        "session_id",
    ),
    (
        "empty session_id",
        lambda s, sess, o: s.save_outcome("", o, **EDIT),
        InvalidRecord,
        "session_id",
    ),
    (
        "outcome for an unknown session",
        lambda s, sess, o: s.save_outcome("no-such-session", o, **EDIT),
        UnknownSession,
        "no-such-session",
    ),
    (
        "listing by an unknown status",
        lambda s, sess, o: s.list_sessions(status="finished"),
        InvalidRecord,
        "status",
    ),
    ("limit as bool", lambda s, sess, o: s.list_sessions(limit=True), InvalidRecord, "limit"),
    ("limit as string", lambda s, sess, o: s.list_sessions(limit="10"), InvalidRecord, "limit"),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic warns when dumping bad constructs
@pytest.mark.parametrize(
    ("bad_write", "error", "named"),
    [pytest.param(fn, err, named, id=label) for label, fn, err, named in BAD_WRITES],
)
def test_bad_input_is_refused_by_name_and_changes_nothing(
    store: SessionStore,
    db_path: Path,
    make_session: MakeSession,
    make_outcome: MakeOutcome,
    bad_write: BadWrite,
    error: type[SessionStoreError],
    named: str,
) -> None:
    session = make_session()
    store.save_session(session)
    store.save_outcome(session.id, make_outcome(), **EDIT, request_id="r-1")
    before = dump_index(db_path)
    expected = store.get_session(session.id)

    with pytest.raises(error) as info:
        bad_write(store, session, make_outcome())

    assert isinstance(info.value, SessionStoreError)
    assert named in str(info.value)
    assert dump_index(db_path) == before
    assert store.get_session(session.id) == expected
    # and the store still accepts good writes afterwards
    store.save_outcome(session.id, make_outcome(), **EDIT)
    assert row_count(db_path, "edit_outcomes") == 2


# -- the listing benchmark ---------------------------------------------------------------


def test_bench_listing_returns_well_formed_numbers(tmp_path: Path) -> None:
    result = bench_listing(tmp_path / "bench", sessions=20, outcomes_per_session=2)
    assert set(result) == {
        "sessions",
        "outcomes",
        "batched_seconds",
        "per_session_seconds",
        "rows_seconds",
        "unvalidated_seconds",
        "speedup",
        "speedup_ceiling",
    }
    assert result["sessions"] == 20
    assert result["outcomes"] == 40
    for key in set(result) - {"sessions", "outcomes"}:
        assert isinstance(result[key], float)
        assert result[key] > 0
    assert result["rows_seconds"] < result["unvalidated_seconds"]


def test_per_session_and_unvalidated_listings_match_list_sessions(
    store: SessionStore, db_path: Path, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    """The benchmark's other two ways build exactly what list_sessions returns, odd values too."""
    parent = make_session()
    child = make_session(
        parent_session_id=parent.id,
        ended_at=parent.started_at,
        error="boom",
        trigger_metadata={"nested": {"list": [1, 2.5, None, "x"]}, "big": 2**70},
    )
    for session in (parent, child):
        store.save_session(session)
        store.save_outcome(session.id, make_outcome(), **EDIT)
        store.save_outcome(
            session.id,
            make_outcome(benchmark_delta=None, applied_at=None, error="gate said no"),
            **EDIT,
        )
    conn = sqlite3.connect(db_path)
    try:
        per_session = list_sessions_per_session(conn)
    finally:
        conn.close()
    listed = store.list_sessions()
    assert len(listed) == 2
    assert per_session == listed
    assert list_sessions_unvalidated(store) == listed


@pytest.mark.parametrize("where", ["teacher_cost_usd", "benchmark_before", "trigger_metadata"])
def test_non_finite_numbers_are_refused_and_change_nothing(
    tmp_path: Path, make_session, where: str
) -> None:
    store = SessionStore(tmp_path / "i.db")
    session = make_session()
    if where == "teacher_cost_usd":
        session.teacher_cost_usd = math.inf
    elif where == "benchmark_before":
        session.benchmark_before.elapsed_seconds = math.inf
    else:
        session.trigger_metadata = {"x": [1.0, math.nan]}
    with pytest.raises(InvalidRecord, match="not a finite number"):
        store.save_session(session)
    assert store.list_sessions() == []


def test_large_outcome_batches_give_the_same_results_as_one_by_one(
    store: SessionStore, make_session: MakeSession, make_outcome: MakeOutcome
) -> None:
    """Batches of SET_WISE_MIN+ outcome saves take a set-wise path; its answers must match."""
    a, b = make_session(), make_session()
    store.apply_batch([SessionWrite(a), SessionWrite(b)])
    first = [OutcomeWrite(a.id, make_outcome(), OUTCOME_EDIT, f"r{i}") for i in range(20)]
    assert [r.ok and not r.duplicate for r in store.apply_batch(first)] == [True] * 20

    # half resent (applied before), half new, across two sessions: duplicates flagged, stored once
    second = first[:10] + [
        OutcomeWrite(b.id, make_outcome(), OUTCOME_EDIT, f"n{i}") for i in range(10)
    ]
    results = store.apply_batch(second)
    assert [r.duplicate for r in results] == [True] * 10 + [False] * 10
    assert [o.edit_id for o in store.list_outcomes(a.id)] == [w.outcome.edit_id for w in first]
    assert len(store.list_outcomes(b.id)) == 10

    # one save for an unknown session in a large batch: it fails alone, by name
    mixed = [OutcomeWrite(a.id, make_outcome(), OUTCOME_EDIT, f"m{i}") for i in range(20)]
    mixed[7] = OutcomeWrite("ghost", make_outcome(), OUTCOME_EDIT, "m-ghost")
    results = store.apply_batch(mixed)
    assert [r.ok for r in results] == [i != 7 for i in range(20)]
    assert isinstance(results[7].error, UnknownSession) and "ghost" in str(results[7].error)

    # the same save twice in one batch: stored once, the second flagged duplicate
    twice = [OutcomeWrite(a.id, make_outcome(), OUTCOME_EDIT, f"t{i}") for i in range(20)]
    twice[5] = twice[4]
    results = store.apply_batch(twice)
    assert results[5].duplicate and not results[4].duplicate
    assert len(store.list_outcomes(a.id)) == 20 + 19 + 19

    # the same id for another save in one batch: that one is refused, by name, alone
    reused = [OutcomeWrite(a.id, make_outcome(), OUTCOME_EDIT, f"u{i}") for i in range(20)]
    reused[5] = OutcomeWrite(a.id, make_outcome(edit_id="other"), OUTCOME_EDIT, "u4")
    results = store.apply_batch(reused)
    assert [r.ok for r in results] == [i != 5 for i in range(20)]
    assert isinstance(results[5].error, RequestIdConflict) and "'u4'" in str(results[5].error)
    assert len(store.list_outcomes(a.id)) == 20 + 19 + 19 + 19
