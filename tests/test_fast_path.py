"""The daemon's fast path decodes exactly what the strict decoder decodes.

For every frame, valid or mutated: :func:`fastpath.decode_fast` (what the daemon
calls) and :func:`protocol.decode_request` (the strict path) both accept it or
both refuse it, a refusal with the same error class and message, and an accepted
save with the same request ids, deadlines and the very row (and so the very
``applied_requests`` digest) the index would be given. A save applied one way is a
duplicate, never a conflict, when it comes again the other way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fuzzframes import TRICKY_NUMBERS, TRICKY_TEXT, _paths, json_values, mutate_structure
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sessionstore import batch, fastpath, protocol
from sessionstore.errors import SessionStoreError
from sessionstore.models import (
    BenchmarkSnapshot,
    EditOp,
    EditPillar,
    EditRiskTier,
    LearningSession,
)
from sessionstore.store import SessionStore

LIMIT = 1 << 20
AGREEMENT = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))

# -- a JSON writer that can also write what json.dumps cannot: duplicate keys, raw numbers ----


class Pairs(list[tuple[str, Any]]):
    """A JSON object given as its (key, value) pairs: a key may come twice."""


class Raw(str):
    """Text put into the frame as it is (a number token json.dumps would write otherwise)."""


def emit(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return (
            "{" + ",".join(f"{emit(k, ascii_only)}:{emit(v, ascii_only)}" for k, v in value) + "}"
        )
    if isinstance(value, dict):
        return emit(Pairs(value.items()), ascii_only)
    if isinstance(value, list):
        return "[" + ",".join(emit(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)


def to_frame(value: Any, ascii_only: bool = True) -> bytes:
    # surrogatepass: a lone surrogate written raw, as CESU-8 bytes, which json.loads takes
    return emit(value, ascii_only).encode("utf-8", "surrogatepass")


# -- what both decoders made of a frame, in a form that compares exactly ----------------------


def outcome_of(decode: Any, frame: bytes) -> Any:
    try:
        return describe(decode(frame, LIMIT))
    except SessionStoreError as err:
        return ("refused", type(err).__name__, err.code, str(err))


def describe(request: protocol.Request) -> Any:
    if request.items is None:
        assert request.write is not None
        return ("save", request.id, request.op, write_facts(request.write))
    items = [
        (item.id, None if item.write is None else write_facts(item.write),
         None if item.error is None else (type(item.error).__name__, str(item.error)))
        for item in request.items
    ]  # fmt: skip
    return ("batch", request.id, items)


def write_facts(write: batch.Write) -> Any:
    row = batch._row(write)
    try:
        digest: Any = batch.content_digest(row)
    except ValueError as err:  # a lone surrogate in an Edit field: refused when applied
        digest = str(err)
    # repr tells -0.0 from 0.0 and 1 from 1.0, which == would not
    return (write.request_id, repr(write.deadline), repr(row), digest, batch._describe(write))


def assert_agree(frame: bytes) -> None:
    strict = outcome_of(protocol.decode_request, frame)
    fast = outcome_of(fastpath.decode_fast, frame)
    assert fast == strict
    took = fastpath.try_fast(frame)
    if took is not None:  # the fast path accepted it itself: the strict path accepts it too
        assert strict[0] != "refused"


# -- frames -------------------------------------------------------------------------------------

text = st.one_of(
    st.sampled_from(TRICKY_TEXT + ["\ud800", "a\udfffb", "\x7f", "\u2028"]), st.text(max_size=12)
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.sampled_from(TRICKY_NUMBERS),
    st.sampled_from(
        [
            Raw(t)
            for t in (
                "-0",
                "-0.0",
                "1E5",
                "1e400",
                "-1e400",
                "1.0e-400",
                "2e-324",
                "0.1e1",
                "9007199254740993",
                "123456789012345678901234567890",
                "1.5E+0",
            )
        ]
    ),  # fmt: skip
)
zones = st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)),
                         timezone(-timedelta(hours=23, minutes=59)), timezone(timedelta(seconds=61))])  # fmt: skip
datetimes = st.builds(
    lambda dt, tz, form: form(dt.replace(tzinfo=tz)),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30)),
    zones,
    st.sampled_from(
        [
            lambda d: d.isoformat().replace("+00:00", "Z"),  # pydantic's own JSON form
            lambda d: d.isoformat(),
            lambda d: d.isoformat(sep=" "),
            lambda d: d.isoformat(timespec="milliseconds"),
            lambda d: d.isoformat().lower(),
            lambda d: d.date().isoformat(),
            lambda d: d.timestamp() if d.tzinfo else 0,
        ]
    ),  # fmt: skip
)
odd_times = st.sampled_from([
    "2026-01-01T00:00:00-00:00", "2026-02-29T00:00:00Z", "2024-02-29T23:59:59.999999Z",
    "2026-01-01T24:00:00Z", "2026-01-01T23:59:60Z", "2026-01-01T00:00:00.000000Z",
    "2026-01-01T00:00:00+24:00", "2026-01-01T00:00:00+00:00:00", "0000-01-01T00:00:00Z",
    "2026-01-01T00:00:00.1234567Z", "2026-01-01T00:00Z", "20260101T000000Z", "",
    "\u0662\u0660\u0662\u0666-01-01T00:00:00Z", "2026-01-01T00:00:00\uff0b01:00",
])  # fmt: skip


def mostly(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` nine times in ten: a frame has a dozen fields, and every one must be
    valid for the fast path to take it at all."""
    return st.integers(0, 9).flatmap(lambda n: wild if n == 0 else valid)


plain_text = st.text(max_size=12)
finite = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53))
pydantic_times = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz).isoformat().replace("+00:00", "Z"),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30)),
    st.sampled_from([None, UTC, timezone(timedelta(hours=-7))]),
)


@st.composite
def outcome_dicts(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "edit_id": draw(mostly(plain_text, text)),
        "status": draw(mostly(st.sampled_from(["applied", "skipped", "pending_review"]),
                              st.sampled_from(["Applied", "x", ""]))),
    }  # fmt: skip
    optional = {
        "benchmark_delta": mostly(st.none() | finite, numbers),
        "cluster_deltas": mostly(
            st.dictionaries(plain_text, finite, max_size=3),
            st.dictionaries(text, numbers, max_size=3),
        ),
        "error": mostly(st.none() | plain_text, text),
        "applied_at": mostly(st.none() | pydantic_times, datetimes | odd_times),
    }
    for key, strategy in optional.items():
        if draw(st.integers(0, 3)):
            fields[key] = draw(strategy)
    return fields


def enum_value(values: list[str]) -> st.SearchStrategy[Any]:
    return mostly(st.sampled_from(values), text)


@st.composite
def save_outcome_dicts(draw: st.DrawFn) -> dict[str, Any]:
    edit: dict[str, Any] = {
        "pillar": draw(enum_value([m.value for m in EditPillar])),
        "op": draw(enum_value([m.value for m in EditOp])),
        "target": draw(mostly(plain_text, text)),
        "risk_tier": draw(enum_value([m.value for m in EditRiskTier])),
    }
    if draw(st.booleans()):
        edit["rationale"] = draw(mostly(plain_text, text))
    request: dict[str, Any] = {
        "v": draw(mostly(st.just(1), st.sampled_from([Raw("1.0"), True, 2, "1"]))),
        "id": draw(mostly(st.text(min_size=1, max_size=12),
                          st.sampled_from(["", "x" * 128, "x" * 129, "\ud800"]))),
        "op": "save_outcome",
        "session_id": draw(mostly(st.text(min_size=1, max_size=12), text)),
        "outcome": draw(outcome_dicts()),
        "edit": edit,
    }  # fmt: skip
    if draw(st.booleans()):
        request["deadline"] = draw(mostly(st.none() | finite, numbers | st.booleans() | text))
    return request


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A save_outcome or a save_batch of them, possibly mutated, written one of two ways."""
    value: Any = draw(save_outcome_dicts())
    if draw(st.booleans()):
        value = {"v": 1, "id": "b1", "op": "save_batch",
                 "saves": [value] + draw(st.lists(save_outcome_dicts(), max_size=2))}  # fmt: skip
        if draw(st.booleans()):
            value["deadline"] = draw(mostly(st.none() | finite, numbers | st.booleans()))
        for save in value["saves"]:  # an item's own deadline, against the batch's
            if draw(st.booleans()):
                save["deadline"] = draw(mostly(finite, numbers))
    mutation = draw(st.sampled_from(["none"] * 5 + ["structure", "duplicate", "bytes"]))
    if mutation == "structure":
        path = draw(st.sampled_from(_paths(value)))
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        value = mutate_structure(value, path, action, draw(json_values))
    elif mutation == "duplicate":
        holders = [p for p in _paths(value) if isinstance(_at(value, p), dict)] + [()]
        path = draw(st.sampled_from(holders))
        holder = _at(value, path)
        if holder:
            key = draw(st.sampled_from(sorted(holder)))
            pairs = Pairs(holder.items())
            pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(json_values)))
            value = _replace(value, path, pairs)
    frame = to_frame(value, draw(st.booleans()))
    if mutation == "bytes" and frame:
        data = bytearray(frame)
        at = draw(st.integers(0, len(data) - 1))
        data[at] ^= draw(st.integers(1, 255))
        frame = bytes(data)
    return frame


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    _at(value, path[:-1])[path[-1]] = new
    return value


def pipeline_frame(n: int = 3, **outcome: Any) -> bytes:
    """A save_batch frame as the client's pipeline writes it."""
    saves = [
        protocol.encode_save_outcome(
            f"r{i}",
            "s1",
            _outcome(f"e{i}", **outcome),
            pillar="agent",
            op="patch_system_prompt",
            target="t",
            risk_tier="auto",
            rationale="why",
        )  # fmt: skip
        for i in range(n)
    ]
    return protocol.with_deadline(protocol.encode_save_batch("b1", saves), 1.9e9)


def _outcome(edit_id: str, **fields: Any) -> Any:
    from sessionstore.models import EditOutcome

    return EditOutcome(edit_id=edit_id, status="applied", **fields)


# -- the properties -------------------------------------------------------------------------------


@AGREEMENT
@given(frames())
@example(pipeline_frame())
@example(pipeline_frame(applied_at=datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)))
@example(pipeline_frame(benchmark_delta=-0.0, cluster_deltas={"é": 1e-300, "": 0.5}))
@example(pipeline_frame().replace(b'"saves":[{', b'"saves":[{"deadline":2e9,'))
@example(pipeline_frame().replace(b'"op":"save_outcome",', b"", 1))  # an item without its op
@example(pipeline_frame().replace(b'"saves":[{', b'"saves":[{"deadline":1e9,'))
@example(pipeline_frame().replace(b'"edit":{', b'"edit":{"extra":1,', 1))  # unknown keys
@example(pipeline_frame().replace(b'"outcome":{', b'"outcome":{"extra":1,', 1))
def test_fast_and_strict_paths_agree_on_every_frame(frame: bytes) -> None:
    assert_agree(frame)


def test_the_clients_frames_take_the_fast_path() -> None:
    """The point of it: what the client and its pipeline send is decoded fast."""
    frame = pipeline_frame(
        applied_at=datetime(2026, 3, 1, tzinfo=UTC), benchmark_delta=0.25,
        cluster_deltas={"math": 0.1}, error="none",
    )  # fmt: skip
    request = fastpath.try_fast(frame)
    assert request is not None and request.items is not None
    assert all(type(item.write) is batch.OutcomeRowWrite for item in request.items)
    lone = protocol.with_deadline(
        protocol.encode_save_outcome(
            "r", "s1", _outcome("e"), pillar="agent", op="patch_system_prompt",
            target="t", risk_tier="auto", rationale="",
        ),
        1.9e9,
    )  # fmt: skip
    assert fastpath.try_fast(lone) is not None
    assert_agree(frame)
    assert_agree(lone)


@pytest.mark.parametrize("count", [0, 1, protocol.MAX_BATCH_ITEMS, protocol.MAX_BATCH_ITEMS + 1])
def test_batch_size_limits_are_the_strict_paths(count: int) -> None:
    save = json.loads(pipeline_frame(1))["saves"][0]
    frame = to_frame({"v": 1, "id": "b", "op": "save_batch", "saves": [save] * count})
    assert_agree(frame)
    assert (fastpath.try_fast(frame) is None) == (count in (0, protocol.MAX_BATCH_ITEMS + 1))


def test_an_oversized_frame_is_refused_by_the_strict_path() -> None:
    frame = pipeline_frame(50)
    with pytest.raises(SessionStoreError) as strict:
        protocol.decode_request(frame, len(frame) - 1)
    with pytest.raises(SessionStoreError) as fast:
        fastpath.decode_fast(frame, len(frame) - 1)
    assert (type(fast.value), str(fast.value)) == (type(strict.value), str(strict.value))


# -- the rows written: one index, each save applied both ways ----------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionStore]:
    db = SessionStore(tmp_path_factory.mktemp("fast") / "index.db")
    db.save_session(
        LearningSession(
            id="s1", trigger="scheduled", status="executing", autonomy_mode="auto",
            started_at=datetime(2026, 1, 1, tzinfo=UTC), diagnosis_path=Path("d"), plan_path=Path("p"),
            benchmark_before=BenchmarkSnapshot(benchmark_version="v", overall_score=0.5,
                                               task_count=1, elapsed_seconds=1.0),
            git_checkpoint_pre="0", teacher_cost_usd=0.0,
        )
    )  # fmt: skip
    yield db
    db.close()


_counter = iter(range(10**9))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(save_outcome_dicts())
def test_a_save_applied_either_way_is_the_same_save(
    store: SessionStore, save: dict[str, Any]
) -> None:
    """Apply the strict write, then the fast one under the same id: a duplicate, not a
    conflict; then the fast one first under a new id and the strict one again: the same."""
    save["session_id"], save["deadline"] = "s1", None
    for first, second in ((protocol.decode_request, fastpath.decode_fast),
                          (fastpath.decode_fast, protocol.decode_request)):  # fmt: skip
        save["id"] = f"x{next(_counter)}"
        frame = to_frame(save)
        if fastpath.try_fast(frame) is None:
            return  # not a fast-path frame: nothing to compare
        before = _outcome_rows(store)
        results = [store.apply_batch([decode(frame, LIMIT).write])[0] for decode in (first, second)]
        assert results[0].ok and not results[0].duplicate, results[0]
        assert results[1].ok and results[1].duplicate, results[1]
        added = _outcome_rows(store)[len(before) :]
        assert len(added) == 1
        assert repr(added[0]) == repr(batch._row(protocol.decode_request(frame, LIMIT).write)[:12])


def _outcome_rows(store: SessionStore) -> list[tuple[Any, ...]]:
    conn = store._conn  # the test reads back exactly what was inserted
    columns = ", ".join(batch.schema.OUTCOME_COLUMNS)
    return conn.execute(f"SELECT {columns} FROM edit_outcomes ORDER BY rowid").fetchall()


def test_non_finite_numbers_are_never_taken() -> None:
    for bad in ("1e400", "-1e400", "NaN", "Infinity"):
        frame = pipeline_frame(1).replace(
            b'"benchmark_delta":null', b'"benchmark_delta":' + bad.encode()
        )
        assert fastpath.try_fast(frame) is None
        assert_agree(frame)
    assert not math.isfinite(json.loads(b"1e400"))


# -- the client's lean encoding: the same JSON, or the same refusal, as the full check ----------

wild_values = st.one_of(
    numbers, text, st.none(), st.booleans(), json_values, pydantic_times, datetimes,
    st.builds(lambda dt, tz: dt.replace(tzinfo=tz), st.datetimes(), zones),
    st.sampled_from([float("nan"), 1, Path("x"), EditPillar.AGENT, b"x", {"k": 1}, {1: 0.5}]),
)  # fmt: skip


@st.composite
def outcome_models(draw: st.DrawFn) -> Any:
    """Our EditOutcome, valid, then maybe with a field assigned anything (not validated)."""
    from sessionstore.models import EditOutcome

    fields = draw(outcome_dicts())
    try:
        model = EditOutcome.model_validate(fields)
    except Exception:
        model = EditOutcome(edit_id="e", status="applied")
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(EditOutcome.model_fields)))
        setattr(model, name, draw(wild_values))
    return model


def _encoded(encode: Any) -> Any:
    try:
        return encode()
    except SessionStoreError as err:
        return ("refused", type(err).__name__, str(err))


@pytest.mark.filterwarnings(
    "ignore::UserWarning"
)  # pydantic's, dumping a field assigned a wrong type
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(outcome_models())
def test_lean_client_encoding_matches_the_full_check(model: Any) -> None:
    from sessionstore import inputs
    from sessionstore.models import EditOutcome

    def full() -> Any:
        inputs.require_model(EditOutcome, model, "save_outcome")
        return inputs.checked_json(EditOutcome, model, "save_outcome for session 's1'")[1]

    lean = inputs._lean_outcome_json(model)
    if lean is not None:
        assert lean == _encoded(full)
    args = ("s1", model, "agent", "patch_system_prompt", "t", "auto", "")
    wire = _encoded(lambda: inputs.wire_outcome(*args)[1])
    assert wire == _encoded(full)


def test_the_fast_paths_accepted_values_are_the_models_own() -> None:
    """The literals the fast path takes are exactly the model enums' values: a value
    dropped from an enum but left here would be stored by the fast path alone."""
    from typing import get_args

    from sessionstore.models import OutcomeStatus

    assert set(get_args(fastpath._Pillar)) == {m.value for m in EditPillar}
    assert set(get_args(fastpath._Op)) == {m.value for m in EditOp}
    assert set(get_args(fastpath._RiskTier)) == {m.value for m in EditRiskTier}
    assert set(get_args(fastpath._Status)) == set(get_args(OutcomeStatus))
