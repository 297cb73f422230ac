"""Maintenance work the ingest loop runs: sliced on the loop, or whole on a thread of its own.

A job that needs the write connection (checkpoint, reconcile, request-id pruning)
is a generator the loop advances one slice per turn, between batches, so saves
keep being acknowledged while it runs. A job that needs no write connection and
cannot be sliced (an integrity check on a read-only connection) runs on a thread.
Either way its future is settled on the loop thread, where replies are sent.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sessionstore.errors import SessionStoreError, ShuttingDown

log = logging.getLogger("sessiond.tasks")

Steps = Generator[float | None, None, Any]
"""A sliced job: each ``next()`` runs one slice. A yielded number says the job had
nothing to do (it waits on work elsewhere, e.g. reconcile's reader process): the
loop may then wait up to that many seconds for requests before the next slice,
instead of spinning."""


@dataclass(eq=False)
class Task:
    """One job: ``make_steps`` yields after each slice and returns the result, or
    ``off_loop`` is called whole on a thread of its own."""

    name: str
    make_steps: Callable[[], Steps] | None
    future: Future[Any] = field(default_factory=Future)
    steps: Steps | None = None
    off_loop: Callable[[], Any] | None = None


def _shutting_down(task: Task) -> ShuttingDown:
    return ShuttingDown(f"{task.name}: sessiond is shutting down")


class SlicedTasks:
    """Tasks advanced one slice per loop turn, oldest first (loop thread only)."""

    def __init__(self) -> None:
        self._queue: collections.deque[Task] = collections.deque()
        self.wait_seconds = 0.0
        """What the last slice asked the loop to wait (0: run the next one at once)."""

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, task: Task) -> None:
        self._queue.append(task)

    def run_slice(self) -> None:
        """Advance the oldest task by one slice; settle its future when it is done."""
        task = self._queue[0]
        try:
            if task.steps is None:
                assert task.make_steps is not None
                task.steps = task.make_steps()
            self.wait_seconds = next(task.steps) or 0.0
            return
        except StopIteration as done:
            task.future.set_result(done.value)
        except Exception as err:
            log.error(
                "%s failed: %s", task.name, err, exc_info=not isinstance(err, SessionStoreError)
            )
            task.future.set_exception(err)
        self.wait_seconds = 0.0
        self._queue.popleft()

    def refuse_all(self) -> None:
        """At shutdown: close every generator and fail its future with ShuttingDown."""
        for task in self._queue:
            if task.steps is not None:
                task.steps.close()
            task.future.set_exception(_shutting_down(task))
        self._queue.clear()


class OffLoopTasks:
    """Tasks run on threads of their own; :meth:`settle` hands their results to the loop.

    ``wake`` is called when a task finishes, so the loop comes round to settle it.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._running: set[Task] = set()
        self._finished: queue.SimpleQueue[tuple[Task, Any, BaseException | None]] = (
            queue.SimpleQueue()
        )

    def __len__(self) -> int:
        return len(self._running)

    def start(self, task: Task) -> None:
        self._running.add(task)
        threading.Thread(
            target=self._run, args=(task,), name=f"sessiond-{task.name}", daemon=True
        ).start()

    def _run(self, task: Task) -> None:
        assert task.off_loop is not None
        try:
            self._finished.put((task, task.off_loop(), None))
        except BaseException as err:  # handed to the loop, which settles the future
            self._finished.put((task, None, err))
        self._wake()

    def settle(self) -> None:
        """Settle the futures of the tasks finished so far (loop thread)."""
        while True:
            try:
                task, result, err = self._finished.get_nowait()
            except queue.Empty:
                return
            if task not in self._running:
                continue  # refused at shutdown already
            self._running.discard(task)
            if err is None:
                task.future.set_result(result)
            else:
                log.error("%s failed: %s", task.name, err, exc_info=err)
                task.future.set_exception(err)

    def refuse_all(self) -> None:
        """At shutdown: fail every future; the threads finish on their own, results dropped."""
        for task in self._running:
            task.future.set_exception(_shutting_down(task))
        self._running.clear()
