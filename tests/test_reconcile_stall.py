"""A reconcile of big session.json files does not stall the daemon's loop.

The review's case: eight valid 21 MiB files (under the 32 MiB cap) were read and
parsed in one reconcile slice on the loop thread; a save waited 49 s, the daemon
reached 2.9 GiB and the longest gap between watchdog pings was 48 s (the units set
WatchdogSec=30, so systemd would have killed it, and the reconcile 5 s after the
restart would have done it again). Files are now read and parsed in a child
process and the loop writes their rows in slices bounded in bytes and time.

The daemon runs with ``WATCHDOG_USEC`` set, so it pings the test's notify socket
as it would systemd's, every half period; a saver thread meanwhile times each save.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import EDIT, Daemon, outcome, session
from sessionfiles import OLD_MTIME_NS, outcome_dict, session_dict
from stress_helpers import RssSampler, scaled
from stress_helpers import wait_until as wait_for

from sessionstore import SessionStoreClient

FILE_MIB = 21
BIG_FILES = scaled(2, 8)  # of alternating shapes: a huge trigger_metadata, 100k outcomes
BOUND_SECONDS = 2.0
RSS_GROWTH_BOUND_MIB = 300


def big_metadata(sid: str, size: int) -> dict[str, Any]:
    """A session whose trigger_metadata is ``size`` bytes of nested records."""
    record = {"score": 0.5, "label": "x" * 40, "tags": ["a", "b", 3]}
    per_record = len(json.dumps(record)) + 12
    blocks = {
        f"block{b}": {f"k{b}_{i}": dict(record, score=i / 7) for i in range(1000)}
        for b in range(size // (1000 * per_record))
    }
    return session_dict(sid, outcomes=("e1",), trigger_metadata=blocks)


def many_outcomes(sid: str, size: int) -> dict[str, Any]:
    """A session with as many outcomes as make ``size`` bytes."""
    count = size // (len(json.dumps(outcome_dict("e-000000"))) + 2)
    return session_dict(sid, outcomes=[f"e-{i:06d}" for i in range(count)])


def write_big(root: Path, directory: str, content: dict[str, Any]) -> int:
    folder = root / "sessions" / directory
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "session.json"
    path.write_text(json.dumps(content))
    os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    return path.stat().st_size


class WatchdogPings:
    """The times of the WATCHDOG=1 datagrams a daemon sends to its notify socket."""

    def __init__(self, notify: socket.socket) -> None:
        self.at: list[float] = []
        self._notify = notify
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._notify.settimeout(0.1)
        while not self._stop.is_set():
            try:
                message = self._notify.recv(4096).decode()
            except TimeoutError:
                continue
            if "WATCHDOG=1" in message.split("\n"):
                self.at.append(time.monotonic())

    def __enter__(self) -> WatchdogPings:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest_gap(self) -> float:
        return max(b - a for a, b in zip(self.at, self.at[1:], strict=False))


class Saver:
    """Saves outcomes one after another until stopped; the slowest save's seconds."""

    def __init__(self, address: str) -> None:
        self.client = SessionStoreClient(address, timeout=120)
        self.client.save_session(session("live"))
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            self.client.save_outcome("live", outcome(f"e{n}"), **EDIT)
            self.latencies.append(time.monotonic() - started)
            n += 1

    def __enter__(self) -> Saver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(130)


@pytest.mark.timeout(900 if BIG_FILES > 2 else 300)
def test_reconciling_big_files_keeps_watchdog_pings_and_saves_under_two_seconds(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory(
        extra_env={"WATCHDOG_USEC": "1000000", "SESSIONSTORE_RECONCILE_ON_START": "false"}
    )
    sizes = []
    for n in range(BIG_FILES):
        shape = big_metadata if n % 2 == 0 else many_outcomes
        sizes.append(write_big(d.learning_root, f"big-{n}", shape(f"big-{n}", FILE_MIB << 20)))
    # Valid, but not the session its directory names: reported, and not read every pass.
    write_big(d.learning_root, "mismatch", many_outcomes("someone-else", FILE_MIB << 20))
    assert all(20 << 20 < size < 32 << 20 for size in sizes), sizes
    d.start()
    assert d.proc is not None and d.notify is not None
    client = SessionStoreClient(d.address, timeout=600)
    with WatchdogPings(d.notify) as pings, RssSampler(d.proc.pid) as rss, Saver(d.address) as saver:
        started = time.monotonic()
        result = client.reconcile()
        took = time.monotonic() - started
    again = client.reconcile()
    status = client.status()
    assert d.stop() == 0

    gap, slowest = pings.longest_gap(), max(saver.latencies)
    print(
        f"reconcile of {BIG_FILES} x {FILE_MIB} MiB took {took:.1f}s: longest watchdog gap "
        f"{gap:.2f}s, slowest of {len(saver.latencies)} saves {slowest:.2f}s, daemon RSS "
        f"{rss.baseline_mib:.0f} -> {rss.peak_mib:.0f} MiB"
    )
    assert gap < BOUND_SECONDS
    assert slowest < BOUND_SECONDS
    assert rss.peak_mib - rss.baseline_mib < RSS_GROWTH_BOUND_MIB
    assert result["inserted"] == BIG_FILES, result
    assert [i["path"] for i in result["invalid"]] == ["sessions/mismatch/session.json"]
    assert "does not match directory 'mismatch'" in result["invalid"][0]["reason"]
    assert (again["parsed"], again["unchanged"]) == (0, BIG_FILES)  # mismatch not read again
    assert again["invalid"] == result["invalid"]
    assert status["jobs"]["reconcile"]["failures"] == 0

    conn = sqlite3.connect(d.db_path)
    try:
        for n in range(BIG_FILES):
            expected = 1 if n % 2 == 0 else len(many_outcomes("x", FILE_MIB << 20)["edit_outcomes"])
            got = conn.execute(
                "SELECT count(*) FROM edit_outcomes WHERE session_id = ?", (f"big-{n}",)
            ).fetchone()[0]
            assert got == expected, (n, got, expected)
        metadata = conn.execute(
            "SELECT trigger_metadata FROM learning_sessions WHERE id = 'big-0'"
        ).fetchone()[0]
        assert json.loads(metadata) == big_metadata("big-0", FILE_MIB << 20)["trigger_metadata"]
    finally:
        conn.close()


def reader_processes(daemon_pid: int) -> list[int]:
    """The daemon's reconcile reader processes (children running sessionstore.reconcile_reader)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == daemon_pid and b"sessionstore.reconcile_reader" in command:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_reconcile(address: str) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = SessionStoreClient(address, timeout=300).reconcile()
        except Exception as err:  # the test looks at what the call ended with
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def root_with_a_big_file(d: Daemon, small: int) -> None:
    write_big(d.learning_root, "a-big", many_outcomes("a-big", FILE_MIB << 20))
    for n in range(small):
        write_big(d.learning_root, f"small-{n}", session_dict(f"small-{n}"))


@pytest.mark.timeout(300)
def test_a_reader_process_killed_mid_file_costs_that_file_for_this_pass_only(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory(extra_env={"SESSIONSTORE_RECONCILE_ON_START": "false"})
    root_with_a_big_file(d, small=5)
    d.start()
    assert d.proc is not None
    thread, outcome = start_reconcile(d.address)
    wait_for(lambda: reader_processes(d.proc.pid), 60, "the reader process")  # type: ignore[union-attr]
    (reader,) = reader_processes(d.proc.pid)
    os.kill(reader, signal.SIGKILL)
    thread.join(300)
    result = outcome["result"]
    assert result["invalid"] == [
        {"path": "sessions/a-big/session.json",
         "reason": "the reconcile reader died reading it (exit code -9)"},
    ]  # fmt: skip
    assert result["inserted"] == 5
    again = SessionStoreClient(d.address, timeout=300).reconcile()  # its state was not recorded
    assert (again["parsed"], again["inserted"], again["invalid"]) == (1, 1, [])
    assert d.stop() == 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_daemon_stopped_mid_reconcile_leaves_no_reader_process_behind(
    daemon_factory: Callable[..., Daemon], sig: int
) -> None:
    d = daemon_factory(extra_env={"SESSIONSTORE_RECONCILE_ON_START": "false"})
    root_with_a_big_file(d, small=0)
    d.start()
    assert d.proc is not None
    start_reconcile(d.address)
    wait_for(lambda: reader_processes(d.proc.pid), 60, "the reader process")  # type: ignore[union-attr]
    (reader,) = reader_processes(d.proc.pid)
    started = time.monotonic()
    status = d.stop(sig)
    assert status == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    wait_for(lambda: not alive(reader), 30, "the reader process to exit")
    print(
        f"{signal.Signals(sig).name}: daemon and reader gone in {time.monotonic() - started:.1f}s"
    )


def test_a_file_past_reconcile_max_file_bytes_is_reported_unread(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """The setting that bounds the reader process: it never parses a bigger file."""
    d = daemon_factory(
        extra_env={
            "SESSIONSTORE_RECONCILE_ON_START": "false",
            "SESSIONSTORE_RECONCILE_MAX_FILE_BYTES": str(64 * 1024),
        }
    )
    size = write_big(d.learning_root, "big", many_outcomes("big", 100 * 1024))
    write_big(d.learning_root, "small", session_dict("small"))
    d.start()
    result = SessionStoreClient(d.address, timeout=60).reconcile()
    assert result["inserted"] == 1
    assert result["invalid"] == [
        {"path": "sessions/big/session.json", "reason": f"larger than 65536 bytes ({size})"}
    ]
    assert d.stop() == 0
