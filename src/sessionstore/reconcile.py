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
  reason, and carries on;
* counts index sessions with no ``session.json`` (``index_only``): those are
  running sessions, and are never deleted.

It runs in slices so the daemon can interleave it with ingestion on its one
loop thread: :func:`reconcile_steps` is a generator, each ``next()`` handles at
most ``slice_files`` files: one short ``apply_batch`` transaction for the index
writes, one for upgraded placeholders (only when there are any), then one for the
file states, so a state is recorded only after what it stands for. No transaction
or file is held open across a yield, so a pass can be abandoned (``close()``) at
any point.

This module is the pass: diff, parents first, write, count, report. Files are
found and read by :mod:`sessionstore.sessiondirs` (session.json, checked as a save
is) over :mod:`sessionstore.filereading` (safe, strict reading). The Edit fields an
outcome row needs come from the sibling ``plan.json``, or are a **placeholder**
when it lacks the edit (:mod:`sessionstore.plans`, which says how to find such
rows). When a later pass parses that session and plan.json now has the edit (same
``edit_id``), the placeholder rows are given the edit's fields in place; rows with
real edit fields are never touched (the UPDATE itself requires the placeholder's).
For a session left with placeholder rows, plan.json's size/mtime is recorded too,
and an incremental pass re-parses the session when plan.json changed even though
session.json did not.

A file's size/mtime is recorded only once it has been reconciled, and only when
it has :func:`~sessionstore.filereading.settled` (its mtime is at least
``SETTLE_SECONDS`` old). A fresh file is therefore parsed once more next pass.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sessionstore.errors import InvalidRecord, ReadOnlyStore, shorten
from sessionstore.filereading import SESSIONS_DIR, FileState, UnusableFile, inside, locate, one_line
from sessionstore.models import EditOutcome, LearningSession
from sessionstore.plans import (
    PLACEHOLDER,
    PLACEHOLDER_TARGET,
    outcome_edit,
    placeholder_edit,
    plan_changed,
    plan_rel,
    read_plan,
)
from sessionstore.records import OutcomeEdit
from sessionstore.sessiondirs import (
    SESSION_FILE,
    SessionFile,
    list_session_dirs,
    parents_first,
    read_session,
    session_rel,
)
from sessionstore.store import OutcomeWrite, SessionStore, SessionWrite, Write, WriteResult


@dataclass(frozen=True, slots=True)
class InvalidFile:
    path: str
    """Relative to the learning root, e.g. ``sessions/abc/session.json``."""
    reason: str


@dataclass(slots=True)
class ReconcileResult:
    """What a pass found and did (or, with ``dry_run``, would have done).

    ``scanned``: session.json files found. ``parsed``: of those, how many were
    opened (the rest matched their recorded size/mtime). ``unchanged``: files that
    needed no write. ``inserted``: sessions new to the index. ``updated``: sessions
    whose row was rewritten, that got missing outcomes, corrected outcomes or
    upgraded placeholders. ``outcomes_corrected``: outcome rows rewritten because
    the file's outcome with that edit id differs (only edit ids that occur once in
    the file and once in the index: a repeated one does not say which row it means).
    ``outcomes_placeholder``: of ``outcomes_added``, those written with
    :func:`placeholder_edit` fields. ``placeholders_upgraded``: placeholder rows
    already in the index given their edit's fields from a plan.json that now has it.
    ``invalid`` lists session.json and plan.json files that could not be used.
    ``index_only``: index sessions with no session.json at all (running sessions;
    counted, never deleted).
    """

    scanned: int = 0
    parsed: int = 0
    unchanged: int = 0
    inserted: int = 0
    updated: int = 0
    outcomes_added: int = 0
    outcomes_placeholder: int = 0
    placeholders_upgraded: int = 0
    outcomes_corrected: int = 0
    invalid: list[InvalidFile] = field(default_factory=list)
    index_only: int = 0
    duration_seconds: float = 0.0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Change:
    item: SessionFile
    row: Literal["insert", "update"] | None
    missing: list[EditOutcome]
    placeholders: list[str] = field(default_factory=list)
    """Edit ids of this session's placeholder rows in the index, one per row."""
    corrections: list[EditOutcome] = field(default_factory=list)
    """The file's outcomes that differ from their one index row with the same edit id."""


@dataclass(slots=True)
class _Planned:
    """One change as writes: rows to apply, placeholder rows to upgrade, file states after."""

    change: _Change
    writes: list[Write] = field(default_factory=list)
    placeholder: list[bool] = field(default_factory=list)
    """Per write: an outcome written with placeholder fields."""
    upgrades: list[tuple[str, str, OutcomeEdit]] = field(default_factory=list)
    upgraded_rows: int = 0
    states: list[FileState] = field(default_factory=list)


def reconcile_steps(
    store: SessionStore,
    learning_root: Path,
    *,
    dry_run: bool = False,
    slice_files: int = 100,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Generator[None, None, ReconcileResult]:
    """Reconcile in slices: each ``next()`` does at most ``slice_files`` files, then yields.

    The generator's return value is the :class:`ReconcileResult`. ``full`` ignores
    recorded file states (every file is parsed). ``dry_run`` writes nothing at all,
    not even file states. Unusable files are reported, never raised; a
    :class:`StorageFailure` of the index itself propagates.
    """
    if slice_files < 1:
        raise ValueError(f"slice_files must be at least 1, got {slice_files}")
    if store.readonly and not dry_run:
        raise ReadOnlyStore(f"reconcile: index {store.db_path} is open read-only (use dry_run)")
    run = _Run(store, Path(learning_root), dry_run, slice_files, full, progress)
    return (yield from run.steps())


def reconcile(
    store: SessionStore,
    learning_root: Path,
    *,
    dry_run: bool = False,
    slice_files: int = 100,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReconcileResult:
    """Run every step of :func:`reconcile_steps` and return the result."""
    steps = reconcile_steps(
        store,
        learning_root,
        dry_run=dry_run,
        slice_files=slice_files,
        full=full,
        progress=progress,
    )
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: ReconcileResult = done.value
            return result


class _Run:
    """One pass; the state carried between slices."""

    def __init__(
        self,
        store: SessionStore,
        root: Path,
        dry_run: bool,
        slice_files: int,
        full: bool,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.store = store
        self.root = root
        self.sessions = root / SESSIONS_DIR
        self.dry_run = dry_run
        self.slice_files = slice_files
        self.full = full
        self.progress = progress
        self.result = ReconcileResult(dry_run=dry_run)
        self.known: set[str] = set()
        self.states: dict[str, tuple[int, int]] = {}
        self.not_yet_read: set[str] = set()
        self.with_file: set[str] = set()
        self.deferred: list[SessionFile] = []
        self.real_sessions = ""
        self.placeholders: dict[str, list[str]] = {}

    def steps(self) -> Generator[None, None, ReconcileResult]:
        started = time.monotonic()
        entries = self._list()
        self.real_sessions = os.path.realpath(self.sessions)
        self.known = self.store.session_ids()
        self.states = {} if self.full else self.store.file_states()
        self.placeholders = self.store.outcomes_with_edit(PLACEHOLDER)
        self.not_yet_read = {name for name, _ in entries}
        names = {name for name, _ in entries}
        self._report_progress(0, len(entries))
        yield
        for start in range(0, len(entries), self.slice_files):
            chunk = entries[start : start + self.slice_files]
            self.not_yet_read.difference_update(name for name, _ in chunk)
            items = [self._read_session(name, link, names) for name, link in chunk]
            self._settle([item for item in items if item is not None], final=False)
            self._report_progress(start + len(chunk), len(entries))
            yield
        if self.deferred:
            self.known |= self.store.session_ids()
            ordered, orphans = parents_first(self.deferred, self.known)
            for orphan in orphans:
                self._parent_unknown(orphan)
            for start in range(0, len(ordered), self.slice_files):
                self._settle(ordered[start : start + self.slice_files], final=True)
                yield
        self.result.index_only = len(self.store.session_ids() - self.with_file)
        self.result.duration_seconds = time.monotonic() - started
        return self.result

    def _report_progress(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def _invalid(self, rel: str, reason: str) -> None:
        self.result.invalid.append(InvalidFile(rel, one_line(reason)))

    # -- reading files -------------------------------------------------------

    def _list(self) -> list[tuple[str, bool]]:
        try:
            return list_session_dirs(self.sessions)
        except UnusableFile as err:
            self._invalid(SESSIONS_DIR, str(err))
            return []

    def _read_session(self, name: str, dir_is_link: bool, names: set[str]) -> SessionFile | None:
        """Stat, and if changed read and parse, one session.json; None when nothing to do."""
        rel = session_rel(name)
        if dir_is_link:
            real = os.path.realpath(self.sessions / name)
            if os.path.dirname(real) == self.real_sessions and os.path.basename(real) in names:
                return None  # an alias of a session directory that is read under its own name
            if not inside(real, self.real_sessions):
                self._invalid(rel, "directory is a symlink that resolves outside sessions/")
                return None
        try:
            path, st = locate(self.sessions / name / SESSION_FILE, self.real_sessions)
        except FileNotFoundError:
            return None  # a running session: it has a directory but no session.json yet
        except UnusableFile as err:
            self.with_file.add(name)
            self.result.scanned += 1
            self._invalid(rel, str(err))
            return None
        self.with_file.add(name)
        self.result.scanned += 1
        if (
            self.states.get(rel) == (st.st_size, st.st_mtime_ns)
            and name in self.known
            and not self._plan_changed(name)
        ):
            self.result.unchanged += 1
            return None
        self.result.parsed += 1
        try:
            return read_session(path, name)
        except UnusableFile as err:
            self._invalid(rel, str(err))
            return None

    def _plan_changed(self, name: str) -> bool:
        """Only a session with placeholder rows has its plan.json stat-ed (see plan_changed)."""
        return name in self.placeholders and plan_changed(
            self.sessions, self.real_sessions, name, self.states
        )

    # -- diffing and writing --------------------------------------------------

    def _diff(self, item: SessionFile) -> _Change:
        sid = item.session.id
        placeholders = self.placeholders.get(sid, [])
        try:
            existing = self.store.get_session(sid)
        except InvalidRecord:  # an index row we cannot read: the file wins
            have = self.store.session_outcome_ids(sid)
            return _Change(item, "update", _missing(item.session, have), placeholders)
        if existing is None:
            return _Change(item, "insert", list(item.session.edit_outcomes))
        have = {outcome.edit_id for outcome in existing.edit_outcomes}
        row: Literal["update"] | None = None if _same_row(existing, item.session) else "update"
        corrections = _differing(existing.edit_outcomes, item.session.edit_outcomes)
        return _Change(item, row, _missing(item.session, have), placeholders, corrections)

    def _settle(self, items: list[SessionFile], *, final: bool) -> None:
        """Diff a slice, order row writes parents-first, defer or refuse orphans, apply."""
        changes = [self._diff(item) for item in items]
        ready = [c for c in changes if c.row is None]
        writers = {c.item.session.id: c for c in changes if c.row is not None}
        ordered, orphans = parents_first([c.item for c in writers.values()], self.known)
        if orphans:  # the daemon may have saved a parent since the pass began
            self.known |= self.store.session_ids()
            ordered, orphans = parents_first([c.item for c in writers.values()], self.known)
        maybe_later = (
            self.not_yet_read | {p.name for p in self.deferred} | {o.name for o in orphans}
        )
        for orphan in orphans:
            if not final and orphan.session.parent_session_id in maybe_later:
                self.deferred.append(orphan)
            else:
                self._parent_unknown(orphan)
        self._apply([writers[item.session.id] for item in ordered] + ready)

    def _parent_unknown(self, item: SessionFile) -> None:
        self._invalid(item.rel, f"parent session {shorten(item.session.parent_session_id)} unknown")

    def _apply(self, changes: list[_Change]) -> None:
        """One transaction for the slice's rows, then one each for upgraded placeholders,
        corrected outcomes and file states."""
        planned = [self._plan_writes(change) for change in changes]
        writes = [write for plan in planned for write in plan.writes]
        if self.dry_run:
            results = [WriteResult(ok=True)] * len(writes)
        else:
            results = self.store.apply_batch(writes) if writes else []
        upgrades: list[tuple[str, str, OutcomeEdit]] = []
        corrections: list[tuple[str, EditOutcome]] = []
        states: list[FileState] = []
        end = 0
        for plan in planned:
            start, end = end, end + len(plan.writes)
            ok = self._count(plan, results[start:end])
            if ok:
                upgrades += plan.upgrades
                corrections += [(plan.change.item.session.id, o) for o in plan.change.corrections]
                states += plan.states
        if upgrades and not self.dry_run:
            self.store.replace_outcome_edits(upgrades, only=PLACEHOLDER)
        if corrections and not self.dry_run:
            self.store.correct_outcomes(corrections)
        if states and not self.dry_run:
            self.store.record_file_states(states)

    def _plan_writes(self, change: _Change) -> _Planned:
        """The writes for one change, with plan.json's fields for its outcome rows."""
        planned = _Planned(change)
        item = change.item
        if change.row is not None:
            planned.writes.append(SessionWrite(item.session))
            planned.placeholder.append(False)
        if item.settled:
            planned.states.append((item.rel, item.size, item.mtime_ns, item.session.id))
        if not change.missing and not change.placeholders:
            return planned
        plan = read_plan(self.sessions, self.real_sessions, item.name)
        if plan.problem is not None:
            self._invalid(plan_rel(item.name), plan.problem)
        for outcome in change.missing:
            edit, is_placeholder = outcome_edit(plan, outcome.edit_id)
            planned.placeholder.append(is_placeholder)
            planned.writes.append(OutcomeWrite(item.session.id, outcome, edit))
        upgradable = [edit_id for edit_id in change.placeholders if edit_id in plan.edits]
        planned.upgraded_rows = len(upgradable)
        planned.upgrades = [
            (item.session.id, edit_id, plan.edits[edit_id]) for edit_id in dict.fromkeys(upgradable)
        ]
        left = any(planned.placeholder) or len(upgradable) < len(change.placeholders)
        if left and plan.state is not None:
            planned.states.append(plan.state)
        return planned

    def _count(self, planned: _Planned, results: list[WriteResult]) -> bool:
        """Tally one change's results; True when all its writes were applied."""
        result = self.result
        change = planned.change
        for write, outcome, is_placeholder in zip(
            planned.writes, results, planned.placeholder, strict=True
        ):
            if isinstance(write, OutcomeWrite) and outcome.ok:
                result.outcomes_added += 1
                result.outcomes_placeholder += is_placeholder
        if change.row is not None and results[0].ok:
            self.known.add(change.item.session.id)
        errors = [r.error for r in results if not r.ok]
        if errors:
            self._invalid(change.item.rel, f"not indexed: {errors[0]}")
            return False
        result.placeholders_upgraded += planned.upgraded_rows
        result.outcomes_corrected += len(change.corrections)
        if change.row == "insert":
            result.inserted += 1
        elif change.row == "update" or change.missing or planned.upgrades or change.corrections:
            result.updated += 1
        else:
            result.unchanged += 1
        return True


def _differing(indexed: list[EditOutcome], filed: list[EditOutcome]) -> list[EditOutcome]:
    """The file's outcomes that differ from the index's, matched by an edit id that
    occurs exactly once on each side."""
    once_indexed = _by_unique_edit_id(indexed)
    once_filed = _by_unique_edit_id(filed)
    return [
        outcome
        for edit_id, outcome in once_filed.items()
        if edit_id in once_indexed and once_indexed[edit_id] != outcome
    ]


def _by_unique_edit_id(outcomes: list[EditOutcome]) -> dict[str, EditOutcome]:
    counts = Counter(outcome.edit_id for outcome in outcomes)
    return {o.edit_id: o for o in outcomes if counts[o.edit_id] == 1}


def _missing(session: LearningSession, have: set[str]) -> list[EditOutcome]:
    return [outcome for outcome in session.edit_outcomes if outcome.edit_id not in have]


def _same_row(indexed: LearningSession, filed: LearningSession) -> bool:
    """Equal as JSON values: SQLite keeps a REAL -0.0 as 0, which must not count as a change."""
    exclude = {"edit_outcomes"}
    return bool(
        json.loads(indexed.model_dump_json(exclude=exclude))
        == json.loads(filed.model_dump_json(exclude=exclude))
    )


__all__ = [
    "PLACEHOLDER",
    "PLACEHOLDER_TARGET",
    "InvalidFile",
    "ReconcileResult",
    "placeholder_edit",
    "reconcile",
    "reconcile_steps",
]
