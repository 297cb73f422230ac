"""The records ``sessionstore bench`` writes: sessions, outcomes, and session.json trees.

Shaped like a real distillation run's (a few cluster scores, an ISO timestamp, a
rationale), so the bytes per save on the wire and in the index are realistic.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sessionstore.models import (
    AutonomyMode,
    BenchmarkSnapshot,
    Edit,
    EditOp,
    EditOutcome,
    EditPillar,
    EditRiskTier,
    LearningPlan,
    LearningSession,
    SessionStatus,
    TriggerKind,
)
from sessionstore.records import OutcomeEdit

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
EDIT = OutcomeEdit(
    pillar="agent",
    op="patch_system_prompt",
    target="agents.simple.system_prompt",
    risk_tier="auto",
    rationale="teacher traces decompose the problem first",
)
"""The Edit fields every benchmark outcome carries."""
OUTCOMES_PER_FILE = 3
"""Outcomes in each generated session.json (and edits in its plan.json)."""
_SETTLED_AGE_NS = 3600 * 10**9


def writer_session_id(scenario: str, index: int) -> str:
    return f"bench-{scenario}-w{index:03d}"


def session(session_id: str, n: int = 0) -> LearningSession:
    started = BASE_TIME + timedelta(minutes=n)
    return LearningSession(
        id=session_id,
        trigger=TriggerKind.SCHEDULED,
        trigger_metadata={"cron": "0 3 * * *", "run": n},
        status=SessionStatus.EXECUTING,
        autonomy_mode=AutonomyMode.TIERED,
        started_at=started,
        diagnosis_path=Path(f"sessions/{session_id}/diagnosis.md"),
        plan_path=Path(f"sessions/{session_id}/plan.json"),
        benchmark_before=BenchmarkSnapshot(
            benchmark_version="bench-v1",
            overall_score=0.6,
            cluster_scores={"math": 0.5, "code": 0.7},
            task_count=100,
            elapsed_seconds=30.0,
        ),
        git_checkpoint_pre=f"{n:040x}",
        teacher_cost_usd=0.5,
    )


def outcome(edit_id: str, n: int = 0, model: type[EditOutcome] = EditOutcome) -> EditOutcome:
    """An outcome as a caller builds it; ``model``: OpenJarvis's class for the original's row."""
    return model(
        edit_id=edit_id,
        status="applied",
        benchmark_delta=0.001 * (n % 100),
        cluster_deltas={"math": 0.01, "code": -0.002},
        applied_at=BASE_TIME + timedelta(seconds=n),
    )


def edit_id(session_id: str, n: int) -> str:
    return f"{session_id}-e{n:07d}"


def write_session_files(learning_root: Path, count: int, prefix: str = "reconcile") -> int:
    """Write ``count`` valid ``sessions/<id>/session.json`` + ``plan.json`` pairs.

    Their mtime is an hour old, as a finished run's files would be, so reconcile
    records their state. Returns the number of outcomes the files hold in all.
    """
    sessions_dir = learning_root / "sessions"
    mtime_ns = time.time_ns() - _SETTLED_AGE_NS
    for n in range(count):
        sid = f"{prefix}-{n:06d}"
        folder = sessions_dir / sid
        folder.mkdir(parents=True, exist_ok=True)
        ids = [f"e{k}" for k in range(OUTCOMES_PER_FILE)]
        full = session(sid, n).model_copy(
            update={
                "status": SessionStatus.COMPLETED,
                "ended_at": BASE_TIME + timedelta(minutes=n, seconds=40),
                "edit_outcomes": [outcome(e, k) for k, e in enumerate(ids)],
            }
        )
        plan = LearningPlan(
            session_id=sid,
            diagnosis_summary="math cluster fails on unit conversions",
            edits=[
                Edit(
                    id=e,
                    pillar=EditPillar.AGENT,
                    op=EditOp.PATCH_SYSTEM_PROMPT,
                    target="agents.simple.system_prompt",
                    payload={"value": k},
                    rationale=f"why {e}",
                    expected_improvement="+2% on math",
                    risk_tier=EditRiskTier.AUTO,
                )
                for k, e in enumerate(ids)
            ],
            teacher_model="teacher-large",
            estimated_cost_usd=2.0,
            created_at=BASE_TIME + timedelta(minutes=n, seconds=1),
        )
        for name, model in (("plan.json", plan), ("session.json", full)):
            path = folder / name
            path.write_text(json.dumps(model.model_dump(mode="json"), indent=2), encoding="utf-8")
            os.utime(path, ns=(mtime_ns, mtime_ns))
    return count * OUTCOMES_PER_FILE
