"""A session's ``plan.json``: the Edit fields of each outcome row reconcile writes.

An outcome in ``session.json`` names only its ``edit_id``; the Edit fields its row
needs (pillar, op, target, risk_tier, rationale) come from the sibling
``plan.json`` (never from ``plan_path``, which could point anywhere). When that
file is missing, invalid or lacks the edit, the outcome is written with a
**placeholder**: ``pillar='engine'``, ``op='set_model_param'``,
``risk_tier='manual'``, ``target='sessionstore:unknown-edit'`` (the marker to
query for: ``WHERE target = 'sessionstore:unknown-edit'``) and a rationale saying
why. The index only accepts real enum values, so the marker lives in ``target``;
``manual`` because a person should look at such a row.

Nothing here reports: a plan.json that cannot be used comes back as a one-line
reason (:attr:`PlanEdits.problem`) for reconcile to report with its other files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from sessionstore.errors import shorten
from sessionstore.filereading import (
    MAX_FILE_BYTES,
    SESSIONS_DIR,
    FileState,
    UnusableFile,
    locate,
    parse_json,
    read_bytes,
    settled,
)
from sessionstore.inputs import describe_validation_error
from sessionstore.models import LearningPlan
from sessionstore.records import OutcomeEdit

PLAN_FILE = "plan.json"
PLACEHOLDER_TARGET = "sessionstore:unknown-edit"


def placeholder_edit(why: str) -> OutcomeEdit:
    """The Edit fields for an outcome whose edit is not in a readable plan.json."""
    return OutcomeEdit(
        pillar="engine",
        op="set_model_param",
        target=PLACEHOLDER_TARGET,
        risk_tier="manual",
        rationale=f"reconcile placeholder: {why}",
    )


PLACEHOLDER = placeholder_edit("")
"""What marks a placeholder row: these pillar, op, target and risk_tier (any rationale)."""


@dataclass(slots=True)
class PlanEdits:
    """What a sibling plan.json offers: edits by id, and why an absent one gets a placeholder."""

    edits: dict[str, OutcomeEdit]
    why: str
    state: FileState | None = None
    """The file's, when it was found and has settled: recorded if placeholders remain."""
    problem: str | None = None
    """Why the plan.json found could not be used, for the caller to report."""


def outcome_edit(plan: PlanEdits, edit_id: str) -> tuple[OutcomeEdit, bool]:
    """The Edit fields for outcome ``edit_id``: the plan's, or a placeholder saying why (True)."""
    edit = plan.edits.get(edit_id)
    if edit is None:
        return placeholder_edit(plan.why or f"edit {shorten(edit_id)} not in plan.json"), True
    return edit, False


def plan_rel(name: str) -> str:
    """Session ``name``'s plan.json, relative to the learning root (as file states are)."""
    return f"{SESSIONS_DIR}/{name}/{PLAN_FILE}"


def read_plan(
    sessions: Path, real_sessions: str, name: str, max_bytes: int = MAX_FILE_BYTES
) -> PlanEdits:
    """Session ``name``'s plan.json edits by id, and why an absent edit gets a placeholder.

    Its state is the stat taken before reading: if the file changes in between, the
    recorded state is the older one and the next pass reads it again.
    """
    invalid = "plan.json is invalid"
    try:
        path, st = locate(sessions / name / PLAN_FILE, real_sessions)
    except FileNotFoundError:
        return PlanEdits({}, "no plan.json")
    except UnusableFile as err:
        return PlanEdits({}, invalid, problem=str(err))
    state = (plan_rel(name), st.st_size, st.st_mtime_ns, name) if settled(st) else None
    try:
        plan = LearningPlan.model_validate(parse_json(read_bytes(path, max_bytes)[0]))
        if plan.session_id != name:
            raise UnusableFile(
                f"session_id {shorten(plan.session_id)} does not match directory {shorten(name)}"
            )
    except ValidationError as err:
        return PlanEdits({}, invalid, state, describe_validation_error("not a valid plan", err))
    except UnusableFile as err:
        return PlanEdits({}, invalid, state, str(err))
    return PlanEdits(_edits_by_id(plan), "", state)


def plan_changed(
    sessions: Path, real_sessions: str, name: str, states: Mapping[str, tuple[int, int]]
) -> bool:
    """Whether session ``name``'s plan.json is unlike the one last read (``states``).

    One stat, asked only for sessions with placeholder rows: how an incremental pass
    notices that plan.json gained the missing edits while session.json (and its
    recorded state) did not change.
    """
    try:
        _, st = locate(sessions / name / PLAN_FILE, real_sessions)
    except FileNotFoundError:
        return False  # nothing to take the edits from
    except UnusableFile:
        return True  # parsed again, so the plan.json is reported again
    return states.get(plan_rel(name)) != (st.st_size, st.st_mtime_ns)


def _edits_by_id(plan: LearningPlan) -> dict[str, OutcomeEdit]:
    """Each edit's outcome fields; the first edit wins when an id repeats."""
    edits: dict[str, OutcomeEdit] = {}
    for edit in plan.edits:
        edits.setdefault(
            edit.id,
            OutcomeEdit(
                edit.pillar.value,
                edit.op.value,
                edit.target,
                edit.risk_tier.value,
                edit.rationale,
            ),
        )
    return edits


__all__ = [
    "PLACEHOLDER",
    "PLACEHOLDER_TARGET",
    "PLAN_FILE",
    "PlanEdits",
    "outcome_edit",
    "placeholder_edit",
    "plan_changed",
    "plan_rel",
    "read_plan",
]
