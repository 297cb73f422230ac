"""Rebuild keeps what only the index has, and refuses (changing nothing) when it cannot.

Sessions with no session.json are normal: a running session has none yet, and
OpenJarvis saves cold-start and "no clusters" failures to the index only. A rebuild
makes the index from the files and carries those sessions over from the old index,
row for row with their outcome rows; where the old index cannot be read it refuses
unless told ``files_only``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from daemon_helpers import EDIT, outcome, session
from sessionfiles import plan_dict, session_dict, snapshot, write_session

from sessionstore.errors import RebuildRefused
from sessionstore.rebuild import rebuild
from sessionstore.store import SessionStore


@pytest.fixture
def root(tmp_path: Path) -> Path:
    learning = tmp_path / "learning"
    (learning / "sessions").mkdir(parents=True)
    return learning


def index_rows(db: Path, session_id: str) -> tuple[object, list[tuple[object, ...]]]:
    store = SessionStore(db, readonly=True)
    try:
        return store.session_rows(session_id)
    finally:
        store.close()


def ids_in(db: Path) -> set[str]:
    store = SessionStore(db, readonly=True)
    try:
        return store.session_ids()
    finally:
        store.close()


def directory(root: Path) -> dict[str, bytes]:
    """Every file next to the index (not under sessions/), with its bytes."""
    return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}


def test_rebuild_keeps_sessions_only_the_index_has_with_every_outcome(root: Path) -> None:
    """The README's quick start: two sessions saved with no session.json, 1,000 outcomes
    each. A rebuild used to report index_only 0 and delete all of it."""
    db = root / "distillation.db"
    with_file = write_session(root, "on-disk", plan=plan_dict("on-disk"))
    old = SessionStore(db)
    for n, sid in enumerate(["run-a", "run-b"]):
        old.save_session(session(sid, n))
        for i in range(1000):
            old.save_outcome(sid, outcome(f"{sid}-e{i}", benchmark_delta=i / 1000), **EDIT)
    old.close()
    before = {sid: index_rows(db, sid) for sid in ("run-a", "run-b")}

    result = rebuild(db, root)

    assert ids_in(db) == {"on-disk", "run-a", "run-b"}
    assert {sid: index_rows(db, sid) for sid in ("run-a", "run-b")} == before
    assert (result.index_only_kept, result.outcomes_kept, result.unusable_file_kept) == (
        2,
        2000,
        0,
    )
    assert (result.inserted, result.index_only, result.dropped, result.invalid) == (1, 2, 0, [])
    assert with_file.exists()


def test_a_session_whose_file_cannot_be_used_is_kept_as_the_index_had_it(root: Path) -> None:
    db = root / "distillation.db"
    old = SessionStore(db)
    old.save_session(session("broken"))
    old.save_outcome("broken", outcome("e1"), **EDIT)
    old.close()
    write_session(root, "broken", b"{ not json")
    before = index_rows(db, "broken")

    result = rebuild(db, root)

    assert index_rows(db, "broken") == before
    assert (result.unusable_file_kept, result.index_only_kept, result.outcomes_kept) == (1, 0, 1)
    assert [entry.path for entry in result.invalid] == ["sessions/broken/session.json"]


def test_a_file_whose_parent_only_the_index_has_is_indexed_between_carried_sessions(
    root: Path,
) -> None:
    """running-parent (index only) <- child (session.json) <- grandchild (index only)."""
    db = root / "distillation.db"
    old = SessionStore(db)
    old.save_session(session("running-parent"))
    old.save_session(session("child", 1, parent_session_id="running-parent"))
    old.save_session(session("grandchild", 2, parent_session_id="child"))
    old.close()
    write_session(root, "child", session_dict("child", parent="running-parent"))

    result = rebuild(db, root)

    assert ids_in(db) == {"running-parent", "child", "grandchild"}
    assert (result.index_only_kept, result.inserted, result.invalid) == (2, 1, [])
    rebuilt = SessionStore(db, readonly=True)
    try:
        assert rebuilt.integrity_check() == ["ok"]
        assert rebuilt.get_session("grandchild").parent_session_id == "child"  # type: ignore[union-attr]
        assert [o.edit_id for o in rebuilt.list_outcomes("child")] == ["e1", "e2"]
    finally:
        rebuilt.close()


def test_an_old_index_that_is_not_readable_is_refused_and_left_as_it_was(root: Path) -> None:
    db = root / "distillation.db"
    write_session(root, "on-disk")
    db.write_bytes(b"this is not a database, but it might be one that lost its header" * 100)
    before = directory(root)
    sessions_before = snapshot(root / "sessions")

    with pytest.raises(RebuildRefused, match=r"cannot read the old index .*--files-only"):
        rebuild(db, root)

    assert directory(root) == before
    assert snapshot(root / "sessions") == sessions_before

    result = rebuild(db, root, files_only=True)
    assert ids_in(db) == {"on-disk"}
    assert result.dropped is None  # how many the old index held cannot be known


def corrupt_sessions_table(db: Path) -> None:
    """Overwrite the learning_sessions table's page: ids stay readable (they come from
    the primary key's index), every session row fails with 'malformed'."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'learning_sessions'"
        ).fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    data = bytearray(db.read_bytes())
    data[(page - 1) * size : page * size] = b"\xff" * size
    db.write_bytes(bytes(data))


def test_rows_that_cannot_be_read_are_counted_and_the_rebuild_refused(root: Path) -> None:
    db = root / "distillation.db"
    write_session(root, "on-disk")
    old = SessionStore(db)
    for n in range(3):
        old.save_session(session(f"running-{n}", n))
    old.close()
    corrupt_sessions_table(db)
    before = directory(root)

    with pytest.raises(RebuildRefused) as refused:
        rebuild(db, root)

    message = str(refused.value)
    assert message.startswith(f"3 session(s) of the old index {db} could not be carried over")
    assert "'running-0': cannot read it from the old index" in message
    assert "--files-only" in message
    assert directory(root) == before  # nothing swapped in, no leftovers

    result = rebuild(db, root, files_only=True)
    assert ids_in(db) == {"on-disk"}
    assert result.dropped == 3


def test_a_session_whose_parent_is_in_neither_index_is_not_silently_dropped(root: Path) -> None:
    """An old index written with foreign keys off can hold a child without its parent."""
    db = root / "distillation.db"
    old = SessionStore(db)
    old.save_session(session("orphan"))
    old.save_outcome("orphan", outcome("e1"), **EDIT)
    old.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE learning_sessions SET parent_session_id = 'gone' WHERE id = 'orphan'")
    conn.commit()
    conn.close()

    with pytest.raises(RebuildRefused, match=r"1 session\(s\) .* with 1 outcome row\(s\).*'gone'"):
        rebuild(db, root)
    assert ids_in(db) == {"orphan"}


def test_an_empty_index_file_is_no_old_index(root: Path) -> None:
    """The index lock creates the index file empty (to lock it) before a rebuild opens it."""
    db = root / "distillation.db"
    db.touch(mode=0o600)
    write_session(root, "on-disk")
    result = rebuild(db, root)
    assert ids_in(db) == {"on-disk"}
    assert (result.inserted, result.index_only_kept, result.dropped) == (1, 0, 0)
