"""The scenarios of ``sessionstore bench``; each returns one JSON-ready dict.

Every scenario gets a fresh directory (its own index, its own daemon), so none
inherits another's WAL, page cache or row count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessionstore.benchmarks import data
from sessionstore.benchmarks.harness import (
    READY_TIMEOUT,
    DaemonProcess,
    GroupResult,
    WorkerGroup,
    latency_summary,
)
from sessionstore.benchmarks.listing import bench_listing, fill
from sessionstore.benchmarks.workers import WorkerKind, WorkerSpec, hold_write_lock
from sessionstore.client import SessionStoreClient
from sessionstore.errors import SessionStoreError
from sessionstore.store import Durability, SessionStore

ALL_SCENARIOS = ("direct", "sync", "pipelined", "ceiling", "contention", "listing", "reads", "rss")
DEFAULT_SCENARIOS = ("direct", "sync", "pipelined", "ceiling", "contention", "listing", "reads")
CONTENTION_CYCLES = 2
"""Lock-hold cycles of the contention scenario's other writer."""
MAX_RELEASE_SECONDS = 1.0
"""Between two holds the other writer rests min(this, lock seconds): the gap direct
writers get. Without a gap it would re-take the lock before any waiting writer's
busy handler wakes up, and every direct save would fail: true, but not a fair test."""
RECONCILE_TIMEOUT = 3600.0
READS_LISTINGS = 3
"""Full listings the reads scenario asks for while its writers save."""
READS_WRITERS = 2
"""Sync writers in the reads scenario: enough to see a stall, few enough not to hide it."""
RSS_FIRST_FRACTION = 10
"""The rss scenario reads the daemon's RSS after 1/10 of --rss-outcomes, then after all."""

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """The validated settings of one benchmark run."""

    processes: int = 8
    saves: int = 2000
    durability: Durability = "full"
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    reconcile_files: int = 5000
    lock_seconds: float = 2.0
    client_timeout: float = 10.0
    rss_outcomes: int = 1_000_000
    listing_sessions: int = 2000
    listing_outcomes: int = 10
    busy_timeout: float = 5.0
    """The direct writers' SQLite busy timeout: SessionStore's default."""
    ceiling_batch: int = 1000
    config: str | None = None
    """A TOML config for the daemons (else their defaults)."""

    @property
    def release_seconds(self) -> float:
        return min(MAX_RELEASE_SECONDS, self.lock_seconds)


def _save_sessions(db_path: Path, session_ids: list[str], durability: Durability) -> None:
    """What the original usage does first: one process saves the session rows."""
    store = SessionStore(db_path, durability=durability)
    try:
        for n, sid in enumerate(session_ids):
            store.save_session(data.session(sid, n))
    finally:
        store.close()


def _writers(result: GroupResult, processes: int, measures: str) -> dict[str, Any]:
    failed = sum(result.errors.values())
    return {
        "processes": processes,
        "saves_attempted": result.attempted,
        "saves_acknowledged": result.acknowledged,
        "saves_failed": failed,
        "wall_seconds": round(result.wall_seconds, 4),
        "saves_per_second": round(result.acknowledged / result.wall_seconds, 1),
        "latency": latency_summary(result.latencies, measures),
        "errors": result.errors,
        "error_samples": result.error_samples,
    }


def _daemon_report(daemon: DaemonProcess) -> dict[str, Any]:
    """Peak RSS from /proc, and the loop's own batch counters (pid cross-checked)."""
    memory = daemon.memory()
    with SessionStoreClient(daemon.address, timeout=30.0) as client:
        status = client.status()
    if status.get("pid") != daemon.pid:
        raise SessionStoreError(
            f"bench: status came from pid {status.get('pid')}, not the daemon we started ({daemon.pid})"
        )
    return {
        "pid": daemon.pid,
        **memory,
        "batches": status.get("batches", 0),
        "mean_batch_size": status.get("mean_batch_size", 0.0),
        "largest_batch": status.get("largest_batch", 0),
        "max_commit_ms": status.get("max_commit_ms", 0.0),
        "outcomes_in_index": status.get("outcomes", 0),
    }


def _client_specs(
    opts: BenchOptions, kind: WorkerKind, address: str, tag: str, saves: int, **extra: Any
) -> list[WorkerSpec]:
    return [
        WorkerSpec(
            i,
            kind,
            (data.writer_session_id(tag, i),),
            saves,
            address=address,
            client_timeout=opts.client_timeout,
            **extra,
        )
        for i in range(opts.processes)
    ]


def direct(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    db = root / "distillation.db"
    ids = [data.writer_session_id("direct", i) for i in range(opts.processes)]
    _save_sessions(db, ids, opts.durability)
    specs = [
        WorkerSpec(
            i,
            "direct",
            (ids[i],),
            opts.saves,
            db_path=str(db),
            durability=opts.durability,
            busy_timeout=opts.busy_timeout,
        )
        for i in range(opts.processes)
    ]
    progress(f"direct: {opts.processes} processes x {opts.saves} saves, one commit each")
    with WorkerGroup(specs) as group:
        result = group.run()
    return _writers(result, opts.processes, "each save_outcome call (one commit), failed included")


def ceiling(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    db = root / "distillation.db"
    ids = [data.writer_session_id("ceiling", i) for i in range(opts.processes)]
    _save_sessions(db, ids, opts.durability)
    total = opts.processes * opts.saves
    spec = WorkerSpec(
        0,
        "ceiling",
        tuple(ids),
        total,
        db_path=str(db),
        durability=opts.durability,
        batch_size=opts.ceiling_batch,
    )
    progress(f"ceiling: 1 process, {total} rows in apply_batch of {opts.ceiling_batch}")
    with WorkerGroup([spec]) as group:
        result = group.run()
    report = _writers(
        result, 1, f"each apply_batch call of up to {opts.ceiling_batch} rows (one commit)"
    )
    report["batch_size"] = opts.ceiling_batch
    return report


def daemon_writers(kind: WorkerKind) -> Callable[[BenchOptions, Path, Progress], dict[str, Any]]:
    """The ``sync`` (one save in flight per process) or ``pipelined`` scenario."""
    measures = {
        "sync": "each client.save_outcome call, send to ack, failed included",
        "pipelined": "per save, its save_batch frame sent to its result read (buffering and window wait excluded)",
    }[kind]

    def scenario(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
        progress(f"{kind}: starting a daemon (durability {opts.durability})")
        with DaemonProcess(
            root / "learning", durability=opts.durability, config=opts.config
        ) as daemon:
            specs = _client_specs(opts, kind, daemon.address, kind, opts.saves)
            progress(f"{kind}: {opts.processes} processes x {opts.saves} saves through the daemon")
            with WorkerGroup(specs, watch=daemon.check) as group:
                result = group.run()
            report = _writers(result, opts.processes, measures)
            report["daemon"] = _daemon_report(daemon)
        return report

    return scenario


def contention(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    return {
        "direct_under_lock": _direct_under_lock(opts, root / "direct", progress),
        "daemon_under_reconcile": _daemon_under_reconcile(opts, root / "daemon", progress),
    }


def _direct_under_lock(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    root.mkdir(parents=True)
    db = root / "distillation.db"
    ids = [data.writer_session_id("lock", i) for i in range(opts.processes)]
    _save_sessions(db, ids, opts.durability)
    specs = [
        WorkerSpec(
            i,
            "direct",
            (ids[i],),
            0,
            db_path=str(db),
            durability=opts.durability,
            busy_timeout=opts.busy_timeout,
            until_stop=True,
        )
        for i in range(opts.processes)
    ]
    progress(
        f"contention: {opts.processes} direct writers vs a {opts.lock_seconds:g}s write "
        f"transaction (x{CONTENTION_CYCLES}, {opts.release_seconds:g}s apart)"
    )
    with WorkerGroup(specs) as group:

        def take_lock() -> None:
            group.spawn(
                hold_write_lock,
                str(db),
                opts.lock_seconds,
                opts.release_seconds,
                CONTENTION_CYCLES,
                group.messages,
                group.stop_event,
            )
            group.expect("locked", READY_TIMEOUT)

        result = group.run(before_start=take_lock)
        holder = group.expect("holder", READY_TIMEOUT)
    report = _writers(result, opts.processes, "each save_outcome call, failed included")
    report["lock_holder"] = {
        "lock_seconds": opts.lock_seconds,
        "release_seconds": opts.release_seconds,
        "busy_timeout_seconds": opts.busy_timeout,
        **holder,
    }
    return report


def _daemon_under_reconcile(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    learning = root / "learning"
    progress(f"contention: writing {opts.reconcile_files} session.json + plan.json pairs")
    file_outcomes = data.write_session_files(learning, opts.reconcile_files)
    reconcile: dict[str, Any] = {"files": opts.reconcile_files, "file_outcomes": file_outcomes}
    with DaemonProcess(learning, durability=opts.durability, config=opts.config) as daemon:
        specs = _client_specs(opts, "sync", daemon.address, "reconcile", 0, until_stop=True)
        progress(
            f"contention: {opts.processes} sync writers while the daemon reconciles "
            f"{opts.reconcile_files} files"
        )
        with WorkerGroup(specs, watch=daemon.check) as group:
            thread = threading.Thread(
                target=_reconcile_now,
                args=(daemon.address, reconcile, group.stop_event),
                name="bench-reconcile",
                daemon=True,
            )
            result = group.run(after_start=thread.start)
            thread.join()  # the writers stopped because the reconcile is over
        report = _writers(
            result, opts.processes, "each client.save_outcome call during the reconcile"
        )
        report["daemon"] = _daemon_report(daemon)
    report["reconcile"] = reconcile
    return report


def _reconcile_now(address: str, report: dict[str, Any], stop: Any) -> None:
    """Runs on a thread of ours: ask the daemon to reconcile, then end the writers' run."""
    started = time.monotonic()
    try:
        with SessionStoreClient(address, timeout=RECONCILE_TIMEOUT) as client:
            result = client.reconcile(dry_run=False, timeout=RECONCILE_TIMEOUT)
        report.update(
            ok=True,
            failed=0,
            scanned=result.get("scanned", 0),
            inserted=result.get("inserted", 0),
            outcomes_added=result.get("outcomes_added", 0),
            invalid=len(result.get("invalid") or []),
            daemon_duration_seconds=round(float(result.get("duration_seconds", 0.0)), 3),
        )
    except SessionStoreError as err:
        report.update(ok=False, failed=1, error=f"{type(err).__name__}: {err}")
    finally:
        report["seconds"] = round(time.monotonic() - started, 3)
        stop.set()


def rss(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    """Daemon RSS after 1/10 of --rss-outcomes pipelined outcomes, and after all of them."""
    first = max(1, opts.rss_outcomes // RSS_FIRST_FRACTION)
    phases: list[dict[str, Any]] = []
    with DaemonProcess(root / "learning", durability=opts.durability, config=opts.config) as daemon:
        for phase, count in enumerate((first, opts.rss_outcomes - first)):
            per_worker = [
                count // opts.processes + (i < count % opts.processes)
                for i in range(opts.processes)
            ]
            specs = [
                WorkerSpec(
                    i,
                    "pipelined",
                    (data.writer_session_id(f"rss{phase}", i),),
                    n,
                    address=daemon.address,
                    client_timeout=opts.client_timeout,
                    record_latency=False,
                )
                for i, n in enumerate(per_worker)
                if n > 0
            ]
            progress(f"rss: {count} pipelined outcomes (phase {phase + 1} of 2)")
            with WorkerGroup(specs, watch=daemon.check) as group:
                result = group.run()
            report = _daemon_report(daemon)
            phases.append(
                {
                    "outcomes_in_index": report["outcomes_in_index"],
                    "rss_kib": report["rss_kib"],
                    "peak_rss_kib": report["peak_rss_kib"],
                    "saves_per_second": round(result.acknowledged / result.wall_seconds, 1),
                    "saves_failed": sum(result.errors.values()),
                }
            )
    before, after = phases
    ratio = after["rss_kib"] / before["rss_kib"] if before["rss_kib"] else 0.0
    return {
        "processes": opts.processes,
        "outcomes_first": before["outcomes_in_index"],
        "outcomes_total": after["outcomes_in_index"],
        "rss_kib_after_first": before["rss_kib"],
        "rss_kib_after_total": after["rss_kib"],
        "rss_ratio": round(ratio, 3),
        "peak_rss_kib": after["peak_rss_kib"],
        "saves_failed": before["saves_failed"] + after["saves_failed"],
        "phases": phases,
    }


def listing(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    """``list_sessions()`` against one query per session (see :mod:`.listing`), in process."""
    progress(
        f"listing: {opts.listing_sessions} sessions x {opts.listing_outcomes} outcomes, "
        "two queries vs one per session"
    )
    result = bench_listing(root, opts.listing_sessions, opts.listing_outcomes)
    return {
        key: round(value, 6) if isinstance(value, float) else value for key, value in result.items()
    }


def reads(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    """Sync writers' latency while a client lists the whole index, reads on the loop vs readers."""
    learning = root / "learning"
    learning.mkdir(parents=True)
    progress(f"reads: filling an index with {opts.listing_sessions} sessions")
    store = SessionStore(learning / "distillation.db", durability="normal")
    try:
        fill(store, opts.listing_sessions, opts.listing_outcomes)
    finally:
        store.close()
    report: dict[str, Any] = {"listings": READS_LISTINGS, "writers": READS_WRITERS}
    for label, threads in (("on_loop", "0"), ("on_readers", None)):
        env = {"SESSIONSTORE_QUERY_THREADS": threads} if threads is not None else {}
        with DaemonProcess(
            learning, durability=opts.durability, config=opts.config, env=env
        ) as daemon:
            progress(
                f"reads ({label.replace('_', ' ')}): {READS_WRITERS} sync writers while a "
                f"client lists {opts.listing_sessions} sessions {READS_LISTINGS} times"
            )
            report[label] = _writers_during_listings(opts, daemon, label)
            report[label]["daemon"] = _daemon_report(daemon)
    return report


def _writers_during_listings(opts: BenchOptions, daemon: DaemonProcess, tag: str) -> dict[str, Any]:
    listing_seconds: list[float] = []
    listing_error: list[str] = []
    specs = _client_specs(opts, "sync", daemon.address, f"reads-{tag}", 0, until_stop=True)
    specs = specs[:READS_WRITERS]
    with WorkerGroup(specs, watch=daemon.check) as group:

        def list_then_stop() -> None:
            try:
                with SessionStoreClient(daemon.address, timeout=120.0) as client:
                    for _ in range(READS_LISTINGS):
                        started = time.perf_counter()
                        client.list_sessions()
                        listing_seconds.append(round(time.perf_counter() - started, 3))
            except SessionStoreError as err:
                listing_error.append(f"{type(err).__name__}: {err}")
            finally:
                group.stop_event.set()

        thread = threading.Thread(target=list_then_stop, name="bench-listing", daemon=True)
        result = group.run(after_start=thread.start)
        thread.join()
    report = _writers(result, len(specs), "each client.save_outcome call during the listings")
    report["listing_seconds"] = listing_seconds
    if listing_error:
        report["listing_error"] = listing_error[0]
    return report


RUNNERS: dict[str, Callable[[BenchOptions, Path, Progress], dict[str, Any]]] = {
    "direct": direct,
    "sync": daemon_writers("sync"),
    "pipelined": daemon_writers("pipelined"),
    "ceiling": ceiling,
    "contention": contention,
    "listing": listing,
    "reads": reads,
    "rss": rss,
}
