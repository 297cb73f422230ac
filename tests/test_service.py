"""The daemon as systemd sees it: notify protocol, journald logging, jobs that fail and recover.

Every test runs a real ``sessionstore serve`` with its own ``$NOTIFY_SOCKET`` (bound by
the test, as systemd would) and reads exactly the datagrams the daemon sends. Where a
rate is checked, datagrams are counted over a measured window; waits are for a datagram,
a reply or a polled state with a deadline, never a bare sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from daemon_helpers import EDIT, Daemon, outcome, session

from sessionstore import SessionStoreClient, protocol
from sessionstore.errors import DaemonUnavailable

Factory = Callable[..., Daemon]
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (DEBUG|INFO|WARNING|ERROR)")
PRIORITY = re.compile(r"^<[0-7]>")


def receive_for(d: Daemon, seconds: float) -> list[tuple[float, str]]:
    """Every notify datagram that arrives in a window of ``seconds``, with its arrival time."""
    assert d.notify is not None
    received = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        d.notify.settimeout(left)
        try:
            message = d.notify.recv(4096).decode()
        except TimeoutError:
            break
        received.append((time.monotonic(), message))
        d.messages.append(message)
    return received


def count(received: list[tuple[float, str]], assignment: str) -> int:
    return sum(assignment in message.split("\n") for _, message in received)


def socket_path(d: Daemon) -> Path:
    return Path(d.address.removeprefix("ipc://"))


def poll_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen within {timeout}s (last: {value!r})")
        time.sleep(0.02)  # polling interval, not synchronisation: the deadline decides


def log_lines(d: Daemon) -> list[str]:
    return d.stderr_path.read_text(errors="replace").splitlines()


def raw_socket(address: str) -> zmq.Socket:
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


WINDOW = 16
"""Frames in flight at most: below the daemon's high-water mark (32), past which it
drops replies to a client that does not keep up (a real client retries those)."""


def send_bad_frames(address: str, n: int) -> None:
    """Send ``n`` frames that are not JSON and wait for every error reply."""
    sock = raw_socket(address)
    try:
        for start in range(0, n, WINDOW):
            window = min(WINDOW, n - start)
            for _ in range(window):
                sock.send(b"{not json")
            for _ in range(window):
                assert sock.poll(10_000), "no reply to a bad frame"
                reply = json.loads(sock.recv())
                assert reply["ok"] is False and reply["error"]["code"] == "malformed"
    finally:
        sock.close()


# -- READY, WATCHDOG, STATUS, STOPPING ----------------------------------------------------


def test_ready_is_sent_only_once_the_socket_is_bound(daemon_factory: Factory) -> None:
    d = daemon_factory()
    assert not socket_path(d).exists()
    d.start()  # returns as soon as READY=1 has been received
    path_at_ready = socket_path(d)
    assert path_at_ready.exists(), "READY=1 arrived before the ipc socket file existed"
    assert stat.S_ISSOCK(path_at_ready.stat().st_mode)
    assert stat.S_IMODE(path_at_ready.stat().st_mode) == 0o600
    assert "READY=1" in d.messages[0].split("\n")  # nothing announced before READY
    client = SessionStoreClient(d.address, timeout=10)
    client.transport.retry_first = client.transport.retry_max = (
        60.0  # no resend: the first attempt must be answered
    )
    client.save_session(session("first"))
    assert client.get_session("first") is not None


def test_watchdog_pings_at_half_watchdog_usec(daemon_factory: Factory) -> None:
    d = daemon_factory(extra_env={"WATCHDOG_USEC": "200000"}).start()
    received = receive_for(d, 1.5)
    pings = [at for at, message in received if "WATCHDOG=1" in message.split("\n")]
    assert 8 <= len(pings) <= 20, f"{len(pings)} WATCHDOG=1 in 1.5 s: {received}"
    gaps = sorted(b - a for a, b in zip(pings, pings[1:], strict=False))
    assert 0.05 <= gaps[len(gaps) // 2] <= 0.2  # median gap ~0.1 s


def test_watchdog_keeps_pinging_while_the_daemon_is_busy(daemon_factory: Factory) -> None:
    BUSY_SECONDS = 3.0  # noqa: N806  (several pings' worth of saves, however fast they go)
    d = daemon_factory(extra_env={"WATCHDOG_USEC": "1000000"}).start()  # a ping every 0.5 s
    assert d.notify is not None
    client = SessionStoreClient(d.address, timeout=30)
    client.save_session(session("busy"))
    done = threading.Event()
    saved = 0

    def load() -> None:
        nonlocal saved
        try:
            with client.pipeline() as pipe:
                until = time.monotonic() + BUSY_SECONDS
                while time.monotonic() < until:
                    pipe.save_outcome("busy", outcome(f"e{saved}"), **EDIT)
                    saved += 1
        finally:
            done.set()

    writer = threading.Thread(target=load)
    d.notify.settimeout(0.02)
    started = time.monotonic()
    writer.start()
    pings = [started]
    while not done.is_set():
        try:
            message = d.notify.recv(4096).decode()
        except TimeoutError:
            continue
        if "WATCHDOG=1" in message.split("\n"):
            pings.append(time.monotonic())
    finished = time.monotonic()
    writer.join()
    with sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True) as db:
        (stored,) = db.execute("SELECT count(*) FROM edit_outcomes WHERE session_id = 'busy'")
    assert stored == (saved,) and saved > 0
    assert finished - started >= BUSY_SECONDS
    gaps = [b - a for a, b in zip(pings, [*pings[1:], finished], strict=True)]
    # pings every 0.5 s; systemd would kill the daemon after WatchdogSec (1 s) without one
    assert max(gaps) < 1.0, f"{len(pings) - 1} pings in {finished - started:.2f}s, gaps {gaps}"


def test_a_stalled_loop_stops_the_watchdog_pings_and_they_resume_when_it_moves(
    daemon_factory: Factory,
) -> None:
    """The loop thread feeds the watchdog itself, so a loop that is stuck stops feeding
    it and systemd restarts the daemon; a timer thread would keep pinging for a dead
    loop. Stall only the loop: another process holds the index's write lock, so the
    loop's next commit waits in SQLite's busy handler (up to 5 s) while every other
    thread of the daemon is free to run."""
    d = daemon_factory(extra_env={"WATCHDOG_USEC": "400000"}).start()  # a ping every 0.2 s
    assert d.notify is not None
    client = SessionStoreClient(d.address, timeout=30)
    client.save_session(session("s"))
    assert count(receive_for(d, 1.0), "WATCHDOG=1") >= 3  # pinging while healthy

    lock_holder = sqlite3.connect(d.db_path, isolation_level=None)
    lock_holder.execute("BEGIN IMMEDIATE")  # the write lock: the loop's BEGIN IMMEDIATE waits
    try:
        sock = raw_socket(d.address)
        sock.send(protocol.encode_save_outcome("stalled", "s", outcome("e1"), rationale="", **EDIT))
        d.wait_for_stalled_loop(quiet=1.5, within=4.0)  # 7 pings missed; a thread would send them
    finally:
        lock_holder.execute("ROLLBACK")
        lock_holder.close()
    assert sock.poll(10_000), "the stalled save was never answered"
    assert json.loads(sock.recv())["ok"] is True  # it waited for the lock, then committed
    sock.close()
    assert count(receive_for(d, 1.0), "WATCHDOG=1") >= 3  # the loop moves: pings resume


def test_no_watchdog_pings_when_watchdog_pid_is_another_process(daemon_factory: Factory) -> None:
    env = {
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": str(os.getpid()),  # the test's pid, not the daemon's
        "SESSIONSTORE_STATUS_INTERVAL": "0.2",
    }
    d = daemon_factory(extra_env=env).start()
    received = receive_for(d, 1.5)
    assert count(received, "WATCHDOG=1") == 0
    assert any(m.startswith("STATUS=") for _, m in received)  # the channel itself works
    assert all("WATCHDOG=1" not in m.split("\n") for m in d.messages)


def test_watchdog_pid_equal_to_the_daemons_own_pid_arms_the_watchdog(
    daemon_factory: Factory,
) -> None:
    """systemd sets WATCHDOG_PID to the main pid; `exec` keeps the shell's $$ for the daemon."""
    d = daemon_factory(extra_env={"WATCHDOG_USEC": "200000"})
    notify_path = d.stderr_path.parent / "notify.sock"
    d.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    d.notify.bind(str(notify_path))
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "OPENJARVIS_HOME": str(d.learning_root.parent),
        "SESSIONSTORE_CONFIG": "",
        "WATCHDOG_USEC": "200000",
    }
    command = 'WATCHDOG_PID=$$ exec "$0" -m sessionstore serve --learning-root "$1" --address "$2"'
    with open(d.stderr_path, "ab") as stderr:
        d.proc = subprocess.Popen(
            ["/bin/sh", "-c", command, sys.executable, str(d.learning_root), d.address],
            env=env,
            stderr=stderr,
            stdout=subprocess.DEVNULL,
        )
    d.wait_for("READY=1", 30)
    assert count(receive_for(d, 1.0), "WATCHDOG=1") >= 5


def test_status_lines_report_the_daemons_progress(daemon_factory: Factory) -> None:
    d = daemon_factory(extra_env={"SESSIONSTORE_STATUS_INTERVAL": "0.2"}).start()
    deadline = time.monotonic() + 10
    status_lines: list[str] = []

    def next_status() -> str:
        while time.monotonic() < deadline:
            received = receive_for(d, 0.5)
            lines = [m for _, m in received if m.startswith("STATUS=")]
            status_lines.extend(lines)
            if lines:
                return lines[-1]
        pytest.fail(f"no further STATUS= within 10 s; seen: {status_lines}; {d.stderr()}")

    assert "0 saves applied" in next_status()
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("s"))
    client.save_outcome("s", outcome("e1"), **EDIT)
    while "2 saves applied" not in (line := next_status()):
        pass
    assert "\n" not in line and len(line.encode()) <= len("STATUS=") + 512


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_is_sent_at_the_signal_and_the_daemon_exits_zero(
    daemon_factory: Factory, sig: signal.Signals
) -> None:
    d = daemon_factory().start()
    SessionStoreClient(d.address, timeout=10).save_session(session("s"))
    assert d.stop(sig) == 0
    d.wait_for("STOPPING=1", 5)  # already queued in our socket's buffer
    ready_at = next(i for i, m in enumerate(d.messages) if "READY=1" in m.split("\n"))
    stopping_at = next(i for i, m in enumerate(d.messages) if "STOPPING=1" in m.split("\n"))
    assert ready_at < stopping_at
    assert any("stopped" in line for line in log_lines(d))


def fill_notify_queue(d: Daemon) -> socket.socket:
    """Fill the notify socket's queue with junk, so the daemon's next send blocks (2 s timeout)."""
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    target = str(d.stderr_path.parent / "notify.sock")  # where Daemon binds its notify socket
    while True:
        try:
            filler.sendto(b"X_TEST_FILLER=1", target)
        except BlockingIOError:
            return filler


def test_sigterm_during_a_notify_send_stops_the_daemon(daemon_factory: Factory) -> None:
    """systemd may be slow to read (queue full): SIGTERM then must still stop the daemon."""
    d = daemon_factory(extra_env={"WATCHDOG_USEC": "20000"}).start()  # a ping every 10 ms
    assert d.notify is not None and d.proc is not None
    filled_at = time.monotonic()
    filler = fill_notify_queue(d)
    probe = SessionStoreClient(d.address, timeout=0.3)
    while True:  # the loop is stuck in a send once a request goes unanswered
        assert time.monotonic() - filled_at < 1.0, "the daemon never blocked on its notify send"
        try:
            probe.status()
        except DaemonUnavailable:
            break
    # The blocked send began after filled_at and lasts 2 s: the signal lands inside it.
    d.proc.send_signal(signal.SIGTERM)
    d.notify.settimeout(0.05)
    deadline = time.monotonic() + 3.0
    while d.proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):  # make room: the daemon's sends may proceed
            d.messages.append(d.notify.recv(4096).decode())
    filler.close()
    probe.close()
    assert d.proc.poll() == 0, "the daemon hung after SIGTERM"
    assert any("STOPPING=1" in m.split("\n") for m in d.messages)


# -- logging -------------------------------------------------------------------------------


def test_under_journald_lines_carry_a_priority_and_no_timestamp(daemon_factory: Factory) -> None:
    d = daemon_factory()
    d.stderr_path.touch()  # Daemon appends to this same file: fd 2 will be this inode
    st = d.stderr_path.stat()
    d.extra_env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    d.start()
    assert d.stop() == 0
    lines = [line for line in log_lines(d) if line]
    assert lines
    for line in lines:
        assert PRIORITY.match(line), line
        assert not TIMESTAMP.match(line[3:]), line
    assert any(line.startswith("<6>sessiond: ") and " ready at " in line for line in lines)


@pytest.mark.parametrize("journal_stream", [None, "1:2"], ids=["unset", "not-our-stderr"])
def test_outside_journald_lines_start_with_a_timestamp(
    daemon_factory: Factory, journal_stream: str | None
) -> None:
    extra = {} if journal_stream is None else {"JOURNAL_STREAM": journal_stream}
    d = daemon_factory(extra_env=extra).start()
    assert d.stop() == 0
    lines = [line for line in log_lines(d) if line]
    assert lines
    for line in lines:
        assert TIMESTAMP.match(line), line
    assert any(" INFO " in line and " ready at " in line for line in lines)


def test_a_rejected_request_is_logged_once_with_its_reason(daemon: Daemon) -> None:
    send_bad_frames(daemon.address, 1)  # the log line is written before the reply is sent
    rejected = [line for line in log_lines(daemon) if "rejected request" in line]
    assert len(rejected) == 1, rejected
    assert "malformed" in rejected[0] and "JSON" in rejected[0]
    assert "WARNING" in rejected[0]


def test_a_flood_of_bad_frames_is_rate_limited_in_the_log(daemon: Daemon) -> None:
    send_bad_frames(daemon.address, 100)
    rejected = [line for line in log_lines(daemon) if "rejected request" in line]
    assert 1 <= len(rejected) <= 10, len(rejected)
    client = SessionStoreClient(daemon.address, timeout=10)
    assert client.status()["frames_rejected"] == {"malformed": 100}  # all counted
    client.save_session(session("after-flood"))  # and the daemon serves on


def test_held_back_rejections_are_summarised_at_the_latest_at_shutdown(daemon: Daemon) -> None:
    send_bad_frames(daemon.address, 100)
    assert daemon.stop() == 0
    summaries = [line for line in log_lines(daemon) if "not logged" in line]
    assert len(summaries) == 1, log_lines(daemon)
    assert "90 more malformed rejection(s)" in summaries[0]


# -- jobs ------------------------------------------------------------------------------------


def jobs(client: SessionStoreClient) -> dict[str, Any]:
    return client.status()["jobs"]  # type: ignore[no-any-return]


def test_a_failing_scheduled_job_is_reported_and_the_daemon_serves_on(
    daemon_factory: Factory,
) -> None:
    d = daemon_factory(extra_env={"SESSIONSTORE_RECONCILE_INTERVAL": "0.5"}).start()
    client = SessionStoreClient(d.address, timeout=10)
    poll_until(lambda: jobs(client)["reconcile"]["runs"] >= 1, 10, "a first reconcile run")
    assert jobs(client)["reconcile"]["failures"] == 0
    # A real fault: the table where reconcile records file states disappears under it
    # (another process damaged the schema); saves do not touch that table.
    damage = sqlite3.connect(d.db_path, timeout=10)
    damage.execute("DROP TABLE reconcile_files")
    damage.commit()
    damage.close()
    failed = poll_until(
        lambda: (job := jobs(client)["reconcile"])["failures"] >= 2 and job,
        10,
        "two failed reconcile runs",
    )
    assert "StorageFailure" in failed["last_error"] and "reconcile_files" in failed["last_error"]
    assert failed["next_run_at"] is not None  # still scheduled
    client.save_session(session("still-saving"))
    client.save_outcome("still-saving", outcome("e1"), **EDIT)
    assert [o.edit_id for o in client.list_outcomes("still-saving")] == ["e1"]
    assert d.proc is not None and d.proc.poll() is None
    assert any("reconcile failed" in line and "reconcile_files" in line for line in log_lines(d))
    assert not any("Traceback" in line for line in log_lines(d))
    assert d.stop() == 0


def test_unreadable_sessions_dir_is_reported_by_reconcile_not_fatal(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    root = tmp_path / "learning"
    root.mkdir(mode=0o700)
    (root / "sessions").write_text("not a directory\n")
    d = daemon_factory(root, extra_env={"SESSIONSTORE_RECONCILE_INTERVAL": "0.5"}).start()
    client = SessionStoreClient(d.address, timeout=10)
    job = poll_until(lambda: (j := jobs(client)["reconcile"])["runs"] >= 1 and j, 10, "reconcile")
    assert job["failures"] == 0 and job["last_error"] is None
    (invalid,) = job["last_result"]["invalid"]
    assert invalid["path"] == "sessions" and "cannot list directory" in invalid["reason"]
    client.save_session(session("s"))
    assert client.get_session("s") is not None


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_checkpoint_mode_off_schedules_no_checkpoint(daemon_factory: Factory, mode: str) -> None:
    d = daemon_factory(extra_env={"SESSIONSTORE_CHECKPOINT_MODE": mode}).start()
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("s"))
    scheduled = set(jobs(client))
    assert {"reconcile", "integrity"} <= scheduled
    assert ("checkpoint" in scheduled) is (mode == "auto")
    assert d.stop() == 0
    final = any("final checkpoint" in line for line in log_lines(d))
    assert final is (mode == "auto")
