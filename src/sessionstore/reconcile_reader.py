"""Where reconcile reads and parses session.json files: here, or in a process of its own.

A reader takes tasks (a session directory's name, and the edit ids of that
session's placeholder rows) and hands back :mod:`sessionstore.reconcile_plan`
messages, in task order, one at a time and only when asked (:meth:`take`), so the
caller decides how much it holds and when.

:class:`InProcessReader` plans each file when asked: for the library, the CLI and
rebuild, where nothing else waits. :class:`ProcessReader` plans in a child
process, for the daemon: measured on a 25 MiB session.json, ``json.loads`` held
the GIL for 1.3 s in one call and validating the result 1.5 s in another, so on a
thread of the daemon they would still stall its loop past a 2 s bound. The child
reads its tasks on a thread of its own, so neither side can block the other
(each pipe direction has its own reader), and it runs at most one message ahead
of what the loop has taken: the pipe's buffer is all that waits in between.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

from sessionstore.filereading import MAX_FILE_BYTES
from sessionstore.reconcile_plan import FileEnd, Message, Unusable, plan_file
from sessionstore.sessiondirs import session_rel
from sessionstore.store import SessionStore

log = logging.getLogger("sessionstore.reconcile")

IDLE_SECONDS = 120.0
"""A reader process with no work for this long exits."""

Task = tuple[str, list[str]]
"""(session directory name, edit ids of that session's placeholder rows in the index)."""


class FileReader(Protocol):
    def submit(self, tasks: list[Task]) -> None:
        """Queue files to plan, after those queued before."""

    def take(self) -> Message | None:
        """The next message if one is ready, else None."""

    @property
    def busy(self) -> bool:
        """Files queued whose last message has not been taken yet."""

    def close(self) -> None:
        """End of a pass: what was not taken is dropped."""


class InProcessReader:
    """Plans each file in this process, when its first message is asked for."""

    def __init__(
        self,
        store: SessionStore,
        sessions: Path,
        real_sessions: str,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self._max_file_bytes = max_file_bytes
        self._store = store
        self._sessions = sessions
        self._real_sessions = real_sessions
        self._tasks: collections.deque[Task] = collections.deque()
        self._current: Iterator[Message] | None = None

    def submit(self, tasks: list[Task]) -> None:
        self._tasks.extend(tasks)

    def take(self) -> Message | None:
        while True:
            if self._current is None:
                if not self._tasks:
                    return None
                name, placeholders = self._tasks.popleft()
                self._current = _plan_or_report(
                    self._store,
                    self._sessions,
                    self._real_sessions,
                    name,
                    placeholders,
                    self._max_file_bytes,
                )
            message = next(self._current, None)
            if message is not None:
                return message
            self._current = None

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._tasks)

    def close(self) -> None:
        self._tasks.clear()
        self._current = None


class ProcessReader:
    """Plans files in a child process started on the first :meth:`submit`.

    The child outlives a pass, so passes close together (a scheduled one, then
    ``sessionstore reconcile``) do not each pay for starting Python and importing
    pydantic (about a second on a busy machine); it exits by itself after
    :data:`IDLE_SECONDS` without work, and a later pass starts another. A pass that
    ends with files still queued (abandoned at shutdown) stops it, so no stale
    message reaches the next pass. A child that dies (killed, out of memory) costs
    the file it was on, reported as unusable for this pass; a new child takes the
    files after it.
    """

    def __init__(
        self,
        db_path: Path,
        sessions: Path,
        real_sessions: str,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self._args = (str(db_path), str(sessions), real_sessions, str(max_file_bytes))
        self._queued: collections.deque[Task] = collections.deque()  # submitted, not finished
        self._process: subprocess.Popen[bytes] | None = None
        self._tasks_out: Connection | None = None
        self._messages_in: Connection | None = None

    def submit(self, tasks: list[Task]) -> None:
        if not tasks:
            return
        if self._process is None or (not self._queued and self._process.poll() is not None):
            self.stop()  # gone idle (or never started)
            self._start()
        self._queued.extend(tasks)
        assert self._tasks_out is not None
        with contextlib.suppress(OSError):  # gone idle just now: take() restarts it
            self._tasks_out.send(tasks)

    def take(self) -> Message | None:
        if self._messages_in is None or not self._queued:
            return None
        try:
            if not self._messages_in.poll(0):
                return None
            message: Message = self._messages_in.recv()
        except (EOFError, OSError):
            return self._died()
        if isinstance(message, FileEnd | Unusable):
            self._queued.popleft()
        return message

    @property
    def busy(self) -> bool:
        return bool(self._queued)

    def close(self) -> None:
        if self._queued:  # it is still at work on files nobody will take
            self._queued.clear()
            self.stop()

    def stop(self) -> None:
        """Stop the child (the daemon's shutdown)."""
        process, self._process = self._process, None
        for conn in (self._tasks_out, self._messages_in):
            if conn is not None:
                conn.close()
        self._tasks_out = self._messages_in = None
        if process is not None:
            try:
                process.wait(1.0)  # it exits on the closed pipes
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _start(self) -> None:
        """Start ``python -m sessionstore.reconcile_reader`` on two pipes of its own.

        A new interpreter, not a fork: the daemon has threads (zmq's, the readers')
        whose locks a forked child would inherit held. Not multiprocessing's spawn
        either, which starts a resource-tracker process on the side.
        """
        tasks_in, tasks_out = os.pipe()
        messages_in, messages_out = os.pipe()
        command = [
            sys.executable, "-P", "-m", "sessionstore.reconcile_reader",
            *self._args, str(tasks_in), str(messages_out),
        ]  # fmt: skip
        try:
            self._process = subprocess.Popen(
                command,
                pass_fds=(tasks_in, messages_out),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            for fd in (tasks_out, messages_in):
                os.close(fd)
            raise
        finally:
            os.close(tasks_in)
            os.close(messages_out)
        self._tasks_out = Connection(tasks_out, readable=False)
        self._messages_in = Connection(messages_in, writable=False)

    def _died(self) -> Unusable | None:
        """The child is gone: report the file it was on, restart for the rest (all of
        them when it left on its own, idle, just as they were sent)."""
        process = self._process
        exitcode = None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                exitcode = process.wait(1.0)
        self.stop()
        rest = list(self._queued)
        self._queued.clear()
        if exitcode == 0:
            self.submit(rest)
            return None
        name, _ = rest.pop(0)
        log.error("reconcile: the reader process died (exit code %s) reading %s", exitcode, name)
        self.submit(rest)
        return Unusable(
            name, session_rel(name), f"the reconcile reader died reading it (exit code {exitcode})"
        )


def _plan_or_report(
    store: SessionStore,
    sessions: Path,
    real_sessions: str,
    name: str,
    placeholders: list[str],
    max_bytes: int,
) -> Iterator[Message]:
    """plan_file, with an unexpected failure reported as the file's, not raised.

    A failure after some of the file's messages went out ends the file all the same
    (:class:`Unusable` after its head): reconcile then records nothing for it.
    """
    try:
        yield from plan_file(store, sessions, real_sessions, name, placeholders, max_bytes)
    except Exception as err:  # the pass goes on without this file
        log.exception("reconcile: planning %s failed unexpectedly", name)
        yield Unusable(name, session_rel(name), f"cannot reconcile: {type(err).__name__}: {err}")


def _child_main(
    tasks_in: Connection,
    messages_out: Connection,
    db_path: str,
    sessions: str,
    real: str,
    max_bytes: int,
) -> None:
    """The child: plan each task in order, sending its messages; stop at the end of input."""
    tasks: queue.Queue[list[Task] | None] = queue.Queue()

    def feed() -> None:
        try:
            while True:
                tasks.put(tasks_in.recv())
        except (EOFError, OSError):
            tasks.put(None)

    threading.Thread(target=feed, daemon=True).start()
    store = SessionStore(Path(db_path), readonly=True)
    try:
        while True:
            try:
                batch = tasks.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                return  # idle: exit 0, the daemon starts another when there is work
            if batch is None:
                return
            for name, placeholders in batch:
                for message in _plan_or_report(
                    store, Path(sessions), real, name, placeholders, max_bytes
                ):
                    messages_out.send(message)
    except OSError:
        pass  # the daemon closed the pipe: the pass is over
    finally:
        store.close()


if __name__ == "__main__":
    db, sessions_dir, real_sessions, max_file_bytes, task_fd, message_fd = sys.argv[1:]
    _child_main(
        Connection(int(task_fd), writable=False),
        Connection(int(message_fd), readable=False),
        db,
        sessions_dir,
        real_sessions,
        int(max_file_bytes),
    )
