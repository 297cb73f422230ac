"""What runs inside each benchmark process (spawned, so nothing is inherited but the spec).

A worker opens its own store or client, reports ``ready``, waits on the common
start event, saves, and reports what it saw. Latency is measured by the worker
itself, per save, with ``time.monotonic()`` (system-wide on Linux, so the
parent can compare the workers' end times with its start time):

* ``direct`` / ``sync``: the duration of each ``save_outcome`` call, acknowledged
  or failed (a save that waited out the busy timeout counts its 5 s);
* ``pipelined``: per save, from the moment its frame was handed to the socket to
  the moment the pipeline read its ack (time spent waiting for room in the
  in-flight window is not part of it; that wait is the back-pressure that
  throughput already shows);
* ``ceiling``: per ``apply_batch`` call, i.e. one number per batch of rows.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import sqlite3
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sessionstore.benchmarks import data
from sessionstore.client import SessionStoreClient
from sessionstore.errors import DaemonUnavailable, SessionStoreError
from sessionstore.pipeline import Pipeline
from sessionstore.store import Durability, OutcomeWrite, SessionStore

WorkerKind = Literal["direct", "sync", "pipelined", "ceiling"]
PARENT_CHECK_SECONDS = 1.0
ERROR_SAMPLES = 3
"""Error messages a worker sends back verbatim (the rest are only counted)."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs; pickled into the spawned process."""

    index: int
    kind: WorkerKind
    session_ids: tuple[str, ...]
    saves: int
    db_path: str | None = None
    address: str | None = None
    durability: Durability = "full"
    busy_timeout: float = 5.0
    client_timeout: float = 10.0
    until_stop: bool = False
    """Save until the stop event is set (at least once) instead of ``saves`` times."""
    record_latency: bool = True
    batch_size: int = 1000
    """Rows per ``apply_batch`` for ``ceiling``."""


def _exit_if_orphaned() -> None:
    """A worker whose parent was killed outright stops instead of writing on forever."""
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        raise SystemExit(1)


def error_kind(err: BaseException) -> str:
    """``database_locked``, ``timeout`` (no ack within the client timeout) or ``other``."""
    if "database is locked" in str(err):
        return "database_locked"
    if isinstance(err, DaemonUnavailable):
        return "timeout"
    return "other"


class _Tally:
    def __init__(self, record_latency: bool) -> None:
        self.latencies: array[float] | None = array("d") if record_latency else None
        self.attempted = 0
        self.acknowledged = 0
        self.errors: Counter[str] = Counter()
        self.samples: list[str] = []

    def latency(self, seconds: float) -> None:
        if self.latencies is not None:
            self.latencies.append(seconds)

    def failed(self, err: BaseException) -> None:
        self.errors[error_kind(err)] += 1
        if len(self.samples) < ERROR_SAMPLES:
            self.samples.append(f"{type(err).__name__}: {err}")

    def payload(self, ended: float) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "acknowledged": self.acknowledged,
            "errors": dict(self.errors),
            "error_samples": self.samples,
            "ended": ended,
            "latencies": None if self.latencies is None else self.latencies.tobytes(),
        }


@contextmanager
def timed_pipeline(client: SessionStoreClient, tally: _Tally) -> Iterator[Pipeline]:
    """What ``client.pipeline()`` does, timing each save from its frame's send to its result."""
    sent_at: dict[str, float] = {}

    def sent(ids: list[str]) -> None:
        now = time.monotonic()
        for rid in ids:
            sent_at[rid] = now

    def settled(rid: str, ok: bool) -> None:
        started = sent_at.pop(rid, None)
        if started is not None:
            tally.latency(time.monotonic() - started)

    pipe = Pipeline(client.transport, client.max_in_flight, on_sent=sent, on_settled=settled)
    try:
        yield pipe
    finally:
        pipe.drain()
        tally.acknowledged += pipe.acknowledged
        for _, err in pipe.failures:
            tally.failed(err)


def _edit_ids(spec: WorkerSpec, stop: Any) -> Iterator[tuple[str, str, int]]:
    """(session id, edit id, n) for each save this worker makes, spread over its sessions."""
    sessions = spec.session_ids
    n = 0
    while (n < 1 or not stop.is_set()) if spec.until_stop else n < spec.saves:
        if n % 1000 == 999:
            _exit_if_orphaned()
        sid = sessions[n % len(sessions)]
        yield sid, data.edit_id(sid, n), n
        n += 1


def _save_each(
    saver: SessionStore | SessionStoreClient, spec: WorkerSpec, tally: _Tally, stop: Any
) -> None:
    """One timed ``save_outcome`` at a time: the same loop serves the store and the client,
    which is the drop-in promise at work. Every failure is a data point, not a crash."""
    e = data.EDIT
    for sid, eid, n in _edit_ids(spec, stop):
        tally.attempted += 1
        started = time.monotonic()
        try:
            saver.save_outcome(
                sid, data.outcome(eid, n), pillar=e.pillar, op=e.op, target=e.target,
                risk_tier=e.risk_tier, rationale=e.rationale,
            )  # fmt: skip
            tally.acknowledged += 1
        except Exception as err:
            tally.failed(err)
        tally.latency(time.monotonic() - started)


def _run_direct(spec: WorkerSpec, tally: _Tally, ready: Callable[[], None], stop: Any) -> None:
    assert spec.db_path is not None
    store = SessionStore(spec.db_path, durability=spec.durability, busy_timeout=spec.busy_timeout)
    try:
        ready()
        _save_each(store, spec, tally, stop)
    finally:
        store.close()


def _run_client(spec: WorkerSpec, tally: _Tally, ready: Callable[[], None], stop: Any) -> None:
    assert spec.address is not None
    client = SessionStoreClient(
        spec.address, timeout=spec.client_timeout
    )  # made here, not inherited
    try:
        for n, sid in enumerate(spec.session_ids):
            client.save_session(data.session(sid, n))  # also connects the socket before the clock
        ready()
        if spec.kind != "pipelined":
            _save_each(client, spec, tally, stop)
            return
        e = data.EDIT
        with timed_pipeline(client, tally) as pipe:
            for sid, eid, n in _edit_ids(spec, stop):
                tally.attempted += 1
                pipe.save_outcome(
                    sid, data.outcome(eid, n), pillar=e.pillar, op=e.op, target=e.target,
                    risk_tier=e.risk_tier, rationale=e.rationale,
                )  # fmt: skip
    finally:
        client.close()


def _run_ceiling(spec: WorkerSpec, tally: _Tally, ready: Callable[[], None], stop: Any) -> None:
    assert spec.db_path is not None
    store = SessionStore(spec.db_path, durability=spec.durability)
    try:
        ready()
        batch: list[OutcomeWrite] = []
        for sid, eid, n in _edit_ids(spec, stop):
            batch.append(OutcomeWrite(sid, data.outcome(eid, n), data.EDIT))
            if len(batch) >= spec.batch_size:
                _apply(store, batch, tally)
                batch = []
        if batch:
            _apply(store, batch, tally)
    finally:
        store.close()


def _apply(store: SessionStore, batch: list[OutcomeWrite], tally: _Tally) -> None:
    tally.attempted += len(batch)
    started = time.monotonic()
    try:
        results = store.apply_batch(batch)
    except SessionStoreError as err:
        for _ in batch:
            tally.failed(err)
        return
    finally:
        tally.latency(time.monotonic() - started)
    for result in results:
        if result.ok:
            tally.acknowledged += 1
        else:
            assert result.error is not None
            tally.failed(result.error)


_RUNNERS = {
    "direct": _run_direct,
    "sync": _run_client,
    "pipelined": _run_client,
    "ceiling": _run_ceiling,
}


def worker_main(spec: WorkerSpec, messages: Any, start: Any, stop: Any) -> None:
    """Process entry point: report ready, wait for the start, save, report the tally."""
    # The parent owns Ctrl-C: it stops every worker itself, so a worker must not die
    # half-way with a traceback on the terminal before the parent can clean up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tally = _Tally(spec.record_latency)

    def ready() -> None:
        messages.put(("ready", spec.index, None))
        while not start.wait(PARENT_CHECK_SECONDS):
            _exit_if_orphaned()

    try:
        _RUNNERS[spec.kind](spec, tally, ready, stop)
        messages.put(("result", spec.index, tally.payload(time.monotonic())))
    except BaseException:
        messages.put(
            ("error", spec.index, f"worker {spec.index} ({spec.kind}): " + traceback.format_exc())
        )


def hold_write_lock(
    db_path: str,
    lock_seconds: float,
    release_seconds: float,
    cycles: int,
    messages: Any,
    stop: Any,
) -> None:
    """Another writer of the shared file: BEGIN IMMEDIATE, sleep, COMMIT, rest; ``cycles`` times.

    Sends ``locked`` once it first holds the lock (the writers start then) and
    sets ``stop`` after its last rest, which ends the writers' run.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn = sqlite3.connect(db_path, timeout=60.0, isolation_level=None)
        waited = held = 0.0
        for cycle in range(cycles):
            asked = time.monotonic()
            conn.execute("BEGIN IMMEDIATE")
            got = time.monotonic()
            conn.execute(
                "UPDATE learning_sessions SET teacher_cost_usd = teacher_cost_usd "
                "WHERE rowid = (SELECT min(rowid) FROM learning_sessions)"
            )
            if cycle == 0:
                messages.put(("locked", -1, None))
            else:
                waited += got - asked
            time.sleep(lock_seconds)
            conn.execute("COMMIT")
            held += time.monotonic() - got
            time.sleep(release_seconds)
        conn.close()
        stop.set()
        messages.put(
            (
                "holder",
                -1,
                {
                    "cycles": cycles,
                    "held_seconds": round(held, 3),
                    "waited_for_lock_seconds": round(waited, 3),
                },
            )
        )
    except BaseException:
        stop.set()
        messages.put(("error", -1, "lock holder: " + traceback.format_exc()))


def drain(messages: Any) -> None:
    """Empty a queue so its feeder threads can exit (used on the way out)."""
    try:
        while True:
            messages.get_nowait()
    except (queue.Empty, OSError, ValueError):
        return
