"""The client's check of a save is the store's check: same refusals, same messages.

The client checks cheaply (it looks at the JSON it has to make anyway and walks only
the free-form field, falling back to the store's full walk on any sign of trouble);
these properties throw mutated records at both and require the same answer, so the
shortcut can never let through what the store refuses, nor refuse what it takes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import EDIT, outcome, session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stress_helpers import LONG, scaled

from sessionstore import protocol
from sessionstore.errors import InvalidRecord
from sessionstore.inputs import MAX_NESTING, valid_outcome, valid_session
from sessionstore.models import BenchmarkSnapshot

TRICKY_TEXT = ["ok", "", "é🙂漢", "a\x00b", "\ud800", "x\udc80y", "NaN", "Infinity", "\\ud800"]
TRICKY_NUMBERS = [0.0, -0.0, 0.5, 1e308, -1.0, 2.0, math.inf, -math.inf, math.nan, 2**70, True]


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(TRICKY_NUMBERS + TRICKY_TEXT),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(TRICKY_TEXT), inner, max_size=3)
    ),
    max_leaves=8,
)
not_json = st.sampled_from(
    [
        {1, 2},
        datetime(2026, 1, 1),
        b"raw",
        Path("/x"),
        (1, 2),
        {1: "int key"},
        deep(MAX_NESTING + 2),
    ]
)
metadata = st.dictionaries(st.sampled_from(TRICKY_TEXT), json_like | not_json, max_size=4)

SESSION_CHANGES: dict[str, st.SearchStrategy[Any]] = {
    "id": st.sampled_from(TRICKY_TEXT),
    "error": st.sampled_from(TRICKY_TEXT) | st.none(),
    "git_checkpoint_pre": st.sampled_from(TRICKY_TEXT),
    "teacher_cost_usd": st.sampled_from(TRICKY_NUMBERS),
    "trigger_metadata": metadata,
    "diagnosis_path": st.sampled_from(TRICKY_TEXT).map(Path),
    "status": st.sampled_from(["completed", "done", 3]),
    "started_at": st.sampled_from(
        [datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=UTC), "later"]
    ),
}
SNAPSHOT_CHANGES: dict[str, st.SearchStrategy[Any]] = {
    "overall_score": st.sampled_from(TRICKY_NUMBERS),
    "elapsed_seconds": st.sampled_from(TRICKY_NUMBERS),
    "cluster_scores": st.dictionaries(
        st.sampled_from(TRICKY_TEXT), st.sampled_from(TRICKY_NUMBERS), max_size=2
    ),
    "benchmark_version": st.sampled_from(TRICKY_TEXT),
}
OUTCOME_CHANGES: dict[str, st.SearchStrategy[Any]] = {
    "edit_id": st.sampled_from(TRICKY_TEXT),
    "benchmark_delta": st.sampled_from(TRICKY_NUMBERS) | st.none(),
    "cluster_deltas": st.dictionaries(
        st.sampled_from(TRICKY_TEXT) | st.integers(0, 2),
        st.sampled_from(TRICKY_NUMBERS),
        max_size=2,
    ),
    "error": st.sampled_from(TRICKY_TEXT) | st.none(),
    "status": st.sampled_from(["applied", "maybe"]),
}


def changes(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def answer(call: Any) -> str:
    try:
        call()
    except InvalidRecord as err:
        return f"InvalidRecord: {err}"
    return "accepted"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic warns dumping mutated models
@pytest.mark.timeout(1200 if LONG else 120)
@settings(
    max_examples=scaled(400, 4000), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(changes(SESSION_CHANGES), changes(SNAPSHOT_CHANGES))
def test_the_client_refuses_a_session_exactly_as_the_store_does(
    session_changes: dict[str, Any], snapshot_changes: dict[str, Any]
) -> None:
    record = session("s")
    snapshot = BenchmarkSnapshot.model_construct(
        **{**dict(record.benchmark_before), **snapshot_changes}
    )
    for name, value in {**session_changes, "benchmark_before": snapshot}.items():
        setattr(record, name, value)  # after construction: nothing validated yet
    store = answer(lambda: valid_session(record))
    client = answer(lambda: protocol.encode_save_session("r", record))
    assert client == store


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.timeout(1200 if LONG else 120)
@settings(max_examples=scaled(300, 3000), deadline=None)
@given(changes(OUTCOME_CHANGES), st.sampled_from(["s", "", "\ud800"]))
def test_the_client_refuses_an_outcome_exactly_as_the_store_does(
    outcome_changes: dict[str, Any], session_id: str
) -> None:
    record = outcome("e")
    for name, value in outcome_changes.items():
        setattr(record, name, value)
    edit = {**EDIT, "rationale": ""}
    store = answer(lambda: valid_outcome(session_id, record, **edit))
    client = answer(lambda: protocol.encode_save_outcome("r", session_id, record, **edit))
    assert client == store
