"""Reconcile and rebuild against real session.json / plan.json trees in temporary directories."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic_core import to_json
from sessionfiles import (
    OLD_MTIME_NS,
    edit_dict,
    outcome_dict,
    plan_dict,
    session_dict,
    snapshot,
    write_file,
    write_session,
)

from sessionstore.errors import IntegrityViolation, InvalidRecord, ReadOnlyStore
from sessionstore.inputs import MAX_NESTING
from sessionstore.models import EditOutcome, LearningSession
from sessionstore.rebuild import rebuild
from sessionstore.reconcile import (
    PLACEHOLDER_TARGET,
    ReconcileResult,
    reconcile,
    reconcile_steps,
)
from sessionstore.store import SessionStore, WriteResult


@pytest.fixture
def root(tmp_path: Path) -> Path:
    learning = tmp_path / "learning"
    (learning / "sessions").mkdir(parents=True)
    return learning


@pytest.fixture
def store(root: Path):
    s = SessionStore(root / "distillation.db")
    yield s
    s.close()


def file_model(path: Path) -> LearningSession:
    return LearningSession.model_validate_json(path.read_bytes())


def outcome_rows(db: Path, session_id: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT edit_id, pillar, op, target, risk_tier, rationale FROM edit_outcomes "
            "WHERE session_id = ? ORDER BY id",
            (session_id,),
        ).fetchall()
    finally:
        conn.close()


def invalid_by_path(result: ReconcileResult) -> dict[str, str]:
    return {item.path: item.reason for item in result.invalid}


def build_corrupt_tree(root: Path) -> dict[str, str]:
    """Three valid sessions and one file of each broken kind; returns path -> reason fragment."""
    for sid in ("good-1", "good-2", "good-3"):
        write_session(root, sid, plan=plan_dict(sid))
    text = json.dumps(session_dict("trunc"))
    write_session(root, "trunc", text[: len(text) // 2])
    write_session(root, "latin1", json.dumps(session_dict("latin1")).encode() + b"\xff\xfe")
    bad_score = session_dict("score")
    bad_score["benchmark_before"]["overall_score"] = 7
    write_session(root, "score", bad_score)
    write_session(root, "empty", b"")
    write_session(root, "mismatch", session_dict("someone-else"))
    write_session(root, "nan", json.dumps(session_dict("nan", teacher_cost_usd=float("nan"))))
    write_session(root, "deep", "[" * 100_000 + "]" * 100_000)
    (root / "sessions" / "running" / "plan.json").parent.mkdir()
    (root / "sessions" / "running" / "plan.json").write_text(json.dumps(plan_dict("running")))
    (root / "sessions" / "dir-not-file" / "session.json").mkdir(parents=True)
    (root / "sessions" / "fifo").mkdir()
    os.mkfifo(root / "sessions" / "fifo" / "session.json")  # opening it would block forever
    return {
        "sessions/trunc/session.json": "not valid JSON",
        "sessions/latin1/session.json": "not UTF-8: byte 0xff at offset",
        "sessions/score/session.json": "benchmark_before.overall_score",
        "sessions/empty/session.json": "empty file",
        "sessions/mismatch/session.json": "id 'someone-else' does not match directory 'mismatch'",
        "sessions/nan/session.json": "NaN is not a JSON value",
        "sessions/deep/session.json": "nested too deeply",
        "sessions/dir-not-file/session.json": "not a regular file",
        "sessions/fifo/session.json": "not a regular file",
    }


def test_first_pass_indexes_every_valid_file_as_written(root: Path, store: SessionStore) -> None:
    paths = [write_session(root, f"s{i:02d}", plan=plan_dict(f"s{i:02d}")) for i in range(12)]
    result = reconcile(store, root)
    assert (result.scanned, result.parsed, result.inserted, result.updated) == (12, 12, 12, 0)
    assert result.outcomes_added == 24 and result.outcomes_placeholder == 0
    assert result.invalid == [] and result.index_only == 0
    for path in paths:
        assert store.get_session(path.parent.name) == file_model(path)


def test_unusable_files_are_reported_with_one_line_reasons_and_skipped(
    root: Path, store: SessionStore
) -> None:
    expected = build_corrupt_tree(root)
    result = reconcile(store, root)
    reported = invalid_by_path(result)
    assert set(reported) == set(expected)
    for path, fragment in expected.items():
        assert fragment in reported[path], (path, reported[path])
        assert "\n" not in reported[path]
    assert store.session_ids() == {"good-1", "good-2", "good-3"}
    assert result.inserted == 3 and result.scanned == 3 + len(expected)


def nested(depth: int) -> dict[str, Any]:
    """``{"a": {"a": ...}}``, ``depth`` objects deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_file_the_save_path_would_refuse_is_reported_not_indexed(
    root: Path, store: SessionStore
) -> None:
    deep = session_dict("deep", trigger_metadata=nested(300))
    with pytest.raises(InvalidRecord):  # what save_session refuses ...
        store.save_session(LearningSession.model_validate(deep))
    write_session(root, "deep", deep)
    write_session(root, "fine", session_dict("fine", trigger_metadata=nested(MAX_NESTING - 1)))
    result = reconcile(store, root)
    reported = invalid_by_path(result)  # ... reconcile refuses too, and says why
    assert list(reported) == ["sessions/deep/session.json"]
    assert reported["sessions/deep/session.json"].startswith(
        "not a valid session: trigger_metadata."
    )
    assert f"nested deeper than {MAX_NESTING} levels" in reported["sessions/deep/session.json"]
    assert store.session_ids() == {"fine"}
    assert [to_json(s) for s in store.list_sessions()]  # the daemon's listing still serialises
    assert reconcile(store, root, full=True).invalid == result.invalid


def test_second_pass_parses_nothing_that_is_unchanged(root: Path, store: SessionStore) -> None:
    """Unusable files too: their reason is recorded with their size and mtime, and an
    unchanged one is reported from the record, not read again (a 21 MiB file whose id
    did not match its directory used to be parsed again every pass)."""
    expected = build_corrupt_tree(root)
    first = reconcile(store, root)
    again = reconcile(store, root)
    assert again.scanned == 3 + len(expected)
    assert again.unchanged == 3
    assert again.parsed == 0
    assert (again.inserted, again.updated, again.outcomes_added) == (0, 0, 0)
    assert invalid_by_path(again) == invalid_by_path(first)  # still reported every pass

    write_session(root, "mismatch", session_dict("mismatch"), mtime_ns=OLD_MTIME_NS + 10**9)
    fixed = reconcile(store, root)  # changed: read again
    assert (fixed.parsed, fixed.inserted) == (1, 1)
    assert "sessions/mismatch/session.json" not in invalid_by_path(fixed)
    assert reconcile(store, root, full=True).parsed == 3 + len(expected) - 2  # not dir, FIFO


def test_fresh_file_is_reconciled_but_its_state_recorded_only_once_settled(
    root: Path, store: SessionStore
) -> None:
    write_session(root, "fresh", mtime_ns=None)
    assert reconcile(store, root).inserted == 1
    assert store.file_states() == {}
    again = reconcile(store, root)
    assert (again.parsed, again.unchanged, again.inserted, again.updated) == (1, 1, 0, 0)


def test_changed_file_is_picked_up_as_updated(root: Path, store: SessionStore) -> None:
    write_session(root, "a")
    path = write_session(root, "b", session_dict("b", status="executing"))
    reconcile(store, root)
    write_session(root, "b", session_dict("b", status="failed"), mtime_ns=OLD_MTIME_NS + 10**9)
    result = reconcile(store, root)
    assert (result.parsed, result.updated, result.unchanged, result.inserted) == (1, 1, 1, 0)
    assert store.get_session("b") == file_model(path)
    assert store.get_session("b").status.value == "failed"


def test_missing_outcomes_are_added_in_file_order_with_plan_fields(
    root: Path, store: SessionStore
) -> None:
    data = session_dict("s", outcomes=("e1", "e2", "e3"))
    write_session(root, "s", data, plan=plan_dict("s", ("e1", "e2", "e3")))
    store.save_session(LearningSession.model_validate(data))
    store.save_outcome(
        "s",
        EditOutcome.model_validate(outcome_dict("e2")),
        pillar="agent",
        op="patch_system_prompt",
        target="agents.simple.system_prompt",
        risk_tier="review",
        rationale="saved by the run",
    )
    result = reconcile(store, root)
    assert (result.updated, result.outcomes_added, result.outcomes_placeholder) == (1, 2, 0)
    rows = outcome_rows(store.db_path, "s")
    e1, e3 = edit_dict("e1", 0), edit_dict("e3", 2)
    assert rows == [
        (
            "e2",
            "agent",
            "patch_system_prompt",
            "agents.simple.system_prompt",
            "review",
            "saved by the run",
        ),
        ("e1", e1["pillar"], e1["op"], e1["target"], e1["risk_tier"], e1["rationale"]),
        ("e3", e3["pillar"], e3["op"], e3["target"], e3["risk_tier"], e3["rationale"]),
    ]
    assert reconcile(store, root, full=True).outcomes_added == 0


def test_an_outcome_the_file_changed_is_corrected_and_keeps_its_edit_fields(
    root: Path, store: SessionStore
) -> None:
    write_session(root, "s", session_dict("s", outcomes=("e1", "e2")), plan=plan_dict("s"))
    reconcile(store, root)
    later = session_dict(
        "s",
        edit_outcomes=[
            outcome_dict("e1", status="rolled_back", error="undone", benchmark_delta=None),
            outcome_dict("e2"),
        ],
    )
    path = write_session(root, "s", later, mtime_ns=OLD_MTIME_NS + 10**9)
    before = outcome_rows(store.db_path, "s")

    dry = reconcile(store, root, dry_run=True)
    assert (dry.outcomes_corrected, dry.updated) == (1, 1)
    assert store.list_outcomes("s")[0].status == "applied"  # the dry run wrote nothing

    result = reconcile(store, root)
    assert (result.outcomes_corrected, result.updated, result.outcomes_added) == (1, 1, 0)
    assert store.get_session("s") == file_model(path)
    assert outcome_rows(store.db_path, "s") == before  # edit ids and Edit fields untouched
    assert reconcile(store, root, full=True).outcomes_corrected == 0


def test_an_edit_id_repeated_in_the_index_is_not_corrected(root: Path, store: SessionStore) -> None:
    """The file has e1 once, the index twice: which row it means is unknown, so neither."""
    write_session(root, "s", session_dict("s", outcomes=("e1",)), plan=plan_dict("s", ("e1",)))
    reconcile(store, root)
    store.save_outcome(
        "s",
        EditOutcome.model_validate(outcome_dict("e1", status="skipped")),
        pillar="agent",
        op="patch_system_prompt",
        target="agents.simple.system_prompt",
        risk_tier="review",
    )
    later = session_dict("s", edit_outcomes=[outcome_dict("e1", status="rolled_back")])
    write_session(root, "s", later, mtime_ns=OLD_MTIME_NS + 10**9)
    assert reconcile(store, root).outcomes_corrected == 0
    assert [o.status for o in store.list_outcomes("s")] == ["applied", "skipped"]


def test_outcomes_get_placeholders_when_the_plan_cannot_supply_their_edit(
    root: Path, store: SessionStore
) -> None:
    write_session(root, "no-plan", session_dict("no-plan", outcomes=("e1",)))
    write_session(root, "bad-plan", session_dict("bad-plan", outcomes=("e1",)), plan=b"{oops")
    write_session(
        root,
        "short-plan",
        session_dict("short-plan", outcomes=("e1", "e9")),
        plan=plan_dict("short-plan", ("e1",)),
    )
    result = reconcile(store, root)
    assert (result.inserted, result.outcomes_added, result.outcomes_placeholder) == (3, 4, 3)
    assert list(invalid_by_path(result)) == ["sessions/bad-plan/plan.json"]
    for sid, why in (("no-plan", "no plan.json"), ("bad-plan", "plan.json is invalid")):
        [row] = outcome_rows(store.db_path, sid)
        assert row == (
            "e1",
            "engine",
            "set_model_param",
            PLACEHOLDER_TARGET,
            "manual",
            f"reconcile placeholder: {why}",
        )
    rows = outcome_rows(store.db_path, "short-plan")
    assert rows[0][3] == edit_dict("e1")["target"]
    assert rows[1][3] == PLACEHOLDER_TARGET and "'e9' not in plan.json" in rows[1][5]


def test_placeholder_rows_get_their_edit_once_plan_json_has_it_and_real_rows_are_kept(
    root: Path, store: SessionStore
) -> None:
    data = session_dict("s", outcomes=("e3", "e1", "e2"))
    write_session(root, "s", data, plan=json.dumps(plan_dict("s"))[:40])  # plan.json mid-write
    store.save_session(LearningSession.model_validate(data))
    real = ("agent", "patch_system_prompt", "agents.simple.system_prompt", "review", "by the run")
    pillar, op, target, risk_tier, rationale = real

    def save_real(edit_id: str) -> None:
        store.save_outcome(
            "s",
            EditOutcome.model_validate(outcome_dict(edit_id)),
            pillar=pillar,
            op=op,
            target=target,
            risk_tier=risk_tier,
            rationale=rationale,
        )

    save_real("e3")
    first = reconcile(store, root)
    assert (first.outcomes_added, first.outcomes_placeholder) == (2, 2)
    placeholder = ("engine", "set_model_param", PLACEHOLDER_TARGET, "manual")
    assert [row[1:5] for row in outcome_rows(store.db_path, "s")[1:]] == [placeholder] * 2
    save_real("e2")  # a real e2 row next to e2's placeholder: only the placeholder may change

    plan_file = root / "sessions" / "s" / "plan.json"
    write_file(plan_file, plan_dict("s", ("e1",)), OLD_MTIME_NS + 10**9)  # session.json as it was
    before = outcome_rows(store.db_path, "s")
    dry = reconcile(store, root, dry_run=True)
    assert (dry.parsed, dry.updated, dry.placeholders_upgraded) == (1, 1, 1)
    assert outcome_rows(store.db_path, "s") == before
    second = reconcile(store, root)  # incremental: noticed through plan.json's state
    assert (second.parsed, second.updated, second.placeholders_upgraded) == (1, 1, 1)
    e1, e2, e3 = (edit_dict(edit_id, i) for i, edit_id in enumerate(("e1", "e2", "e3")))
    as_row = ("pillar", "op", "target", "risk_tier", "rationale")
    assert outcome_rows(store.db_path, "s") == [
        ("e3", *real),
        ("e1", *(e1[key] for key in as_row)),
        before[2],
        ("e2", *real),
    ]
    assert reconcile(store, root).parsed == 0  # plan.json unchanged: nothing to read again

    write_file(plan_file, plan_dict("s", ("e1", "e2", "e3")), OLD_MTIME_NS + 2 * 10**9)
    full = reconcile(store, root, full=True)
    assert (full.updated, full.outcomes_added, full.placeholders_upgraded) == (1, 0, 1)
    assert outcome_rows(store.db_path, "s") == [
        ("e3", *real),  # real edit fields, though plan.json now says otherwise: kept
        ("e1", *(e1[key] for key in as_row)),
        ("e2", *(e2[key] for key in as_row)),
        ("e2", *real),
    ]
    assert e3["target"] != target
    again = reconcile(store, root)
    assert (again.parsed, again.updated, again.placeholders_upgraded) == (0, 0, 0)


def test_index_only_sessions_are_counted_and_never_deleted(root: Path, store: SessionStore) -> None:
    write_session(root, "finished")
    running = LearningSession.model_validate(session_dict("running", status="executing"))
    store.save_session(running)
    (root / "sessions" / "running").mkdir()  # its directory exists, session.json not yet
    store.save_session(LearningSession.model_validate(session_dict("elsewhere")))
    result = reconcile(store, root)
    assert result.index_only == 2
    assert store.session_ids() == {"finished", "running", "elsewhere"}
    assert reconcile(store, root).index_only == 2


def test_dry_run_changes_nothing_but_reports_what_it_would_do(
    root: Path, store: SessionStore
) -> None:
    write_session(root, "known", session_dict("known", status="executing"))
    reconcile(store, root)
    write_session(
        root, "known", session_dict("known", status="completed"), mtime_ns=OLD_MTIME_NS + 1
    )
    write_session(root, "parent", plan=plan_dict("parent"))
    write_session(root, "child", session_dict("child", parent="parent"))
    store.checkpoint("TRUNCATE")
    db = store.db_path
    before = (db.read_bytes(), store.counts(), store.file_states(), store.list_sessions())
    result = reconcile(store, root, dry_run=True, slice_files=1)
    assert result.dry_run and (result.inserted, result.updated) == (2, 1)
    assert (result.outcomes_added, result.outcomes_placeholder) == (4, 2)
    assert result.invalid == []
    assert os.path.getsize(f"{db}-wal") == 0
    assert (db.read_bytes(), store.counts(), store.file_states(), store.list_sessions()) == before


def test_dry_run_works_on_a_readonly_store_and_writing_requires_writable(
    root: Path, store: SessionStore
) -> None:
    write_session(root, "a")
    ro = SessionStore(store.db_path, readonly=True)
    try:
        assert reconcile(ro, root, dry_run=True).inserted == 1
        with pytest.raises(ReadOnlyStore):
            reconcile(ro, root)
    finally:
        ro.close()


def test_files_under_sessions_are_never_written_created_or_deleted(
    root: Path, store: SessionStore, tmp_path: Path
) -> None:
    build_corrupt_tree(root)
    write_session(root, "parent", plan=plan_dict("parent"))
    write_session(root, "child", session_dict("child", parent="parent", outcomes=("x",)))
    before = snapshot(root / "sessions")
    reconcile(store, root)
    reconcile(store, root, full=True)
    reconcile(store, root, dry_run=True)
    store.close()
    rebuild(store.db_path, root)
    assert snapshot(root / "sessions") == before


def check_rebuilt(db: Path, paths: list[Path], index_only: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    rebuilt = SessionStore(db, readonly=True)
    try:
        assert rebuilt.session_ids() == {p.parent.name for p in paths} | index_only
        for path in paths:
            assert rebuilt.get_session(path.parent.name) == file_model(path)
        assert rebuilt.integrity_check() == ["ok"]
        assert rebuilt.file_states()  # the next incremental pass starts warm
    finally:
        rebuilt.close()


def test_rebuild_reproduces_every_session_and_outcome_in_the_files(root: Path) -> None:
    paths = [write_session(root, f"s{i}", plan=plan_dict(f"s{i}")) for i in range(30)]
    child = session_dict("child", parent="s3", outcomes=("e1", "zz"))
    paths.append(write_session(root, "child", child))
    db = root / "distillation.db"
    first = SessionStore(db)
    assert reconcile(first, root).inserted == 31
    first.close()
    db.unlink()
    seen: list[tuple[int, int]] = []
    result = rebuild(db, root, progress=lambda done, total: seen.append((done, total)))
    assert (result.inserted, result.outcomes_added, result.invalid) == (31, 62, [])
    assert seen[0] == (0, 31) and seen[-1] == (31, 31)
    assert sorted(p.name for p in root.iterdir()) == ["distillation.db", "sessions"]
    check_rebuilt(db, paths)


def index_file_modes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in root.iterdir() if p.name != "sessions"}


def test_rebuilt_index_and_its_side_files_are_owner_only_under_umask_022(root: Path) -> None:
    write_session(root, "a", plan=plan_dict("a"))
    db = root / "distillation.db"
    during: list[dict[str, int]] = []
    previous = os.umask(0o022)  # the usual login umask: files SQLite creates are 0644
    try:
        rebuild(db, root, progress=lambda done, total: during.append(index_file_modes(root)))
        assert index_file_modes(root) == {"distillation.db": 0o600}
        reopened = SessionStore(db)  # the swapped-in file gets its -wal and -shm
        try:
            reopened.save_session(LearningSession.model_validate(session_dict("b")))
            after = index_file_modes(root)
        finally:
            reopened.close()
    finally:
        os.umask(previous)
    building = during[-1]
    assert {"distillation.db.rebuild.tmp", "distillation.db.rebuild.tmp-wal"} <= set(building)
    assert set(building.values()) == {0o600}
    assert after == {
        "distillation.db": 0o600,
        "distillation.db-wal": 0o600,
        "distillation.db-shm": 0o600,
    }


@pytest.mark.parametrize("files_only", [True, False], ids=["files-only", "carrying"])
def test_rebuild_replaces_an_index_and_never_applies_its_stale_wal(
    root: Path, files_only: bool
) -> None:
    """The old WAL's frames never reach the new file; with carrying, the session only the
    old index (in its WAL) held is read through SQLite and copied as a row."""
    paths = [write_session(root, f"s{i}") for i in range(3)]
    live = root / "live.db"
    stale = root / "distillation.db"
    writer = SessionStore(live)
    writer.save_session(LearningSession.model_validate(session_dict("only-in-old-wal")))
    for suffix in ("", "-wal", "-shm"):  # a copy taken while the WAL held the last commit
        Path(f"{stale}{suffix}").write_bytes(Path(f"{live}{suffix}").read_bytes())
    writer.close()
    os.chmod(stale, 0o600)
    assert os.path.getsize(f"{stale}-wal") > 0
    result = rebuild(stale, root, files_only=files_only)
    assert not Path(f"{stale}-wal").exists() and not Path(f"{stale}-shm").exists()
    assert stale.stat().st_mode & 0o777 == 0o600
    assert result.index_only_kept == (0 if files_only else 1)
    assert result.dropped == (1 if files_only else 0)
    check_rebuilt(stale, paths, index_only=set() if files_only else {"only-in-old-wal"})


def test_rebuild_failure_leaves_the_old_index_alone(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_session(root, "a")
    db = root / "distillation.db"
    old = SessionStore(db)
    reconcile(old, root)
    old.close()
    before = db.read_bytes()

    def boom(done: int, total: int) -> None:
        if done:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        rebuild(db, root, progress=boom)
    assert db.read_bytes() == before
    assert sorted(p.name for p in root.iterdir()) == ["distillation.db", "sessions"]


def test_generator_yields_once_per_slice_and_each_slice_is_bounded(
    root: Path, store: SessionStore
) -> None:
    for i in range(25):
        write_session(root, f"s{i:02d}")
    seen: list[int] = []
    steps = reconcile_steps(store, root, slice_files=10, progress=lambda d, t: seen.append(d))
    yields = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result = done.value
            break
        yields += 1
    assert yields >= 3
    assert seen == [0, 10, 20, 25]
    assert result.inserted == 25


def test_each_slice_is_its_own_transaction(root: Path, store: SessionStore) -> None:
    for i in range(5):
        write_session(root, f"s{i}")
    steps = reconcile_steps(store, root, slice_files=2)
    next(steps)  # listing
    next(steps)  # first slice: committed before the generator yields
    other = SessionStore(store.db_path, readonly=True)
    try:
        assert other.session_ids() == {"s0", "s1"}
        assert len(other.file_states()) == 2
    finally:
        other.close()
    steps.close()  # abandoning a pass midway is safe: the next one picks up the rest
    assert reconcile(store, root).inserted == 3


def test_parents_are_written_before_children_across_slices(root: Path, store: SessionStore) -> None:
    # sorted order is a-grandchild, b-child, c-root: every parent comes in a later slice
    write_session(root, "a-grandchild", session_dict("a-grandchild", parent="b-child"))
    write_session(root, "b-child", session_dict("b-child", parent="c-root"))
    write_session(root, "c-root")
    write_session(root, "d-orphan", session_dict("d-orphan", parent="ghost"))
    write_session(root, "e-loop", session_dict("e-loop", parent="f-loop"))
    write_session(root, "f-loop", session_dict("f-loop", parent="e-loop"))
    write_session(root, "g-self", session_dict("g-self", parent="g-self"))
    write_session(root, "h-bad-parent", session_dict("h-bad-parent", parent="i-broken"))
    write_session(root, "i-broken", b"{")
    for slice_files in (1, 100):
        s = SessionStore(root / f"slice{slice_files}.db")
        result = reconcile(s, root, slice_files=slice_files)
        assert s.session_ids() == {"a-grandchild", "b-child", "c-root", "g-self"}
        assert result.inserted == 4
        reported = invalid_by_path(result)
        assert reported.pop("sessions/i-broken/session.json").startswith("not valid JSON")
        assert reported == {
            "sessions/d-orphan/session.json": "parent session 'ghost' unknown",
            "sessions/e-loop/session.json": "parent session 'f-loop' unknown",
            "sessions/f-loop/session.json": "parent session 'e-loop' unknown",
            "sessions/h-bad-parent/session.json": "parent session 'i-broken' unknown",
        }
        s.close()


def test_refused_writes_are_reported_as_invalid_not_raised(
    root: Path, store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_session(root, "fine")
    write_session(root, "refused")
    real_apply = store.apply_batch

    def apply_batch(writes):  # reconcile writes encoded rows, each naming its session
        results = real_apply([w for w in writes if w.session_id != "refused"])
        out, it = [], iter(results)
        for w in writes:
            if w.session_id == "refused":
                out.append(WriteResult(ok=False, error=IntegrityViolation("disk says no")))
            else:
                out.append(next(it))
        return out

    monkeypatch.setattr(store, "apply_batch", apply_batch)
    result = reconcile(store, root)
    assert invalid_by_path(result) == {"sessions/refused/session.json": "not indexed: disk says no"}
    assert store.session_ids() == {"fine"}
    assert set(store.file_states()) == {"sessions/fine/session.json"}


def test_unreadable_index_row_is_overwritten_from_the_file(root: Path, store: SessionStore) -> None:
    path = write_session(root, "s")
    reconcile(store, root)
    conn = sqlite3.connect(store.db_path)
    conn.execute("UPDATE learning_sessions SET status = 'exploded' WHERE id = 's'")
    conn.commit()
    conn.close()
    result = reconcile(store, root, full=True)
    assert (result.updated, result.outcomes_added) == (1, 0)
    assert store.get_session("s") == file_model(path)


def test_symlinks_never_lead_reconcile_out_of_sessions(
    root: Path, store: SessionStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write_session(outside, "escape-dir")
    secret = write_session(outside, "escape-file")
    (root / "sessions" / "escape-dir").symlink_to(outside / "sessions" / "escape-dir")
    (root / "sessions" / "escape-file").mkdir()
    (root / "sessions" / "escape-file" / "session.json").symlink_to(secret)
    write_session(root, "plan-escape", session_dict("plan-escape", outcomes=("e1",)))
    (root / "sessions" / "plan-escape" / "plan.json").symlink_to(outside / "plan.json")
    (outside / "plan.json").write_text(json.dumps(plan_dict("plan-escape", ("e1",))))
    write_session(root, "real")
    (root / "sessions" / "alias").symlink_to("real")  # an alias inside: read once, as "real"
    result = reconcile(store, root)
    assert invalid_by_path(result) == {
        "sessions/escape-dir/session.json": "directory is a symlink that resolves outside "
        "sessions/",
        "sessions/escape-file/session.json": "symlink resolves outside sessions/",
        "sessions/plan-escape/plan.json": "symlink resolves outside sessions/",
    }
    assert store.session_ids() == {"plan-escape", "real"}
    assert outcome_rows(store.db_path, "plan-escape")[0][3] == PLACEHOLDER_TARGET


def test_missing_sessions_directory_is_an_empty_pass(tmp_path: Path) -> None:
    s = SessionStore(tmp_path / "x.db")
    try:
        result = reconcile(s, tmp_path / "nowhere")
    finally:
        s.close()
    assert (result.scanned, result.inserted, result.invalid) == (0, 0, [])


def test_result_to_dict_is_json_ready(root: Path, store: SessionStore) -> None:
    build_corrupt_tree(root)
    data = reconcile(store, root).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["inserted"] == 3 and data["dry_run"] is False
    assert {"path", "reason"} == set(data["invalid"][0])


# -- property: any damage to a session.json is indexed faithfully or reported -------------

VALID = json.dumps(session_dict("s1", outcomes=("e1", "e2", "e1")), indent=1).encode()


MUTATIONS = ["flip", "set", "delete", "insert", "truncate", "digit", "letter"]


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """Raw byte damage, plus digit and letter swaps that often keep the JSON parseable."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(MUTATIONS))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if not data:
            data += draw(st.binary(max_size=4))
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "truncate":
            del data[at:]
        else:
            wanted = b"0123456789" if kind == "digit" else b"abcdefghijklmnopqrstuvwxyz"
            spots = [i for i, byte in enumerate(data) if byte in wanted]
            if spots:
                data[draw(st.sampled_from(spots))] = draw(st.sampled_from(wanted))
    return bytes(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_damaged_session_file_is_indexed_faithfully_or_reported(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_session(root, "s1", data, plan=plan_dict("s1"))
        s = SessionStore(root / "index.db")
        try:
            result = reconcile(s, root)
            reported = invalid_by_path(result)
            indexed = s.get_session("s1")
            event("indexed" if indexed is not None else "reported")
            if indexed is None:
                assert "sessions/s1/session.json" in reported
            else:
                assert "sessions/s1/session.json" not in reported
                assert indexed == LearningSession.model_validate(json.loads(data))
                again = reconcile(s, root, full=True)
                assert (again.inserted, again.updated, again.outcomes_added) == (0, 0, 0)
        finally:
            s.close()


def test_random_byte_damage_never_raises(tmp_path: Path) -> None:
    rng = random.Random(1234)
    root = tmp_path / "learning"
    for i in range(200):
        data = bytearray(VALID.replace(b'"s1"', f'"r{i}"'.encode(), 1))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        write_session(root, f"r{i}", bytes(data))
    s = SessionStore(tmp_path / "index.db")
    try:
        started = time.monotonic()
        result = reconcile(s, root)
        assert time.monotonic() - started < 30
        assert result.scanned == 200
        assert len(s.session_ids()) + len(result.invalid) == 200
    finally:
        s.close()
