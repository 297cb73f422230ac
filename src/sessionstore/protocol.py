"""The wire format shared by the client and the daemon, and nothing else.

A request is one JSON frame ``{"v": 1, "id": "<unique id>", "op": "<name>", ...}``;
the reply carries the same ``id`` and ``"ok": true`` (with ``"result"``) or
``"ok": false, "error": {"code", "message"}``. Decoding is strict: unknown keys,
missing or ill-typed fields and unknown ops are ``malformed``; a record that does
not validate is ``invalid``. The daemon replies to every frame it can read and
never raises out of :func:`decode_request` with anything but a SessionStoreError.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json

from sessionstore.errors import (
    InvalidRecord,
    MalformedRequest,
    RequestTooLarge,
    SessionStoreError,
    error_for_code,
    shorten,
)
from sessionstore.inputs import checked, checked_edit, checked_id, wire_outcome, wire_session
from sessionstore.models import EditOutcome, LearningSession, SessionStatus
from sessionstore.store import OutcomeWrite, SessionWrite, Write

VERSION = 1
MAX_ID_LENGTH = 128

SAVE_OPS = frozenset({"save_session", "save_outcome"})
# save_batch carries up to this many save requests, each with its own id and result:
# one frame and one reply for many saves (the pipeline's way to cut per-message cost).
MAX_BATCH_ITEMS = 1000
# The *_page ops answer one page of a listing, cut to the daemon's max_reply_bytes, with
# the key to ask for the next; the unpaged ops are refused as too_large past that size.
QUERY_OPS = frozenset(
    {"get_session", "list_sessions", "list_outcomes", "list_sessions_page", "list_outcomes_page"}
)
ADMIN_OPS = frozenset({"status", "checkpoint", "reconcile", "integrity_check"})
OPS = SAVE_OPS | {"save_batch"} | QUERY_OPS | ADMIN_OPS

# Keys each op accepts besides the envelope (v, id, op): name -> required?
# A save's "deadline" (Unix time, seconds) is when its sender gives up on it: the daemon
# refuses it unapplied after that (code "expired"). Optional: old clients send none.
_FIELDS: dict[str, dict[str, bool]] = {
    "save_session": {"session": True, "deadline": False},
    "save_outcome": {"session_id": True, "outcome": True, "edit": True, "deadline": False},
    "save_batch": {"saves": True, "deadline": False},
    "get_session": {"session_id": True},
    "list_sessions": {"status": False, "limit": False},
    "list_outcomes": {"session_id": True},
    "list_sessions_page": {"status": False, "limit": False, "after": False},
    "list_outcomes_page": {"session_id": True, "after": False},
    "status": {},
    "checkpoint": {"mode": False},
    "reconcile": {"dry_run": False, "full": False},
    "integrity_check": {},
}
_EDIT_KEYS = {"pillar", "op", "target", "risk_tier", "rationale"}


def new_request_id() -> str:
    """A unique id that sorts by time: the index of applied ids then grows at its end,
    where random ids (uuid4) made each insert a random B-tree page write, measured
    twice as slow per batch at 600k remembered ids."""
    return f"{time.time_ns():016x}{os.urandom(8).hex()}"


@dataclass(slots=True)
class Request:
    """A decoded request: saves carry a ready store write, other ops their parameters."""

    id: str
    op: str
    write: Write | None = None
    params: dict[str, Any] = field(default_factory=dict)
    items: list[BatchItem] | None = None  # save_batch only

    @property
    def is_save(self) -> bool:
        return self.write is not None or self.items is not None


@dataclass(slots=True)
class BatchItem:
    """One save of a save_batch: a write to apply, or the error that refused it."""

    id: str | None
    write: Write | None = None
    error: SessionStoreError | None = None


@dataclass(slots=True)
class Reply:
    id: str | None
    ok: bool
    result: Any = None
    error: SessionStoreError | None = None
    duplicate: bool = False


# -- encoding (client side) ---------------------------------------------------


def _envelope(request_id: str, op: str) -> str:
    return f'{{"v":{VERSION},"id":{_json_str(request_id)},"op":"{op}"'


def encode_save_session(request_id: str, session: LearningSession) -> bytes:
    """Check and convert as ``SessionStore.save_session`` does, then encode without
    re-parsing: the model's own JSON is spliced into the frame.

    The checks run here, not only in the daemon, because JSON would change some
    values silently on the way (inf and NaN become null); and any LearningSession
    with our fields (OpenJarvis's) is converted to ours by its fields.
    """
    _, body = wire_session(session)
    return f'{_envelope(request_id, "save_session")},"session":{body}}}'.encode()


def encode_save_outcome(
    request_id: str,
    session_id: str,
    outcome: EditOutcome,
    *,
    pillar: str,
    op: str,
    target: str,
    risk_tier: str,
    rationale: str,
) -> bytes:
    """Check and convert as ``SessionStore.save_outcome`` does (see :func:`encode_save_session`)."""
    session_id, body, edit = wire_outcome(
        session_id, outcome, pillar, op, target, risk_tier, rationale
    )
    # Enum values need no escaping; the free strings go through the (Rust) JSON encoder.
    return (
        f"{_envelope(request_id, 'save_outcome')},"
        f'"session_id":{_json_str(session_id)},'
        f'"outcome":{body},'
        f'"edit":{{"pillar":"{edit.pillar}","op":"{edit.op}","target":{_json_str(edit.target)},'
        f'"risk_tier":"{edit.risk_tier}","rationale":{_json_str(edit.rationale)}}}}}'
    ).encode()


def _json_str(text: str) -> str:
    try:
        return to_json(text).decode()
    except ValueError as err:  # a lone surrogate: not text JSON can carry
        raise InvalidRecord(f"{shorten(text)}: not valid Unicode text") from err


def encode_save_batch(request_id: str, saves: list[bytes]) -> bytes:
    """A save_batch frame around already-encoded save requests (no re-encoding)."""
    return _envelope(request_id, "save_batch").encode() + b',"saves":[' + b",".join(saves) + b"]}"


def with_deadline(frame: bytes, deadline: float) -> bytes:
    """A save frame (any ``encode_save_*`` result) carrying ``deadline``, Unix seconds.

    Spliced before the closing brace, so the frame is not encoded again. On a
    save_batch it is every item's deadline (an item's own, if earlier, wins).
    """
    return b'%s,"deadline":%s}' % (frame[:-1], repr(float(deadline)).encode())


def encode_request(request_id: str, op: str, **params: Any) -> bytes:
    """Encode a query or admin request."""
    return json.dumps({"v": VERSION, "id": request_id, "op": op, **params}).encode()


# -- decoding (daemon side) ---------------------------------------------------


def peek_id(frame: bytes) -> str | None:
    """The request id of a frame that failed to decode, if one can be read safely."""
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_LENGTH:
            return rid
    return None


def decode_request(frame: bytes, max_bytes: int) -> Request:
    """Parse and validate one request frame; raise a SessionStoreError saying what is wrong."""
    if len(frame) > max_bytes:
        raise RequestTooLarge(f"request of {len(frame)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = json.loads(frame, parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise MalformedRequest(f"request is not UTF-8: {err.reason} at byte {err.start}") from None
    except ValueError as err:
        raise MalformedRequest(f"request is not JSON: {err}") from None
    except RecursionError:
        raise MalformedRequest("request is not JSON: nested too deeply") from None
    return _decode_object(obj)


def _decode_object(obj: Any, ops: frozenset[str] = OPS) -> Request:
    if not isinstance(obj, dict):
        raise MalformedRequest(f"request must be a JSON object, got {type(obj).__name__}")
    request_id = obj.get("id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_LENGTH:
        raise MalformedRequest(f"id: expected a string of 1-{MAX_ID_LENGTH} characters")
    if obj.get("v") != VERSION or isinstance(obj.get("v"), bool):
        raise MalformedRequest(
            f"v: unsupported protocol version {shorten(obj.get('v'))} (want {VERSION})"
        )
    op = obj.get("op")
    if not isinstance(op, str) or op not in ops:
        raise MalformedRequest(f"op: unknown operation {shorten(op)}")
    fields = _FIELDS[op]
    extra = set(obj) - {"v", "id", "op"} - set(fields)
    if extra:
        raise MalformedRequest(f"{op}: unexpected field(s) {_names(extra)}")
    missing = [name for name, required in fields.items() if required and name not in obj]
    if missing:
        raise MalformedRequest(f"{op}: missing field(s) {', '.join(missing)}")
    return _DECODERS[op](request_id, op, obj)


def _names(keys: set[str], most: int = 5) -> str:
    """Unexpected keys for a message: a few, each shortened (a frame may carry thousands)."""
    listed = sorted(keys)
    shown = ", ".join(shorten(key, 40) for key in listed[:most])
    return shown + (f" and {len(listed) - most} more" if len(listed) > most else "")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode_save_session(request_id: str, op: str, obj: dict[str, Any]) -> Request:
    if not isinstance(obj["session"], dict):
        raise MalformedRequest("save_session: session must be a JSON object")
    deadline = _deadline(obj, op)
    session = checked(LearningSession, obj["session"], "save_session")
    checked_id(session.id, "session.id")
    return Request(request_id, op, write=SessionWrite(session, request_id, deadline))


def _decode_save_outcome(request_id: str, op: str, obj: dict[str, Any]) -> Request:
    session_id = _string(obj, "session_id", op)
    deadline = _deadline(obj, op)
    edit = obj["edit"]
    if not isinstance(obj["outcome"], dict):
        raise MalformedRequest("save_outcome: outcome must be a JSON object")
    if not isinstance(edit, dict) or not {"pillar", "op", "target", "risk_tier"} <= set(edit):
        raise MalformedRequest(
            "save_outcome: edit must be an object with pillar, op, target, risk_tier"
        )
    if set(edit) - _EDIT_KEYS:
        raise MalformedRequest(
            f"save_outcome: edit: unexpected field(s) {_names(set(edit) - _EDIT_KEYS)}"
        )
    outcome = checked(
        EditOutcome, obj["outcome"], f"save_outcome for session {shorten(session_id)}"
    )
    checked_fields = checked_edit(
        edit["pillar"], edit["op"], edit["target"], edit["risk_tier"], edit.get("rationale", "")
    )
    return Request(
        request_id,
        op,
        write=OutcomeWrite(session_id, outcome, checked_fields, request_id, deadline),
    )


def _decode_save_batch(request_id: str, op: str, obj: dict[str, Any]) -> Request:
    """Each item is a whole save request; a bad item fails alone, like a lone save would.

    The batch's deadline is each item's, unless the item carries an earlier one.
    """
    saves = obj["saves"]
    if not isinstance(saves, list) or not 0 < len(saves) <= MAX_BATCH_ITEMS:
        raise MalformedRequest(f"save_batch: saves must be a list of 1-{MAX_BATCH_ITEMS} requests")
    deadline = _deadline(obj, op)
    items = []
    for item in saves:
        item_id = item.get("id") if isinstance(item, dict) else None
        item_id = (
            item_id if isinstance(item_id, str) and 0 < len(item_id) <= MAX_ID_LENGTH else None
        )
        try:
            if deadline is not None and isinstance(item, dict):
                own = _deadline(item, "save_batch item")
                item["deadline"] = deadline if own is None else min(own, deadline)
            items.append(BatchItem(item_id, write=_decode_object(item, SAVE_OPS).write))
        except SessionStoreError as err:
            items.append(BatchItem(item_id, error=err))
    return Request(request_id, op, items=items)


def _decode_session_query(request_id: str, op: str, obj: dict[str, Any]) -> Request:
    return Request(request_id, op, params={"session_id": _string(obj, "session_id", op)})


def _decode_list_sessions(request_id: str, op: str, obj: dict[str, Any]) -> Request:
    status, limit = obj.get("status"), obj.get("limit")
    if status is not None:
        if not isinstance(status, str):
            raise MalformedRequest(f"{op}: status must be a string or null")
        try:
            status = SessionStatus(status)
        except ValueError:
            raise InvalidRecord(f"status: {shorten(status)} is not a SessionStatus value") from None
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**63
    ):
        raise MalformedRequest(f"{op}: limit must be an integer from 0 to 2**63-1, or null")
    params: dict[str, Any] = {"status": status, "limit": limit}
    if op == "list_sessions_page":
        params["after"] = _session_key(obj.get("after"), op)
    return Request(request_id, op, params=params)


def _session_key(after: Any, op: str) -> tuple[str, str] | None:
    """A listing page's ``after``: null, or the ``next`` of the page before it."""
    if after is None:
        return None
    if (
        not isinstance(after, dict)
        or set(after) != {"started_at", "id"}
        or not all(isinstance(v, str) for v in after.values())
    ):
        raise MalformedRequest(
            f"{op}: after must be null or the next key of the page before "
            '({"started_at": "...", "id": "..."})'
        )
    return after["started_at"], after["id"]


def _decode_list_outcomes_page(request_id: str, op: str, obj: dict[str, Any]) -> Request:
    after = obj.get("after")
    if after is not None and (
        isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**63
    ):
        raise MalformedRequest(f"{op}: after must be null or the next key of the page before")
    return Request(
        request_id, op, params={"session_id": _string(obj, "session_id", op), "after": after}
    )


def _decode_admin(request_id: str, op: str, obj: dict[str, Any]) -> Request:
    params = {k: v for k, v in obj.items() if k not in {"v", "id", "op"}}
    if "mode" in params and (
        not isinstance(params["mode"], str) or params["mode"] not in {"PASSIVE", "TRUNCATE"}
    ):
        raise MalformedRequest("checkpoint: mode must be PASSIVE or TRUNCATE")
    for flag in ("dry_run", "full"):
        if flag in params and not isinstance(params[flag], bool):
            raise MalformedRequest(f"reconcile: {flag} must be true or false")
    return Request(request_id, op, params=params)


def _deadline(obj: dict[str, Any], op: str) -> float | None:
    """A save's optional deadline: a finite number of Unix seconds (NaN/inf never parse)."""
    deadline = obj.get("deadline")
    if deadline is None:
        return None
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise MalformedRequest(f"{op}: deadline must be a number (Unix time in seconds)")
    try:
        return float(deadline)
    except OverflowError:  # an int too big for a float: later than any clock will read
        return None


def _string(obj: dict[str, Any], key: str, op: str) -> str:
    try:
        return checked_id(obj[key], key)
    except InvalidRecord as err:
        raise MalformedRequest(f"{op}: {err}") from None


_DECODERS = {
    "save_session": _decode_save_session,
    "save_outcome": _decode_save_outcome,
    "save_batch": _decode_save_batch,
    "get_session": _decode_session_query,
    "list_outcomes": _decode_session_query,
    "list_sessions": _decode_list_sessions,
    "list_sessions_page": _decode_list_sessions,
    "list_outcomes_page": _decode_list_outcomes_page,
    "status": _decode_admin,
    "checkpoint": _decode_admin,
    "reconcile": _decode_admin,
    "integrity_check": _decode_admin,
}


# -- replies --------------------------------------------------------------------


def encode_ack(request_id: str, *, duplicate: bool = False) -> bytes:
    """The reply to an applied save, formatted directly: it is sent once per save."""
    flag = ',"duplicate":true' if duplicate else ""
    return f'{{"v":{VERSION},"id":{json.dumps(request_id)},"ok":true,"result":null{flag}}}'.encode()


def item_result(
    item_id: str | None,
    ok: bool,
    error: SessionStoreError | None = None,
    *,
    duplicate: bool = False,
) -> dict[str, Any]:
    """One entry of a save_batch reply's result list."""
    if ok:
        return (
            {"id": item_id, "ok": True, "duplicate": True}
            if duplicate
            else {"id": item_id, "ok": True}
        )
    assert error is not None
    return {"id": item_id, "ok": False, "error": {"code": error.code, "message": str(error)}}


def encode_ok(request_id: str | None, result: Any = None, *, duplicate: bool = False) -> bytes:
    reply: dict[str, Any] = {"v": VERSION, "id": request_id, "ok": True, "result": result}
    if duplicate:
        reply["duplicate"] = True
    return json.dumps(reply, separators=(",", ":")).encode()


def ok_reply_head(request_id: str | None) -> bytes:
    """An ok-reply up to its result: append the result's JSON and ``}`` to finish it."""
    return f'{{"v":{VERSION},"id":{json.dumps(request_id)},"ok":true,"result":'.encode()


def encode_ok_json(request_id: str | None, result_json: bytes) -> bytes:
    """:func:`encode_ok` around a result that is JSON already (a read's records)."""
    return ok_reply_head(request_id) + result_json + b"}"


_REPLY_PREFIX = f'{{"v":{VERSION},"id":'.encode()


def reply_id(reply: bytes | bytearray) -> str | None:
    """The request id of an encoded reply, read from its head: every reply this module
    encodes starts ``{"v":1,"id":``. For replying about a reply (one withheld) without
    parsing what may be megabytes of records."""
    if not reply.startswith(_REPLY_PREFIX):
        return None
    head = bytes(reply[len(_REPLY_PREFIX) : len(_REPLY_PREFIX) + 8 * MAX_ID_LENGTH])
    try:
        value, _ = json.JSONDecoder().raw_decode(head.decode("utf-8", "replace"))
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def encode_error(request_id: str | None, err: SessionStoreError) -> bytes:
    reply = {
        "v": VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": err.code, "message": str(err)},
    }
    return json.dumps(reply, separators=(",", ":")).encode()


def decode_reply(frame: bytes) -> Reply:
    """Parse a daemon reply; a reply that makes no sense is reported, not trusted."""
    try:
        obj = json.loads(frame)
        rid = obj["id"]
        if obj["ok"]:
            return Reply(rid, True, obj.get("result"), duplicate=bool(obj.get("duplicate")))
        error = obj["error"]
        return Reply(rid, False, error=error_for_code(str(error["code"]), str(error["message"])))
    except (ValueError, KeyError, TypeError) as err:
        raise MalformedRequest(f"unreadable reply from daemon: {err}") from None
