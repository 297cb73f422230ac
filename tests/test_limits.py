"""Limits a client cannot push the daemon past: connections, and one run of each job at a time.

Connections: libzmq 4.3.5 aborts the process when an ipc accept fails with EMFILE,
so a daemon with a soft open-files limit of 1024 (systemd's default) died of about
1,000 connections. The daemon raises the limit and stops listening at a capacity
derived from it (``docs/limits.md``). The flood here is a real process holding
DEALER sockets that reconnect whenever they are dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from daemon_helpers import EDIT, Daemon, outcome, session
from sessiond.job_runs import SHARED_REQUESTS_MAX
from sessionfiles import plan_dict, session_dict, write_session
from stress_helpers import TESTS, ask, connect, helper_env, raw_socket, scaled, wait_until

from sessionstore import SessionStoreClient, protocol

Factory = Callable[..., Daemon]

LOW_NOFILE = scaled(256, 1024)
"""The daemon's open-files limit, soft and hard (the long variant: the issue's 1024)."""
FLOOD = scaled(600, 3000)
"""Connections held against it: more than its open-files limit."""


class Flood:
    """A ``tests/connection_flood.py`` process holding ``count`` DEALER connections."""

    def __init__(self, address: str, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "connection_flood.py"), address, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=helper_env(),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # its sockets are set up and connecting
        assert line.startswith("connecting"), f"flood did not start: {line!r}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def pauses_logged(d: Daemon) -> int:
    return d.stderr().count("connections: listening again at")


def test_more_connections_than_the_open_files_limit_never_kill_the_daemon(
    daemon_factory: Factory,
) -> None:
    d = daemon_factory(
        nofile=(LOW_NOFILE, LOW_NOFILE), extra_env={"SESSIONSTORE_LOG_LEVEL": "DEBUG"}
    ).start()
    flood = Flood(d.address, FLOOD)
    try:
        # Three rounds of: capacity reached, connections dropped, listening again.
        wait_until(
            lambda: pauses_logged(d) >= 3 or d.proc.poll() is not None,
            60,
            "three pauses at the connection capacity",
        )
        assert d.proc.poll() is None, f"daemon died of {FLOOD} connections: {d.stderr()}"
    finally:
        flood.stop()
    client = SessionStoreClient(d.address, timeout=30)
    client.save_session(session("after-the-flood"))
    assert client.get_session("after-the-flood") is not None
    connections = client.status()["connections"]
    assert connections["open_files_limit"] == LOW_NOFILE
    assert connections["capacity"] < LOW_NOFILE // 2
    assert connections["capacity_pauses"] >= 3
    assert connections["peak"] < LOW_NOFILE - connections["descriptors_at_start"]
    assert connections["listening"] is True
    assert d.stop() == 0


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit_at_start(
    daemon_factory: Factory,
) -> None:
    d = daemon_factory(nofile=(256, 4096)).start()
    assert "raised the open-files limit (RLIMIT_NOFILE) from 256 to 4096" in d.stderr()
    limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
    assert any(
        line.split()[3:5] == ["4096", "4096"]
        for line in limits.splitlines()
        if line.startswith("Max open files")
    ), limits
    connections = SessionStoreClient(d.address, timeout=10).status()["connections"]
    # with 256 the limit would have cut the capacity to about 80
    assert (connections["open_files_limit"], connections["capacity"]) == (4096, 1024)


# -- one run of each job at a time --------------------------------------------------------------

JOB_REQUESTS = 100
"""Requests sent at once for one job, each under its own id."""


def grow_index(db_path: Path, megabytes: int) -> None:
    """Give the index a filler table, so one integrity check takes a while (~0.25 s for 40 MB)."""
    db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    conn = connect(db_path)
    try:
        conn.execute("CREATE TABLE filler (x BLOB)")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO filler SELECT randomblob(2000) FROM n",
            (megabytes * 500,),
        )
    finally:
        conn.close()


PER_CONNECTION = 16
"""Requests sent on one connection: its replies stay under the high-water mark (32), over
which the daemon drops replies to a peer that has not read them yet."""


def ask_all(address: str, frames: list[bytes], timeout: float = 120.0) -> dict[str, dict]:
    """Send every frame at once, PER_CONNECTION to a connection; the replies by request id."""
    socks = [raw_socket(address) for _ in range(0, len(frames), PER_CONNECTION)]
    try:
        for n, frame in enumerate(frames):
            socks[n // PER_CONNECTION].send(frame)
        replies: dict[str, dict] = {}
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while len(replies) < len(frames):
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            ready = poller.poll(remaining_ms) if remaining_ms > 0 else []
            assert ready, f"{len(replies)} of {len(frames)} replies within {timeout}s"
            for sock, _ in ready:
                reply = json.loads(sock.recv())
                replies[reply["id"]] = reply
        return replies
    finally:
        for sock in socks:
            sock.close()


class ThreadCounter:
    """Samples a process's thread count every 5 ms in a thread; ``peak`` once stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = self.baseline = self._threads()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _threads(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._threads())

    def __enter__(self) -> ThreadCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_integrity_requests_share_one_run_and_start_no_thread_each(daemon_factory: Factory) -> None:
    d = daemon_factory()
    grow_index(d.db_path, 40)
    d.start()
    client = SessionStoreClient(d.address, timeout=30)
    client.save_session(session("s"))
    frames = [protocol.encode_request(f"ic-{i}", "integrity_check") for i in range(JOB_REQUESTS)]
    with ThreadCounter(d.proc.pid) as threads:
        asking = threading.Thread(target=lambda: replies.update(ask_all(d.address, frames)))
        replies: dict[str, dict] = {}
        asking.start()
        started = time.monotonic()
        client.save_outcome("s", outcome("during"), **EDIT)  # not held up by the checks
        save_seconds = time.monotonic() - started
        asking.join(150)
    ok = [r for r in replies.values() if r["ok"]]
    refused = [r for r in replies.values() if not r["ok"]]
    assert {r["result"]["ok"] for r in ok} == {True}
    assert len(ok) == SHARED_REQUESTS_MAX  # one run, its result shared by the first 64
    assert {r["error"]["code"] for r in refused} == {"unavailable"}
    assert "integrity is already running with 64 requests waiting" in refused[0]["error"]["message"]
    assert client.status()["jobs"]["integrity"]["runs"] == 1
    # one integrity thread, plus APScheduler's workers starting up meanwhile
    assert threads.peak <= threads.baseline + 5, (threads.baseline, threads.peak)
    assert save_seconds < 5, save_seconds


def test_reconcile_requests_share_a_run_asked_with_the_same_parameters_only(
    daemon_factory: Factory,
) -> None:
    d = daemon_factory(
        extra_env={"SESSIONSTORE_RECONCILE_SLICE": "1", "SESSIONSTORE_RECONCILE_ON_START": "false"}
    )
    for i in range(300):
        write_session(
            d.learning_root, f"f{i:03d}", session_dict(f"f{i:03d}"), plan=plan_dict(f"f{i:03d}")
        )
    d.start()
    frames = [
        protocol.encode_request(f"full-{i}", "reconcile", full=True) for i in range(JOB_REQUESTS)
    ]
    frames.insert(1, protocol.encode_request("dry", "reconcile", dry_run=True))
    replies = ask_all(d.address, frames)
    full = [replies[f"full-{i}"] for i in range(JOB_REQUESTS)]
    shared = [r for r in full if r["ok"]]
    assert len(shared) == SHARED_REQUESTS_MAX  # the others: "unavailable", retried by clients
    reports = {json.dumps(r["result"], sort_keys=True) for r in shared}
    assert len(reports) == 1  # one run's report, given to each
    assert shared[0]["result"]["inserted"] == 300
    assert replies["dry"]["error"]["code"] == "unavailable"
    assert (
        "reconcile is already running (a run asked for with dry_run=False, full=True"
        in (replies["dry"]["error"]["message"])
    )
    assert {r["error"]["code"] for r in full if not r["ok"]} <= {"unavailable"}
    assert SessionStoreClient(d.address, timeout=10).status()["jobs"]["reconcile"]["runs"] == 1


def test_a_request_while_a_scheduled_run_is_going_is_refused_unavailable_not_run_beside_it(
    daemon_factory: Factory,
) -> None:
    d = daemon_factory(extra_env={"SESSIONSTORE_INTEGRITY_INTERVAL": "0.05"})
    grow_index(d.db_path, 40)  # each run takes longer than the interval: always one going
    d.start()
    sock = raw_socket(d.address)
    deadline = time.monotonic() + 60  # a request may win the race for the free slot many times
    try:
        attempt = 0
        while (reply := ask(sock, protocol.encode_request(f"ic-{attempt}", "integrity_check")))[
            "ok"
        ]:
            attempt += 1
            if time.monotonic() > deadline:
                pytest.fail(f"{attempt} integrity checks in 60 s, none met a scheduled run")
    finally:
        sock.close()
    assert reply["error"]["code"] == "unavailable"
    assert "integrity is already running (a scheduled run" in reply["error"]["message"]


def test_a_scheduled_run_that_comes_due_during_a_requested_run_is_skipped(
    daemon_factory: Factory,
) -> None:
    d = daemon_factory(
        extra_env={
            "SESSIONSTORE_RECONCILE_INTERVAL": "0.2",
            "SESSIONSTORE_RECONCILE_ON_START": "false",
        }
    )
    for i in range(2000):  # a reconcile long enough for several scheduled runs to come due
        sid = f"file-{i:05d}"
        write_session(d.learning_root, sid, session_dict(sid), plan=plan_dict(sid))
    d.start()
    client = SessionStoreClient(d.address, timeout=120)
    result = client.reconcile(full=True, timeout=120)  # retried until it gets a run of its own
    assert result["scanned"] == 2000
    log = d.stderr_path.read_text()
    assert "reconcile: not started, a run asked for with dry_run=False, full=True" in log, log[
        -3000:
    ]
