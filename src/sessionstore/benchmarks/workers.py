"""What runs inside each benchmark process (spawned, so nothing is inherited but the spec).

A worker opens its own store or client, reports ``ready``, waits on the common
start event, saves, and reports what it saw. In a timed phase every worker reads
the one deadline the parent set before the start event, saves until it, and
counts apart the saves acknowledged by then (``in_window``): the phase's
throughput is those over the window, so a slow starter or a straggler changes
the count by what it did in the window, never the window's length. Latency is
measured by the worker itself, per save, with ``time.monotonic()`` (system-wide
on Linux, so the parent can compare the workers' end times with its start time):

* ``direct`` / ``sync``: the duration of each ``save_outcome`` call, acknowledged
  or failed (a save that waited out the busy timeout counts its 5 s);
* ``pipelined``: per save, from the moment its frame was handed to the socket to
  the moment the pipeline read its ack (time spent waiting for room in the
  in-flight window is not part of it; that wait is the back-pressure that
  throughput already shows);
* ``ceiling``: per transaction of ``batch_size`` rows, i.e. one number per commit.
"""

from __future__ import annotations

import math
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

from sessionstore import batch, protocol, records
from sessionstore.benchmarks import data, original
from sessionstore.benchmarks.original import DirectWriter
from sessionstore.client import SessionStoreClient
from sessionstore.errors import DaemonUnavailable
from sessionstore.pipeline import Pipeline
from sessionstore.store import Durability, SessionStore

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
    """Rows per transaction for ``ceiling``."""
    writer: DirectWriter = "ours"
    """Whose store a ``direct`` worker saves with (see :mod:`.original`)."""
    seconds: float = 0.0
    """A timed phase's length; only ``ceiling`` reads it (its clock runs in transactions only)."""


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
        self.in_window = 0
        """Acknowledged by the deadline (all acknowledged when the phase has none)."""
        self.deadline = math.inf
        self.measured_seconds: float | None = None
        """Ceiling only: the time its transactions took (its window)."""
        self.cpu_seconds: float | None = None
        """Ceiling only: the CPU its transactions took."""
        self.errors: Counter[str] = Counter()
        self.samples: list[str] = []

    def latency(self, seconds: float) -> None:
        if self.latencies is not None:
            self.latencies.append(seconds)

    def acked(self, at: float, count: int = 1) -> None:
        self.acknowledged += count
        if at <= self.deadline:
            self.in_window += count

    def failed(self, err: BaseException) -> None:
        self.errors[error_kind(err)] += 1
        if len(self.samples) < ERROR_SAMPLES:
            self.samples.append(f"{type(err).__name__}: {err}")

    def payload(self, ended: float) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "acknowledged": self.acknowledged,
            "in_window": self.in_window,
            "measured_seconds": self.measured_seconds,
            "cpu_seconds": self.cpu_seconds,
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
        now = time.monotonic()
        started = sent_at.pop(rid, None)
        if started is not None:
            tally.latency(now - started)
        if ok:
            tally.acked(now)

    pipe = Pipeline(client.transport, client.max_in_flight, on_sent=sent, on_settled=settled)
    try:
        yield pipe
    finally:
        pipe.drain()
        for _, err in pipe.failures:
            tally.failed(err)


def _edit_ids(spec: WorkerSpec, stop: Any, deadline: float) -> Iterator[tuple[str, str, int]]:
    """(session id, edit id, n) for each save this worker makes, spread over its sessions:
    until the deadline in a timed phase, else until the stop event or ``saves`` of them."""
    sessions = spec.session_ids
    n = 0
    while (
        time.monotonic() < deadline
        if deadline != math.inf
        else ((n < 1 or not stop.is_set()) if spec.until_stop else n < spec.saves)
    ):
        if n % 1000 == 999:
            _exit_if_orphaned()
        sid = sessions[n % len(sessions)]
        yield sid, data.edit_id(sid, n), n
        n += 1


def _save_each(
    saver: original.Writer | SessionStoreClient,
    spec: WorkerSpec,
    tally: _Tally,
    stop: Any,
    model: Any = data.EditOutcome,
) -> None:
    """One timed ``save_outcome`` at a time: the same loop serves the stores and the client,
    which is the drop-in promise at work. Every failure is a data point, not a crash.
    ``model`` is the caller's outcome class (OpenJarvis's for the original's store)."""
    e = data.EDIT
    for sid, eid, n in _edit_ids(spec, stop, tally.deadline):
        tally.attempted += 1
        started = time.monotonic()
        try:
            saver.save_outcome(
                sid, data.outcome(eid, n, model), pillar=e.pillar, op=e.op, target=e.target,
                risk_tier=e.risk_tier, rationale=e.rationale,
            )  # fmt: skip
            ended = time.monotonic()
            tally.acked(ended)
        except Exception as err:
            ended = time.monotonic()
            tally.failed(err)
        tally.latency(ended - started)


Ready = Callable[[], None]


def _run_direct(spec: WorkerSpec, tally: _Tally, ready: Ready, stop: Any) -> None:
    assert spec.db_path is not None
    store = original.open_writer(spec.writer, spec.db_path, spec.durability, spec.busy_timeout)
    try:
        ready()
        _save_each(store, spec, tally, stop, original.models(spec.writer).EditOutcome)
    finally:
        store.close()


def _run_client(spec: WorkerSpec, tally: _Tally, ready: Ready, stop: Any) -> None:
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
            for sid, eid, n in _edit_ids(spec, stop, tally.deadline):
                tally.attempted += 1
                pipe.save_outcome(
                    sid, data.outcome(eid, n), pillar=e.pillar, op=e.op, target=e.target,
                    risk_tier=e.risk_tier, rationale=e.rationale,
                )  # fmt: skip
    finally:
        client.close()


def _run_ceiling(spec: WorkerSpec, tally: _Tally, ready: Ready, stop: Any) -> None:
    """The daemon's own statements for a batch of outcome saves (``batch.INSERT_APPLIED`` and
    ``batch.INSERT_OUTCOME`` by ``executemany``, rows from ``records.outcome_row`` with the
    daemon's request ids and digests) on its connection settings, ``batch_size`` rows per
    commit. The rows of each transaction are built before its clock starts, and only the
    transactions are timed, until they add up to ``spec.seconds``: what SQLite on this disk
    can do at best with this schema, with nothing of Python's record handling in it.
    """
    assert spec.db_path is not None
    store = SessionStore(spec.db_path, durability=spec.durability)
    conn = store._conn  # the connection exactly as the daemon's store sets it up
    n = 0
    try:
        ready()
        timed = cpu = 0.0
        while timed < spec.seconds:
            rows, applied = _ceiling_rows(spec, n)
            n += len(rows)
            tally.attempted += len(rows)
            started, cpu_started = time.perf_counter(), time.thread_time()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(batch.INSERT_APPLIED, applied)
            conn.executemany(batch.INSERT_OUTCOME, rows)
            conn.execute("COMMIT")
            took = time.perf_counter() - started
            cpu += time.thread_time() - cpu_started
            timed += took
            tally.latency(took)
            tally.acked(-math.inf, len(rows))
            if n % (100 * spec.batch_size) == 0:
                _exit_if_orphaned()
        tally.measured_seconds = timed
        tally.cpu_seconds = cpu
    finally:
        store.close()


def _ceiling_rows(spec: WorkerSpec, first: int) -> tuple[list[Any], list[Any]]:
    """One transaction's outcome rows and applied-request rows, as the daemon makes them."""
    sessions = spec.session_ids
    rows = []
    for n in range(first, first + spec.batch_size):
        sid = sessions[n % len(sessions)]
        rows.append(records.outcome_row(sid, data.outcome(data.edit_id(sid, n), n), data.EDIT))
    now = time.time()
    applied = [
        (protocol.new_request_id(), "save_outcome", now, batch.content_digest(row)) for row in rows
    ]
    return rows, applied


_RUNNERS = {
    "direct": _run_direct,
    "sync": _run_client,
    "pipelined": _run_client,
    "ceiling": _run_ceiling,
}


def worker_main(spec: WorkerSpec, messages: Any, start: Any, stop: Any, deadline: Any) -> None:
    """Process entry point: report ready, wait for the start, save, report the tally.

    ``deadline`` (a shared double) holds the timed phase's end in ``time.monotonic()``
    seconds, set by the parent before the start event; 0 when the phase is not timed.
    """
    # The parent owns Ctrl-C: it stops every worker itself, so a worker must not die
    # half-way with a traceback on the terminal before the parent can clean up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tally = _Tally(spec.record_latency)

    def ready() -> None:
        messages.put(("ready", spec.index, None))
        while not start.wait(PARENT_CHECK_SECONDS):
            _exit_if_orphaned()
        if deadline.value > 0:
            tally.deadline = deadline.value

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
