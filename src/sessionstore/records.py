"""Conversions between the models and index rows, and validation at the library edge.

The row shape is the original library's: enums as their values, datetimes as
``isoformat()`` strings, nested objects as JSON text, paths as strings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sessionstore.errors import InvalidRecord
from sessionstore.models import (
    BenchmarkSnapshot,
    EditOp,
    EditOutcome,
    EditPillar,
    EditRiskTier,
    LearningSession,
)

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class OutcomeEdit:
    """The parent Edit's fields an outcome row carries (they are not on EditOutcome)."""

    pillar: str
    op: str
    target: str
    risk_tier: str
    rationale: str = ""


def describe_validation_error(what: str, err: ValidationError) -> str:
    """One line naming each failing field: ``session 'x': teacher_cost_usd: ...``."""
    parts = []
    for item in err.errors()[:5]:
        location = ".".join(str(p) for p in item["loc"]) or "(record)"
        parts.append(f"{location}: {item['msg']}")
    more = f" (+{err.error_count() - 5} more)" if err.error_count() > 5 else ""
    return f"{what}: " + "; ".join(parts) + more


def checked(model: type[M], value: object, what: str) -> M:
    """Validate ``value`` (a model instance or a mapping) as ``model``, re-checking instances.

    Instances are re-validated because pydantic does not validate assignment: a
    session mutated after construction could otherwise carry a bad value into the index.
    """
    if isinstance(value, BaseModel) and not isinstance(value, model):
        raise InvalidRecord(f"{what}: expected {model.__name__}, got {type(value).__name__}")
    if isinstance(value, model):
        value = value.model_dump()
    elif not isinstance(value, dict):
        raise InvalidRecord(f"{what}: expected {model.__name__}, got {type(value).__name__}")
    try:
        return model.model_validate(value)
    except ValidationError as err:
        raise InvalidRecord(describe_validation_error(what, err)) from err


def _enum_value(enum: type[Enum], value: object, field: str) -> str:
    raw = value.value if isinstance(value, Enum) else value
    if not isinstance(raw, str):
        raise InvalidRecord(f"{field}: expected a string, got {type(value).__name__}")
    try:
        return str(enum(raw).value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)  # type: ignore[attr-defined]
        raise InvalidRecord(f"{field}: {raw!r} is not one of {allowed}") from None


def checked_edit(
    pillar: object, op: object, target: object, risk_tier: object, rationale: object
) -> OutcomeEdit:
    """Validate the Edit fields passed to ``save_outcome`` (the original stored any string)."""
    for name, value in (("target", target), ("rationale", rationale)):
        if not isinstance(value, str):
            raise InvalidRecord(f"{name}: expected a string, got {type(value).__name__}")
    return OutcomeEdit(
        pillar=_enum_value(EditPillar, pillar, "pillar"),
        op=_enum_value(EditOp, op, "op"),
        target=str(target),
        risk_tier=_enum_value(EditRiskTier, risk_tier, "risk_tier"),
        rationale=str(rationale),
    )


def checked_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"{field}: expected a non-empty string, got {value!r:.60}")
    return value


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def session_row(session: LearningSession) -> tuple[Any, ...]:
    return (
        session.id,
        session.parent_session_id,
        session.trigger.value,
        json.dumps(session.trigger_metadata),
        session.status.value,
        session.autonomy_mode.value,
        session.started_at.isoformat(),
        _iso(session.ended_at),
        str(session.diagnosis_path),
        str(session.plan_path),
        session.benchmark_before.model_dump_json(),
        session.benchmark_after.model_dump_json() if session.benchmark_after else None,
        session.git_checkpoint_pre,
        session.git_checkpoint_post,
        session.teacher_cost_usd,
        session.error,
    )


def outcome_row(session_id: str, outcome: EditOutcome, edit: OutcomeEdit) -> tuple[Any, ...]:
    return (
        session_id,
        outcome.edit_id,
        edit.pillar,
        edit.op,
        edit.target,
        edit.risk_tier,
        outcome.status,
        outcome.benchmark_delta,
        json.dumps(outcome.cluster_deltas),
        edit.rationale,
        outcome.error,
        _iso(outcome.applied_at),
    )


def session_from_row(row: Sequence[Any], outcomes: list[EditOutcome]) -> LearningSession:
    """Rebuild a session from its row; a row that does not validate names its id."""
    try:
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
    except (ValidationError, ValueError) as err:
        raise InvalidRecord(
            f"index row for session {row[0]!r} is not a valid session: {err}"
        ) from err


def outcome_from_row(row: Sequence[Any]) -> EditOutcome:
    """``row`` is (edit_id, status, benchmark_delta, cluster_deltas, error, applied_at)."""
    try:
        return EditOutcome(
            edit_id=row[0],
            status=row[1],
            benchmark_delta=row[2],
            cluster_deltas=json.loads(row[3]),
            error=row[4],
            applied_at=row[5],
        )
    except (ValidationError, ValueError) as err:
        raise InvalidRecord(
            f"index row for outcome {row[0]!r} is not a valid outcome: {err}"
        ) from err
