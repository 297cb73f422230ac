"""Command-line options of ``sessionstore bench`` (kept apart so ``--help`` stays cheap)."""

from __future__ import annotations

import argparse


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--processes", type=int, default=8, help="writer processes per scenario (default 8)"
    )
    parser.add_argument(
        "--saves", type=int, default=2000, help="saves per writer process (default 2000)"
    )
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
