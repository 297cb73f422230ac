"""Conversions between the models and index rows.

The row shape is the original library's: enums as their values, datetimes as
``isoformat()`` strings, nested objects as JSON text, paths as strings. Rows are
read back as :data:`OURS` (``sessionstore.models``) or, for a store or client made
with ``models=``, as the caller's own classes (:func:`read_models`). What callers
may pass in is checked in :mod:`sessionstore.inputs`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import from_json

from sessionstore.errors import ConfigError, InvalidRecord, shorten
from sessionstore.models import EditOutcome, LearningSession

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ReadModels:
    """The classes reads build: a session class and an outcome class with our fields."""

    session: type[BaseModel]
    outcome: type[BaseModel]
    sessions: TypeAdapter[list[Any]]
    outcomes: TypeAdapter[list[Any]]

    @classmethod
    def of(cls, session: type[BaseModel], outcome: type[BaseModel]) -> ReadModels:
        return cls(session, outcome, TypeAdapter(list[session]), TypeAdapter(list[outcome]))  # type: ignore[valid-type]


OURS = ReadModels.of(LearningSession, EditOutcome)


def read_models(models: ModuleType | str | object | None) -> ReadModels:
    """The classes reads should return: ``models.LearningSession`` and ``models.EditOutcome``.

    ``models`` is a module (``openjarvis.learning.spec_search.models``), its dotted
    name, or any object with those two attributes; None means ours. Both classes
    must be pydantic models with exactly our fields, so a row validates into them
    the way it validates into ours, and their ``==`` holds against records the
    caller built itself.
    """
    if models is None:
        return OURS
    if isinstance(models, str):
        try:
            models = importlib.import_module(models)
        except ImportError as err:
            raise ConfigError(f"models: cannot import {models!r}: {err}") from None
    classes = []
    for name, ours in (("LearningSession", LearningSession), ("EditOutcome", EditOutcome)):
        cls = getattr(models, name, None)
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise ConfigError(f"models: {models!r:.80} has no pydantic model {name}")
        if set(cls.model_fields) != set(ours.model_fields):
            raise ConfigError(
                f"models: {cls.__module__}.{name} has other fields than ours: "
                f"{sorted(set(cls.model_fields) ^ set(ours.model_fields))}"
            )
        classes.append(cls)
    return _read_models(classes[0], classes[1])


@functools.lru_cache(maxsize=16)
def _read_models(session: type[BaseModel], outcome: type[BaseModel]) -> ReadModels:
    if (session, outcome) == (LearningSession, EditOutcome):
        return OURS
    return ReadModels.of(session, outcome)


@dataclass(frozen=True, slots=True)
class OutcomeEdit:
    """The parent Edit's fields an outcome row carries (they are not on EditOutcome)."""

    pillar: str
    op: str
    target: str
    risk_tier: str
    rationale: str = ""


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
    status, delta, cluster_deltas, error, applied_at = outcome_values(outcome)
    return (
        session_id,
        outcome.edit_id,
        edit.pillar,
        edit.op,
        edit.target,
        edit.risk_tier,
        status,
        delta,
        cluster_deltas,
        edit.rationale,
        error,
        applied_at,
    )


OUTCOME_VALUE_COLUMNS = ("status", "benchmark_delta", "cluster_deltas", "error", "applied_at")


def outcome_values(outcome: EditOutcome) -> tuple[Any, ...]:
    """The outcome's own columns (:data:`OUTCOME_VALUE_COLUMNS`), as stored."""
    return (
        outcome.status,
        outcome.benchmark_delta,
        json.dumps(outcome.cluster_deltas),
        outcome.error,
        _iso(outcome.applied_at),
    )


def json_text(text: Any) -> Any:
    """``json.loads(text)``, exactly: same values, same errors; about 5x faster on the index's text.

    A listing parses one small JSON object per row (``cluster_deltas``,
    ``trigger_metadata``), and ``json.loads``'s Python-level wrapper costs more than
    the parse; pydantic-core's ``from_json`` does it in one Rust call. Where it
    succeeds it returns what ``json.loads`` would: both round floats correctly
    (bit-identical), keep big ints as ints, accept NaN/Infinity, and keep the last
    of duplicate keys at the first one's position; it accepts nothing that
    ``json.loads`` refuses (tests/test_store.py checks edge cases and random floats).
    What it refuses, and anything not a str, goes to ``json.loads``: errors are
    json.loads's own, as are the few values only it accepts (lone surrogate escapes,
    nesting deeper than jiter's limit).
    """
    if isinstance(text, str):
        try:
            return from_json(text, allow_inf_nan=True)
        except ValueError:
            pass
    return json.loads(text)


def _session_fields(row: Sequence[Any], outcomes: list[Any]) -> dict[str, Any]:
    return {
        "id": row[0],
        "parent_session_id": row[1],
        "trigger": row[2],
        "trigger_metadata": json_text(row[3]),
        "status": row[4],
        "autonomy_mode": row[5],
        "started_at": row[6],
        "ended_at": row[7],
        "diagnosis_path": row[8],
        "plan_path": row[9],
        "benchmark_before": json_text(row[10]),
        "benchmark_after": json_text(row[11]) if row[11] is not None else None,
        "edit_outcomes": outcomes,
        "git_checkpoint_pre": row[12],
        "git_checkpoint_post": row[13],
        "teacher_cost_usd": row[14],
        "error": row[15],
    }


def session_from_row(
    row: Sequence[Any], outcomes: list[Any], models: ReadModels = OURS
) -> LearningSession:
    """Rebuild a session from its row; a row that does not validate names its id."""
    try:
        return models.session.model_validate(_session_fields(row, outcomes))  # type: ignore[return-value]
    except (ValidationError, ValueError) as err:
        raise InvalidRecord(
            f"index row for session {shorten(row[0])} is not a valid session: {err}"
        ) from err


def _outcome_fields(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "edit_id": row[0],
        "status": row[1],
        "benchmark_delta": row[2],
        "cluster_deltas": json_text(row[3]),
        "error": row[4],
        "applied_at": row[5],
    }


def outcome_from_row(row: Sequence[Any], models: ReadModels = OURS) -> EditOutcome:
    """``row`` is (edit_id, status, benchmark_delta, cluster_deltas, error, applied_at, ...).

    Columns after the sixth are ignored, so a listing can carry the session id last.
    """
    try:
        return models.outcome.model_validate(_outcome_fields(row))  # type: ignore[return-value]
    except (ValidationError, ValueError) as err:
        raise InvalidRecord(
            f"index row for outcome {shorten(row[0])} is not a valid outcome: {err}"
        ) from err


VALIDATE_CHUNK = 256
"""Rows per pydantic-core call. One call holds the GIL throughout; in the daemon a
reader thread lists while the loop commits, and a whole listing in one call would
stall the loop for tens of milliseconds. 256 rows is at most a few ms per call."""


def _validate_chunked(adapter: TypeAdapter[list[M]], items: list[dict[str, Any]]) -> list[M]:
    if len(items) <= VALIDATE_CHUNK:
        return adapter.validate_python(items)
    valid: list[M] = []
    for start in range(0, len(items), VALIDATE_CHUNK):
        valid += adapter.validate_python(items[start : start + VALIDATE_CHUNK])
    return valid


def outcomes_from_rows(
    rows: Sequence[Sequence[Any]], models: ReadModels = OURS
) -> list[EditOutcome]:
    """:func:`outcome_from_row` for many rows, with the same results and the same errors.

    The rows are validated as ``list[EditOutcome]`` in pydantic-core calls of
    :data:`VALIDATE_CHUNK` rows, which is the same validation per model without a
    Python-level ``__init__`` per row (about 10% of a listing's conversion time,
    measured). It is all or nothing:
    on any failure the rows are converted again one by one, so the exception raised
    is exactly the per-row one, naming the first bad row's edit id.
    """
    try:
        return _validate_chunked(models.outcomes, [_outcome_fields(row) for row in rows])
    except Exception:  # redone row by row, which raises the precise error
        return [outcome_from_row(row, models) for row in rows]


def sessions_from_rows(
    rows: Sequence[Sequence[Any]],
    outcome_rows: Sequence[Sequence[Any]],
    models: ReadModels = OURS,
) -> list[LearningSession]:
    """Sessions from their rows, each given its outcomes from ``outcome_rows``.

    An outcome row is an :func:`outcome_from_row` row with its session id as the last
    column; each session's outcomes keep their order in ``outcome_rows``.
    """
    by_session: dict[str, list[EditOutcome]] = {row[0]: [] for row in rows}
    for outcome, row in zip(outcomes_from_rows(outcome_rows, models), outcome_rows, strict=True):
        by_session[row[-1]].append(outcome)
    # Validated in bulk like the outcomes (15% of a listing's time, measured); on any
    # failure, row by row for the precise error.
    try:
        return _validate_chunked(
            models.sessions, [_session_fields(row, by_session[row[0]]) for row in rows]
        )
    except Exception:  # redone row by row, which raises the precise error
        return [session_from_row(row, by_session[row[0]], models) for row in rows]


_gc_pause = threading.Lock()
_gc_pausers = 0
_gc_resume = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a listing builds its models.

    A listing allocates several container objects per model (instance, ``__dict__``,
    fields-set, nested dicts) and frees none of them, so each collection the
    allocations trigger finds nothing, yet the growing result is traversed again by
    every generation-1/2 pass, and a full pass walks the rest of the heap too:
    measured, that is 35-50% of the time to list 2,000 sessions with 20,000 outcomes
    (the pattern and remedy of Mercurial's ``util.nogc``). Nothing built here becomes
    cyclic garbage, so the pause delays no reclamation of this work.

    The switch is process-wide, so pauses are counted: the collector comes back when
    the last overlapping pause ends, and only if it was on when the first began. A
    pause that ended while another listing's objects were alive would have the next
    collection walk all of them in one go (100 ms with the GIL held, measured, for
    8,000 sessions): the daemon's readers keep the pause until they freed their result.
    """
    global _gc_pausers, _gc_resume
    with _gc_pause:
        if _gc_pausers == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_pause:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_resume:
                gc.enable()
