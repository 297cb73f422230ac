"""One behaviour for SessionStore and SessionStoreClient on edge inputs, the original's where
it is not a silent loss, and a documented reason wherever it is not the original's.

Each row is one input. The store (a fresh index per row) and the client (a real daemon,
shared by the rows, each row on its own session ids) must give the same return value
or raise the same exception class; that is the ``ours`` column. OpenJarvis 1.0.4's own
``SessionStore`` (the released package, imported) must give the ``original`` column,
and a row where the two differ must say why. The table in ``docs/openjarvis.md`` is
generated from these rows (:func:`markdown_table`) and checked against them.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pydantic_core
import pytest
import upstream
from daemon_helpers import Daemon

from sessionstore import SessionStore, SessionStoreClient
from sessionstore.batch import INSERT_OUTCOME, UPSERT_SESSION
from sessionstore.errors import InvalidRecord, RequestTooLarge, UnknownSession
from sessionstore.models import (
    AutonomyMode,
    BenchmarkSnapshot,
    EditOutcome,
    LearningSession,
    SessionStatus,
    TriggerKind,
)
from sessionstore.records import OutcomeEdit, outcome_row, session_row

DOCS = Path(__file__).parent.parent / "docs" / "openjarvis.md"
EDIT = {"pillar": "agent", "op": "patch_system_prompt", "target": "agents.simple.system_prompt"}
EDIT_FIELDS = {**EDIT, "risk_tier": "auto"}
T0 = datetime(2026, 4, 8, 3, 0, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))
SEEDS = [("seed-1", "completed"), ("seed-2", "failed"), ("seed-3", "completed")]


def mk(sid: str, **fields: Any) -> LearningSession:
    values: dict[str, Any] = {
        "id": sid,
        "trigger": TriggerKind.SCHEDULED,
        "status": SessionStatus.COMPLETED,
        "autonomy_mode": AutonomyMode.TIERED,
        "started_at": T0,
        "diagnosis_path": Path(f"/l/sessions/{sid}/diagnosis.md"),
        "plan_path": Path(f"/l/sessions/{sid}/plan.json"),
        "benchmark_before": BenchmarkSnapshot(
            benchmark_version="personal_v1", overall_score=0.6, task_count=20, elapsed_seconds=6.0
        ),
        "git_checkpoint_pre": "abc1234",
        "teacher_cost_usd": 0.1,
    }
    values.update(fields)
    return LearningSession(**values)


def mutated(model: Any, **changes: Any) -> Any:
    """A copy with fields set after construction (pydantic does not validate assignment)."""
    copy = model.model_copy(deep=True)
    for name, value in changes.items():
        setattr(copy, name, value)
    return copy


def out(edit_id: str = "edit-1", **fields: Any) -> EditOutcome:
    return EditOutcome(edit_id=edit_id, status="applied", **fields)


@dataclass(frozen=True)
class Subject:
    """One implementation under test, its index file, and the session id this row may use."""

    api: Any
    db: Path
    sid: str


@dataclass(frozen=True)
class Raised:
    error: type[BaseException]


SAME: Any = object()
"""In ``original`` / ``client``: the same as ``ours``."""


@dataclass(frozen=True)
class Row:
    name: str
    call: Callable[[Subject], Any]
    ours: Any
    original: Any = SAME
    why: str = ""
    client: Any = SAME
    client_why: str = ""
    says: str = ""
    """How the table in the docs words ``ours`` (default: the value itself)."""
    original_says: str = ""


# -- what the calls return, in a form all three implementations can be compared in ------


def listing(s: Subject, **kwargs: Any) -> str:
    """What a listing gave: every session (newest first), or how many."""
    ids = [x.id for x in s.api.list_sessions(**kwargs)]
    if ids == [x.id for x in s.api.list_sessions()]:
        return "every session"
    return f"{len(ids)} session(s)"


def completed_only(s: Subject, status: Any) -> str:
    listed = [x.id for x in s.api.list_sessions(status=status)]
    wanted = [x.id for x in s.api.list_sessions() if x.status.value == "completed"]
    assert len(wanted) >= 2
    return "the completed sessions" if listed == wanted else f"{listed}"


def num(value: float | None) -> Any:
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def saved_then(s: Subject, session: LearningSession, read: Callable[[Any], Any]) -> Any:
    s.api.save_session(session)
    return read(s.api.get_session(session.id))


def outcome_then(s: Subject, outcome: Any, read: Callable[[Any], Any], **edit: Any) -> Any:
    s.api.save_session(mk(s.sid))
    s.api.save_outcome(s.sid, outcome, **{**EDIT_FIELDS, **edit})
    return read(s.api.list_outcomes(s.sid))


def written_by_another(s: Subject, session: LearningSession, outcome: EditOutcome | None) -> None:
    """Write rows as the original library would, through a connection of its own."""
    conn = sqlite3.connect(s.db, timeout=10)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(UPSERT_SESSION, session_row(session))
        if outcome is not None:
            conn.execute(
                INSERT_OUTCOME, outcome_row(session.id, outcome, OutcomeEdit(**EDIT_FIELDS))
            )
        conn.commit()
    finally:
        conn.close()


def legacy_read(s: Subject, session: LearningSession, outcome: EditOutcome | None = None) -> Any:
    written_by_another(s, session, outcome)
    got = s.api.get_session(session.id)
    return (num(got.teacher_cost_usd), {k: num(v) for k, v in got.trigger_metadata.items()}) + (
        tuple(num(o.benchmark_delta) for o in got.edit_outcomes),
    )


NOT_STORED = (
    "session.json (pydantic's JSON) and the wire write it as null, so index and file would disagree"
)
INF = math.inf
NAN = math.nan

ROWS: list[Row] = [
    # -- list_sessions(limit=...) ------------------------------------------------------
    Row("limit=-1", lambda s: listing(s, limit=-1), "every session"),
    Row("limit=-5", lambda s: listing(s, limit=-5), "every session"),
    Row("limit=0", lambda s: listing(s, limit=0), "0 session(s)"),
    Row("limit=2**63-1", lambda s: listing(s, limit=2**63 - 1), "every session"),
    Row(
        "limit=2**63 (huge)",
        lambda s: listing(s, limit=2**63),
        "every session",
        Raised(OverflowError),
        "a limit above any table's size lists everything; the driver's OverflowError was a crash",
    ),
    Row(
        "limit=True",
        lambda s: listing(s, limit=True),
        Raised(InvalidRecord),
        "1 session(s)",
        "a bool is not a count (the original passes it on as LIMIT 1)",
    ),
    Row(
        "limit=2.5",
        lambda s: listing(s, limit=2.5),
        Raised(InvalidRecord),
        Raised(sqlite3.IntegrityError),
        "a typed error naming the argument instead of SQLite's 'datatype mismatch'",
    ),
    Row(
        "limit='1'",
        lambda s: listing(s, limit="1"),
        Raised(InvalidRecord),
        "1 session(s)",
        "a string is not a count (SQLite converts '1' but fails on 'ten')",
    ),
    # -- list_sessions(status=...) -------------------------------------------------------
    Row(
        "status=SessionStatus.COMPLETED",
        lambda s: completed_only(s, SessionStatus.COMPLETED),
        "the completed sessions",
    ),
    Row(
        "status='completed' (plain string)",
        lambda s: completed_only(s, "completed"),
        "the completed sessions",
        Raised(AttributeError),
        "the enum's value is accepted; the original calls status.value and crashes",
    ),
    Row(
        "status='finished' (not a status)",
        lambda s: completed_only(s, "finished"),
        Raised(InvalidRecord),
        Raised(AttributeError),
        "a typed error naming the argument",
    ),
    # -- ids -----------------------------------------------------------------------------
    Row("get_session('')", lambda s: s.api.get_session(""), None),
    Row("list_outcomes('')", lambda s: s.api.list_outcomes(""), []),
    Row("get_session(None)", lambda s: s.api.get_session(None), None),
    Row("get_session('unknown')", lambda s: s.api.get_session("no-such-session"), None),
    Row("list_outcomes('unknown')", lambda s: s.api.list_outcomes("no-such-session"), []),
    Row(
        "get_session(123)",
        lambda s: s.api.get_session(123),
        Raised(InvalidRecord),
        None,
        "an id is a string: SQLite would find session '123' for 123 but nothing for 1.0",
    ),
    Row(
        "get_session('\\ud800') (lone surrogate)",
        lambda s: s.api.get_session("\ud800"),
        Raised(InvalidRecord),
        Raised(UnicodeEncodeError),
        "a typed error (still a ValueError, as UnicodeEncodeError is)",
    ),
    Row(
        "save_session(id='')",
        lambda s: saved_then(s, mk(""), lambda got: got.id),
        Raised(InvalidRecord),
        "",
        original_says="saved under `''`",
        why="'' cannot name a session directory (sessions/<id>/session.json)",
    ),
    Row(
        "save_session(id with lone surrogate)",
        lambda s: saved_then(s, mk(s.sid + "\udc80"), lambda got: got.id),
        Raised(InvalidRecord),
        Raised(UnicodeEncodeError),
        "a typed error naming the field",
    ),
    Row(
        "unicode id, text and metadata (incl. NUL)",
        lambda s: saved_then(
            s,
            mk(s.sid + "-ü🙂漢", error="é\x00z", trigger_metadata={"ключ": ["值", "🙂"]}),
            lambda got: (got.id[-3:], got.error, got.trigger_metadata),
        ),
        ("ü🙂漢", "é\x00z", {"ключ": ["值", "🙂"]}),
        says="the same text back",
    ),
    # -- non-finite numbers --------------------------------------------------------------
    Row(
        "benchmark_delta=NaN",
        lambda s: outcome_then(s, out(benchmark_delta=NAN), lambda o: num(o[-1].benchmark_delta)),
        Raised(InvalidRecord),
        None,
        "the original stores NULL: a silent loss",
        original_says="`None` (stored as NULL)",
    ),
    Row(
        "benchmark_delta=inf",
        lambda s: outcome_then(s, out(benchmark_delta=INF), lambda o: o[-1].benchmark_delta),
        Raised(InvalidRecord),
        INF,
        NOT_STORED,
    ),
    Row(
        "benchmark_delta=-inf",
        lambda s: outcome_then(s, out(benchmark_delta=-INF), lambda o: o[-1].benchmark_delta),
        Raised(InvalidRecord),
        -INF,
        NOT_STORED,
    ),
    Row(
        "cluster_deltas={'c': NaN}",
        lambda s: outcome_then(
            s, out(cluster_deltas={"c": NAN}), lambda o: num(o[-1].cluster_deltas["c"])
        ),
        Raised(InvalidRecord),
        "nan",
        NOT_STORED,
    ),
    Row(
        "teacher_cost_usd=inf",
        lambda s: saved_then(s, mk(s.sid, teacher_cost_usd=INF), lambda got: got.teacher_cost_usd),
        Raised(InvalidRecord),
        INF,
        NOT_STORED,
    ),
    Row(
        "benchmark_before.elapsed_seconds=inf",
        lambda s: saved_then(
            s,
            mk(s.sid, benchmark_before=mutated(mk("x").benchmark_before, elapsed_seconds=INF)),
            lambda got: got.benchmark_before.elapsed_seconds,
        ),
        Raised(InvalidRecord),
        Raised(pydantic_core.ValidationError),
        "the original saves null in the JSON column, then cannot read the session back",
    ),
    Row(
        "trigger_metadata={'x': NaN}",
        lambda s: saved_then(
            s, mk(s.sid, trigger_metadata={"x": NAN}), lambda got: num(got.trigger_metadata["x"])
        ),
        Raised(InvalidRecord),
        "nan",
        NOT_STORED,
    ),
    Row(
        "reading rows another writer stored with inf/NaN",
        lambda s: legacy_read(
            s,
            mk(s.sid, teacher_cost_usd=INF, trigger_metadata={"x": NAN}),
            out(benchmark_delta=-INF),
        ),
        (INF, {"x": "nan"}, (-INF,)),
        says="the same inf/NaN back",
    ),
    # -- datetimes, metadata ---------------------------------------------------------------
    Row(
        "naive started_at",
        lambda s: saved_then(
            s,
            mk(s.sid, started_at=datetime(2026, 1, 1, 9, 30)),
            lambda got: (got.started_at.tzinfo, got.started_at.isoformat()),
        ),
        (None, "2026-01-01T09:30:00"),
        says="the same naive datetime back",
    ),
    Row(
        "started_at with a +05:30 offset",
        lambda s: saved_then(
            s,
            mk(s.sid, started_at=datetime(2026, 1, 1, 9, 30, tzinfo=IST)),
            lambda got: got.started_at.isoformat(),
        ),
        "2026-01-01T09:30:00+05:30",
    ),
    Row(
        "trigger_metadata with a tuple",
        lambda s: saved_then(
            s, mk(s.sid, trigger_metadata={"t": (1, 2)}), lambda got: got.trigger_metadata
        ),
        {"t": [1, 2]},
    ),
    Row(
        "trigger_metadata with 2**70",
        lambda s: saved_then(
            s, mk(s.sid, trigger_metadata={"n": 2**70}), lambda got: got.trigger_metadata
        ),
        {"n": 2**70},
    ),
    Row(
        "trigger_metadata with a set",
        lambda s: saved_then(s, mk(s.sid, trigger_metadata={"s": {1}}), lambda got: got),
        Raised(InvalidRecord),
        Raised(TypeError),
        "a typed error naming the path",
    ),
    Row(
        "trigger_metadata with a datetime",
        lambda s: saved_then(s, mk(s.sid, trigger_metadata={"d": T0}), lambda got: got),
        Raised(InvalidRecord),
        Raised(TypeError),
        "a typed error naming the path",
    ),
    Row(
        "trigger_metadata={'a': {1: 'x'}} (int key)",
        lambda s: saved_then(
            s, mk(s.sid, trigger_metadata={"a": {1: "x"}}), lambda got: got.trigger_metadata
        ),
        Raised(InvalidRecord),
        {"a": {"1": "x"}},
        "the key would change type silently ({1: .., '1': ..} would lose one)",
    ),
    Row(
        "trigger_metadata with a lone surrogate",
        lambda s: saved_then(
            s, mk(s.sid, trigger_metadata={"a": "\udc80"}), lambda got: got.trigger_metadata
        ),
        Raised(InvalidRecord),
        {"a": "\udc80"},
        "not text session.json or the wire can carry",
    ),
    Row(
        "diagnosis_path from undecodable bytes",
        lambda s: saved_then(s, mk(s.sid, diagnosis_path=Path("/l/\udcff")), lambda got: got),
        Raised(InvalidRecord),
        Raised(UnicodeEncodeError),
        "a typed error naming the field",
    ),
    # -- the record as a whole -------------------------------------------------------------
    Row(
        "status set to 'completed' after construction",
        lambda s: saved_then(
            s, mutated(mk(s.sid), status="completed"), lambda got: got.status.value
        ),
        "completed",
        Raised(AttributeError),
        "the value is validated like any other; the original calls status.value and crashes",
    ),
    Row(
        "session as a dict",
        lambda s: s.api.save_session(mk(s.sid).model_dump()),
        Raised(InvalidRecord),
        Raised(AttributeError),
        "a typed error",
    ),
    Row(
        "an EditOutcome passed as the session",
        lambda s: s.api.save_session(out()),
        Raised(InvalidRecord),
        Raised(AttributeError),
        "a typed error",
    ),
    Row(
        "session with edit_outcomes attached",
        lambda s: saved_then(
            s,
            mk(s.sid, edit_outcomes=[out()]),
            lambda got: (got.edit_outcomes, s.api.list_outcomes(s.sid)),
        ),
        ([], []),
        says="saved without them (outcomes are stored by save_outcome)",
    ),
    Row(
        "parent_session_id unknown",
        lambda s: s.api.save_session(mk(s.sid, parent_session_id="no-such-parent")),
        Raised(UnknownSession),
        Raised(sqlite3.IntegrityError),
        "a typed error naming the parent (still a LookupError)",
    ),
    Row(
        "parent_session_id = its own id",
        lambda s: saved_then(
            s, mk(s.sid, parent_session_id=s.sid), lambda got: got.parent_session_id == s.sid
        ),
        True,
        says="saved",
    ),
    Row(
        "re-save a session that has outcomes",
        lambda s: (
            outcome_then(s, out(), len),
            saved_then(
                s, mk(s.sid, error="again"), lambda got: (got.error, len(got.edit_outcomes))
            ),
        ),
        (1, ("again", 1)),
        says="updated, its outcome kept",
    ),
    Row(
        "the same outcome saved twice",
        lambda s: (outcome_then(s, out(), len), outcome_then(s, out(), len)),
        (1, 2),
        says="two outcome rows",
    ),
    Row(
        "save_outcome for an unknown session",
        lambda s: s.api.save_outcome("no-such-session", out(), **EDIT_FIELDS),
        Raised(UnknownSession),
        Raised(sqlite3.IntegrityError),
        "a typed error naming the session",
    ),
    Row(
        "save_outcome(session_id='')",
        lambda s: s.api.save_outcome("", out(), **EDIT_FIELDS),
        Raised(InvalidRecord),
        Raised(sqlite3.IntegrityError),
        "a typed error naming the argument",
    ),
    Row(
        "save_outcome(pillar='memory')",
        lambda s: outcome_then(s, out(), len, pillar="memory"),
        Raised(InvalidRecord),
        1,
        "Edit fields are checked against the enums so WHERE op = ? finds every row",
        original_says="stored as given",
    ),
    Row(
        "a 2 MB error text",
        lambda s: saved_then(s, mk(s.sid, error="x" * 2_000_000), lambda got: len(got.error)),
        2_000_000,
        says="saved",
        client=Raised(RequestTooLarge),
        client_why="a request frame is at most max_message_bytes (default 1 MiB)",
    ),
]

IDS = [row.name for row in ROWS]


# -- subjects ----------------------------------------------------------------------------


def seed(api: Any) -> None:
    for n, (sid, status) in enumerate(SEEDS):
        api.save_session(mk(sid, status=status, started_at=T0 - timedelta(days=n + 1)))


@pytest.fixture(scope="module")
def daemon_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """One daemon for the whole table; each row saves under its own ids."""
    daemon = Daemon(tmp_path_factory.mktemp("edge") / "learning")
    try:
        daemon.start()
        client = SessionStoreClient(daemon.address, timeout=20)
        seed(client)
        yield client, daemon.db_path
        client.close()
    finally:
        daemon.cleanup()


def run(call: Callable[[Subject], Any], subject: Subject) -> Any:
    try:
        return call(subject)
    except Exception as err:
        return Raised(type(err))


def expected(value: Any, default: Any) -> Any:
    return default if value is SAME else value


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic warns when dumping mutated models
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_store_and_client_give_the_same_answer(
    row: Row, tmp_path: Path, daemon_client: tuple[Any, Path]
) -> None:
    store = SessionStore(tmp_path / "distillation.db")
    try:
        seed(store)
        from_store = run(
            row.call, Subject(store, tmp_path / "distillation.db", f"row-{IDS.index(row.name)}")
        )
    finally:
        store.close()
    client, db = daemon_client
    from_client = run(row.call, Subject(client, db, f"row-{IDS.index(row.name)}"))

    assert from_store == row.ours
    assert from_client == expected(row.client, row.ours)
    if row.client is not SAME:
        assert row.client_why, "a row where the client differs on purpose must say why"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_the_original_behaves_as_the_table_says(row: Row, tmp_path: Path) -> None:
    original = upstream.OriginalStore(tmp_path / "original.db")
    try:
        seed(original)
        got = run(row.call, Subject(original, tmp_path / "original.db", "row"))
    finally:
        original.close()
    assert got == expected(row.original, row.ours)
    if row.original is not SAME:
        assert row.why, "a row where ours differs from the original must say why"


# -- the documented table ------------------------------------------------------------------


def render(value: Any, says: str = "") -> str:
    if says:
        return says
    if isinstance(value, Raised):
        return f"raises `{value.error.__name__}`"
    if value == "nan":
        return "NaN back"
    if isinstance(value, str) and value.endswith(("session", "sessions", "session(s)")):
        return value
    return f"`{value!r}`"


def markdown_table() -> str:
    lines = [
        "| input | store and client | OpenJarvis 1.0.4 | why ours differs |",
        "|---|---|---|---|",
    ]
    for row in ROWS:
        ours = render(row.ours, row.says)
        if row.client is not SAME:
            ours += f"; the client {render(row.client)} ({row.client_why})"
        original = "same" if row.original is SAME else render(row.original, row.original_says)
        lines.append(f"| `{row.name}` | {ours} | {original} | {row.why} |")
    return "\n".join(lines) + "\n"


def test_the_documented_table_is_the_tested_one() -> None:
    table = markdown_table()
    assert table in DOCS.read_text(encoding="utf-8"), (
        f"docs/openjarvis.md must contain the edge-input table exactly as tested:\n\n{table}"
    )
