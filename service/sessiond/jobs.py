"""Scheduled maintenance: APScheduler decides *when*; the ingest loop does the work.

Each job, scheduled or asked for (``sessionstore checkpoint`` / ``reconcile``), is
a :class:`Task` whose steps run on the loop thread between batches — the loop is
the only thread that touches the write connection. A job that fails is logged and
shown in ``status``; it never stops the daemon or the scheduler.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from sessiond.ingest import IngestLoop
from sessiond.job_runs import JobRuns
from sessiond.tasks import Steps, Task
from sessionstore.config import Settings
from sessionstore.reconcile_reader import ProcessReader
from sessionstore.store import SessionStore

log = logging.getLogger("sessiond.jobs")

# A scheduled job waits this long for the loop to finish it before giving up on
# the wait (the work itself goes on); keeps a wedged loop from pinning the scheduler.
JOB_WAIT_SECONDS = 3600.0
# After a start (perhaps after a crash that lost the WAL) the index should catch up with
# the session.json files soon, not a whole reconcile_interval later.
FIRST_RECONCILE_DELAY = 5.0
# Newly unusable session.json / plan.json files named one per log line, at most this many a pass.
LOG_INVALID_MOST = 5


@dataclass
class JobState:
    runs: int = 0
    failures: int = 0
    last_started_at: float | None = None
    last_duration_seconds: float | None = None
    last_success_at: float | None = None
    last_result: Any = None
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "failures": self.failures,
            "last_started_at": self.last_started_at,
            "last_duration_seconds": self.last_duration_seconds,
            "last_success_at": self.last_success_at,
            "last_result": self.last_result,
            "last_error": self.last_error,
        }


def checkpoint_steps(store: SessionStore, mode: str) -> Steps:
    """One checkpoint; reports WAL bytes before and after and whether readers blocked it.

    A successful TRUNCATE reports zero frames (the WAL is gone), so it is preceded by a
    PASSIVE pass that copies the frames and says how many there were.
    """
    before = store.file_sizes()["wal_bytes"]
    copied = store.checkpoint("PASSIVE")
    # Never waits for readers (reader threads, the integrity check, analytics
    # processes): a busy TRUNCATE is reported and tried again next time.
    result = store.checkpoint(mode, wait=False) if mode != "PASSIVE" else copied
    after = store.file_sizes()["wal_bytes"]
    yield from ()
    return {
        "mode": result.mode,
        "wal_bytes_before": before,
        "wal_bytes_after": after,
        "wal_frames": copied.wal_frames,
        "checkpointed_frames": copied.checkpointed_frames,
        "blocked_by_readers": result.busy,
    }


class Jobs:
    """The daemon's scheduled and on-demand maintenance, and their status."""

    def __init__(self, loop: IngestLoop, store: SessionStore, settings: Settings) -> None:
        self._loop = loop
        self._store = store
        self._settings = settings
        self.states: dict[str, JobState] = {}
        self.integrity_ok: bool | None = None
        self._runs = JobRuns()  # one run of each job at a time, asked for or scheduled
        self._reported_invalid: set[Any] = set()
        """Unusable files (InvalidFile: path and reason) already logged: each is logged once."""
        # The first scheduled pass after start is incremental; the first full one
        # comes a full interval later (a restart does not make files change).
        self._last_full_reconcile = time.monotonic()
        # Reconcile reads and parses files in a process of its own (see reconcile_reader).
        self._reader = ProcessReader(
            settings.index_path,
            settings.sessions_dir,
            os.path.realpath(settings.sessions_dir),
            settings.reconcile_max_file_bytes,
        )
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    # -- the work itself ------------------------------------------------------------

    def _scheduled_checkpoint(self) -> Steps:
        """PASSIVE each tick; TRUNCATE when the WAL passed its threshold and the loop is idle."""
        big = self._store.file_sizes()["wal_bytes"] > self._settings.wal_truncate_bytes
        mode = "TRUNCATE" if big and self._loop.idle else "PASSIVE"
        return (yield from checkpoint_steps(self._store, mode))

    def _scheduled_reconcile(self) -> Steps:
        """Incremental, except once every ``reconcile_full_interval``: an incremental pass
        skips a file whose size and mtime it recorded, so only a full one notices an
        index row that a later save made differ from an unchanged file."""
        now = time.monotonic()
        full = now - self._last_full_reconcile >= self._settings.reconcile_full_interval
        report = yield from self._reconcile(dry_run=False, full=full)
        if full:
            self._last_full_reconcile = now
        return report

    def _reconcile(self, dry_run: bool, full: bool = False) -> Steps:
        from sessionstore.reconcile import reconcile_steps  # only the daemon needs it, at first run

        s = self._settings
        result = yield from reconcile_steps(
            self._store,
            s.learning_root,
            dry_run=dry_run,
            slice_files=s.reconcile_slice,
            full=full,
            reader=self._reader,
            slice_bytes=s.reconcile_slice_bytes,
            slice_seconds=s.reconcile_slice_ms / 1000,
        )
        report = result.to_dict()
        report["full"] = full
        if not dry_run:  # a dry run's problems are reported to whoever asked for it
            self._log_invalid(result.invalid, full)
        return report

    def _log_invalid(self, invalid: list[Any], full: bool) -> None:
        """Log each unusable file once, not at every pass (every 5 minutes) while it stays so.

        A full pass reads every file, so what it found replaces what was known: a file
        fixed and broken again is logged again. An incremental pass may not re-read a
        file (a plan.json is read only with its session), so it only adds.
        """
        found = set(invalid)
        new = [problem for problem in invalid if problem not in self._reported_invalid]
        self._reported_invalid = found if full else self._reported_invalid | found
        for problem in new[:LOG_INVALID_MOST]:
            log.warning("reconcile: cannot use %s: %s", problem.path, problem.reason)
        if len(new) > LOG_INVALID_MOST:
            log.warning(
                "reconcile: %d more unusable files (`sessionstore reconcile --dry-run` lists all)",
                len(new) - LOG_INVALID_MOST,
            )

    def _integrity(self) -> dict[str, Any]:
        """``PRAGMA quick_check`` on a read-only connection of its own, off the loop.

        It cannot be sliced and reads the whole file (1.5 s for 500 MB with a warm
        cache, measured), so on the loop it would hold every save that long.
        """
        checker = SessionStore(self._store.db_path, readonly=True)
        try:
            messages = checker.quick_check()
        finally:
            checker.close()
        self.integrity_ok = messages == ["ok"]
        if not self.integrity_ok:
            log.error(
                "INTEGRITY CHECK FAILED for %s: %s", self._store.db_path, "; ".join(messages[:5])
            )
        return {"ok": self.integrity_ok, "messages": messages[:20]}

    def _prune(self) -> Steps:
        removed = self._store.prune_applied_requests(self._settings.request_id_retention)
        yield from ()
        return {"request_ids_pruned": removed}

    def _scheduled_task(self, name: str) -> Task:
        if name == "integrity":
            return self.task(name, off_loop=self._integrity)
        steps = {
            "checkpoint": self._scheduled_checkpoint,
            "reconcile": self._scheduled_reconcile,
            "prune_request_ids": self._prune,
        }[name]
        return self.task(name, steps)

    # -- scheduling -------------------------------------------------------------------

    def start(self) -> None:
        s = self._settings
        intervals = {
            "checkpoint": s.checkpoint_interval if s.daemon_checkpoints else None,
            "reconcile": s.reconcile_interval,
            "integrity": s.integrity_interval,
            "prune_request_ids": min(s.request_id_retention, 3600.0),
        }
        for name, interval in intervals.items():
            if interval is None:
                continue
            self.states[name] = JobState()
            first = {}
            if name == "reconcile" and s.reconcile_on_start:  # catch up soon after a (re)start
                first["next_run_time"] = datetime.now(UTC) + timedelta(
                    seconds=FIRST_RECONCILE_DELAY
                )
            self._scheduler.add_job(
                self._run_scheduled,
                "interval",
                seconds=interval,
                args=[name],
                id=name,
                name=name,
                **first,
            )
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def close(self) -> None:
        """Stop reconcile's reader process (after the loop: no pass runs any more)."""
        self._reader.stop()

    def _run_scheduled(self, name: str) -> None:
        """Runs on a scheduler thread: hand the job to the loop and wait for it to finish."""
        task = self._runs.for_schedule(name, lambda: self._scheduled_task(name))
        if task is None:
            log.info("%s: not started, %s", name, self._runs.running(name) or "a run is going")
            return
        future = self._loop.submit(task)
        try:
            future.exception(timeout=JOB_WAIT_SECONDS)
        except TimeoutError:
            log.error("%s: still not finished after %.0fs", name, JOB_WAIT_SECONDS)

    def task(
        self,
        name: str,
        make_steps: Callable[[], Steps] | None = None,
        *,
        off_loop: Callable[[], Any] | None = None,
    ) -> Task:
        """A Task whose completion is recorded in this job's state (on the loop thread)."""
        task = Task(name, make_steps, off_loop=off_loop)
        state = self.states.setdefault(name, JobState())
        started = time.time()

        def record(future: Future[Any]) -> None:
            state.runs += 1
            state.last_started_at = started
            state.last_duration_seconds = round(time.time() - started, 3)
            err = future.exception()
            if err is None:
                state.last_result, state.last_error = _kept(future.result()), None
                state.last_success_at = time.time()
                log.info(
                    "%s done in %.3fs: %s",
                    name,
                    state.last_duration_seconds,
                    _brief(state.last_result),
                )
            else:
                state.failures += 1
                state.last_error = f"{type(err).__name__}: {err}"

        task.future.add_done_callback(record)
        return task

    # -- what the loop serves ---------------------------------------------------------------

    def admin_handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "checkpoint": self._checkpoint_asked,
            "reconcile": self._reconcile_asked,
            "integrity_check": lambda p: self._runs.for_request(
                "integrity", {}, lambda: self.task("integrity", off_loop=self._integrity)
            ),
            "status:jobs": lambda p: self.status(),
            "status:integrity_ok": lambda p: self.integrity_ok,
        }

    def _checkpoint_asked(self, params: dict[str, Any]) -> Task:
        mode = params.get("mode", "TRUNCATE")
        return self._runs.for_request(
            "checkpoint",
            {"mode": mode},
            lambda: self.task("checkpoint", lambda: checkpoint_steps(self._store, mode)),
        )

    def _reconcile_asked(self, params: dict[str, Any]) -> Task:
        dry_run, full = params.get("dry_run", False), params.get("full", False)
        return self._runs.for_request(
            "reconcile",
            {"dry_run": dry_run, "full": full},
            lambda: self.task("reconcile", lambda: self._reconcile(dry_run=dry_run, full=full)),
        )

    def status(self) -> dict[str, Any]:
        report = {}
        for name, state in self.states.items():
            entry = state.to_dict()
            job = self._scheduler.get_job(name)
            next_run = getattr(job, "next_run_time", None)
            entry["next_run_at"] = next_run.timestamp() if isinstance(next_run, datetime) else None
            report[name] = entry
        return report


STATUS_INVALID_FILES = 20
"""Unusable files a job's last result keeps for ``status``; the rest are counted."""


def _kept(result: Any) -> Any:
    """What ``status`` shows of a job's result: a reconcile's list of unusable files
    is cut to its first few. It has one entry per file, and every status reply would
    otherwise carry them all, encoded on the loop; the reply to the request that ran
    the job has the whole list."""
    if isinstance(result, dict) and len(result.get("invalid") or ()) > STATUS_INVALID_FILES:
        invalid = result["invalid"]
        return {
            **result,
            "invalid": invalid[:STATUS_INVALID_FILES],
            "invalid_count": len(invalid),
        }
    return result


def _brief(result: Any) -> str:
    """A job's result for its log line: lists as their length, floats without binary noise."""
    if not isinstance(result, dict):
        return str(result)
    parts = []
    for key, value in result.items():
        if isinstance(value, dict) or key == "duration_seconds":  # the line says how long
            continue
        if isinstance(value, list):
            value = len(value)
        elif isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)
