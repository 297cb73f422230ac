"""The daemon's life: prepare the learning root, own the index, serve, drain, stop.

Start-up order matters to systemd: READY=1 is sent only once the socket is bound
and the schema is migrated, so a client started after the unit is "active" can
always connect. SIGTERM/SIGINT ask the loop to stop taking new work; what was
received is committed and answered, the WAL is checkpointed, and we exit 0.
SIGHUP re-reads the settings (:mod:`sessiond.reload`) and keeps serving.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import zmq

from sessiond.ingest import IngestLoop
from sessiond.jobs import Jobs
from sessiond.limits import raise_open_files_limit
from sessiond.logs import configure_logging
from sessiond.reload import Reloader
from sessiond.replication import Replicator
from sessiond.systemd import Notifier, journal_stream_active
from sessionstore.config import Settings, is_loopback
from sessionstore.errors import ConfigError, SessionStoreError
from sessionstore.filemodes import tighten_index_files
from sessionstore.lock import IndexLock
from sessionstore.store import SessionStore

if TYPE_CHECKING:
    from sessiond.metrics import MetricsEndpoint

log = logging.getLogger("sessiond")


def prepare_learning_root(root: Path) -> None:
    """Create the learning root owner-only (0700); warn if an existing one is wider."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(root.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "learning root %s has mode %o; other users may read it (0700 advised)", root, mode
        )


class Heartbeat:
    """Called by the loop every turn: WATCHDOG=1 at half WatchdogSec, STATUS= now and then.

    The watchdog is fed from the loop thread itself, so a loop that is stuck stops
    feeding it and systemd restarts the daemon.
    """

    def __init__(
        self, notifier: Notifier, loop_stats_summary: Callable[[], str], status_interval: float
    ) -> None:
        self._notifier = notifier
        self._summary = loop_stats_summary
        self._watchdog_every = notifier.watchdog_interval()
        self._status_every = status_interval
        self._next_watchdog = 0.0
        self._next_status = 0.0

    @property
    def poll_ms(self) -> int:
        """Longest the loop may sleep and still feed the watchdog and refresh STATUS in time."""
        every = min(1.0, self._status_every)
        if self._watchdog_every is not None:
            every = min(every, self._watchdog_every / 2)
        return max(10, int(every * 1000))

    def __call__(self) -> None:
        now = time.monotonic()
        if self._watchdog_every is not None and now >= self._next_watchdog:
            self._notifier.watchdog()
            self._next_watchdog = now + self._watchdog_every
        if now >= self._next_status:
            self._notifier.status(self._summary())
            self._next_status = now + self._status_every


READER_SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL while another waits for it (CPython's default: 0.005)."""


def serve(settings: Settings, reload_settings: Callable[[], Settings] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the process exit code.

    ``reload_settings`` reads the settings again as they were read for this start;
    SIGHUP calls it (without it, a reload says it cannot re-read them)."""
    configure_logging(settings.log_level, journal=journal_stream_active())
    os.umask(0o077)  # the index, its WAL and the ipc socket are the owner's alone
    raise_open_files_limit()  # one descriptor per connection: see sessiond.limits
    if settings.query_threads > 0:
        # A reader busy with a listing holds the GIL up to the switch interval each
        # time the loop wants it back (after each fsync, each poll). At CPython's
        # 5 ms a save waited up to 130 ms behind three 2,000-session listings; at
        # 1 ms, 44 ms, with the same throughput and p99 (measured with `bench --scenarios
        # reads` before readers freed their results in chunks, which cut it to ~15 ms).
        sys.setswitchinterval(READER_SWITCH_INTERVAL)
    if not is_loopback(settings.endpoint) and (
        settings.curve_secret_key is None or settings.curve_allowed_dir is None
    ):
        raise ConfigError(
            f"address {settings.endpoint} is not loopback: set curve_secret_key and "
            "curve_allowed_dir (see `sessionstore keygen`) to serve beyond this machine"
        )
    prepare_learning_root(settings.learning_root)
    settings.index_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = IndexLock(settings.index_path)  # the file's, under any name: see sessionstore.lock
    lock.acquire()
    try:
        make_index_owner_only(settings.index_path)
        return _serve_locked(settings, reload_settings)
    finally:
        lock.release()  # after _serve_locked closed every SQLite connection on the index


def make_index_owner_only(db_path: Path) -> None:
    """Tighten an index made under a looser umask (e.g. 0644 by the original library)."""
    try:
        tightened = tighten_index_files(db_path)
    except OSError as err:
        log.warning("index files stay readable by others: %s", err)
        return
    if tightened:
        log.info("made the index files owner-only: %s", ", ".join(str(done) for done in tightened))


def _serve_locked(settings: Settings, reload_settings: Callable[[], Settings] | None) -> int:
    store = SessionStore(settings.index_path, durability=settings.durability)
    if not settings.daemon_checkpoints:
        store.set_autocheckpoint(0)  # Litestream (or another replicator) checkpoints; we never do
    replicator = Replicator(settings) if settings.replica is not None else None
    context = zmq.Context()
    notifier = Notifier.from_env()
    loop = IngestLoop(store, settings, context)
    jobs = Jobs(loop, store, settings)
    heartbeat = Heartbeat(notifier, loop.stats.summary, settings.status_interval)
    reloader = Reloader(settings, reload_settings, notifier, loop.stats.summary)

    def every_turn() -> None:
        loop.stats.last_turn_at = time.time()
        heartbeat()
        reloader()

    admin = jobs.admin_handlers()
    if replicator is not None:
        admin["status:replication"] = lambda params: replicator.status()
    loop.configure(
        heartbeat=every_turn,
        admin=admin,
        idle_poll_ms=heartbeat.poll_ms,
        on_stopping=notifier.stopping,
    )
    loop.start_readers()
    auth = loop.enable_curve() if settings.curve_secret_key is not None else None
    try:
        loop.bind()  # refuses an ipc address another daemon answers at (sessiond.address)
    except zmq.ZMQError as err:
        raise SessionStoreError(f"cannot bind {settings.endpoint}: {err}") from err

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only set a flag: the handler may interrupt a notify send holding its lock,
        # so STOPPING=1 is sent by the loop as it leaves (on_stopping below).
        loop.request_stop()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        reloader.request()  # applied by the loop thread on its next turn

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Until the very end: by default SIGHUP ends the process, also mid-checkpoint.
    previous_hangup = signal.signal(signal.SIGHUP, on_hangup)
    metrics = _start_metrics(settings, loop, jobs, replicator)
    if replicator is not None:
        replicator.start()  # after the migration, before READY=1: see sessiond.replication
    jobs.start()
    counts = store.counts()
    notifier.ready()
    log.info(
        "sessiond %d ready at %s (index %s: %d sessions, %d outcomes; durability %s)",
        os.getpid(),
        settings.endpoint,
        settings.index_path,
        counts["sessions"],
        counts["outcomes"],
        settings.durability,
    )
    try:
        loop.run()
    finally:
        jobs.shutdown()
        if metrics is not None:
            metrics.close()  # its read-only connection too, before the index is closed
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        jobs.close()
        _final_checkpoint(store, settings)
        if auth is not None:
            auth.stop()
        loop.close()
        context.term()
        store.close()
        if replicator is not None:
            replicator.stop()  # its final upload then holds every acknowledged save
        notifier.close()
        signal.signal(signal.SIGHUP, previous_hangup)
    log.info("sessiond %d stopped: %s", os.getpid(), loop.stats.summary())
    return 0


def _start_metrics(
    settings: Settings, loop: IngestLoop, jobs: Jobs, replicator: Replicator | None
) -> MetricsEndpoint | None:
    """The Prometheus endpoint, if ``metrics_address`` is set (bind errors fail the start)."""
    if settings.metrics_address is None:
        return None
    from sessiond.metrics import DaemonCollector, MetricsEndpoint

    collector = DaemonCollector(
        loop.stats, jobs, settings.index_path, loop.reads_pending, replicator
    )
    endpoint = MetricsEndpoint(settings.metrics_address, collector)
    endpoint.start()
    return endpoint


def _final_checkpoint(store: SessionStore, settings: Settings) -> None:
    """Copy the WAL into the index and truncate it, unless a reader stands in the way:
    the stop never waits for one (a reader of another process, or Litestream's read
    lock, would hold it for the whole busy timeout), and the WAL is kept for next time."""
    if not settings.daemon_checkpoints:
        return
    try:
        copied = store.checkpoint("PASSIVE")
        result = store.checkpoint("TRUNCATE", wait=False)
        log.info(
            "final checkpoint: %d of %d WAL frames copied, blocked by readers: %s",
            copied.checkpointed_frames,
            copied.wal_frames,
            result.busy,
        )
    except SessionStoreError as err:
        log.error("final checkpoint failed: %s", err)
