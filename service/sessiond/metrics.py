"""Prometheus metrics (``metrics_address``), served on threads of their own.

A scrape never runs on the ingest loop and takes no lock the loop takes: the
collector reads the loop's counters as they are (:mod:`sessiond.stats` says why
that is safe), stats the index files, and counts rows on a read-only connection
of its own. Each scrape is served by its own thread, so a scraper that sends its
request slowly, or never reads the answer, holds up only that thread: at most
:data:`SCRAPES_MAX` at once, each for at most :data:`SCRAPE_TIMEOUT` seconds.

The endpoint has no authentication; it binds loopback unless told otherwise
(``:9464`` is 127.0.0.1:9464), or a unix socket (``unix:PATH``, owner-only) for a
system unit with PrivateNetwork=yes (docs/metrics.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import platform
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from http.server import HTTPServer
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import MetricsHandler
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from sessiond.jobs import Jobs
from sessiond.stats import Histogram, IngestStats
from sessionstore import __version__
from sessionstore.config import is_loopback
from sessionstore.errors import SessionStoreError
from sessionstore.store import SessionStore

log = logging.getLogger("sessiond.metrics")

SCRAPES_MAX = 8
"""Scrapes served at once; a connection beyond them is closed unanswered."""
SCRAPE_TIMEOUT = 10.0
"""Seconds a scraper may take to send its request or read the answer (each step)."""


class ReplicationState(Protocol):
    @property
    def running(self) -> bool: ...

    @property
    def restarts(self) -> int: ...


class DaemonCollector:
    """The daemon's metrics, made at each scrape from what the loop and the jobs keep."""

    def __init__(
        self,
        stats: IngestStats,
        jobs: Jobs,
        db_path: Path,
        reads_pending: Callable[[], int],
        replication: ReplicationState | None,
    ) -> None:
        self._stats = stats
        self._jobs = jobs
        self._db_path = db_path
        self._reads_pending = reads_pending
        self._replication = replication
        self._counter_store: SessionStore | None = None
        self._counter_lock = threading.Lock()  # scrape threads only; the loop never takes it

    def close(self) -> None:
        with self._counter_lock:
            if self._counter_store is not None:
                self._counter_store.close()
                self._counter_store = None

    def collect(self) -> Iterator[Metric]:
        yield from self._ingest()
        yield from self._index()
        yield from self._jobs_metrics()
        yield from self._replication_metrics()
        info = GaugeMetricFamily(
            "sessionstore_build_info",
            "Always 1; the labels say which sessionstore and Python serve.",
            labels=["version", "python"],
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info

    def _ingest(self) -> Iterator[Metric]:
        s = self._stats
        yield _counter(
            "sessionstore_frames_received",
            "Frames read from the socket: one request each (a save, a save_batch of up to "
            "1000 saves, a read, a job) or something undecodable. Not comparable with saves.",
            s.frames_received,
        )
        yield _by_code(
            "sessionstore_frames_rejected",
            "Frames answered with an error reply, by error code (a refused save alone in "
            "its frame also counts in sessionstore_saves_rejected_total).",
            dict(s.frames_rejected),
        )
        yield _counter(
            "sessionstore_saves_applied",
            "Saves (save_session, save_outcome, alone or in a save_batch) committed for "
            "the first time.",
            s.saves_applied,
        )
        yield _counter(
            "sessionstore_saves_duplicate",
            "Saves recognised as a re-send of an applied one: acknowledged, not applied again.",
            s.saves_duplicate,
        )
        yield _by_code(
            "sessionstore_saves_rejected",
            "Saves refused, by error code, alone in a frame or one item of a save_batch.",
            dict(s.saves_rejected),
        )
        yield _counter(
            "sessionstore_replies_dropped",
            "Replies that could not be sent (peer gone or not reading); it retries.",
            s.replies_dropped,
        )
        yield _counter(
            "sessionstore_resends_in_progress",
            "Re-sent reads and jobs that found their first copy still running.",
            s.resends_in_progress,
        )
        yield _counter(
            "sessionstore_batches_failed",
            "Write transactions a storage failure aborted (none of their saves committed).",
            s.batches_failed,
        )
        yield _histogram(
            "sessionstore_batch_size",
            "Saves per write transaction (one per loop turn that received saves).",
            s.batch_sizes,
        )
        yield _histogram(
            "sessionstore_commit_duration_seconds",
            "Duration of each write transaction, BEGIN to COMMIT and its fsync.",
            s.commit_seconds,
        )
        if s.last_commit_at is not None:
            yield _gauge(
                "sessionstore_last_commit_timestamp_seconds",
                "When a write transaction last committed a new save (Unix time).",
                s.last_commit_at,
            )
        yield _gauge(
            "sessionstore_loop_last_turn_timestamp_seconds",
            "When the ingest loop last went round (at least once a second when alive).",
            s.last_turn_at,
        )
        yield _gauge(
            "sessionstore_reads_pending",
            "Reads handed to the reader threads and not yet answered.",
            self._reads_pending(),
        )

    def _index(self) -> Iterator[Metric]:
        for name, suffix, text in (
            ("sessionstore_index_size_bytes", "", "Bytes of the index file (without its WAL)."),
            ("sessionstore_wal_size_bytes", "-wal", "Bytes of the index's write-ahead log."),
        ):
            try:
                size = os.stat(f"{self._db_path}{suffix}").st_size
            except FileNotFoundError:
                size = 0
            yield _gauge(name, text, size)
        counts = self._counts()
        if counts is not None:
            yield _gauge("sessionstore_sessions", "Sessions in the index.", counts["sessions"])
            yield _gauge("sessionstore_outcomes", "Outcomes in the index.", counts["outcomes"])

    def _counts(self) -> dict[str, int] | None:
        """Row counts on the collector's own read-only connection (never the loop's)."""
        with self._counter_lock:
            try:
                if self._counter_store is None:
                    self._counter_store = SessionStore(self._db_path, readonly=True)
                return self._counter_store.counts()
            except SessionStoreError as err:
                log.warning("metrics: cannot count the index rows: %s", err)
                return None

    def _jobs_metrics(self) -> Iterator[Metric]:
        labels = ["job"]
        runs = CounterMetricFamily(
            "sessionstore_job_runs", "Job runs finished, scheduled or asked for.", labels=labels
        )
        failures = CounterMetricFamily(
            "sessionstore_job_failures", "Job runs that ended with an error.", labels=labels
        )
        took = GaugeMetricFamily(
            "sessionstore_job_last_duration_seconds", "How long the last run took.", labels=labels
        )
        succeeded = GaugeMetricFamily(
            "sessionstore_job_last_success_timestamp_seconds",
            "When the last successful run ended (Unix time).",
            labels=labels,
        )
        for name, state in list(self._jobs.states.items()):
            runs.add_metric([name], state.runs)
            failures.add_metric([name], state.failures)
            if state.last_duration_seconds is not None:
                took.add_metric([name], state.last_duration_seconds)
            if state.last_success_at is not None:
                succeeded.add_metric([name], state.last_success_at)
        yield from (runs, failures, took, succeeded)
        integrity_ok = self._jobs.integrity_ok
        if integrity_ok is not None:
            yield _gauge(
                "sessionstore_integrity_ok",
                "1 if the last integrity check found the index sound, 0 if not "
                "(absent until the first check).",
                int(integrity_ok),
            )

    def _replication_metrics(self) -> Iterator[Metric]:
        if self._replication is None:
            return
        yield _gauge(
            "sessionstore_replication_up",
            "1 while the Litestream replicating the index runs.",
            int(self._replication.running),
        )
        yield _counter(
            "sessionstore_replication_restarts",
            "Times Litestream exited unasked and was started again.",
            self._replication.restarts,
        )


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _by_code(name: str, text: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=["code"])
    for code, count in sorted(counts.items()):
        family.add_metric([code], count)
    return family


def _histogram(name: str, text: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets, total = histogram.snapshot()
    return HistogramMetricFamily(name, text, buckets=buckets, sum_value=total)


# -- the HTTP side -----------------------------------------------------------------------


class _Handler(MetricsHandler):
    timeout = SCRAPE_TIMEOUT  # a socket timeout for each read and write of one scrape


class _Bounded(socketserver.ThreadingMixIn):
    """A thread per scrape, at most :data:`SCRAPES_MAX` of them; errors are logged, not printed."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(SCRAPES_MAX)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("metrics: %d scrapes under way; connection closed", SCRAPES_MAX)
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: a scrape failed", exc_info=True)


class _TCPServer(_Bounded, HTTPServer):
    pass


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(_Bounded, socketserver.UnixStreamServer):
    pass


class MetricsEndpoint:
    """The HTTP endpoint: bound by :meth:`start` (errors name the address), closed by :meth:`close`."""

    def __init__(self, address: str, collector: DaemonCollector) -> None:
        self.address = address
        self._collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(collector)
        self._server: socketserver.BaseServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"registry": self.registry})
        try:
            self._server = self._bind(handler)
        except OSError as err:
            self._collector.close()
            raise SessionStoreError(f"metrics: cannot listen at {self.address}: {err}") from err
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sessiond-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics at %s", self.url)

    @property
    def url(self) -> str:
        if self.address.startswith("unix:"):
            return self.address
        assert self._server is not None
        address = self._server.server_address
        assert isinstance(address, tuple)
        host, port = address[:2]  # the port, if 0 was asked for
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self.address.startswith("unix:"):
                Path(self.address[len("unix:") :]).unlink(missing_ok=True)
        if self._thread is not None:
            self._thread.join()
        self._collector.close()

    def _bind(self, handler: type) -> socketserver.BaseServer:
        if self.address.startswith("unix:"):
            path = self.address[len("unix:") :]
            _remove_stale_socket(path)
            server = _UnixServer(path, handler)
            os.chmod(path, 0o600)  # connecting needs write permission: the owner's alone
            return server
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]")
        if not is_loopback(f"tcp://{host}:{port}"):
            log.warning(
                "metrics at %s are readable by anyone who can reach it (no authentication)",
                self.address,
            )
        server_class = _TCP6Server if ":" in host else _TCPServer
        return server_class((host, int(port)), handler)


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file nobody answers at (a daemon killed outright left it); refuse
    a live one, which another daemon serves."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as err:
        if err.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another process serves metrics there")
