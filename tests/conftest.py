"""Shared fixtures: factories for realistic distillation records."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon

from sessionstore.models import (
    AutonomyMode,
    BenchmarkSnapshot,
    EditOutcome,
    LearningSession,
    SessionStatus,
    TriggerKind,
)

BASE_TIME = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def make_session() -> Callable[..., LearningSession]:
    """Build a valid LearningSession; every call gets a new id and a later ``started_at``.

    Keyword arguments override any field, e.g. ``make_session(status="failed")``.
    """
    counter = itertools.count(1)

    def factory(**overrides: Any) -> LearningSession:
        n = next(counter)
        session_id = overrides.pop("id", f"sess-{n:04d}")
        fields: dict[str, Any] = {
            "id": session_id,
            "parent_session_id": None,
            "trigger": TriggerKind.SCHEDULED,
            "trigger_metadata": {"cron": "0 3 * * *", "run": n},
            "status": SessionStatus.COMPLETED,
            "autonomy_mode": AutonomyMode.TIERED,
            "started_at": BASE_TIME + timedelta(minutes=n),
            "ended_at": BASE_TIME + timedelta(minutes=n, seconds=42),
            "diagnosis_path": f"/home/u/.openjarvis/learning/sessions/{session_id}/diagnosis.md",
            "plan_path": f"/home/u/.openjarvis/learning/sessions/{session_id}/plan.json",
            "benchmark_before": BenchmarkSnapshot(
                benchmark_version="bench-v3",
                overall_score=0.61,
                cluster_scores={"math": 0.5, "code": 0.72},
                task_count=120,
                elapsed_seconds=33.5,
            ),
            "benchmark_after": None,
            "edit_outcomes": [],
            "git_checkpoint_pre": f"{n:040x}",
            "git_checkpoint_post": None,
            "teacher_cost_usd": 0.25,
            "error": None,
        }
        fields.update(overrides)
        return LearningSession(**fields)

    return factory


@pytest.fixture
def make_outcome() -> Callable[..., EditOutcome]:
    """Build a valid EditOutcome; every call gets a new ``edit_id``."""
    counter = itertools.count(1)

    def factory(**overrides: Any) -> EditOutcome:
        n = next(counter)
        fields: dict[str, Any] = {
            "edit_id": f"edit-{n:03d}",
            "status": "applied",
            "benchmark_delta": 0.01 * n,
            "cluster_deltas": {"math": 0.02, "code": -0.01},
            "error": None,
            "applied_at": BASE_TIME + timedelta(hours=1, seconds=n),
        }
        fields.update(overrides)
        return EditOutcome(**fields)

    return factory


# -- daemons: real `sessionstore serve` processes, always stopped at the end ------------


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:  # type: ignore[valid-type]
    """Make daemons on a learning root under tmp_path; every one is stopped at the end."""
    made: list[Daemon] = []

    def factory(root: Path | None = None, **kwargs: object) -> Daemon:
        d = Daemon(root or tmp_path / "learning", **kwargs)  # type: ignore[arg-type]
        made.append(d)
        return d

    yield factory
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A running daemon on a fresh learning root."""
    return daemon_factory().start()


@pytest.fixture
def manual_daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A running daemon that reconciles only when asked: no pass 5 s after start.

    For tests that count what one reconcile did: on a loaded machine the start-up
    pass can run first and take the work.
    """
    return daemon_factory(extra_env={"SESSIONSTORE_RECONCILE_ON_START": "false"}).start()
