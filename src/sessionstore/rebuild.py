"""Rebuild: recreate the index from the ``session.json`` files, keep what only the index
has, and swap the new index in atomically."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from sessionstore.carryover import Carried, carry_over, open_old_index, parentless
from sessionstore.dbfiles import fsync_path, remove_db_files, remove_side_files
from sessionstore.errors import RebuildRefused, SessionStoreError, StorageFailure
from sessionstore.reconcile import InvalidFile, ReconcileResult, reconcile
from sessionstore.sessiondirs import SESSION_FILE
from sessionstore.store import SessionStore

REBUILD_SLICE_FILES = 1000


@dataclass(slots=True)
class RebuildResult(ReconcileResult):
    """A reconcile of the files into an empty index, plus what came from the old index.

    ``index_only_kept``: sessions with no session.json, carried over from the old
    index with their outcome rows (``outcomes_kept`` counts those rows for both kinds).
    ``unusable_file_kept``: sessions whose session.json could not be used, carried
    over as the old index had them. ``dropped``: with ``files_only``, sessions the old
    index held that the rebuilt one does not (None when the old index was unreadable).
    ``index_only`` counts the rebuilt index's sessions without a session.json.
    """

    index_only_kept: int = 0
    unusable_file_kept: int = 0
    outcomes_kept: int = 0
    dropped: int | None = 0


def rebuild(
    db_path: Path,
    learning_root: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    files_only: bool = False,
) -> RebuildResult:
    """Recreate the index from the files, keep the sessions only the old index has,
    and swap it in atomically.

    Every session of the old index that the files do not give (no session.json, or
    one that cannot be used) is carried over as it was, outcome rows included. When
    the old index cannot be read, or some of its sessions cannot, nothing is swapped
    in and :class:`RebuildRefused` says how many could not be carried; with
    ``files_only`` the index is made from the files alone (the old behaviour) and the
    report counts what that ``dropped``.

    The new index is built in ``<db>.rebuild.tmp``, checkpointed (TRUNCATE) and
    closed, so it is one self-contained file. Then the old file's ``-wal``,
    ``-shm`` and ``-journal`` are deleted *before* ``os.replace``: SQLite would
    otherwise apply the old WAL's frames to the new file on next open. A crash in
    between leaves either the old index (perhaps without its last WAL commits,
    which a reconcile restores from the files) or the new one. The caller makes
    sure no daemon has the index open.

    The new file is 0600 whatever the umask (SQLite gives its ``-wal`` and ``-shm``
    the database file's mode), or the old index's mode when there was one.
    """
    db_path = Path(db_path)
    old = _old_index(db_path, files_only)
    tmp = db_path.with_name(db_path.name + ".rebuild.tmp")
    try:
        remove_db_files(tmp)
        _create_owner_only(tmp)
        store = SessionStore(tmp, durability="normal")
        try:
            result = _build(store, old, Path(learning_root), progress, files_only, db_path)
            store.checkpoint("TRUNCATE")
        except BaseException:
            store.close()
            remove_db_files(tmp)
            raise
        store.close()
    finally:
        if old is not None:
            old.close()
    _swap_in(tmp, db_path)
    return result


def _old_index(db_path: Path, files_only: bool) -> SessionStore | None:
    """The old index to carry from; refuse (before any work) when it cannot be read."""
    if files_only:
        return None
    try:
        return open_old_index(db_path)
    except SessionStoreError as err:
        raise RebuildRefused(
            f"cannot read the old index {db_path} ({err}): the sessions only it holds "
            "(those with no session.json) cannot be carried over, and how many there are "
            "is unknown; the old index is left as it is. Rerun with --files-only to "
            "rebuild from the session.json files alone"
        ) from err


def _build(
    store: SessionStore,
    old: SessionStore | None,
    root: Path,
    progress: Callable[[int, int], None] | None,
    files_only: bool,
    db_path: Path,
) -> RebuildResult:
    first = reconcile(store, root, full=True, slice_files=REBUILD_SLICE_FILES, progress=progress)
    result = RebuildResult(**{f.name: getattr(first, f.name) for f in fields(first)})
    if old is None:
        result.dropped = _dropped(db_path, store) if files_only else 0
        return result
    carried = Carried()
    invalid = {entry.path: entry for entry in first.invalid}
    # A file whose parent only the old index had failed the first pass ("parent
    # unknown"): once that parent is carried, an incremental pass picks the file up
    # (its state was never recorded), and its own index-only children come next.
    # Sessions whose session.json exists but cannot be used come over last, when no
    # file pass can give them any more.
    with_files = False
    while True:
        carried_now = carry_over(old, store, root, carried, with_files=with_files)
        if carried_now and _waits_for_a_parent(invalid):
            again = reconcile(store, root, slice_files=REBUILD_SLICE_FILES)
            _add(result, again)
            invalid = _still_invalid(invalid, again.invalid)
            if again.inserted:
                continue
        if carried_now:
            continue
        if with_files:
            break
        with_files = True
    parentless(old, store, carried)
    if carried.failed:
        _refuse(db_path, carried)
    result.invalid = list(invalid.values())
    result.index_only_kept = carried.index_only
    result.unusable_file_kept = carried.unusable_file
    result.outcomes_kept = carried.outcomes
    result.index_only = carried.index_only
    return result


def _waits_for_a_parent(invalid: dict[str, InvalidFile]) -> bool:
    return any("parent session" in entry.reason for entry in invalid.values())


def _still_invalid(
    before: dict[str, InvalidFile], again: list[InvalidFile]
) -> dict[str, InvalidFile]:
    """The reports after another incremental pass. That pass parses every session.json
    that was not indexed before, so one it does not report again is indexed now; a
    plan.json problem is reported once, by the pass that indexed its session."""
    reported = {entry.path: entry for entry in again}
    kept = {
        path: entry
        for path, entry in before.items()
        if path in reported or not path.endswith(f"/{SESSION_FILE}")
    }
    return {**kept, **reported}


def _add(result: RebuildResult, again: ReconcileResult) -> None:
    for name in (
        "inserted",
        "updated",
        "outcomes_added",
        "outcomes_placeholder",
        "placeholders_upgraded",
        "outcomes_corrected",
    ):
        setattr(result, name, getattr(result, name) + getattr(again, name))
    result.duration_seconds += again.duration_seconds


def _refuse(db_path: Path, carried: Carried) -> None:
    count = len(carried.failed)
    listed = "; ".join(f"{sid!r}: {why}" for sid, why in list(carried.failed.items())[:5])
    more = f" (+{count - 5} more)" if count > 5 else ""
    rows = f" with {carried.failed_outcomes} outcome row(s)" if carried.failed_outcomes else ""
    raise RebuildRefused(
        f"{count} session(s) of the old index {db_path} could not be carried over{rows}: "
        f"{listed}{more}. The old index is left as it is. Rerun with --files-only to "
        "rebuild from the session.json files alone (those sessions are then lost)"
    )


def _dropped(db_path: Path, new: SessionStore) -> int | None:
    """With files_only: how many sessions of the old index the new one lacks, if readable."""
    try:
        old = open_old_index(db_path)
    except SessionStoreError:
        return None
    if old is None:
        return 0
    try:
        return len(old.session_ids() - new.session_ids())
    finally:
        old.close()


def _swap_in(tmp: Path, db_path: Path) -> None:
    try:
        leftover_wal = os.stat(f"{tmp}-wal").st_size
    except FileNotFoundError:
        leftover_wal = 0
    if leftover_wal:
        remove_db_files(tmp)
        raise StorageFailure(f"rebuild: {tmp}-wal still holds {leftover_wal} bytes after close")
    remove_side_files(tmp)
    fsync_path(tmp)
    with contextlib.suppress(FileNotFoundError):  # keep the old index's permissions
        os.chmod(tmp, stat.S_IMODE(os.stat(db_path).st_mode))
    remove_side_files(db_path)
    os.replace(tmp, db_path)
    fsync_path(db_path.parent)


def _create_owner_only(db: Path) -> None:
    """Create ``db`` empty and 0600 before SQLite opens it (an empty file is a new database).

    Left to SQLite, it would be created 0644 under the usual umask 022: readable by
    every local user, and the index promises owner-only access. The mode is set with
    ``fchmod``, which the umask does not filter; the process umask is left alone.
    """
    fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
