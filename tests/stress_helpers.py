"""Shared pieces for the crash, fault, fuzz, access and overload tests.

Writers are real processes (``tests/writer.py``) whose acknowledged edit ids are
read line by line as they arrive, so a test can act "after N acks" instead of
after a sleep. The index is inspected with plain ``sqlite3`` once no daemon owns it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import zmq

from sessionstore import SessionStore, SessionStoreClient, protocol
from sessionstore.benchmarks.listing import fill

TESTS = Path(__file__).parent
LONG = bool(os.environ.get("SESSIONSTORE_LONG_TESTS"))
"""Long variants (more crash cycles, more fuzz frames) when SESSIONSTORE_LONG_TESTS is set."""


def scaled(default: int, long: int) -> int:
    return long if LONG else default


def helper_env(**extra: str) -> dict[str, str]:
    """The environment for helper processes: tests/ importable, no stray config file."""
    path = f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**os.environ, "PYTHONPATH": path, "SESSIONSTORE_CONFIG": "", **extra}


def raw_socket(address: str, **options: int) -> zmq.Socket:
    """A bare DEALER, as a foreign client would open it."""
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(address)
    return sock


def ask(sock: zmq.Socket, *frames: bytes, timeout_ms: int = 10_000) -> dict:
    sock.send_multipart(list(frames))
    assert sock.poll(timeout_ms), "no reply from the daemon"
    return json.loads(sock.recv())


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Writer:
    """One ``tests/writer.py`` process; its acked edit ids are collected as they are printed."""

    def __init__(self, address: str, writer_id: str, count: int, mode: str, timeout: float) -> None:
        self.writer_id = writer_id
        self.session_id = f"writer-{writer_id}"
        self.attempted = [f"{self.session_id}-{i:06d}" for i in range(count)]
        self.acked: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(TESTS / "writer.py"),
                address,
                writer_id,
                str(count),
                mode,
                str(timeout),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=helper_env(),
            text=True,
        )
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.acked.append(line.strip())
                self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self._err.extend(self.proc.stderr)

    @property
    def stderr(self) -> str:
        return "".join(self._err)[-4000:]

    def acks(self) -> int:
        with self._cond:
            return len(self.acked)

    def finish(self, timeout: float) -> int:
        """Wait for the process to exit (killed after ``timeout``); returns its exit code."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def total_acks(writers: Iterable[Writer]) -> int:
    return sum(w.acks() for w in writers)


# -- the index, read directly (no daemon running) ---------------------------------------------


def connect(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(db_path), isolation_level=None)


def integrity(db_path: Path) -> list[str]:
    conn = connect(db_path)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def outcome_ids(db_path: Path, session_id: str | None = None) -> list[str]:
    """Edit ids in insertion order (of one session, or of all)."""
    conn = connect(db_path)
    try:
        if session_id is None:
            rows = conn.execute("SELECT edit_id FROM edit_outcomes ORDER BY id")
        else:
            rows = conn.execute(
                "SELECT edit_id FROM edit_outcomes WHERE session_id = ? ORDER BY id", (session_id,)
            )
        return [row[0] for row in rows]
    finally:
        conn.close()


def duplicated_outcomes(db_path: Path) -> list[tuple[str, str, int]]:
    conn = connect(db_path)
    try:
        return list(
            conn.execute(
                "SELECT session_id, edit_id, count(*) FROM edit_outcomes "
                "GROUP BY session_id, edit_id HAVING count(*) > 1"
            )
        )
    finally:
        conn.close()


def session_ids(db_path: Path) -> set[str]:
    conn = connect(db_path)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM learning_sessions")}
    finally:
        conn.close()


def index_files(db_path: Path) -> tuple[bytes, bytes]:
    """The database and WAL bytes (WAL empty when absent)."""
    wal = Path(f"{db_path}-wal")
    return db_path.read_bytes(), wal.read_bytes() if wal.exists() else b""


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process's VmRSS every 10 ms in a thread; ``peak_mib`` once stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline_mib = vm_rss_kib(pid) / 1024
        self.peak_mib = self.baseline_mib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak_mib = max(self.peak_mib, vm_rss_kib(self.pid) / 1024)
            except (OSError, AssertionError):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def filled_root(root: Path, sessions: int, outcomes_per_session: int) -> Path:
    """A learning root whose index already holds the listing benchmark's records."""
    root.mkdir(parents=True)
    store = SessionStore(root / "distillation.db", durability="normal")
    try:
        fill(store, sessions, outcomes_per_session)
    finally:
        store.close()
    return root


def pin_listings(address: str, peers: int, requests: int, ops: list[str]) -> list[zmq.Socket]:
    """``peers`` connections that each ask for ``requests`` listings and never read."""
    sockets = []
    for p in range(peers):
        sock = raw_socket(address, RCVHWM=1, SNDHWM=0)
        for n in range(requests):
            op = ops[n % len(ops)]
            sock.send(protocol.encode_request(f"pin-{p}-{n}", op, status=None, limit=None))
        sockets.append(sock)
    return sockets


def all_answered(client: SessionStoreClient, at_least: int) -> Callable[[], bool]:
    """A predicate: ``at_least`` frames received, and no read left with the readers."""

    def check() -> bool:
        status = client.status()
        return status["frames_received"] >= at_least and status["reads_pending"] == 0

    return check
