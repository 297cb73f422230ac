"""Command-line options of ``sessionstore bench`` (kept apart so ``--help`` stays cheap)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

DEFAULT_SCENARIOS = ("direct", "sync", "pipelined", "ceiling", "contention", "listing", "reads")
MIN_SECONDS = 3.0
"""The shortest timed phase a measurement may have: shorter ones swing with start-up
and stragglers (0.5 s phases of one build measured 14k to 68k saves/s)."""
MAX_RELEASE_SECONDS = 1.0
"""Between two holds the contention scenario's other writer rests min(this, lock seconds):
the gap direct writers get. Without a gap it would re-take the lock before any waiting
writer's busy handler wakes up, and every direct save would fail: true, but not a fair test."""
SHORT_SECONDS = 0.1
"""The shortest with --allow-short-phases, which only the tests use (numbers meaningless)."""


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """The validated settings of one benchmark run."""

    processes: int = 8
    seconds: float = MIN_SECONDS
    """Length of each timed phase (direct before and after, sync, pipelined, ceiling)."""
    durability: Literal["full", "normal"] = "full"
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    direct_writer: str = "auto"
    """``auto``, ``openjarvis`` or ``sqlite3``: whose write path the direct baseline is."""
    reconcile_files: int = 5000
    lock_seconds: float = 2.0
    client_timeout: float = 10.0
    rss_outcomes: int = 1_000_000
    listing_sessions: int = 2000
    listing_outcomes: int = 10
    busy_timeout: float = 5.0
    """The direct writers' SQLite busy timeout: the original's (sqlite3's default)."""
    ceiling_batch: int = 1000
    config: str | None = None
    """A TOML config for the daemons (else their defaults)."""
    short_phases: bool = False

    @property
    def release_seconds(self) -> float:
        return min(MAX_RELEASE_SECONDS, self.lock_seconds)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--processes", type=int, default=8, help="writer processes per scenario (default 8)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=MIN_SECONDS,
        help=f"length of each timed phase: every writer saves until one shared deadline "
        f"(default and minimum {MIN_SECONDS:g})",
    )
    parser.add_argument(
        "--direct-writer",
        choices=["auto", "openjarvis", "sqlite3"],
        default="auto",
        help="the direct baseline: OpenJarvis's own SessionStore (openjarvis package), or the "
        "same write path in plain sqlite3; auto: openjarvis when installed (default auto)",
    )
    # Removed: phases are time-bounded now. Kept hidden to say so instead of "unrecognized".
    parser.add_argument("--saves", type=int, default=None, help=argparse.SUPPRESS)
    # For the tests only: phases shorter than MIN_SECONDS, whose numbers mean nothing.
    parser.add_argument("--allow-short-phases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--durability",
        choices=["full", "normal"],
        default="full",
        help="SQLite synchronous level (default full)",
    )
    parser.add_argument(
        "--workdir",
        help="directory on the disk to measure (default: a temporary directory under the current one)",
    )
    parser.add_argument(
        "--scenarios",
        default="direct,sync,pipelined,ceiling,contention,listing,reads",
        help="comma-separated subset of direct, sync, pipelined, ceiling, contention, listing, "
        "reads, rss (rss, 1M stored outcomes, is not in the default set)",
    )
    parser.add_argument(
        "--reconcile-files",
        type=int,
        default=5000,
        help="session.json files reconciled during the contention scenario (default 5000)",
    )
    parser.add_argument(
        "--lock-seconds",
        type=float,
        default=6.0,
        help="how long the contention scenario's other process holds its write transaction "
        "(default 6: longer than SQLite's 5 s busy timeout, like a rebuild or a long job)",
    )
    parser.add_argument(
        "--rss-outcomes",
        type=int,
        default=1_000_000,
        help="outcomes the rss scenario stores; daemon RSS is read after a tenth and after all "
        "(default 1000000)",
    )
    parser.add_argument(
        "--listing-sessions",
        type=int,
        default=2000,
        help="sessions the listing and reads scenarios store and list (default 2000)",
    )
    parser.add_argument(
        "--listing-outcomes",
        type=int,
        default=10,
        help="outcomes per session in the listing and reads scenarios (default 10)",
    )
