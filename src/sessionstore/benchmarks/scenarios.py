"""The scenarios of ``sessionstore bench``; each returns one JSON-ready dict.

The timed throughput phases (direct, sync, pipelined, ceiling) are in
:mod:`.throughput`; the rest, each bounded by an event of its own (a lock held,
a reconcile, listings, a number of outcomes), are here.

Every scenario gets a fresh directory (its own index, its own daemon), so none
inherits another's WAL, page cache or row count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sessionstore.benchmarks import data
from sessionstore.benchmarks.harness import READY_TIMEOUT, DaemonProcess, WorkerGroup
from sessionstore.benchmarks.listing import bench_listing, fill
from sessionstore.benchmarks.options import BenchOptions
from sessionstore.benchmarks.throughput import (
    Progress,
    ceiling,
    client_specs,
    daemon_report,
    daemon_writers,
    save_sessions,
    writers_report,
)
from sessionstore.benchmarks.workers import WorkerSpec, hold_write_lock
from sessionstore.client import SessionStoreClient
from sessionstore.errors import SessionStoreError
from sessionstore.store import SessionStore

ALL_SCENARIOS = ("direct", "sync", "pipelined", "ceiling", "contention", "listing", "reads", "rss")
CONTENTION_CYCLES = 2
"""Lock-hold cycles of the contention scenario's other writer."""
RECONCILE_TIMEOUT = 3600.0
READS_LISTINGS = 3
"""Full listings the reads scenario asks for while its writers save."""
READS_WRITERS = 2
"""Sync writers in the reads scenario: enough to see a stall, few enough not to hide it."""
RSS_FIRST_FRACTION = 10
"""The rss scenario reads the daemon's RSS after 1/10 of --rss-outcomes, then after all."""


def contention(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    return {
        "direct_under_lock": _direct_under_lock(opts, root / "direct", progress),
        "daemon_under_reconcile": _daemon_under_reconcile(opts, root / "daemon", progress),
    }


def _direct_under_lock(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    root.mkdir(parents=True)
    db = root / "distillation.db"
    ids = [data.writer_session_id("lock", i) for i in range(opts.processes)]
    save_sessions(db, ids, opts.durability)
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
    report = writers_report(result, opts.processes, "each save_outcome call, failed included")
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
        specs = client_specs(opts, "sync", daemon.address, "reconcile", 0, until_stop=True)
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
        report = writers_report(
            result, opts.processes, "each client.save_outcome call during the reconcile"
        )
        report["daemon"] = daemon_report(daemon)
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
            report = daemon_report(daemon)
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
            report[label]["daemon"] = daemon_report(daemon)
    return report


def _writers_during_listings(opts: BenchOptions, daemon: DaemonProcess, tag: str) -> dict[str, Any]:
    listing_seconds: list[float] = []
    listing_error: list[str] = []
    specs = client_specs(opts, "sync", daemon.address, f"reads-{tag}", 0, until_stop=True)
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
    report = writers_report(result, len(specs), "each client.save_outcome call during the listings")
    report["listing_seconds"] = listing_seconds
    if listing_error:
        report["listing_error"] = listing_error[0]
    return report


RUNNERS: dict[str, Callable[[BenchOptions, Path, Progress], dict[str, Any]]] = {
    "sync": daemon_writers("sync"),
    "pipelined": daemon_writers("pipelined"),
    "ceiling": ceiling,
    "contention": contention,
    "listing": listing,
    "reads": reads,
    "rss": rss,
}
