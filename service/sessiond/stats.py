"""Counters the ingest loop keeps for ``status`` and the metrics endpoint.

Written on the loop thread only. The metrics thread reads them while the loop
runs, without a lock (:mod:`sessiond.metrics`): every field is a number the loop
replaces whole, or a container copied in one C call, so a scrape sees each value
as it was at some instant and never makes the loop wait.

Each counter counts one unit, and its name says which, because two units do not
compare: a **frame** is one message on the socket (one request: a save, a
``save_batch`` of up to 1000 saves, a read, a job, or something undecodable); a
**save** is one ``save_session`` or ``save_outcome``, alone in its frame or one
item of a ``save_batch``; a **batch** is one write transaction of the loop,
holding every save of one turn.
"""

from __future__ import annotations

import bisect
import collections
import os
import time
from dataclasses import dataclass, field
from typing import Any

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Upper bounds (saves per batch) of the batch-size histogram."""

COMMIT_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
"""Upper bounds (seconds) of the batch-duration histogram: an fsync is 0.1-10 ms."""


class Histogram:
    """Counts per bucket and a sum, kept by one thread and read by another without a lock.

    Prometheus wants cumulative buckets whose ``+Inf`` equals the count; the counts
    are stored per bucket and made cumulative from one copy (``list(...)`` is one
    C call under the GIL), so a scrape always gets a consistent set.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """The cumulative (upper bound, count) pairs, ``+Inf`` last, and the sum."""
        counts, total = list(self._counts), self._sum
        buckets, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets, total


@dataclass
class IngestStats:
    started_monotonic: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    frames_received: int = 0
    """Frames read from the socket, whatever they held."""
    frames_rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    """Frames answered with an error reply, by error code (a refused save alone in its
    frame counts here and under ``saves_rejected``)."""
    saves_applied: int = 0
    """Saves committed to the index for the first time."""
    saves_duplicate: int = 0
    """Saves recognised as a re-send of one applied before: acknowledged, not applied again."""
    saves_rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    """Saves refused, by error code: alone in a frame or one item of a save_batch."""
    replies_dropped: int = 0
    resends_in_progress: int = 0
    """Re-sent reads and jobs that found their first copy still running (not run twice)."""
    batches: int = 0
    """Write transactions run (one per loop turn that received saves)."""
    batches_failed: int = 0
    """Batches a storage failure aborted: none of their saves was committed."""
    batched_saves: int = 0
    largest_batch: int = 0
    last_commit_ms: float | None = None
    max_commit_ms: float = 0.0
    last_commit_at: float | None = None
    """Wall-clock time of the last batch that committed something new."""
    last_turn_at: float = field(default_factory=time.time)
    """Wall-clock time the loop last went round (at least once per idle poll)."""
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(COMMIT_SECONDS_BUCKETS))

    def record_batch(self, size: int, commit_ms: float, *, committed: bool, failed: bool) -> None:
        """One write transaction of ``size`` saves, BEGIN to COMMIT (or ROLLBACK) included."""
        self.batches += 1
        self.batches_failed += failed
        self.batched_saves += size
        self.largest_batch = max(self.largest_batch, size)
        self.last_commit_ms = commit_ms
        self.max_commit_ms = max(self.max_commit_ms, commit_ms)
        self.batch_sizes.observe(size)
        self.commit_seconds.observe(commit_ms / 1000)
        if committed:
            self.last_commit_at = time.time()

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
            "started_at": self.started_at,
            "frames_received": self.frames_received,
            "frames_rejected": dict(self.frames_rejected),
            "saves_applied": self.saves_applied,
            "saves_duplicate": self.saves_duplicate,
            "saves_rejected": dict(self.saves_rejected),
            "replies_dropped": self.replies_dropped,
            "resends_in_progress": self.resends_in_progress,
            "batches": self.batches,
            "batches_failed": self.batches_failed,
            "mean_batch_size": round(self.batched_saves / self.batches, 2) if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "last_commit_ms": None
            if self.last_commit_ms is None
            else round(self.last_commit_ms, 3),
            "max_commit_ms": round(self.max_commit_ms, 3),
            "last_commit_at": self.last_commit_at,
        }

    def summary(self) -> str:
        """The one-line STATUS= text systemd shows."""
        return (
            f"{self.saves_applied} saves applied in {self.batches} batches, "
            f"{sum(self.saves_rejected.values())} saves rejected, last commit "
            f"{self.last_commit_ms or 0:.1f} ms"
        )
