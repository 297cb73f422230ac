"""The session directories under ``sessions/``: listing them, reading each ``session.json``.

A session.json is read as :mod:`sessionstore.filereading` reads any authoritative
file: JSON that is not standard JSON (``NaN``, ``Infinity``, numbers overflowing a
float) is refused, since the index cannot store non-finite values faithfully. A
session is then checked exactly as a save is (:func:`sessionstore.inputs.checked`,
which also refuses nesting deeper than ``MAX_NESTING``), so reconcile never indexes
what ``save_session`` would refuse. :func:`parents_first` orders what was read so
that each parent's row is written before its children's. Nothing here reports:
every refusal is an :class:`~sessionstore.filereading.UnusableFile` for reconcile
to report.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sessionstore.errors import InvalidRecord, shorten
from sessionstore.filereading import SESSIONS_DIR, UnusableFile, parse_json, read_bytes, settled
from sessionstore.inputs import checked
from sessionstore.models import LearningSession

SESSION_FILE = "session.json"


@dataclass(slots=True)
class SessionFile:
    """A session.json read and checked, with the size/mtime of what was read."""

    name: str
    rel: str
    session: LearningSession
    size: int
    mtime_ns: int
    settled: bool
    """Old enough for its size/mtime to be recorded (:func:`~sessionstore.filereading.settled`)."""


def session_rel(name: str) -> str:
    """Session ``name``'s session.json, relative to the learning root (as file states are)."""
    return f"{SESSIONS_DIR}/{name}/{SESSION_FILE}"


def list_session_dirs(sessions: Path) -> list[tuple[str, bool]]:
    """Session directory names (sorted) and whether each is a symlink.

    No sessions/ directory means no sessions; one that cannot be listed is unusable.
    """
    try:
        scan = os.scandir(sessions)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise UnusableFile(f"cannot list directory: {err.strerror or err}") from None
    entries = []
    with scan:
        for entry in scan:
            name = entry.name
            if name in {"", ".", ".."} or "/" in name or (os.altsep or "/") in name:
                continue
            try:
                if entry.is_dir():
                    entries.append((name, entry.is_symlink()))
            except OSError:
                continue
    entries.sort()
    return entries


def read_session(path: str, name: str) -> SessionFile:
    """Session ``name`` from its session.json at ``path`` (found by ``locate``)."""
    data, st = read_bytes(path)
    session = parse_session(data, name)
    return SessionFile(name, session_rel(name), session, st.st_size, st.st_mtime_ns, settled(st))


def parse_session(data: bytes, name: str) -> LearningSession:
    """Session ``name`` from the bytes of its session.json; what is wrong with them is
    an :class:`UnusableFile` (a problem of the content: it stays until the file changes)."""
    session = _storable_session(parse_json(data))
    if session.id != name:
        raise UnusableFile(f"id {shorten(session.id)} does not match directory {shorten(name)}")
    return session


T = TypeVar("T")


def _ids(item: SessionFile) -> tuple[str, str | None]:
    return item.session.id, item.session.parent_session_id


def parents_first(
    files: list[T],
    known: set[str],
    ids: Callable[[T], tuple[str, str | None]] = _ids,  # type: ignore[assignment]
) -> tuple[list[T], list[T]]:
    """Order files so each parent precedes its children; the rest have no reachable parent.

    ``known``: session ids already in the index. ``ids(item)``: its (session id,
    parent session id); by default ``item`` is a :class:`SessionFile`.
    """
    ordered: list[T] = []
    placed: set[str] = set()
    remaining = files
    while remaining:
        left = []
        for item in remaining:
            sid, parent = ids(item)
            if parent is None or parent == sid or parent in known or parent in placed:
                ordered.append(item)
                placed.add(sid)
            else:
                left.append(item)
        if len(left) == len(remaining):
            break
        remaining = left
    else:
        remaining = []
    return ordered, remaining


def _storable_session(raw: object) -> LearningSession:
    """Validate as the save path does (:func:`checked`), outcomes included.

    Pydantic alone accepts what the index could store but never serve back
    (``trigger_metadata`` nested past ``MAX_NESTING``: every later listing would fail
    to serialise), so such a file is reported, like any other unusable one.
    """
    try:
        return checked(LearningSession, raw, "not a valid session")
    except InvalidRecord as err:
        raise UnusableFile(str(err)) from None


__all__ = [
    "SESSION_FILE",
    "SessionFile",
    "list_session_dirs",
    "parents_first",
    "parse_session",
    "read_session",
    "session_rel",
]
