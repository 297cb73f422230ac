"""The daemon's fast path: save_outcome frames decoded straight to index rows.

Almost every frame the daemon receives is a pipeline's ``save_batch`` of
``save_outcome`` requests, or a lone ``save_outcome``. The strict decoder
(:func:`sessionstore.protocol.decode_request`) parses them with ``json.loads``,
validates them with pydantic, walks them for inf/NaN and lone surrogates, and the
row is built from the model afterwards: measured, about half of the daemon's CPU
per pipelined save. Here msgspec parses the frame into typed structs, validating
while it parses, and the row is built directly from them.

The fast path only ever *accepts*: a frame it is not sure of (any other op, an
unknown key, a type pydantic would coerce, a non-finite number, a datetime not in
the form pydantic's own JSON has, an out-of-range count...) returns None and goes
to the strict decoder, so every refusal and every error message is the strict
path's own. What it accepts, the strict path accepts too, with the same request
id, deadline and the very same row (so the same ``applied_requests`` digest);
``tests/test_fast_path.py`` checks that on generated and mutated frames.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Literal

import msgspec

from sessionstore.batch import OutcomeRowWrite
from sessionstore.protocol import (
    MAX_BATCH_ITEMS,
    MAX_ID_LENGTH,
    VERSION,
    BatchItem,
    Request,
    decode_request,
)

# The accepted values, exactly: pydantic takes an enum or a Literal only by its value.
_Pillar = Literal["intelligence", "agent", "tools", "engine"]
_RiskTier = Literal["auto", "review", "manual"]
_Op = Literal[
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
]
_Status = Literal[
    "applied", "rejected_by_gate", "pending_review", "rejected_by_user", "rolled_back", "skipped"
]
# A JSON integer stays an int here, so it is converted the way pydantic converts it
# (float(n): 0, never -0.0) instead of the way a float parser would read its text.
_Number = float | int


class _Edit(msgspec.Struct, forbid_unknown_fields=True):
    pillar: _Pillar
    op: _Op
    target: str
    risk_tier: _RiskTier
    rationale: str = ""


class _Outcome(msgspec.Struct, forbid_unknown_fields=True):
    edit_id: str
    status: _Status
    benchmark_delta: _Number | None = None
    cluster_deltas: dict[str, _Number] = {}
    error: str | None = None
    applied_at: str | None = None  # checked against pydantic's form in _iso


class _SaveOutcome(msgspec.Struct, forbid_unknown_fields=True, tag_field="op", tag="save_outcome"):
    v: int
    id: str
    session_id: str
    outcome: _Outcome
    edit: _Edit
    deadline: _Number | None = None


class _BatchItem(msgspec.Struct, forbid_unknown_fields=True):
    """A save_batch item: ``op`` a required field, as msgspec takes a lone tagged struct
    without its tag (only a union needs it), where the strict path refuses it."""

    op: Literal["save_outcome"]
    v: int
    id: str
    session_id: str
    outcome: _Outcome
    edit: _Edit
    deadline: _Number | None = None


class _SaveBatch(msgspec.Struct, forbid_unknown_fields=True, tag_field="op", tag="save_batch"):
    v: int
    id: str
    saves: list[_BatchItem]
    deadline: _Number | None = None


_DECODER = msgspec.json.Decoder(_SaveOutcome | _SaveBatch)


class _Unsure(Exception):
    """The frame is valid JSON of the right shape, but a value is one to leave to the strict path."""


def decode_fast(frame: bytes, max_bytes: int) -> Request:
    """:func:`~sessionstore.protocol.decode_request`, through :func:`try_fast` when it can."""
    if len(frame) <= max_bytes:
        request = try_fast(frame)
        if request is not None:
            return request
    return decode_request(frame, max_bytes)


def try_fast(frame: bytes) -> Request | None:
    """The request the strict decoder would make of ``frame``, or None when not sure."""
    try:
        decoded = _DECODER.decode(frame)
        if isinstance(decoded, _SaveOutcome):
            _envelope(decoded.v, decoded.id)
            write = _write(decoded, _deadline(decoded.deadline))
            return Request(decoded.id, "save_outcome", write=write)
        _envelope(decoded.v, decoded.id)
        if not 0 < len(decoded.saves) <= MAX_BATCH_ITEMS:
            return None
        deadline = _deadline(decoded.deadline)
        items = []
        for save in decoded.saves:
            _envelope(save.v, save.id)
            own = _deadline(save.deadline)
            if deadline is not None:  # the batch's deadline, unless the item's is earlier
                own = deadline if own is None else min(own, deadline)
            items.append(BatchItem(save.id, write=_write(save, own)))
        return Request(decoded.id, "save_batch", items=items)
    except (msgspec.MsgspecError, ValueError, _Unsure):  # UnicodeDecodeError is a ValueError
        return None


def _envelope(version: int, request_id: str) -> None:
    if version != VERSION or not 0 < len(request_id) <= MAX_ID_LENGTH:
        raise _Unsure


def _deadline(value: float | int | None) -> float | None:
    """As the strict path reads it: an int too big for a float is no deadline at all."""
    if value is None:
        return None
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return None
    if not math.isfinite(value):
        raise _Unsure
    return value


def _write(save: _SaveOutcome | _BatchItem, deadline: float | None) -> OutcomeRowWrite:
    """The row ``records.outcome_row`` builds from the validated models, built directly."""
    if not save.session_id:
        raise _Unsure
    outcome, edit = save.outcome, save.edit
    delta = outcome.benchmark_delta
    if delta is not None:
        delta = _float(delta)
    row = (
        save.session_id,
        outcome.edit_id,
        edit.pillar,
        edit.op,
        edit.target,
        edit.risk_tier,
        outcome.status,
        delta,
        _deltas_json(outcome.cluster_deltas),
        edit.rationale,
        outcome.error,
        None if outcome.applied_at is None else _iso(outcome.applied_at),
    )
    return OutcomeRowWrite(save.session_id, outcome.edit_id, row, save.id, deadline)


_EXACT_INT = 2**53


def _deltas_json(deltas: dict[str, float | int]) -> str:
    """``json.dumps`` of the validated ``cluster_deltas``, written directly (a third of
    its cost): ASCII-escaped keys, ``repr`` of each float, json's default separators."""
    if not deltas:
        return "{}"
    return (
        "{"
        + ", ".join([f"{encode_basestring_ascii(k)}: {_float(v)!r}" for k, v in deltas.items()])
        + "}"
    )


def _float(value: float | int) -> float:
    """A finite float as pydantic makes it; inf/NaN are the strict path's to refuse."""
    if type(value) is int:
        if -_EXACT_INT <= value <= _EXACT_INT:
            return float(value)
        raise _Unsure
    if value - value != 0.0:  # inf or NaN
        raise _Unsure
    return value


# The forms pydantic's JSON writes a datetime in: seconds, optional microseconds in
# six digits, then Z, an offset in hours and minutes, or nothing (naive).
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?(Z|[+-]\d\d:\d\d)?", re.ASCII)


def _iso(text: str) -> str:
    """``datetime.isoformat()`` of the datetime pydantic parses from ``text``.

    Taken only when ``text`` is already that form (``Z`` written ``+00:00``), so
    parsing it back gives the same fields pydantic gives; anything else is unsure.
    Within :data:`_ISO`, ``isoformat()`` writes back what it parsed except a zero
    fraction (dropped) and ``-00:00`` (written ``+00:00``): those two are refused
    here instead of calling it (it costs ten times the parse).
    """
    match = _ISO.fullmatch(text)
    if match is None or text.endswith("-00:00") or ".000000" in text:
        raise _Unsure
    canonical = text[:-1] + "+00:00" if match.group(1) == "Z" else text
    datetime.fromisoformat(canonical)  # ValueError (unsure) for a date or time that does not exist
    return canonical
