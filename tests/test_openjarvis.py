"""A drop-in for the OpenJarvis people run: the released package (1.0.4), imported, not copied.

OpenJarvis's own model objects go through the store, the client and the pipeline and
read back equal (``==`` with ``models=``); OpenJarvis's orchestrator runs unchanged on
a ``SessionStoreClient`` against a live daemon, driven the way its own tests drive it
(a mocked teacher engine and benchmark scorer, no network); and OpenJarvis's
``SessionStore`` and ours open each other's database files and read the same records.
Without the package these tests skip here and fail in CI (``tests/environment.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest.mock import MagicMock, patch

import pytest
import upstream
from daemon_helpers import Daemon
from pydantic import create_model

from sessionstore import SessionStore, SessionStoreClient
from sessionstore.errors import ConfigError, InvalidRecord
from sessionstore.models import LearningSession

T0 = datetime(2026, 4, 8, 3, 0, tzinfo=UTC)
QUIET_JOBS = {  # reconcile only when a test asks, so it sees what the orchestrator left
    "SESSIONSTORE_RECONCILE_ON_START": "false",
    "SESSIONSTORE_RECONCILE_INTERVAL": "86400",
}


@pytest.fixture
def oj() -> ModuleType:
    return upstream.models()


def their_session(oj: ModuleType, sid: str, n: int = 0, **fields: Any) -> Any:
    values: dict[str, Any] = {
        "id": sid,
        "trigger": oj.TriggerKind.USER_FLAG,
        "trigger_metadata": {"flagged_by": "u", "traces": ["t1", "t2"], "weight": 0.1 + 0.2},
        "status": oj.SessionStatus.COMPLETED,
        "autonomy_mode": oj.AutonomyMode.TIERED,
        "started_at": T0 + timedelta(minutes=n),
        "ended_at": T0 + timedelta(minutes=n, seconds=42),
        "diagnosis_path": Path(f"/home/u/.openjarvis/learning/sessions/{sid}/diagnosis.md"),
        "plan_path": Path(f"/home/u/.openjarvis/learning/sessions/{sid}/plan.json"),
        "benchmark_before": oj.BenchmarkSnapshot(
            benchmark_version="personal_v1",
            overall_score=0.6,
            cluster_scores={"cluster-001": 0.5},
            task_count=20,
            elapsed_seconds=60.0,
        ),
        "git_checkpoint_pre": "abc1234",
        "teacher_cost_usd": 1 / 3,
    }
    values.update(fields)
    return oj.LearningSession(**values)


def their_outcome(oj: ModuleType, edit_id: str, **fields: Any) -> Any:
    values: dict[str, Any] = {
        "edit_id": edit_id,
        "status": "applied",
        "benchmark_delta": 0.04,
        "cluster_deltas": {"cluster-001": 0.1},
        "applied_at": T0 + timedelta(minutes=5),
    }
    values.update(fields)
    return oj.EditOutcome(**values)


def edit_fields(oj: ModuleType) -> dict[str, Any]:
    """The Edit fields as OpenJarvis's own enum members (its tests pass plain strings)."""
    return {
        "pillar": oj.EditPillar.INTELLIGENCE,
        "op": oj.EditOp.SET_MODEL_FOR_QUERY_CLASS,
        "target": "learning.routing.policy_map.math",
        "risk_tier": oj.EditRiskTier.AUTO,
        "rationale": "route math to the bigger model",
    }


def records(oj: ModuleType) -> tuple[list[Any], dict[str, list[Any]]]:
    """Two sessions (one a follow-up) and their outcomes, as OpenJarvis objects."""
    parent = their_session(oj, "session-001")
    child = their_session(
        oj,
        "session-002",
        1,
        parent_session_id="session-001",
        status=oj.SessionStatus.FAILED,
        error="benchmark regressed",
        benchmark_after=oj.BenchmarkSnapshot(
            benchmark_version="personal_v1", overall_score=0.55, task_count=20, elapsed_seconds=58.5
        ),
    )
    outcomes = {
        "session-001": [
            their_outcome(oj, "edit-001"),
            their_outcome(
                oj,
                "edit-002",
                status="skipped",
                benchmark_delta=None,
                cluster_deltas={},
                applied_at=None,
                error="manual tier",
            ),
        ],
        "session-002": [their_outcome(oj, "edit-003", status="rejected_by_gate", applied_at=None)],
    }
    return [parent, child], outcomes


def save_all(api: Any, oj: ModuleType, sessions: list[Any], outcomes: dict[str, list[Any]]) -> None:
    for session in sessions:
        api.save_session(session)
        for outcome in outcomes[session.id]:
            api.save_outcome(session.id, outcome, **edit_fields(oj))


def with_outcomes(session: Any, outcomes: dict[str, list[Any]]) -> Any:
    return session.model_copy(update={"edit_outcomes": outcomes[session.id]})


def check_reads(
    api: Any, sessions: list[Any], outcomes: dict[str, list[Any]], oj: ModuleType
) -> None:
    """Everything reads back ``==`` to the OpenJarvis objects that went in."""
    for session in sessions:
        got = api.get_session(session.id)
        assert type(got) is oj.LearningSession
        assert got == with_outcomes(session, outcomes)
        assert api.list_outcomes(session.id) == outcomes[session.id]
    newest_first = [with_outcomes(s, outcomes) for s in reversed(sessions)]
    assert api.list_sessions() == newest_first
    assert api.list_sessions(status=oj.SessionStatus.FAILED) == newest_first[:1]


# -- OpenJarvis's objects in, equal objects out ---------------------------------------------


def test_openjarvis_objects_through_the_store_read_back_equal(
    tmp_path: Path, oj: ModuleType
) -> None:
    sessions, outcomes = records(oj)
    store = SessionStore(tmp_path / "distillation.db", models=oj)
    try:
        save_all(store, oj, sessions, outcomes)
        check_reads(store, sessions, outcomes, oj)
    finally:
        store.close()
    plain = SessionStore(tmp_path / "distillation.db")  # default: our classes, equal fields
    try:
        got = plain.get_session("session-002")
        assert type(got) is LearningSession
        assert (
            got is not None
            and got.model_dump() == with_outcomes(sessions[1], outcomes).model_dump()
        )
    finally:
        plain.close()


def test_openjarvis_objects_through_the_client_and_pipeline_read_back_equal(
    daemon: Daemon, oj: ModuleType
) -> None:
    sessions, outcomes = records(oj)
    client = SessionStoreClient(
        daemon.address, timeout=20, models="openjarvis.learning.spec_search.models"
    )
    try:
        save_all(client, oj, sessions[:1], outcomes)
        with client.pipeline() as pipe:
            save_all(pipe, oj, sessions[1:], outcomes)
        check_reads(client, sessions, outcomes, oj)
    finally:
        client.close()


def test_openjarvis_objects_are_checked_as_strictly_as_ours(
    daemon: Daemon, oj: ModuleType, tmp_path: Path
) -> None:
    """Converted by fields, then validated as ours: the same refusals, word for word."""
    bad = their_session(oj, "bad")
    bad.teacher_cost_usd = -1.0  # pydantic does not validate assignment
    nan = their_outcome(oj, "e", benchmark_delta=float("nan"))
    store = SessionStore(tmp_path / "i.db")
    client = SessionStoreClient(daemon.address, timeout=20)
    try:
        messages = []
        for api in (store, client):
            with pytest.raises(InvalidRecord) as refused:
                api.save_session(bad)
            messages.append(str(refused.value))
            api.save_session(their_session(oj, "ok"))
            with pytest.raises(InvalidRecord) as refused:
                api.save_outcome("ok", nan, **edit_fields(oj))
            messages.append(str(refused.value))
        assert messages[:2] == messages[2:]
        assert "teacher_cost_usd" in messages[0] and "not a finite number" in messages[1]
    finally:
        store.close()
        client.close()


def test_a_model_with_other_fields_is_refused_naming_them(tmp_path: Path) -> None:
    """Same name, other fields (a future OpenJarvis, say): refused, not silently trimmed."""
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in LearningSession.model_fields.items()
    }
    fields["reviewer"] = (str, "someone")
    Other = create_model("LearningSession", __module__="elsewhere", **fields)  # noqa: N806
    session = Other(**{**with_defaults(), "reviewer": "me"})
    store = SessionStore(tmp_path / "i.db")
    try:
        with pytest.raises(
            InvalidRecord,
            match=r"from elsewhere with other fields \(missing: none; extra: reviewer\)",
        ):
            store.save_session(session)
        assert store.list_sessions() == []
    finally:
        store.close()
    with pytest.raises(ConfigError, match="reviewer"):
        SessionStore(
            tmp_path / "j.db",
            models=type("M", (), {"LearningSession": Other, "EditOutcome": object}),
        )


def with_defaults() -> dict[str, Any]:
    return {
        "id": "x",
        "trigger": "scheduled",
        "status": "completed",
        "autonomy_mode": "auto",
        "started_at": T0,
        "diagnosis_path": "/d",
        "plan_path": "/p",
        "benchmark_before": {
            "benchmark_version": "v",
            "overall_score": 0.5,
            "task_count": 1,
            "elapsed_seconds": 1.0,
        },
        "git_checkpoint_pre": "abc",
        "teacher_cost_usd": 0.0,
    }


# -- the two SessionStores open each other's files ---------------------------------------------


def test_each_store_reads_what_the_other_wrote(tmp_path: Path, oj: ModuleType) -> None:
    original_class = upstream.session_store_class()
    sessions, outcomes = records(oj)

    theirs = original_class(tmp_path / "theirs.db")
    save_all(theirs, oj, sessions, outcomes)
    expected = theirs.list_sessions()
    theirs.close()
    ours = SessionStore(tmp_path / "theirs.db", models=oj)  # migrates: adds our tables only
    try:
        assert (
            ours.list_sessions()
            == expected
            == [with_outcomes(s, outcomes) for s in reversed(sessions)]
        )
        ours.save_session(their_session(oj, "session-003", 2))  # and writes on it
    finally:
        ours.close()
    theirs = original_class(tmp_path / "theirs.db")  # the original still reads it all
    try:
        assert [s.id for s in theirs.list_sessions()] == [
            "session-003",
            "session-002",
            "session-001",
        ]
        assert theirs.get_session("session-002") == with_outcomes(sessions[1], outcomes)
    finally:
        theirs.close()

    ours = SessionStore(tmp_path / "ours.db", models=oj)
    save_all(ours, oj, sessions, outcomes)
    expected = ours.list_sessions()
    ours.close()
    theirs = original_class(tmp_path / "ours.db")
    try:
        assert theirs.list_sessions() == expected
        for session in sessions:
            assert theirs.list_outcomes(session.id) == outcomes[session.id]
    finally:
        theirs.close()


# -- OpenJarvis's orchestrator on SessionStoreClient -----------------------------------------


def snapshot(oj: ModuleType, score: float) -> Any:
    return oj.BenchmarkSnapshot(
        benchmark_version="personal_v1",
        overall_score=score,
        cluster_scores={"c1": score},
        task_count=10,
        elapsed_seconds=5.0,
    )


def scorer(oj: ModuleType, scores: list[float]) -> Callable[..., Any]:
    """The benchmark: before, at the gate, after (each call takes the next score)."""
    remaining = iter(scores)
    return lambda **kw: snapshot(oj, next(remaining))


def teacher() -> MagicMock:
    """The teacher engine as OpenJarvis's test_orchestrator.py mocks it: one plan, one edit."""
    engine = MagicMock()
    engine.generate.return_value = {
        "content": json.dumps(
            {
                "edits": [
                    {
                        "id": "edit-001",
                        "pillar": "intelligence",
                        "op": "set_model_for_query_class",
                        "target": "routing.math",
                        "payload": {"query_class": "math", "model": "qwen2.5-coder:14b"},
                        "rationale": "Route math to bigger model",
                        "expected_improvement": "c1",
                        "risk_tier": "auto",
                        "references": ["t1"],
                    }
                ]
            }
        ),
        "usage": {"total_tokens": 500},
        "cost_usd": 0.03,
        "finish_reason": "stop",
    }
    return engine


def run_orchestrator(
    home: Path, client: SessionStoreClient, *, traces: int, scores: list[float]
) -> Any:
    """One ``SpecSearchOrchestrator.run`` with OpenJarvis's mocks and our client as its store."""
    oj = upstream.models()
    orchestrator = upstream.module("orchestrator")
    runner = upstream.module("diagnose.runner")
    triggers = upstream.module("triggers")
    orch = orchestrator.SpecSearchOrchestrator(
        teacher_engine=teacher(),
        teacher_model="claude-opus-4-6",
        trace_store=MagicMock(count=MagicMock(return_value=traces)),
        benchmark_samples=[],
        student_runner=MagicMock(),
        judge=MagicMock(),
        session_store=client,
        checkpoint_store=MagicMock(
            current_sha=MagicMock(return_value="abc123"),
            begin_stage=MagicMock(return_value=MagicMock(pre_stage_sha="abc123")),
        ),
        openjarvis_home=home,
        autonomy_mode=oj.AutonomyMode.AUTO,
        scorer=scorer(oj, scores),
        benchmark_version="personal_v1",
    )
    with patch(f"{upstream.PACKAGE}.orchestrator.DiagnosisRunner") as diagnosis:
        diagnosis.return_value.run.return_value = runner.DiagnosisResult(
            diagnosis_md="## Diagnosis\nMath routing is broken.",
            clusters=[
                oj.FailureCluster(
                    id="c1",
                    description="Math routing",
                    sample_trace_ids=["t1", "t2", "t3"],
                    student_failure_rate=0.8,
                    teacher_success_rate=0.95,
                    skill_gap="needs CoT",
                )
            ],
            cost_usd=0.05,
            tool_call_records=[],
        )
        return orch.run(triggers.OnDemandTrigger())


def cli(daemon: Daemon, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "sessionstore", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "OPENJARVIS_HOME": str(daemon.learning_root.parent),
            "SESSIONSTORE_CONFIG": "",
        },
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


NOTHING_TO_FIX = (
    "inserted",
    "updated",
    "outcomes_added",
    "outcomes_corrected",
    "placeholders_upgraded",
)


@pytest.fixture
def quiet_daemon(daemon_factory: Callable[..., Daemon]) -> Iterator[Daemon]:
    yield daemon_factory(extra_env=QUIET_JOBS).start()


def test_the_orchestrator_runs_unchanged_on_the_client(quiet_daemon: Daemon) -> None:
    oj = upstream.models()
    home = quiet_daemon.learning_root.parent
    client = SessionStoreClient(quiet_daemon.address, timeout=20, models=oj)
    try:
        applied = run_orchestrator(home, client, traces=30, scores=[0.6, 0.7, 0.7])
        rejected = run_orchestrator(home, client, traces=30, scores=[0.6, 0.5, 0.5])
        cold = run_orchestrator(home, client, traces=5, scores=[])
        runs = [applied, rejected, cold]

        # What OpenJarvis's code saw: no failed save, each run ended as it should.
        assert (applied.status, rejected.status, cold.status) == (
            oj.SessionStatus.COMPLETED,
            oj.SessionStatus.COMPLETED,
            oj.SessionStatus.FAILED,
        )
        assert [o.status for o in applied.edit_outcomes] == ["applied"]
        assert [o.status for o in rejected.edit_outcomes] == ["rejected_by_gate"]
        assert "regression" in (rejected.edit_outcomes[0].error or "")
        assert "not enough traces" in (cold.error or "").lower()
        files = {
            p.parent.name for p in (quiet_daemon.learning_root / "sessions").glob("*/session.json")
        }
        assert files == {applied.id, rejected.id}  # a cold start writes no session.json

        # The index holds each session as the run returned it; outcomes reach it from
        # session.json (the orchestrator never calls save_outcome).
        for run in runs:
            assert client.get_session(run.id) == run.model_copy(update={"edit_outcomes": []})
        preview = cli(quiet_daemon, "reconcile", "--dry-run", "--address", quiet_daemon.address)
        assert (preview["inserted"], preview["outcomes_added"], preview["invalid"]) == (0, 2, [])

        client.reconcile()
        check = cli(quiet_daemon, "reconcile", "--dry-run", "--address", quiet_daemon.address)
        assert {key: check[key] for key in NOTHING_TO_FIX} == dict.fromkeys(NOTHING_TO_FIX, 0)
        assert (check["invalid"], check["index_only"]) == ([], 1)
        for run in runs:
            assert client.get_session(run.id) == run  # outcomes and all, as OpenJarvis classes
        before = client.list_sessions()
    finally:
        client.close()

    assert quiet_daemon.stop() == 0
    rebuilt = cli(quiet_daemon, "rebuild")
    assert (rebuilt["inserted"], rebuilt["index_only_kept"], rebuilt["invalid"]) == (2, 1, [])
    store = SessionStore(quiet_daemon.db_path, readonly=True, models=oj)
    try:
        assert store.list_sessions() == before
    finally:
        store.close()
