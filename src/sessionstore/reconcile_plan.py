"""What one session.json asks of the index: read, parsed, diffed, and encoded as rows.

This is the part of a reconcile pass that costs in proportion to a file's size:
reading it, parsing its JSON, validating it as a save is validated, reading the
session back from the index to compare, and encoding the rows to write. In the
daemon it runs in a process of its own (:mod:`sessionstore.reconcile_reader`):
parsing a 21 MiB session.json holds the GIL for over a second in one
``json.loads`` call, and pydantic's validation of it as long again, so on a
thread of the daemon it would still stall the loop that acknowledges saves. What
it hands back is flat (row tuples and strings) and comes in messages of bounded
size, so the loop only unpickles and writes.

The diff is made against the index as this process reads it; the loop applies the
writes later and checks again, where a save may have come in between, only what
must not be done twice (adding an outcome row: see :mod:`sessionstore.reconcile`).
A session row is written when it differs here, and the file wins either way.

Messages, in order, per file: :class:`Unusable`, or :class:`FileHead` then
:class:`RowChunk` x N then :class:`FileEnd`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sessionstore.errors import InvalidRecord
from sessionstore.filereading import (
    MAX_FILE_BYTES,
    FileState,
    UnusableFile,
    locate,
    read_bytes,
    settled,
)
from sessionstore.models import EditOutcome, LearningSession
from sessionstore.plans import PLACEHOLDER, outcome_edit, plan_rel, read_plan
from sessionstore.records import OutcomeEdit, outcome_row, outcome_values, session_row
from sessionstore.sessiondirs import SESSION_FILE, parse_session, session_rel
from sessionstore.store import SessionStore

CHUNK_BYTES = 256 * 1024
"""About how many bytes of rows one :class:`RowChunk` carries: each message is one
unpickle on the loop, which must stay a few milliseconds."""


@dataclass(slots=True)
class Unusable:
    """A session.json that cannot be indexed; ``state`` is recorded with the reason when
    the problem is in the file's content and the file has settled, so an unchanged file
    is not read again (its reason is reported from the record)."""

    name: str
    rel: str
    reason: str
    state: FileState | None = None


@dataclass(slots=True)
class FileHead:
    """A session's row (when it must be written) and what comes after its rows."""

    name: str
    rel: str
    session_id: str
    parent_id: str | None
    row: tuple[Any, ...] | None
    """The session row to upsert, or None when the index row equals the file's."""
    row_kind: Literal["insert", "update"] | None
    upgrades: list[tuple[str, str, OutcomeEdit]] = field(default_factory=list)
    """(session id, edit id, edit): placeholder rows plan.json can now complete."""
    upgraded_rows: int = 0
    states: list[FileState] = field(default_factory=list)
    """To record once everything of this file is written."""
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of a plan.json that could not be used."""
    nbytes: int = 0


@dataclass(slots=True)
class RowChunk:
    """Outcome rows to add, in file order, and outcome values to correct."""

    name: str
    outcomes: list[tuple[tuple[Any, ...], bool]] = field(default_factory=list)
    """(outcome row, written with placeholder edit fields)."""
    corrections: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    """(edit id, the outcome's values as the file has them)."""
    nbytes: int = 0


@dataclass(slots=True)
class FileEnd:
    name: str


Message = Unusable | FileHead | RowChunk | FileEnd


def plan_file(
    store: SessionStore,
    sessions: Path,
    real_sessions: str,
    name: str,
    placeholders: list[str],
    max_bytes: int = MAX_FILE_BYTES,
) -> Iterator[Message]:
    """The messages for session ``name``: what to write so the index agrees with its file.

    ``placeholders``: the edit ids of this session's placeholder rows in the index.
    ``max_bytes``: session.json and plan.json files larger than this are refused unread.
    """
    rel = session_rel(name)
    try:
        path, _ = locate(sessions / name / SESSION_FILE, real_sessions)
        data, st = read_bytes(path, max_bytes)
    except (UnusableFile, FileNotFoundError) as err:  # gone or unreadable since the scan
        yield Unusable(
            name, rel, str(err) if isinstance(err, UnusableFile) else "removed before it was read"
        )
        return
    try:
        session = parse_session(data, name)
    except UnusableFile as err:  # in the content: the same until the file changes
        yield Unusable(
            name, rel, str(err), (rel, st.st_size, st.st_mtime_ns, None) if settled(st) else None
        )
        return
    del data
    planner = _Planner(store, sessions, real_sessions, name, placeholders, max_bytes)
    yield from planner.plan(session, st)


class _Planner:
    def __init__(
        self,
        store: SessionStore,
        sessions: Path,
        real_sessions: str,
        name: str,
        placeholders: list[str],
        max_bytes: int,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.real_sessions = real_sessions
        self.name = name
        self.placeholders = placeholders
        self.max_bytes = max_bytes

    def plan(self, session: LearningSession, st: Any) -> Iterator[Message]:
        row_kind, missing, corrections = self._diff(session)
        head = FileHead(
            self.name,
            session_rel(self.name),
            session.id,
            session.parent_session_id,
            session_row(session) if row_kind is not None else None,
            row_kind,
        )
        if settled(st):
            head.states.append((head.rel, st.st_size, st.st_mtime_ns, session.id))
        edits: list[tuple[OutcomeEdit, bool]] = []
        if missing or self.placeholders:
            edits = self._plan_edits(head, missing)
        head.nbytes = _size(head.row)
        yield head
        chunk = RowChunk(self.name)
        for outcome, (edit, is_placeholder) in zip(missing, edits, strict=True):
            row = outcome_row(session.id, outcome, edit)
            chunk.outcomes.append((row, is_placeholder))
            chunk.nbytes += _size(row)
            if chunk.nbytes >= CHUNK_BYTES:
                yield chunk
                chunk = RowChunk(self.name)
        for outcome in corrections:
            values = outcome_values(outcome)
            chunk.corrections.append((outcome.edit_id, values))
            chunk.nbytes += _size(values)
            if chunk.nbytes >= CHUNK_BYTES:
                yield chunk
                chunk = RowChunk(self.name)
        if chunk.outcomes or chunk.corrections:
            yield chunk
        yield FileEnd(self.name)

    def _diff(
        self, session: LearningSession
    ) -> tuple[Literal["insert", "update"] | None, list[EditOutcome], list[EditOutcome]]:
        """(row to write, outcomes the index lacks, outcomes whose values differ)."""
        try:
            existing = self.store.get_session(session.id)
        except InvalidRecord:  # an index row we cannot read: the file wins
            have = self.store.session_outcome_ids(session.id)
            return "update", _missing(session, have), []
        if existing is None:
            return "insert", list(session.edit_outcomes), []
        have = {outcome.edit_id for outcome in existing.edit_outcomes}
        row: Literal["update"] | None = None if _same_row(existing, session) else "update"
        corrections = _differing(existing.edit_outcomes, session.edit_outcomes)
        return row, _missing(session, have), corrections

    def _plan_edits(
        self, head: FileHead, missing: list[EditOutcome]
    ) -> list[tuple[OutcomeEdit, bool]]:
        """Each missing outcome's Edit fields from plan.json (or a placeholder), and the
        placeholder rows plan.json can now complete."""
        plan = read_plan(self.sessions, self.real_sessions, self.name, self.max_bytes)
        if plan.problem is not None:
            head.problems.append((plan_rel(self.name), plan.problem))
        edits = [outcome_edit(plan, outcome.edit_id) for outcome in missing]
        upgradable = [edit_id for edit_id in self.placeholders if edit_id in plan.edits]
        head.upgraded_rows = len(upgradable)
        head.upgrades = [
            (head.session_id, edit_id, plan.edits[edit_id]) for edit_id in dict.fromkeys(upgradable)
        ]
        left = any(is_placeholder for _, is_placeholder in edits) or len(upgradable) < len(
            self.placeholders
        )
        if left and plan.state is not None:
            head.states.append(plan.state)
        return edits


def _size(row: tuple[Any, ...] | None) -> int:
    """About what a row costs to hold: its strings' lengths, a few bytes per other value."""
    if row is None:
        return 0
    return sum(len(v) if isinstance(v, str) else 16 for v in row)


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


__all__ = ["PLACEHOLDER", "FileEnd", "FileHead", "Message", "RowChunk", "Unusable", "plan_file"]
