"""``sessionstore bench``: the daemon against direct SQLite writers, on one disk, in one run.

Scenarios (each on a fresh index in its own directory of the work dir):

* ``direct``: N processes on one shared file, a commit per ``save_outcome``, each
  with the original's store (OpenJarvis's own ``SessionStore`` when the
  ``openjarvis`` package is installed, else the same path in plain sqlite3: see
  :mod:`sessionstore.benchmarks.original`) and, as a second row, with this
  project's ``SessionStore``; each measured before and after the daemon phases;
* ``sync``: N processes through :class:`SessionStoreClient`, one save in flight each;
* ``pipelined``: N processes through the client's pipeline (bounded in flight);
* ``ceiling``: one process, the daemon's own INSERT statements by ``executemany``
  on its connection settings, 1000 prebuilt rows per commit: what SQLite on this
  disk can do;
* ``contention``: (a) direct writers while another process holds a write
  transaction for ``--lock-seconds`` (twice); (b) sync writers while the daemon
  reconciles ``--reconcile-files`` session.json files it is asked to reconcile
  at the start line;
* ``listing``: in one process, ``list_sessions()`` of ``--listing-sessions``
  sessions with ``--listing-outcomes`` outcomes each, against the original's one
  query per session, with the floor any Python listing has (see
  :mod:`sessionstore.benchmarks.listing`);
* ``reads``: two sync writers' latency while a client lists that index three
  times, with reads answered on the loop (``query_threads = 0``) and by reader
  threads (the default);
* ``rss`` (only when asked for): daemon RSS after a tenth of ``--rss-outcomes``
  pipelined outcomes and after all of them.

The four throughput phases are timed (``--seconds`` each, see
:mod:`sessionstore.benchmarks.throughput`); the others end on their own event.
Latency is measured by each worker per save (see
:mod:`sessionstore.benchmarks.workers` for what each scenario times). Peak
daemon RSS is VmHWM from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from sessionstore.benchmarks import original
from sessionstore.benchmarks.measure import load_average, load_warnings
from sessionstore.benchmarks.options import MIN_SECONDS, SHORT_SECONDS, BenchOptions
from sessionstore.benchmarks.report import Progress, machine, render
from sessionstore.benchmarks.scenarios import ALL_SCENARIOS, CONTENTION_CYCLES, RUNNERS
from sessionstore.benchmarks.throughput import direct_phase, direct_summary
from sessionstore.config import load_settings
from sessionstore.errors import ConfigError

TARGETS = {
    # name: (what it reads, comparison, bound)
    "daemon_pipelined_vs_direct": ("ratio", ">=", 8.0),
    "daemon_sync_vs_direct": ("ratio", ">=", 1.5),
    "daemon_sync_p99_ms": ("sync_p99", "<=", 5.0),
    "contention_daemon_failed_saves": ("contention_failed", "==", 0),
    "rss_ratio_total_vs_first": ("rss_ratio", "<=", 1.2),
    "listing_batched_vs_per_session": ("listing speedup", ">=", 5.0),
}


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Check the command line; a bad value raises ConfigError with a one-line reason."""

    def at_least(name: str, value: float, low: float, strict: bool = False) -> None:
        if value < low or (strict and value == low):
            bound = f"greater than {low:g}" if strict else f"at least {low:g}"
            raise ConfigError(f"invalid --{name} {value:g}: must be {bound}")

    if args.saves is not None:
        raise ConfigError(
            "--saves was replaced by --seconds: every throughput phase now runs for a fixed time"
        )
    at_least("processes", args.processes, 1)
    at_least("seconds", args.seconds, SHORT_SECONDS if args.allow_short_phases else MIN_SECONDS)
    at_least("reconcile-files", args.reconcile_files, 1)
    at_least("lock-seconds", args.lock_seconds, 0, strict=True)
    at_least("rss-outcomes", args.rss_outcomes, 10)
    at_least("listing-sessions", args.listing_sessions, 1)
    at_least("listing-outcomes", args.listing_outcomes, 0)
    at_least("timeout", args.timeout, 0, strict=True)
    names = [n.strip() for n in str(args.scenarios).split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_SCENARIOS]
    if unknown or not names:
        raise ConfigError(
            f"invalid --scenarios {args.scenarios!r}: choose from {', '.join(ALL_SCENARIOS)}"
        )
    load_settings(args.config)  # a bad --config fails here, not in the first daemon
    if "direct" in names:
        original.choose(args.direct_writer)  # --direct-writer openjarvis without it fails here
    return BenchOptions(
        processes=args.processes,
        seconds=args.seconds,
        durability=args.durability,
        scenarios=tuple(n for n in ALL_SCENARIOS if n in names),
        direct_writer=args.direct_writer,
        short_phases=args.seconds < MIN_SECONDS,
        reconcile_files=args.reconcile_files,
        lock_seconds=args.lock_seconds,
        client_timeout=args.timeout,
        rss_outcomes=args.rss_outcomes,
        listing_sessions=args.listing_sessions,
        listing_outcomes=args.listing_outcomes,
        config=args.config,
    )


@contextlib.contextmanager
def work_directory(parent: str | Path | None, keep: bool = False) -> Iterator[Path]:
    """A fresh directory under ``parent`` (default: the current one), removed afterwards."""
    base = Path(parent) if parent is not None else Path.cwd()
    try:
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="sessionstore-bench-", dir=base))
    except OSError as err:
        raise ConfigError(f"invalid --workdir {str(base)!r}: {err.strerror or err}") from None
    try:
        yield path
    finally:
        if keep:
            print(f"sessionstore bench: kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def run_bench(
    opts: BenchOptions,
    workdir: Path,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the chosen scenarios in ``workdir``; returns the report (see :func:`run_from_cli`).

    ``warn`` gets each phase whose load average exceeded the core count as it ends
    (the report's ``warnings`` keeps them too).
    """
    say = progress or (lambda message: None)
    daemon_settings = load_settings(opts.config)
    writer, found = original.choose(opts.direct_writer)
    report: dict[str, Any] = {
        "machine": machine(workdir),
        "settings": {
            "processes": opts.processes,
            "phase_seconds": opts.seconds,
            "short_phases": opts.short_phases,
            "direct_writer": writer,
            "durability": opts.durability,
            "scenarios": list(opts.scenarios),
            "reconcile_files": opts.reconcile_files,
            "lock_seconds": opts.lock_seconds,
            "lock_release_seconds": opts.release_seconds,
            "lock_cycles": CONTENTION_CYCLES,
            "direct_busy_timeout_seconds": opts.busy_timeout,
            "client_timeout_seconds": opts.client_timeout,
            "ceiling_batch": opts.ceiling_batch,
            "rss_outcomes": opts.rss_outcomes,
            "listing_sessions": opts.listing_sessions,
            "listing_outcomes_per_session": opts.listing_outcomes,
            "daemon_batch_max": daemon_settings.batch_max,
            "daemon_batch_wait_ms": daemon_settings.batch_wait_ms,
            "client_max_in_flight": daemon_settings.max_in_flight,
            "workdir": str(workdir),
        },
        "scenarios": {},
        "warnings": [],
    }
    if opts.short_phases:
        _warn(
            report,
            warn,
            f"phases of {opts.seconds:g}s (under {MIN_SECONDS:g}): numbers not meaningful",
        )
    scenarios = report["scenarios"]
    started = time.monotonic()
    daemon_phases = [n for n in ("sync", "pipelined") if n in opts.scenarios]
    before: dict[str, Any] = {}
    for name in opts.scenarios:
        root = workdir / name
        root.mkdir()
        if name == "direct":
            # the original first and last, ours in between: a drift weighs on both alike
            for label, who in (("direct", writer), ("direct_ours", "ours")):
                before[label] = direct_phase(opts, root / f"{label}-before", who, "before", say)
                scenarios[label] = None  # keeps the rows' order; filled in after
        else:
            scenarios[name] = RUNNERS[name](opts, root, say)
        if before and name == (daemon_phases[-1] if daemon_phases else "direct"):
            for label, who in (("direct_ours", "ours"), ("direct", writer)):
                after = direct_phase(opts, workdir / "direct" / f"{label}-after", who, "after", say)
                scenarios[label] = direct_summary(
                    who, found if who == writer else None, before[label], after
                )
        if name != "direct":  # the direct rows are complete only at the end
            for line in load_warnings(scenarios[name], name):
                _warn(report, warn, line)
    if before:
        for label in ("direct", "direct_ours"):
            for line in load_warnings(scenarios[label], label):
                _warn(report, warn, line)
    report["settings"]["elapsed_seconds"] = round(time.monotonic() - started, 1)
    report["machine"]["load_average_at_end"] = load_average()
    report["ratios"] = ratios(report["scenarios"])
    report["targets"] = targets(report["scenarios"], report["ratios"])
    return report


def _warn(report: dict[str, Any], warn: Callable[[str], None] | None, line: str) -> None:
    report["warnings"].append(line)
    if warn is not None:
        warn(line)


def _rate(scenarios: dict[str, Any], name: str) -> float | None:
    s = scenarios.get(name)
    return None if s is None else float(s["saves_per_second"])


def ratios(scenarios: dict[str, Any]) -> dict[str, float | None]:
    """Throughput ratios; None when a side was not run or measured zero."""

    def ratio(top: str, bottom: str) -> float | None:
        a, b = _rate(scenarios, top), _rate(scenarios, bottom)
        return None if a is None or not b else round(a / b, 2)

    return {
        "daemon_sync_vs_direct": ratio("sync", "direct"),
        "daemon_pipelined_vs_direct": ratio("pipelined", "direct"),
        "daemon_sync_vs_direct_ours": ratio("sync", "direct_ours"),
        "daemon_pipelined_vs_direct_ours": ratio("pipelined", "direct_ours"),
        "direct_ours_vs_direct": ratio("direct_ours", "direct"),
        "daemon_sync_vs_ceiling": ratio("sync", "ceiling"),
        "daemon_pipelined_vs_ceiling": ratio("pipelined", "ceiling"),
    }


def targets(scenarios: dict[str, Any], ratio: dict[str, float | None]) -> dict[str, Any]:
    """The issue's targets that this run measured, each with its value and verdict."""
    values: dict[str, float | None] = {
        "daemon_pipelined_vs_direct": ratio["daemon_pipelined_vs_direct"],
        "daemon_sync_vs_direct": ratio["daemon_sync_vs_direct"],
        "daemon_sync_p99_ms": scenarios["sync"]["latency"]["p99_ms"]
        if "sync" in scenarios
        else None,
        "contention_daemon_failed_saves": None,
        "rss_ratio_total_vs_first": scenarios["rss"]["rss_ratio"] if "rss" in scenarios else None,
        "listing_batched_vs_per_session": round(scenarios["listing"]["speedup"], 2)
        if "listing" in scenarios
        else None,
    }
    if "contention" in scenarios:
        daemon = scenarios["contention"]["daemon_under_reconcile"]
        values["contention_daemon_failed_saves"] = (
            daemon["saves_failed"] + daemon["reconcile"]["failed"]
        )
    result = {}
    for name, (_, op, bound) in TARGETS.items():
        value = values[name]
        if value is None:
            continue
        met = {">=": value >= bound, "<=": value <= bound, "==": value == bound}[op]
        result[name] = {"value": value, "want": f"{op} {bound:g}", "met": bool(met)}
    return result


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every finally block stops its processes."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_from_cli(args: argparse.Namespace) -> int:
    """``sessionstore bench``: run, then print a table (or one JSON object with ``--json``)."""
    opts = options_from_args(args)
    with (
        _sigterm_as_interrupt(),
        work_directory(args.workdir, keep=bool(args.debug)) as workdir,
        Progress() as progress,
    ):
        report = run_bench(opts, workdir, progress, progress.warn)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report)
    return 0
