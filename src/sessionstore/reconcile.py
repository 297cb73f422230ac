"""Reconcile: make the index agree with the ``session.json`` files; rebuild it from them.

The files under ``<learning_root>/sessions/`` are the authority and are only ever
read (opened ``O_RDONLY``; nothing is created, renamed or deleted there). A pass:

* lists ``sessions/`` and, per directory, stats ``session.json``. A file whose
  (size, mtime_ns) equals what ``reconcile_files`` recorded is not opened;
* parses a new or changed file and diffs it against the index: a session the
  index lacks is inserted, one whose row differs (outcomes aside) is upserted,
  and each ``edit_outcomes`` entry whose ``edit_id`` has no outcome row yet is
  added, in file order. Outcome rows that already exist are never rewritten;
* reports every file it cannot use (unreadable, not UTF-8, not JSON, not a valid
  session, id not equal to its directory name, parent unknown) with a one-line
  reason, and carries on. A file unusable for what it holds (everything but
  being unreadable or orphaned) is recorded with its reason, size and mtime, and
  while it stays so is reported from that record, not read again;
* counts index sessions with no ``session.json`` (``index_only``): those are
  running sessions, and are never deleted.

It runs in slices so the daemon can interleave it with ingestion on its one
loop thread: :func:`reconcile_steps` is a generator; each ``next()`` stats at
most ``slice_files`` directories and writes a bounded slice of what is ready
(:mod:`sessionstore.reconcile_writer`: one ``apply_batch`` transaction for the
rows, then one each for corrected outcomes, upgraded placeholders and file
states, so a state is recorded only after what it stands for). No transaction or
file is held open across a yield, so a pass can be abandoned (``close()``) at
any point.

Reading, parsing, validating and diffing a file, which cost in proportion to its
size, are the reader's (:mod:`sessionstore.reconcile_reader`): in this process
for the library and rebuild, in a child process for the daemon, whose loop then
only unpickles rows and writes them. What one file asks of the index is
:mod:`sessionstore.reconcile_plan`; files are found and read by
:mod:`sessionstore.sessiondirs` (session.json, checked as a save is) over
:mod:`sessionstore.filereading` (safe, strict reading). This module is the pass:
scan, hand over, second round for children read before their parents, count.

The Edit fields an outcome row needs come from the sibling ``plan.json``, or are
a **placeholder** when it lacks the edit (:mod:`sessionstore.plans`, which says
how to find such rows). When a later pass parses that session and plan.json now
has the edit (same ``edit_id``), the placeholder rows are given the edit's fields
in place; rows with real edit fields are never touched (the UPDATE itself
requires the placeholder's). For a session left with placeholder rows,
plan.json's size/mtime is recorded too, and an incremental pass re-parses the
session when plan.json changed even though session.json did not.

A file's size/mtime is recorded only once it has been reconciled, and only when
it has :func:`~sessionstore.filereading.settled` (its mtime is at least
``SETTLE_SECONDS`` old). A fresh file is therefore parsed once more next pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from pathlib import Path

from sessionstore.errors import ReadOnlyStore
from sessionstore.filereading import SESSIONS_DIR, UnusableFile, inside, locate
from sessionstore.plans import PLACEHOLDER, PLACEHOLDER_TARGET, placeholder_edit, plan_changed
from sessionstore.reconcile_plan import FileHead
from sessionstore.reconcile_reader import FileReader, InProcessReader, Task
from sessionstore.reconcile_writer import InvalidFile, ReconcileResult, SliceWriter
from sessionstore.sessiondirs import SESSION_FILE, list_session_dirs, parents_first, session_rel
from sessionstore.store import SessionStore

SLICE_BYTES = 1 << 20
"""Default bytes of rows one slice writes (one row bigger than this is written alone)."""
SLICE_SECONDS = 0.05
"""Default time one slice may spend taking and applying what the reader has planned."""
WAIT_SECONDS = 0.01
"""What a step yields when the reader has nothing ready: wait about this long."""


def reconcile_steps(
    store: SessionStore,
    learning_root: Path,
    *,
    dry_run: bool = False,
    slice_files: int = 100,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
    reader: FileReader | None = None,
    slice_bytes: int = SLICE_BYTES,
    slice_seconds: float = SLICE_SECONDS,
) -> Generator[float | None, None, ReconcileResult]:
    """Reconcile in slices: each ``next()`` scans at most ``slice_files`` directories and
    writes what is ready, at most ``slice_files`` files, ``slice_bytes`` of rows (one
    bigger row alone) and about ``slice_seconds``; then yields. A yielded number says
    the reader had nothing ready: the caller may wait that many seconds.

    The generator's return value is the :class:`ReconcileResult`. ``full`` ignores
    recorded file states (every file is parsed). ``dry_run`` writes nothing at all,
    not even file states. ``reader`` reads and parses the files (default: in this
    process; the daemon's runs in a child process); it is closed at the end.
    Unusable files are reported, never raised; a :class:`StorageFailure` of the
    index itself propagates.
    """
    if slice_files < 1:
        raise ValueError(f"slice_files must be at least 1, got {slice_files}")
    if store.readonly and not dry_run:
        raise ReadOnlyStore(f"reconcile: index {store.db_path} is open read-only (use dry_run)")
    root = Path(learning_root)
    sessions = root / SESSIONS_DIR
    if reader is None:
        reader = InProcessReader(store, sessions, os.path.realpath(sessions))
    run = _Run(
        store, root, dry_run, full, progress, reader, (slice_files, slice_bytes, slice_seconds)
    )
    try:
        return (yield from run.steps())
    finally:
        reader.close()


def reconcile(
    store: SessionStore,
    learning_root: Path,
    *,
    dry_run: bool = False,
    slice_files: int = 100,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
    reader: FileReader | None = None,
) -> ReconcileResult:
    """Run every step of :func:`reconcile_steps` and return the result."""
    steps = reconcile_steps(
        store,
        learning_root,
        dry_run=dry_run,
        slice_files=slice_files,
        full=full,
        progress=progress,
        reader=reader,
    )
    while True:
        try:
            wait = next(steps)
        except StopIteration as done:
            result: ReconcileResult = done.value
            return result
        if wait:
            time.sleep(wait)


class _Run:
    """One pass: the scan (stat only) and its rounds; :class:`SliceWriter` writes."""

    def __init__(
        self,
        store: SessionStore,
        root: Path,
        dry_run: bool,
        full: bool,
        progress: Callable[[int, int], None] | None,
        reader: FileReader,
        budget: tuple[int, int, float],
    ) -> None:
        self.store = store
        self.sessions = root / SESSIONS_DIR
        self.full = full
        self.progress = progress
        self.reader = reader
        self.slice_files = budget[0]
        self.result = ReconcileResult(dry_run=dry_run)
        self.known: set[str] = set()
        self.states: dict[str, tuple[int, int]] = {}
        self.problems: dict[str, str] = {}
        self.unscanned: set[str] = set()
        self.with_file: set[str] = set()
        self.real_sessions = ""
        self.placeholders: dict[str, list[str]] = {}
        self.writer = SliceWriter(
            store,
            self.result,
            dry_run=dry_run,
            budget=budget,
            known=self.known,
            still_to_come=lambda: self.unscanned,
        )

    def steps(self) -> Generator[float | None, None, ReconcileResult]:
        started = time.monotonic()
        entries = self._list()
        self.real_sessions = os.path.realpath(self.sessions)
        self.known |= self.store.session_ids()
        if not self.full:
            self.states = self.store.file_states()
            self.problems = self.store.file_problems()
        self.placeholders = self.store.outcomes_with_edit(PLACEHOLDER)
        names = {name for name, _ in entries}
        self.unscanned = set(names)
        self._report_progress(0, len(entries))
        yield None
        for start in range(0, len(entries), self.slice_files):
            chunk = entries[start : start + self.slice_files]
            self.unscanned.difference_update(name for name, _ in chunk)
            self._submit([self._scan(name, link, names) for name, link in chunk])
            self.writer.write_slice(self.reader)
            self._report_progress(start + len(chunk), len(entries))
            yield None
        yield from self._drain()
        if self.writer.deferred:  # the second round: files whose parent came after them
            self.writer.final = True
            self.known |= self.store.session_ids()
            ordered, orphans = parents_first(self.writer.deferred, self.known, _ids)
            for orphan in orphans:
                self.writer.parent_unknown(orphan)
            self._submit(
                [(head.name, self.placeholders.get(head.session_id, [])) for head in ordered]
            )
            yield from self._drain()
        self.result.index_only = len(self.store.session_ids() - self.with_file)
        self.result.duration_seconds = time.monotonic() - started
        return self.result

    def _drain(self) -> Generator[float | None, None, None]:
        """Write what the reader still plans; when it has nothing ready, ask to wait."""
        while self.reader.busy:
            yield None if self.writer.write_slice(self.reader) else WAIT_SECONDS

    def _submit(self, tasks: list[Task | None]) -> None:
        ready = [task for task in tasks if task is not None]
        self.writer.pending.update(name for name, _ in ready)
        self.reader.submit(ready)

    def _report_progress(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def _invalid(self, rel: str, reason: str) -> None:
        self.writer.invalid(rel, reason)

    # -- scanning: which files need reading (stat only) -----------------------------

    def _list(self) -> list[tuple[str, bool]]:
        try:
            return list_session_dirs(self.sessions)
        except UnusableFile as err:
            self._invalid(SESSIONS_DIR, str(err))
            return []

    def _scan(self, name: str, dir_is_link: bool, names: set[str]) -> Task | None:
        """Stat one session.json: a task for the reader when it must be read, else None."""
        rel = session_rel(name)
        if dir_is_link:
            real = os.path.realpath(self.sessions / name)
            if os.path.dirname(real) == self.real_sessions and os.path.basename(real) in names:
                return None  # an alias of a session directory that is read under its own name
            if not inside(real, self.real_sessions):
                self._invalid(rel, "directory is a symlink that resolves outside sessions/")
                return None
        try:
            _, st = locate(self.sessions / name / SESSION_FILE, self.real_sessions)
        except FileNotFoundError:
            return None  # a running session: it has a directory but no session.json yet
        except UnusableFile as err:
            self.with_file.add(name)
            self.result.scanned += 1
            self._invalid(rel, str(err))
            return None
        self.with_file.add(name)
        self.result.scanned += 1
        recorded = self.states.get(rel) == (st.st_size, st.st_mtime_ns)
        if recorded and rel in self.problems:  # unusable for what it holds, and unchanged
            self._invalid(rel, self.problems[rel])
            return None
        if recorded and name in self.known and not self._plan_changed(name):
            self.result.unchanged += 1
            return None
        self.result.parsed += 1
        return name, self.placeholders.get(name, [])

    def _plan_changed(self, name: str) -> bool:
        """Only a session with placeholder rows has its plan.json stat-ed (see plan_changed)."""
        return name in self.placeholders and plan_changed(
            self.sessions, self.real_sessions, name, self.states
        )


def _ids(head: FileHead) -> tuple[str, str | None]:
    return head.session_id, head.parent_id


__all__ = [
    "PLACEHOLDER",
    "PLACEHOLDER_TARGET",
    "InvalidFile",
    "ReconcileResult",
    "placeholder_edit",
    "reconcile",
    "reconcile_steps",
]
