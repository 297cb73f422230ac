"""Build real learning-root trees: session.json and plan.json files as OpenJarvis writes them.

The dicts follow ``shared/MODELS.md``; files are written with ``json.dumps`` and,
by default, an mtime an hour in the past so reconcile treats them as settled.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

OLD_MTIME_NS = time.time_ns() - 3600 * 10**9
"""An mtime old enough that reconcile records the file's state."""

EDIT_SHAPES = [
    ("intelligence", "set_model_param", "models.default.temperature", "auto"),
    ("agent", "patch_system_prompt", "agents.simple.system_prompt", "review"),
    ("tools", "add_tool_to_agent", "agents.simple.tools", "manual"),
]


def outcome_dict(edit_id: str, status: str = "applied", **overrides: Any) -> dict[str, Any]:
    outcome: dict[str, Any] = {
        "edit_id": edit_id,
        "status": status,
        "benchmark_delta": 0.02,
        "cluster_deltas": {"math": 0.1},
        "error": None,
        "applied_at": "2025-03-01T12:05:00+00:00",
    }
    outcome.update(overrides)
    return outcome


def session_dict(
    session_id: str,
    *,
    parent: str | None = None,
    status: str = "completed",
    outcomes: Iterable[str] = ("e1", "e2"),
    **overrides: Any,
) -> dict[str, Any]:
    """A valid LearningSession as JSON-ready data; ``outcomes`` are edit ids."""
    session: dict[str, Any] = {
        "id": session_id,
        "parent_session_id": parent,
        "trigger": "scheduled",
        "trigger_metadata": {"cron": "0 3 * * *", "attempt": 1},
        "status": status,
        "autonomy_mode": "tiered",
        "started_at": "2025-03-01T12:00:00+00:00",
        "ended_at": "2025-03-01T12:30:00+00:00",
        "diagnosis_path": f"sessions/{session_id}/diagnosis.md",
        "plan_path": f"sessions/{session_id}/plan.json",
        "benchmark_before": {
            "benchmark_version": "v3",
            "overall_score": 0.61,
            "cluster_scores": {"math": 0.5, "code": 0.7},
            "task_count": 120,
            "elapsed_seconds": 88.5,
        },
        "benchmark_after": {
            "benchmark_version": "v3",
            "overall_score": 0.64,
            "cluster_scores": {},
            "task_count": 120,
            "elapsed_seconds": 90.0,
        },
        "edit_outcomes": [outcome_dict(edit_id) for edit_id in outcomes],
        "git_checkpoint_pre": "a1b2c3d",
        "git_checkpoint_post": "d4e5f6a",
        "teacher_cost_usd": 1.25,
        "error": None,
    }
    session.update(overrides)
    return session


def edit_dict(edit_id: str, index: int = 0) -> dict[str, Any]:
    pillar, op, target, risk_tier = EDIT_SHAPES[index % len(EDIT_SHAPES)]
    return {
        "id": edit_id,
        "pillar": pillar,
        "op": op,
        "target": target,
        "payload": {"value": index},
        "rationale": f"why {edit_id}",
        "expected_improvement": "+2% on math",
        "risk_tier": risk_tier,
        "references": [],
    }


def plan_dict(session_id: str, edit_ids: Iterable[str] = ("e1", "e2")) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "diagnosis_summary": "math cluster fails on units",
        "failure_clusters": [
            {
                "id": "c1",
                "description": "unit conversions",
                "sample_trace_ids": ["t1"],
                "student_failure_rate": 0.4,
                "teacher_success_rate": 0.9,
                "skill_gap": "units",
                "addressed_by_edit_ids": list(edit_ids),
            }
        ],
        "edits": [edit_dict(edit_id, i) for i, edit_id in enumerate(edit_ids)],
        "teacher_model": "teacher-large",
        "estimated_cost_usd": 2.0,
        "created_at": "2025-03-01T12:01:00+00:00",
    }


def write_file(path: Path, content: Mapping[str, Any] | bytes | str, mtime_ns: int | None) -> Path:
    """Write JSON (a dict), text or raw bytes; set the mtime (None: leave it as now)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, indent=2), encoding="utf-8")
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def write_session(
    root: Path,
    session_id: str,
    session: Mapping[str, Any] | bytes | str | None = None,
    *,
    plan: Mapping[str, Any] | bytes | str | None = None,
    mtime_ns: int | None = OLD_MTIME_NS,
    directory: str | None = None,
) -> Path:
    """Write ``sessions/<directory or id>/session.json`` (and plan.json); returns the file."""
    folder = root / "sessions" / (directory or session_id)
    folder.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        write_file(folder / "plan.json", plan, mtime_ns)
    return write_file(
        folder / "session.json",
        session if session is not None else session_dict(session_id),
        mtime_ns,
    )


def snapshot(tree: Path) -> dict[str, tuple[str, bytes | None, int]]:
    """Every entry under ``tree``: kind, bytes (files) and mtime, to prove nothing changed."""
    found: dict[str, tuple[str, bytes | None, int]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(tree))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path).encode(), st.st_mtime_ns)
            elif path.is_dir():
                found[rel] = ("dir", None, st.st_mtime_ns)
            elif path.is_file():
                found[rel] = ("file", path.read_bytes(), st.st_mtime_ns)
            else:
                found[rel] = ("other", None, st.st_mtime_ns)
    return found
