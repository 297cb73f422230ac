"""At most one run of each job at a time, whoever asks for it.

Every ``integrity_check`` request used to start a run of its own: 3,000 requests under
distinct ids started 1,545 threads with a read-only connection each (1.5 GiB), and a
save sent meanwhile got no reply within 20 s. Now a job (checkpoint, reconcile,
integrity, request-id pruning), asked for or scheduled, runs once at a time:

- a request that arrives while a run it could share is going (same job, same
  parameters, not a scheduled run) gets that run's result, up to
  :data:`SHARED_REQUESTS_MAX` requests per run;
- any other request for a job that is running is refused ``unavailable`` (the client
  retries after its back-off), naming the run it waits for;
- a scheduled run that comes due while its job is running is skipped.

Requests are handled on the loop thread and scheduled runs on APScheduler's, so the
table of running jobs is locked; a run leaves it when its future settles (on the loop
thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sessiond.tasks import Task
from sessionstore.errors import DaemonUnavailable

SHARED_REQUESTS_MAX = 64
"""Requests answered from one run at most; more are refused ``unavailable`` (each one
waiting costs an entry in the loop's table of running requests until the run ends)."""

SCHEDULED = {"scheduled": True}
"""The parameters a scheduled run is recorded with: never shared with a request."""


@dataclass
class _Run:
    task: Task
    params: dict[str, Any]
    started: float
    requests: int


class JobRuns:
    """The job runs under way, by job name (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}

    def for_request(self, name: str, params: dict[str, Any], make: Callable[[], Task]) -> Task:
        """A new run of ``name`` (``make()``), or the running one if this request may share it.

        The caller launches the task unless it is already under way (a shared run).
        Raises DaemonUnavailable when the job runs with other parameters, or when too
        many requests share its run already.
        """
        with self._lock:
            run = self._runs.get(name)
            if run is None:
                return self._start(name, params, make)
            if run.params != params:
                raise DaemonUnavailable(
                    f"{name} is already running ({_describe(run)}); retry once it is done"
                )
            if run.requests >= SHARED_REQUESTS_MAX:
                raise DaemonUnavailable(
                    f"{name} is already running with {run.requests} requests waiting for "
                    "its result; retry once it is done"
                )
            run.requests += 1
            return run.task

    def for_schedule(self, name: str, make: Callable[[], Task]) -> Task | None:
        """A new scheduled run of ``name``, or None if the job is running already."""
        with self._lock:
            if name in self._runs:
                return None
            return self._start(name, SCHEDULED, make)

    def running(self, name: str) -> str | None:
        """What the running run of ``name`` is (for a log line), or None."""
        with self._lock:
            run = self._runs.get(name)
            return None if run is None else _describe(run)

    def _start(self, name: str, params: dict[str, Any], make: Callable[[], Task]) -> Task:
        task = make()
        self._runs[name] = _Run(task, params, time.monotonic(), 1)

        def finished(future: Future[Any]) -> None:
            with self._lock:
                if self._runs.get(name) is not None and self._runs[name].task is task:
                    del self._runs[name]

        task.future.add_done_callback(finished)  # never done yet: the callback waits
        return task


def _describe(run: _Run) -> str:
    what = (
        "a scheduled run"
        if run.params == SCHEDULED
        else "a run asked for"
        + (
            ""
            if not run.params
            else " with " + ", ".join(f"{k}={v}" for k, v in run.params.items())
        )
    )
    return f"{what}, started {time.monotonic() - run.started:.0f}s ago"
