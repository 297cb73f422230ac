"""The models accept OpenJarvis's session.json / plan.json unchanged and write the same shape."""

from __future__ import annotations

import copy
import json
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from sessionstore.models import (
    AutonomyMode,
    BenchmarkSnapshot,
    Edit,
    EditOp,
    EditOutcome,
    EditPillar,
    EditRiskTier,
    FailureCluster,
    LearningPlan,
    LearningSession,
    OutcomeStatus,
    SessionStatus,
    TriggerKind,
)

SESSION_JSON: dict[str, Any] = {
    "id": "20260301T120000-7f3a",
    "parent_session_id": "20260228T030000-11c2",
    "trigger": "cluster",
    "trigger_metadata": {
        "cluster_id": "fc-math-word-problems",
        "trace_ids": ["tr-1", "tr-2", "tr-3"],
        "threshold": 0.35,
        "nested": {"window_hours": 24, "enabled": True, "note": None},
    },
    "status": "completed",
    "autonomy_mode": "tiered",
    "started_at": "2026-03-01T12:00:00Z",
    "ended_at": "2026-03-01T12:41:17.250000Z",
    "diagnosis_path": "/home/u/.openjarvis/learning/sessions/20260301T120000-7f3a/diagnosis.md",
    "plan_path": "/home/u/.openjarvis/learning/sessions/20260301T120000-7f3a/plan.json",
    "benchmark_before": {
        "benchmark_version": "personal-bench-2026.02",
        "overall_score": 0.612,
        "cluster_scores": {"math": 0.41, "code": 0.77, "tool_use": 0.66},
        "task_count": 150,
        "elapsed_seconds": 812.4,
    },
    "benchmark_after": {
        "benchmark_version": "personal-bench-2026.02",
        "overall_score": 0.655,
        "cluster_scores": {"math": 0.52, "code": 0.78, "tool_use": 0.66},
        "task_count": 150,
        "elapsed_seconds": 790.0,
    },
    "edit_outcomes": [
        {
            "edit_id": "e1",
            "status": "applied",
            "benchmark_delta": 0.043,
            "cluster_deltas": {"math": 0.11, "code": 0.01},
            "error": None,
            "applied_at": "2026-03-01T12:30:05Z",
        },
        {
            "edit_id": "e2",
            "status": "rejected_by_gate",
            "benchmark_delta": -0.012,
            "cluster_deltas": {"code": -0.03},
            "error": "regression on cluster code",
            "applied_at": None,
        },
        {
            "edit_id": "e3",
            "status": "pending_review",
            "benchmark_delta": None,
            "cluster_deltas": {},
            "error": None,
            "applied_at": None,
        },
    ],
    "git_checkpoint_pre": "3f9c2d1e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e",
    "git_checkpoint_post": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
    "teacher_cost_usd": 1.87,
    "error": None,
}

PLAN_JSON: dict[str, Any] = {
    "session_id": "20260301T120000-7f3a",
    "diagnosis_summary": "The student fails multi-step arithmetic word problems.",
    "failure_clusters": [
        {
            "id": "fc-math-word-problems",
            "description": "Multi-step word problems with unit conversion",
            "sample_trace_ids": ["tr-1", "tr-2"],
            "student_failure_rate": 0.58,
            "teacher_success_rate": 0.94,
            "skill_gap": "does not decompose the problem before computing",
            "addressed_by_edit_ids": ["e1", "e3"],
        }
    ],
    "edits": [
        {
            "id": "e1",
            "pillar": "agent",
            "op": "patch_system_prompt",
            "target": "agents.simple.system_prompt",
            "payload": {"append": "Break the problem into steps first.", "position": -1},
            "rationale": "Teacher traces always decompose first.",
            "expected_improvement": "+10% on math cluster",
            "risk_tier": "auto",
            "references": ["tr-1", "tr-2"],
        },
        {
            "id": "e2",
            "pillar": "intelligence",
            "op": "set_model_for_query_class",
            "target": "intelligence.routing.math",
            "payload": {"model": "qwen3:8b"},
            "rationale": "Larger model for math queries.",
            "expected_improvement": "+5% on math cluster",
            "risk_tier": "review",
            "references": [],
        },
        {
            "id": "e3",
            "pillar": "tools",
            "op": "add_tool_to_agent",
            "target": "agents.simple.tools",
            "payload": {"tool": "calculator"},
            "rationale": "Arithmetic slips account for a third of failures.",
            "expected_improvement": "fewer arithmetic errors",
            "risk_tier": "manual",
            "references": ["tr-3"],
        },
    ],
    "teacher_model": "claude-opus-4",
    "estimated_cost_usd": 2.5,
    "created_at": "2026-03-01T12:05:00Z",
}


def _key_tree(value: Any) -> Any:
    """The nested key structure of a JSON value (dict keys and list shapes, not scalars)."""
    if isinstance(value, dict):
        return {key: _key_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_key_tree(item) for item in value]
    return None


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the dotted ``path`` (list indexes as digits) set to value."""
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    target: Any = data
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return data


# -- OpenJarvis files load unchanged and dump back to the same shape --------------


@pytest.mark.parametrize(
    ("model", "document"),
    [(LearningSession, SESSION_JSON), (LearningPlan, PLAN_JSON)],
    ids=["session.json", "plan.json"],
)
def test_openjarvis_file_dumps_back_to_the_same_keys(
    model: type[BaseModel], document: dict[str, Any]
) -> None:
    loaded = model.model_validate_json(json.dumps(document))
    dumped = json.loads(loaded.model_dump_json())
    assert _key_tree(dumped) == _key_tree(document)


@pytest.mark.parametrize(
    ("model", "document"),
    [(LearningSession, SESSION_JSON), (LearningPlan, PLAN_JSON)],
    ids=["session.json", "plan.json"],
)
def test_openjarvis_file_round_trips_to_an_equal_model(
    model: type[BaseModel], document: dict[str, Any]
) -> None:
    loaded = model.model_validate_json(json.dumps(document))
    again = model.model_validate_json(loaded.model_dump_json())
    assert again == loaded
    # and the written JSON is the input itself: UTC stays "Z", paths stay strings
    assert json.loads(loaded.model_dump_json()) == document


def test_session_json_values_are_typed_on_load() -> None:
    session = LearningSession.model_validate(SESSION_JSON)
    assert session.trigger is TriggerKind.CLUSTER
    assert session.status is SessionStatus.COMPLETED
    assert session.autonomy_mode is AutonomyMode.TIERED
    assert session.started_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert session.started_at.utcoffset() is not None
    assert isinstance(session.diagnosis_path, Path)
    assert isinstance(session.benchmark_after, BenchmarkSnapshot)
    assert [o.status for o in session.edit_outcomes] == [
        "applied",
        "rejected_by_gate",
        "pending_review",
    ]
    assert session.trigger_metadata["nested"] == {
        "window_hours": 24,
        "enabled": True,
        "note": None,
    }


def test_plan_json_edits_and_clusters_are_typed_on_load() -> None:
    plan = LearningPlan.model_validate(PLAN_JSON)
    assert isinstance(plan.failure_clusters[0], FailureCluster)
    assert [e.pillar for e in plan.edits] == [
        EditPillar.AGENT,
        EditPillar.INTELLIGENCE,
        EditPillar.TOOLS,
    ]
    assert plan.edits[0].op is EditOp.PATCH_SYSTEM_PROMPT
    assert plan.edits[2].risk_tier is EditRiskTier.MANUAL


# -- defaults ----------------------------------------------------------------------


def test_optional_fields_default_as_documented() -> None:
    minimal = {
        key: SESSION_JSON[key]
        for key in (
            "id",
            "trigger",
            "status",
            "autonomy_mode",
            "started_at",
            "diagnosis_path",
            "plan_path",
            "git_checkpoint_pre",
            "teacher_cost_usd",
        )
    }
    minimal["benchmark_before"] = {
        "benchmark_version": "v1",
        "overall_score": 0.5,
        "task_count": 3,
        "elapsed_seconds": 1.0,
    }
    session = LearningSession.model_validate(minimal)
    assert session.parent_session_id is None
    assert session.trigger_metadata == {}
    assert session.ended_at is None
    assert session.benchmark_after is None
    assert session.edit_outcomes == []
    assert session.git_checkpoint_post is None
    assert session.error is None
    assert session.benchmark_before.cluster_scores == {}

    outcome = EditOutcome(edit_id="e1", status="skipped")
    assert outcome.benchmark_delta is None
    assert outcome.cluster_deltas == {}
    assert outcome.error is None
    assert outcome.applied_at is None

    edit = Edit(
        id="e1",
        pillar="engine",
        op="lora_finetune",
        target="engine.adapter",
        rationale="r",
        expected_improvement="x",
        risk_tier="manual",
    )
    assert edit.payload == {}
    assert edit.references == []

    cluster = FailureCluster(
        id="c",
        description="d",
        student_failure_rate=0.0,
        teacher_success_rate=1.0,
        skill_gap="g",
    )
    assert cluster.sample_trace_ids == []
    assert cluster.addressed_by_edit_ids == []

    plan = LearningPlan(
        session_id="s",
        diagnosis_summary="d",
        teacher_model="t",
        estimated_cost_usd=0.0,
        created_at="2026-03-01T12:00:00Z",
    )
    assert plan.failure_clusters == []
    assert plan.edits == []


def test_default_containers_are_not_shared_between_instances() -> None:
    a = EditOutcome(edit_id="a", status="applied")
    b = EditOutcome(edit_id="b", status="applied")
    a.cluster_deltas["math"] = 1.0
    assert b.cluster_deltas == {}


# -- every constraint is enforced ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("benchmark_before.overall_score", -0.01),
        ("benchmark_before.overall_score", 1.01),
        ("benchmark_after.overall_score", 2.0),
        ("benchmark_before.task_count", -1),
        ("benchmark_before.elapsed_seconds", -0.5),
        ("teacher_cost_usd", -0.01),
        ("trigger", "cron"),
        ("status", "done"),
        ("autonomy_mode", "yolo"),
        ("edit_outcomes.0.status", "accepted"),
        ("edit_outcomes.1.status", "APPLIED"),
        ("started_at", "not a date"),
        ("benchmark_before.task_count", 1.5),
        ("edit_outcomes.0.cluster_deltas", {"math": "high"}),
    ],
)
def test_session_constraint_violation_is_rejected(path: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        LearningSession.model_validate(_with(SESSION_JSON, path, value))
    locations = {".".join(str(p) for p in err["loc"]) for err in info.value.errors()}
    assert any(loc.startswith(path) for loc in locations), locations


@pytest.mark.parametrize(
    "missing",
    [
        "id",
        "trigger",
        "status",
        "autonomy_mode",
        "started_at",
        "diagnosis_path",
        "plan_path",
        "benchmark_before",
        "git_checkpoint_pre",
        "teacher_cost_usd",
    ],
)
def test_session_without_required_field_is_rejected(missing: str) -> None:
    data = copy.deepcopy(SESSION_JSON)
    del data[missing]
    with pytest.raises(ValidationError, match=missing):
        LearningSession.model_validate(data)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("estimated_cost_usd", -1.0),
        ("failure_clusters.0.student_failure_rate", 1.5),
        ("failure_clusters.0.student_failure_rate", -0.1),
        ("failure_clusters.0.teacher_success_rate", 1.01),
        ("failure_clusters.0.teacher_success_rate", -1.0),
        ("edits.0.pillar", "memory"),
        ("edits.0.op", "delete_everything"),
        ("edits.0.risk_tier", "low"),
        ("created_at", "yesterday"),
    ],
)
def test_plan_constraint_violation_is_rejected(path: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        LearningPlan.model_validate(_with(PLAN_JSON, path, value))
    locations = {".".join(str(p) for p in err["loc"]) for err in info.value.errors()}
    assert any(loc.startswith(path) for loc in locations), locations


@pytest.mark.parametrize("score", [0.0, 1.0])
def test_overall_score_bounds_are_inclusive(score: float) -> None:
    snap = BenchmarkSnapshot(
        benchmark_version="v", overall_score=score, task_count=0, elapsed_seconds=0.0
    )
    assert snap.overall_score == score


# -- enum values are exactly OpenJarvis's -------------------------------------------


@pytest.mark.parametrize(
    ("enum", "values"),
    [
        (EditPillar, {"intelligence", "agent", "tools", "engine"}),
        (EditRiskTier, {"auto", "review", "manual"}),
        (
            EditOp,
            {
                "set_model_for_query_class",
                "set_model_param",
                "patch_system_prompt",
                "replace_system_prompt",
                "set_agent_class",
                "set_agent_param",
                "edit_few_shot_exemplars",
                "add_tool_to_agent",
                "remove_tool_from_agent",
                "edit_tool_description",
                "lora_finetune",
            },
        ),
        (TriggerKind, {"scheduled", "cluster", "user_flag", "on_demand"}),
        (AutonomyMode, {"auto", "tiered", "manual"}),
        (
            SessionStatus,
            {
                "initiated",
                "diagnosing",
                "planning",
                "executing",
                "awaiting_review",
                "completed",
                "failed",
                "rolled_back",
            },
        ),
    ],
    ids=lambda p: p.__name__ if isinstance(p, type) else "",
)
def test_enum_values_match_openjarvis(enum: type, values: set[str]) -> None:
    members = list(enum)  # type: ignore[call-overload]
    assert {m.value for m in members} == values
    assert len(members) == len(values)
    assert all(isinstance(m, str) for m in members)  # str enums: JSON writes the bare value


def test_outcome_status_literal_matches_openjarvis() -> None:
    assert set(typing.get_args(OutcomeStatus)) == {
        "applied",
        "rejected_by_gate",
        "pending_review",
        "rejected_by_user",
        "rolled_back",
        "skipped",
    }
