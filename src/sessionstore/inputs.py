"""What the library accepts from a caller, checked in one place for the store and the client.

``SessionStore`` checks its arguments here before it writes; ``SessionStoreClient``
and its pipeline check the very same way before they encode a request, so a bad
argument raises the same exception with the same message from both, whether or
not a daemon is running. The daemon checks a decoded request here again.

Records are accepted by their fields, not by their class: any pydantic model
with exactly the fields of :class:`~sessionstore.models.LearningSession` (or
:class:`~sessionstore.models.EditOutcome`) is taken, so OpenJarvis's own model
objects (``openjarvis.learning.spec_search.models``, or the older
``openjarvis.learning.distillation.models``) go in unchanged. They are dumped and
validated as ours, which also re-checks instances mutated after construction
(pydantic does not validate assignment).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from enum import Enum
from pathlib import PurePath
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import TzInfo

from sessionstore.errors import InvalidRecord, shorten
from sessionstore.models import (
    EditOp,
    EditOutcome,
    EditPillar,
    EditRiskTier,
    LearningSession,
    OutcomeStatus,
    SessionStatus,
)
from sessionstore.records import OutcomeEdit

M = TypeVar("M", bound=BaseModel)

MAX_NESTING = 64
"""Deepest nesting of lists/objects a record may carry (trigger_metadata is free-form)."""

LIMIT_MAX = 2**63 - 1
"""The largest LIMIT SQLite takes; any larger limit lists every session anyway."""

_FREE_FORM: dict[type[BaseModel], frozenset[str]] = {
    LearningSession: frozenset({"trigger_metadata"}),
}
"""Fields typed ``Any`` inside: their values must be plain JSON, which the index and
``session.json`` store as JSON text (a set or a datetime there would not come back)."""


def describe_validation_error(what: str, err: ValidationError) -> str:
    """One line naming each failing field: ``session 'x': teacher_cost_usd: ...``."""
    parts = []
    for item in err.errors()[:5]:
        location = ".".join(str(p) for p in item["loc"]) or "(record)"
        parts.append(f"{location}: {item['msg']}")
    more = f" (+{err.error_count() - 5} more)" if err.error_count() > 5 else ""
    return f"{what}: " + "; ".join(parts) + more


def checked(model: type[M], value: object, what: str) -> M:
    """Validate ``value`` as ``model``: a model with ``model``'s fields, or a mapping.

    A model instance, ours or the caller's, is dumped and validated anew, so a
    value mutated after construction is caught. A dict is taken as the fields
    (the daemon's wire path and session.json); the public save methods refuse
    dicts before they get here (:func:`require_model`).
    """
    data, valid = _validated(model, value, what)
    refuse_unstorable(data, what, _FREE_FORM.get(model, frozenset()))
    return valid


def checked_json(model: type[M], value: object, what: str) -> tuple[M, str]:
    """:func:`checked`, and the valid record's JSON: what the client puts on the wire.

    Same refusals with the same messages as :func:`checked`, cheaper in the common
    case. Walking every value of every save doubled the client's cost per save, so
    the JSON that has to be made anyway is looked at first: our models write inf and
    NaN as ``Infinity``/``NaN`` tokens, a lone surrogate either fails serialisation
    or comes out as a ``\\udXXX`` escape, and only a free-form field can hold
    what JSON would change (a set, a datetime) or nest too deep, so that field alone
    is walked. On any sign of trouble the full :func:`refuse_unstorable` walk decides,
    which raises exactly what the store raises.
    """
    data, valid = _validated(model, value, what)
    free_form = _FREE_FORM.get(model, frozenset())
    try:
        body = valid.model_dump_json()
        clean = _plain_json(body) and _free_form_plain(data, free_form)
    except ValueError:  # pydantic's serialisation error, e.g. a surrogate in a path
        body, clean = "", False
    if not clean:
        refuse_unstorable(data, what, free_form)
    if not body:
        raise InvalidRecord(f"{what}: cannot be encoded as JSON")
    return valid, body


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _plain_json(body: str) -> bool:
    """False where ``body`` may hold a non-finite number (``NaN``, ``Infinity``) or a
    lone surrogate (escaped as ``\\udXXX``, raw, or, in a dict key, replaced by
    U+FFFD); text that merely contains any of these only costs the full walk.
    Substring tests first: they cost a tenth of the regex."""
    if "NaN" in body or "Infinity" in body:
        return False
    if "\\u" in body and _SURROGATE_ESCAPE.search(body):
        return False
    if not body.isascii():
        if "\ufffd" in body:
            return False
        try:
            body.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _free_form_plain(data: dict[str, Any], free_form: frozenset[str]) -> bool:
    try:
        for name in free_form:
            _walk(data.get(name), 1, True, frozenset())
    except _Unstorable:
        return False
    return True


def _validated(model: type[M], value: object, what: str) -> tuple[Any, M]:
    """(the fields as given, the record validated as ``model``)."""
    if isinstance(value, BaseModel):
        require_model(model, value, what)
        value = value.model_dump()
    elif not isinstance(value, dict):
        raise InvalidRecord(f"{what}: expected {model.__name__}, got {type(value).__name__}")
    try:
        return value, model.model_validate(value)
    except ValidationError as err:
        raise InvalidRecord(describe_validation_error(what, err)) from err


def require_model(model: type[BaseModel], value: object, what: str) -> None:
    """Refuse anything but a pydantic model with exactly ``model``'s fields.

    Same fields, any class: OpenJarvis's ``LearningSession`` is accepted as ours.
    A model with other fields is refused rather than converted: a field we do not
    store would be dropped without a word, and a missing one is no such record.
    """
    if isinstance(value, model):
        return
    if not isinstance(value, BaseModel):
        raise InvalidRecord(f"{what}: expected {model.__name__}, got {type(value).__name__}")
    got = type(value)
    fields, wanted = set(got.model_fields), set(model.model_fields)
    if fields == wanted:
        return
    detail = ""
    if got.__name__ == model.__name__:
        missing = ", ".join(sorted(wanted - fields)) or "none"
        extra = ", ".join(sorted(fields - wanted)) or "none"
        detail = f" from {got.__module__} with other fields (missing: {missing}; extra: {extra})"
    raise InvalidRecord(f"{what}: expected {model.__name__}, got {got.__name__}{detail}")


def valid_session(session: object, what: str = "save_session") -> LearningSession:
    """A session to save, as ours: the checks of ``save_session`` on every path."""
    require_model(LearningSession, session, what)
    valid = checked(LearningSession, session, what)
    checked_id(valid.id, "id")
    return valid


def wire_session(session: object) -> tuple[LearningSession, str]:
    """:func:`valid_session` and the session's JSON, for the client (:func:`checked_json`)."""
    require_model(LearningSession, session, "save_session")
    valid, body = checked_json(LearningSession, session, "save_session")
    checked_id(valid.id, "id")
    return valid, body


def valid_outcome(
    session_id: object,
    outcome: object,
    pillar: object,
    op: object,
    target: object,
    risk_tier: object,
    rationale: object,
) -> tuple[str, EditOutcome, OutcomeEdit]:
    """An outcome to save, as ours, with its session id and Edit fields: ``save_outcome``'s checks."""
    sid = checked_id(session_id, "session_id")
    require_model(EditOutcome, outcome, "save_outcome")
    valid = checked(EditOutcome, outcome, f"save_outcome for session {shorten(sid)}")
    return sid, valid, checked_edit(pillar, op, target, risk_tier, rationale)


def wire_outcome(
    session_id: object,
    outcome: object,
    pillar: object,
    op: object,
    target: object,
    risk_tier: object,
    rationale: object,
) -> tuple[str, str, OutcomeEdit]:
    """:func:`valid_outcome` with the outcome as JSON, for the client (:func:`checked_json`)."""
    sid = checked_id(session_id, "session_id")
    body = _lean_outcome_json(outcome)
    if body is None:
        require_model(EditOutcome, outcome, "save_outcome")
        _, body = checked_json(EditOutcome, outcome, f"save_outcome for session {shorten(sid)}")
    return sid, body, checked_edit(pillar, op, target, risk_tier, rationale)


_OUTCOME_STATUSES = frozenset(get_args(OutcomeStatus))
_PLAIN_ZONES = (type(None), timezone, TzInfo)
"""A datetime's tzinfo the lean path takes: none, the standard library's, pydantic's own."""


def _lean_outcome_json(outcome: object) -> str | None:
    """The JSON :func:`checked_json` would give, when validating anew could change nothing;
    else None (the full check decides, with its messages).

    The client saves our own ``EditOutcome`` almost always, and re-validating its dump
    was most of the client's cost per save. When every field already holds exactly
    the type validation makes of it (a ``str``, a finite ``float``, a ``dict`` of
    them, a ``datetime``; text ASCII, so no lone surrogate hides in it), validating
    the dump would give back the same values and :func:`refuse_unstorable` would find
    nothing, so the model's own JSON is the answer. Anything else (a subclass, an int
    assigned after construction, non-ASCII text, inf) takes the full path.
    """
    if type(outcome) is not EditOutcome:
        return None
    fields = outcome.__dict__
    edit_id, status, delta = fields["edit_id"], fields["status"], fields["benchmark_delta"]
    deltas, error, applied_at = fields["cluster_deltas"], fields["error"], fields["applied_at"]
    if not (
        len(fields) == 6
        and type(edit_id) is str
        and edit_id.isascii()
        and type(status) is str
        and status in _OUTCOME_STATUSES
        and (delta is None or (type(delta) is float and delta - delta == 0.0))
        and (error is None or (type(error) is str and error.isascii()))
        and (
            applied_at is None
            or (type(applied_at) is datetime and type(applied_at.tzinfo) in _PLAIN_ZONES)
        )
        and type(deltas) is dict
        and all(
            type(k) is str and k.isascii() and type(v) is float and v - v == 0.0
            for k, v in deltas.items()
        )
    ):
        return None
    return outcome.model_dump_json()


# -- values the index could not give back as they went in -------------------------------


def refuse_unstorable(value: object, what: str, free_form: frozenset[str] = frozenset()) -> None:
    """Refuse what validates but could not come back out of the index as it went in.

    inf/NaN (``session.json`` and the wire write them as null; SQLite turns NaN
    into NULL), strings that are not valid Unicode (lone surrogates: SQLite cannot
    encode them), nesting deep enough to break serialisation later, and, under the
    top-level keys in ``free_form``, anything but plain JSON (a set, a datetime, a
    key that is not a string). The first problem is reported with its path.
    """
    try:
        _walk(value, 0, False, free_form)
    except _Unstorable as bad:
        where = ".".join(reversed(bad.parts)) or "(value)"
        raise InvalidRecord(f"{what}: {where}: {bad.reason}") from None


class _Unstorable(Exception):
    """Raised at the bad value; each container on the way up adds its key to ``parts``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parts: list[str] = []


def _walk(item: object, depth: int, strict: bool, free_form: frozenset[str]) -> None:
    """Every save on both sides of the wire walks its record: plain leaves are checked
    inline in their container's loop, and a path is built only for a problem."""
    if depth > MAX_NESTING:
        raise _Unstorable(f"nested deeper than {MAX_NESTING} levels")
    if isinstance(item, str):
        if not item.isascii():
            _require_encodable(item)
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise _Unstorable(f"{item} is not a finite number")
    elif isinstance(item, dict):
        for key, child in item.items():
            if type(key) is not str or not key.isascii():
                _check_key(key, strict)
            child_strict = strict or (depth == 0 and key in free_form)
            if depth < MAX_NESTING and _plain_leaf(child, child_strict):
                continue
            try:
                _walk(child, depth + 1, child_strict, free_form)
            except _Unstorable as bad:
                bad.parts.append(str(key))
                raise
    elif isinstance(item, list | tuple):
        for index, child in enumerate(item):
            if depth < MAX_NESTING and _plain_leaf(child, strict):
                continue
            try:
                _walk(child, depth + 1, strict, free_form)
            except _Unstorable as bad:
                bad.parts.append(str(index))
                raise
    elif strict and item is not None and not isinstance(item, int):
        raise _Unstorable(
            f"a {type(item).__name__} is not a JSON value "
            "(use a string, number, boolean, null, list or object)"
        )
    elif isinstance(item, PurePath):  # stored as its text: a path from undecodable bytes is not
        text = str(item)
        if not text.isascii():
            _require_encodable(text)


def _plain_leaf(value: object, strict: bool) -> bool:
    """True for the values that need no look: ASCII text, ints, finite floats, None, and
    outside free-form fields the datetimes and enum members validation already vouched for."""
    kind = type(value)
    if kind is str:
        return value.isascii()  # type: ignore[attr-defined, no-any-return]
    if kind is float:
        return value - value == 0.0  # type: ignore[operator, no-any-return]  # False for inf, NaN
    if kind is int or kind is bool or value is None:
        return True
    return not strict and (kind is datetime or isinstance(value, Enum))


def _check_key(key: object, strict: bool) -> None:
    if strict and not isinstance(key, str):
        raise _Unstorable(f"key {key!r:.60} is not a string (JSON keys are)")
    text = str(key)
    if not text.isascii():
        _require_encodable(text)


def _require_encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise _Unstorable(f"not valid Unicode text ({err.reason})") from None


def _refuse_unencodable(text: str, what: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidRecord(f"{what}: {where}: not valid Unicode text ({err.reason})") from None


# -- save_outcome's Edit fields, ids and listing arguments ------------------------------


_ENUM_VALUES: dict[type[Enum], frozenset[str]] = {
    enum: frozenset(member.value for member in enum)  # type: ignore[attr-defined]
    for enum in (EditPillar, EditOp, EditRiskTier)
}


def _enum_value(enum: type[Enum], value: object, field: str) -> str:
    # Checked on every save on both sides of the wire: a set lookup, not Enum(raw).
    raw = value.value if isinstance(value, Enum) else value
    if type(raw) is str and raw in _ENUM_VALUES[enum]:
        return raw
    if not isinstance(raw, str):
        raise InvalidRecord(f"{field}: expected a string, got {type(value).__name__}")
    try:
        return str(enum(raw).value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)  # type: ignore[attr-defined]
        raise InvalidRecord(f"{field}: {shorten(raw)} is not one of {allowed}") from None


def checked_edit(
    pillar: object, op: object, target: object, risk_tier: object, rationale: object
) -> OutcomeEdit:
    """Validate the Edit fields passed to ``save_outcome`` (the original stored any string)."""
    if (  # every save on both sides of the wire: plain strings of allowed values, checked at once
        type(pillar) is str
        and type(op) is str
        and type(risk_tier) is str
        and type(target) is str
        and type(rationale) is str
        and pillar in _ENUM_VALUES[EditPillar]
        and op in _ENUM_VALUES[EditOp]
        and risk_tier in _ENUM_VALUES[EditRiskTier]
    ):
        return OutcomeEdit(pillar, op, target, risk_tier, rationale)
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
    """An id to write: a non-empty string that is valid Unicode."""
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"{field}: expected a non-empty string, got {shorten(value)}")
    _refuse_unencodable(value, field, "(id)")
    return value


def query_id(value: object, field: str = "session_id") -> str | None:
    """An id to look up; None for ``""`` or None, which no saved session has.

    The original answers those with None / ``[]``, and so do the store and the
    client (without asking the daemon). Anything but a string is refused: SQLite
    would compare ``123`` with the text id ``'123'`` but ``1.0`` with nothing.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRecord(f"{field}: expected a string, got {type(value).__name__}")
    _refuse_unencodable(value, field, "(id)")
    return value


def listing_args(status: object, limit: object) -> tuple[str | None, int | None]:
    """``list_sessions``'s arguments as (status value, limit), None meaning "all".

    ``status`` may be a :class:`SessionStatus` of any module or its string value.
    A negative ``limit`` lists every session, as SQLite's ``LIMIT -1`` does in the
    original; one above SQLite's largest integer lists every session too, where the
    original's driver raised OverflowError. A bool or a non-integer is refused.
    """
    value = None
    if status is not None:
        raw = status.value if isinstance(status, Enum) else status
        try:
            value = SessionStatus(raw).value
        except ValueError:
            raise InvalidRecord(f"status: {shorten(raw)} is not a SessionStatus value") from None
    if limit is None:
        return value, None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidRecord(f"limit: expected an integer, got {shorten(limit)}")
    return value, (None if limit < 0 or limit > LIMIT_MAX else limit)
