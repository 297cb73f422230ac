"""Counters the ingest loop keeps for ``status`` (read and written on the loop thread only)."""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class IngestStats:
    started_monotonic: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    received: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    replies_dropped: int = 0
    resends_in_progress: int = 0
    """Re-sent reads and jobs that found their first copy still running (not run twice)."""
    batches: int = 0
    batched_writes: int = 0
    largest_batch: int = 0
    last_commit_ms: float | None = None
    max_commit_ms: float = 0.0
    last_commit_at: float | None = None

    def record_batch(self, size: int, commit_ms: float) -> None:
        self.batches += 1
        self.batched_writes += size
        self.largest_batch = max(self.largest_batch, size)
        self.last_commit_ms = commit_ms
        self.max_commit_ms = max(self.max_commit_ms, commit_ms)
        self.last_commit_at = time.time()

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
            "started_at": self.started_at,
            "requests_received": self.received,
            "requests_applied": self.applied,
            "requests_duplicate": self.duplicates,
            "requests_rejected": dict(self.rejected),
            "replies_dropped": self.replies_dropped,
            "resends_in_progress": self.resends_in_progress,
            "batches": self.batches,
            "mean_batch_size": round(self.batched_writes / self.batches, 2)
            if self.batches
            else 0.0,
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
            f"{self.applied} saves applied in {self.batches} batches, "
            f"{sum(self.rejected.values())} rejected, last commit "
            f"{self.last_commit_ms or 0:.1f} ms"
        )
