"""Reading the authoritative files safely: inside sessions/, read-only, bounded, strict JSON.

Used by reconcile on files it does not own: nothing here creates, follows out of,
or blocks on anything under ``sessions/`` (:func:`locate` refuses symlinks that
resolve elsewhere and anything but a regular file; no symlink following at open,
no waiting on a FIFO, a size cap), and every refusal is an :class:`UnusableFile`
whose message is a one-line reason fit for a report. :func:`settled` says when a
file's size/mtime may be recorded as a :data:`FileState`.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

SESSIONS_DIR = "sessions"
"""The directory under the learning root that holds one directory per session."""

MAX_FILE_BYTES = 32 << 20
"""A session.json or plan.json larger than this is reported, not read."""

SETTLE_SECONDS = 2.0
"""A file modified more recently than this is reconciled but its state is not recorded."""

FileState = tuple[str, int, int, str | None]
"""(path relative to the learning root, size, mtime_ns, session id), as recorded; no
session id for a file recorded as unusable."""


class UnusableFile(Exception):
    """A file that cannot be used; the message is the one-line reason."""


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def locate(path: Path, real_sessions: str) -> tuple[str, os.stat_result]:
    """The path to open and its stat; refuses symlinks out of sessions/ and non-files.

    ``real_sessions`` is the real path of sessions/. A missing file raises
    :class:`FileNotFoundError`: what absence means is the caller's to say.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise UnusableFile(f"cannot stat: {err.strerror or err}") from None
    target = str(path)
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(path)
        if not inside(target, real_sessions):
            raise UnusableFile("symlink resolves outside sessions/")
        try:
            st = os.stat(target)
        except OSError as err:
            raise UnusableFile(f"broken symlink: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnusableFile("not a regular file")
    return target, st


def settled(st: os.stat_result) -> bool:
    """Modified at least SETTLE_SECONDS ago: its size/mtime may be recorded.

    A file rewritten within the filesystem's timestamp granularity could otherwise
    keep a stale recorded state (git's "racily clean" problem).
    """
    return st.st_mtime_ns <= time.time_ns() - int(SETTLE_SECONDS * 1e9)


_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def read_bytes(path: str, max_bytes: int = MAX_FILE_BYTES) -> tuple[bytes, os.stat_result]:
    """Read a file read-only (never blocking on a FIFO); its stat is that of what was read.
    A file larger than ``max_bytes`` is refused before it is read."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        raise UnusableFile(f"cannot open: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnusableFile("not a regular file")
        if st.st_size > max_bytes:
            raise UnusableFile(f"larger than {max_bytes} bytes ({st.st_size})")
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise UnusableFile(f"larger than {max_bytes} bytes")
        return b"".join(chunks), st
    except OSError as err:
        raise UnusableFile(f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json(data: bytes) -> Any:
    """Strict UTF-8, standard JSON (no NaN/Infinity, finite numbers, no lone surrogates)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UnusableFile(
            f"not UTF-8: byte 0x{data[err.start]:02x} at offset {err.start}"
        ) from None
    if not text.strip():
        raise UnusableFile("empty file")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as err:
        raise UnusableFile(
            f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    except ValueError as err:
        raise UnusableFile(f"not valid JSON: {err}") from None
    except RecursionError:
        raise UnusableFile("not valid JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise UnusableFile("not valid JSON text: unpaired UTF-16 surrogate escape") from None
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str, limit: int = 500) -> str:
    line = _CONTROL.sub("?", " ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 3] + "..."
