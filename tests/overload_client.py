"""One hammering client for the overload tests, run in a forked pool worker.

It saves its session, then pipelines ``count`` outcomes with at most ``in_flight``
unacknowledged, and reports what happened to every save it sent: acknowledged or
failed (with the error class), and how often it had to wait for the daemon.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from daemon_helpers import EDIT, outcome, session

from sessionstore import SessionStoreClient
from sessionstore.errors import PipelineError, SessionStoreError

_failures_seen: Any = None  # a multiprocessing.Value shared with the test, when given
_WHAT = re.compile(r"save_outcome '([^']+)'")


def init(failures_seen: Any) -> None:
    """Pool initializer: the counter that tells the test a client has seen a failure."""
    global _failures_seen
    _failures_seen = failures_seen


def _report_failures(count: int) -> None:
    if _failures_seen is not None and count:
        with _failures_seen.get_lock():
            _failures_seen.value += count


def hammer(address: str, worker: int, count: int, in_flight: int, timeout: float) -> dict:
    started = time.monotonic()
    session_id = f"load-{worker:03d}"
    report: dict[str, Any] = {
        "worker": worker,
        "session_id": session_id,
        "sent": [],
        "acked": 0,
        "failed": [],
        "errors": Counter(),
        "waits": 0,
    }
    client = SessionStoreClient(address, timeout=timeout, max_in_flight=in_flight)
    try:
        try:
            client.save_session(session(session_id, worker))
        except SessionStoreError as err:
            report["errors"][type(err).__name__] += 1
            _report_failures(1)
            return report
        pipe = None
        seen = 0
        try:
            with client.pipeline(in_flight) as pipe:
                for i in range(count):
                    if pipe.in_flight >= in_flight:
                        report["waits"] += 1  # back-pressure: this send waits for acks
                    edit_id = f"{session_id}-{i:05d}"
                    pipe.save_outcome(session_id, outcome(edit_id), **EDIT)
                    report["sent"].append(edit_id)
                    if len(pipe.failures) > seen:
                        _report_failures(len(pipe.failures) - seen)
                        seen = len(pipe.failures)
        except PipelineError as err:
            _report_failures(len(err.failures) - seen)
        assert pipe is not None
        report["acked"] = pipe.acknowledged
        for what, failure in pipe.failures:
            match = _WHAT.search(what)
            assert match, what
            report["failed"].append(match.group(1))
            report["errors"][type(failure).__name__] += 1
    finally:
        client.close()
        report["seconds"] = round(time.monotonic() - started, 3)
    return report
