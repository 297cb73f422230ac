"""Writing what reconcile's reader planned: a bounded slice at a time, on the loop.

A slice takes messages from the reader (:mod:`sessionstore.reconcile_plan`) until
it holds ``slice_bytes`` of rows (a single bigger row alone), ``slice_files``
finished files or ``slice_seconds`` have passed, then writes its rows in one
``apply_batch`` transaction and, for the files it finished, their corrected
outcomes, upgraded placeholders and file states, each in one more. So the loop
thread never parses, validates or encodes a file: it unpickles rows and writes
them. A file's rows may span several slices; its state is recorded only in the
slice that finishes it, after all its writes were applied.

A file planned while its parent is still to come is deferred to a second round
(the caller's); one whose parent cannot come is reported. The reader diffed
against the index as it was when it read; an outcome row a save added since is
not added again (the session's edit ids are read again before its first rows are
written). A session row is written when the reader found it differing: the file
wins either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sessionstore.errors import shorten
from sessionstore.filereading import FileState, one_line
from sessionstore.plans import PLACEHOLDER
from sessionstore.reconcile_plan import FileEnd, FileHead, Message, RowChunk, Unusable
from sessionstore.reconcile_reader import FileReader
from sessionstore.records import OutcomeEdit
from sessionstore.store import OutcomeRowsWrite, SessionRowWrite, SessionStore, Write, WriteResult


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
    ``invalid`` lists session.json and plan.json files that could not be used (a
    session.json unusable for what it holds is not read again until it changes:
    its reason is reported from the record). ``index_only``: index sessions with no
    session.json at all (running sessions; counted, never deleted).
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
class _File:
    """A file whose messages are being applied, and what became of its writes so far."""

    head: FileHead
    skip: bool = False
    """Deferred or refused: the rest of its messages are dropped."""
    failure: str | None = None
    have: set[str] | None = None
    """Edit ids the session had when its first outcome rows came: those are not added."""
    added: int = 0
    corrected: int = 0


@dataclass(slots=True)
class _Slice:
    """What one step writes: rows in one transaction, then the bookkeeping of finished files."""

    writes: list[Write] = field(default_factory=list)
    owners: list[tuple[_File, int]] = field(default_factory=list)
    """Per write: its file and how many of its outcome rows carry placeholder fields."""
    corrections: list[tuple[_File, tuple[str, str, tuple[Any, ...]]]] = field(default_factory=list)
    finished: list[_File] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    problem_states: list[FileState] = field(default_factory=list)
    nbytes: int = 0
    files: int = 0
    taken: int = 0


class SliceWriter:
    """Applies a pass's planned files, one slice per :meth:`write_slice`.

    ``known`` (shared with the pass) holds the session ids in the index;
    ``still_to_come()`` the names not yet planned, for deciding whether an orphan's
    parent may still come. ``pending``: names handed to the reader, not finished.
    """

    def __init__(
        self,
        store: SessionStore,
        result: ReconcileResult,
        *,
        dry_run: bool,
        budget: tuple[int, int, float],
        known: set[str],
        still_to_come: Callable[[], set[str]],
    ) -> None:
        self.store = store
        self.result = result
        self.dry_run = dry_run
        self.slice_files, self.slice_bytes, self.slice_seconds = budget
        self.known = known
        self.still_to_come = still_to_come
        self.pending: set[str] = set()
        self.deferred: list[FileHead] = []
        self.final = False
        """The last round: an orphan is reported, not deferred."""
        self.current: _File | None = None

    def invalid(self, rel: str, reason: str) -> None:
        self.result.invalid.append(InvalidFile(rel, one_line(reason)))

    def parent_unknown(self, head: FileHead) -> None:
        self.invalid(head.rel, f"parent session {shorten(head.parent_id)} unknown")

    def write_slice(self, reader: FileReader) -> bool:
        """Take what the reader has ready, within the slice's budget, and write it;
        False when nothing was ready."""
        work = _Slice()
        deadline = time.monotonic() + self.slice_seconds
        while (
            work.nbytes < self.slice_bytes
            and work.files < self.slice_files
            and time.monotonic() < deadline
        ):
            message = reader.take()
            if message is None:
                break
            work.taken += 1
            self._take(message, work)
        if not work.taken:
            return False
        self._commit(work)
        return True

    def _take(self, message: Message, work: _Slice) -> None:
        if isinstance(message, FileHead):
            work.nbytes += message.nbytes
            self._begin(message, work)
        elif isinstance(message, RowChunk):
            work.nbytes += message.nbytes
            if self.current is not None and not self.current.skip:
                self._add_rows(self.current, message, work)
        elif isinstance(message, FileEnd):
            work.files += 1
            self.pending.discard(message.name)
            if self.current is not None and not self.current.skip:
                work.finished.append(self.current)
            self.current = None
        else:
            self._unusable(message, work)

    def _unusable(self, message: Unusable, work: _Slice) -> None:
        work.files += 1
        self.pending.discard(message.name)
        current, self.current = self.current, None
        if current is not None:  # it failed after its head: nothing more of it is recorded
            if not current.skip:
                self.invalid(current.head.rel, message.reason)
            return
        self.invalid(message.rel, message.reason)
        if message.state is not None and not self.dry_run:
            work.problem_states.append(message.state)
            work.problems[message.rel] = one_line(message.reason)

    def _begin(self, head: FileHead, work: _Slice) -> None:
        """A file's head: defer it behind a parent still to come, refuse an orphan, or
        queue its row."""
        file = self.current = _File(head)
        parent = head.parent_id
        if head.row is not None and parent is not None and parent != head.session_id:
            if parent not in self.known:
                self.known |= self.store.session_ids()  # the daemon may have saved it since
            if parent not in self.known:
                file.skip = True
                if not self.final and self._may_come(parent):
                    # planned again in the last round: only what orders it is kept
                    self.deferred.append(
                        FileHead(head.name, head.rel, head.session_id, parent, None, None)
                    )
                else:
                    self.parent_unknown(head)
                return
        for path, problem in head.problems:
            self.invalid(path, problem)
        self._add_row(file, work)

    def _may_come(self, parent: str) -> bool:
        """Whether this pass may still write session ``parent``."""
        return (
            parent in self.still_to_come()
            or parent in self.pending
            or any(h.session_id == parent for h in self.deferred)
        )

    def _add_row(self, file: _File, work: _Slice) -> None:
        head = file.head
        if head.row is not None:
            work.writes.append(SessionRowWrite(head.session_id, head.parent_id, head.row))
            work.owners.append((file, 0))
            # Its children may follow in this slice: should this row be refused, theirs
            # are too (unknown parent), and each is reported.
            self.known.add(head.session_id)

    def _add_rows(self, file: _File, chunk: RowChunk, work: _Slice) -> None:
        """Outcome rows the session still lacks (read again here: a save may have added
        one since the reader looked), and corrections."""
        sid = file.head.session_id
        if chunk.outcomes:
            if file.have is None:
                file.have = self.store.session_outcome_ids(sid)
            rows = [(row, ph) for row, ph in chunk.outcomes if row[1] not in file.have]
            if rows:
                work.writes.append(OutcomeRowsWrite(sid, [row for row, _ in rows]))
                work.owners.append((file, sum(ph for _, ph in rows)))
        work.corrections += [(file, (sid, eid, values)) for eid, values in chunk.corrections]

    def _commit(self, work: _Slice) -> None:
        """One transaction for the slice's rows, then one each for corrected outcomes,
        upgraded placeholders and file states of the files finished in it."""
        if self.dry_run:
            results = [WriteResult(ok=True)] * len(work.writes)
        else:
            results = self.store.apply_batch(work.writes) if work.writes else []
        for write, outcome, (file, placeholders) in zip(
            work.writes, results, work.owners, strict=True
        ):
            self._count_write(file, write, outcome, placeholders)
        corrections = [c for file, c in work.corrections if file.failure is None]
        for file, _ in work.corrections:
            file.corrected += file.failure is None
        upgrades: list[tuple[str, str, OutcomeEdit]] = []
        states = list(work.problem_states)
        for file in work.finished:
            if self._count_file(file):
                upgrades += file.head.upgrades
                states += file.head.states
        if self.dry_run:
            return
        if corrections:
            self.store.correct_outcomes(corrections)
        if upgrades:
            self.store.replace_outcome_edits(upgrades, only=PLACEHOLDER)
        if states:
            self.store.record_file_states(states, problems=work.problems)

    def _count_write(
        self, file: _File, write: Write, outcome: WriteResult, placeholders: int
    ) -> None:
        if not outcome.ok:
            if file.failure is None:
                file.failure = str(outcome.error)
            return
        if isinstance(write, OutcomeRowsWrite):
            file.added += len(write.rows)
            self.result.outcomes_added += len(write.rows)
            self.result.outcomes_placeholder += placeholders

    def _count_file(self, file: _File) -> bool:
        """Tally one finished file; True when all its writes were applied."""
        head, result = file.head, self.result
        if file.failure is not None:
            self.invalid(head.rel, f"not indexed: {file.failure}")
            return False
        result.placeholders_upgraded += head.upgraded_rows
        result.outcomes_corrected += file.corrected
        if head.row_kind == "insert":
            result.inserted += 1
        elif head.row_kind == "update" or file.added or head.upgrades or file.corrected:
            result.updated += 1
        else:
            result.unchanged += 1
        return True
