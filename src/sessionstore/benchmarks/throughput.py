"""The timed throughput phases of ``sessionstore bench``: direct, sync, pipelined, ceiling.

Each phase lasts ``--seconds`` (at least 3): every worker is spawned, opens its
store or connects, reports ready, and all are released by one start event with
one shared deadline; a phase's throughput is the saves acknowledged by the
deadline over the window, so start-line skew and the slowest worker move the
number by what they did in the window, not by stretching it. Each phase records
the CPU its processes used in the window (per save: the daemon's and the
clients', from /proc) and the load average before and after it.

``direct`` is measured twice, before and after the daemon phases (in the order
original, ours, daemon phases, ours, original, so a drift of the machine
weighs on both rows alike), and its mean is what the ratios divide by.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sessionstore.benchmarks import data, original
from sessionstore.benchmarks.harness import (
    DaemonProcess,
    GroupResult,
    WorkerGroup,
    latency_summary,
)
from sessionstore.benchmarks.measure import per_save_us
from sessionstore.benchmarks.options import BenchOptions
from sessionstore.benchmarks.original import DirectWriter
from sessionstore.benchmarks.workers import WorkerKind, WorkerSpec
from sessionstore.client import SessionStoreClient
from sessionstore.errors import SessionStoreError
from sessionstore.store import Durability, SessionStore

Progress = Callable[[str], None]


def save_sessions(db_path: Path, session_ids: list[str], durability: Durability) -> None:
    """What the original usage does first: one process saves the session rows (our store)."""
    store = SessionStore(db_path, durability=durability)
    try:
        for n, sid in enumerate(session_ids):
            store.save_session(data.session(sid, n))
    finally:
        store.close()


def writers_report(result: GroupResult, processes: int, measures: str) -> dict[str, Any]:
    """One phase's numbers. ``saves_per_second`` counts only saves acknowledged in the window."""
    failed = sum(result.errors.values())
    report: dict[str, Any] = {
        "processes": processes,
        "timed": result.timed,
        "saves_attempted": result.attempted,
        "saves_acknowledged": result.acknowledged,
        "saves_in_window": result.in_window,
        "saves_failed": failed,
        "wall_seconds": round(result.wall_seconds, 4),
        "saves_per_second": round(result.in_window / result.wall_seconds, 1),
        "latency": latency_summary(result.latencies, measures),
        "errors": result.errors,
        "error_samples": result.error_samples,
    }
    if result.cpu_seconds is not None:
        report["cpu_seconds"] = result.cpu_seconds
        report["cpu_us_per_save"] = {
            who: per_save_us(seconds, result.in_window)
            for who, seconds in result.cpu_seconds.items()
        }
    if result.load_average is not None:
        report["load_average"] = result.load_average
    return report


def daemon_report(daemon: DaemonProcess) -> dict[str, Any]:
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


def client_specs(
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


def direct_phase(
    opts: BenchOptions, root: Path, writer: DirectWriter, when: str, progress: Progress
) -> dict[str, Any]:
    """N processes on one file, each saving through ``writer``'s store, a commit per save."""
    root.mkdir(parents=True)
    db = root / "distillation.db"
    ids = [data.writer_session_id("direct", i) for i in range(opts.processes)]
    original.save_sessions(writer, db, ids, opts.durability)
    specs = [
        WorkerSpec(
            i, "direct", (ids[i],), 0, db_path=str(db), durability=opts.durability,
            busy_timeout=opts.busy_timeout, writer=writer,
        )
        for i in range(opts.processes)
    ]  # fmt: skip
    who = "this project's SessionStore" if writer == "ours" else f"the original ({writer})"
    progress(f"direct {when}: {opts.processes} processes, {who}, {opts.seconds:g}s")
    with WorkerGroup(specs, phase=f"direct {when}") as group:
        result = group.run(seconds=opts.seconds)
    return writers_report(
        result, opts.processes, "each save_outcome call (one commit), failed included"
    )


def direct_summary(
    writer: DirectWriter, found: str | None, before: dict[str, Any], after: dict[str, Any]
) -> dict[str, Any]:
    """The direct row: the mean of the runs before and after the daemon phases."""
    rates = [before["saves_per_second"], after["saves_per_second"]]
    mean = sum(rates) / 2
    cpu = [p["cpu_us_per_save"]["clients"] for p in (before, after)]
    return {
        "writer": writer,
        "implementation": original.describe(writer, found),
        "openjarvis_version": found,
        "saves_per_second": round(mean, 1),
        "spread_percent": round(abs(rates[0] - rates[1]) / mean * 100, 1) if mean else None,
        "saves_failed": before["saves_failed"] + after["saves_failed"],
        "cpu_us_per_save": {
            "daemon": None,
            "clients": round(sum(cpu) / 2, 1) if None not in cpu else None,
        },
        "before": before,
        "after": after,
    }


def ceiling(opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    """One process, the daemon's statements and connection, prebuilt rows, 1000 per commit."""
    db = root / "distillation.db"
    ids = [data.writer_session_id("ceiling", i) for i in range(opts.processes)]
    save_sessions(db, ids, opts.durability)
    spec = WorkerSpec(
        0, "ceiling", tuple(ids), 0, db_path=str(db), durability=opts.durability,
        batch_size=opts.ceiling_batch, seconds=opts.seconds,
    )  # fmt: skip
    progress(
        f"ceiling: 1 process, the daemon's INSERTs by executemany, {opts.ceiling_batch} rows "
        f"per commit, {opts.seconds:g}s of transactions"
    )
    with WorkerGroup([spec], phase="ceiling") as group:
        result = group.run()
    report = writers_report(
        result, 1, f"each transaction of {opts.ceiling_batch} rows (BEGIN to COMMIT)"
    )
    report["batch_size"] = opts.ceiling_batch
    report["statements"] = ["batch.INSERT_APPLIED", "batch.INSERT_OUTCOME"]
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
            specs = client_specs(opts, kind, daemon.address, kind, 0)
            progress(f"{kind}: {opts.processes} processes through the daemon, {opts.seconds:g}s")
            with WorkerGroup(specs, watch=daemon.check, phase=kind) as group:
                result = group.run(seconds=opts.seconds, daemon_pid=daemon.pid)
            report = writers_report(result, opts.processes, measures)
            report["daemon"] = daemon_report(daemon)
        return report

    return scenario
