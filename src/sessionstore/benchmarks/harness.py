"""Processes for ``sessionstore bench``: a group of writers behind one start line, and daemons.

Every process started here is stopped here, on success, on failure and on
Ctrl-C: :class:`WorkerGroup` and :class:`DaemonProcess` are context managers
whose exit terminates (then kills) whatever is still running.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from types import TracebackType
from typing import Any

from sessionstore.benchmarks.measure import LoadWatch, cpu_seconds, total_cpu_seconds
from sessionstore.benchmarks.workers import WorkerSpec, drain, worker_main
from sessionstore.errors import SessionStoreError

READY_TIMEOUT = 120.0
"""Seconds a process may take to start (spawn, imports, open, connect)."""
DAEMON_START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
POLL_SECONDS = 0.5


class BenchError(SessionStoreError):
    """The benchmark itself could not run (a worker or the daemon failed)."""


def spawn_context() -> SpawnContext:
    """Spawn, not fork: a worker shares no sockets, threads or SQLite handles with us."""
    return multiprocessing.get_context("spawn")


@dataclass(slots=True)
class GroupResult:
    """What a group of workers did: in a timed phase, within its window; else start to last ack."""

    wall_seconds: float
    attempted: int
    acknowledged: int
    errors: dict[str, int]
    error_samples: list[str]
    latencies: list[float]
    in_window: int
    """Acknowledged within the window (all acknowledged when the phase was not timed)."""
    timed: bool = False
    cpu_seconds: dict[str, float | None] | None = None
    """CPU used in the window: ``daemon`` and ``clients`` (the workers together)."""
    load_average: dict[str, Any] | None = None
    """Before the workers were spawned and after the last result (see LoadWatch)."""


class WorkerGroup:
    """Spawn workers, wait until all are ready, start them together, collect their tallies.

    Other processes of the same run (the lock holder) are started with :meth:`spawn`,
    report through the same queue and are stopped with the workers.
    """

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        watch: Callable[[], None] | None = None,
        phase: str = "",
    ):
        self.load = LoadWatch(phase)
        self._ctx = spawn_context()
        self._specs = list(specs)
        self._watch = watch or (lambda: None)
        self.messages = self._ctx.Queue()
        self.start_event = self._ctx.Event()
        self.stop_event = self._ctx.Event()
        self.deadline = self._ctx.Value("d", 0.0, lock=False)
        self._procs: list[SpawnProcess] = []
        self._pending: list[tuple[str, int, Any]] = []

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_event.set()
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        drain(self.messages)
        self.messages.close()
        self.messages.join_thread()

    def spawn(self, target: Callable[..., None], *args: Any) -> SpawnProcess:
        proc = self._ctx.Process(target=target, args=args, daemon=True)
        proc.start()
        self._procs.append(proc)
        return proc

    def expect(self, kind: str, timeout: float) -> Any:
        """Wait for one message of ``kind`` (others are kept); fail if a process died."""
        for i, message in enumerate(self._pending):
            if message[0] == kind:
                return self._pending.pop(i)[2]
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.messages.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self._check(deadline, kind)
                continue
            if message[0] == "error":
                raise BenchError(message[2].rstrip())
            if message[0] == kind:
                return message[2]
            self._pending.append(message)

    def _check(self, deadline: float, waiting_for: str) -> None:
        self._watch()
        for proc in self._procs:
            if proc.exitcode is not None and proc.exitcode != 0:
                raise BenchError(f"a benchmark process exited with {proc.exitcode}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {waiting_for!r} from the benchmark processes")

    def run(
        self,
        *,
        before_start: Callable[[], None] | None = None,
        after_start: Callable[[], None] | None = None,
        seconds: float | None = None,
        daemon_pid: int | None = None,
    ) -> GroupResult:
        """Start the workers, release them together, and return their combined tally.

        ``before_start`` runs once all are ready (e.g. take the lock they will meet);
        ``after_start`` right after the start line (e.g. trigger a reconcile).
        With ``seconds`` the phase is timed: one deadline for every worker, set
        before the start event, and the CPU of the workers (and of ``daemon_pid``)
        is read from /proc at the start line and at the deadline.
        """
        workers = [
            self.spawn(
                worker_main, spec, self.messages, self.start_event, self.stop_event, self.deadline
            )
            for spec in self._specs
        ]
        for _ in self._specs:
            self.expect("ready", READY_TIMEOUT)
        if before_start is not None:
            before_start()
        pids = [p.pid for p in workers if p.pid is not None]
        cpu_before = _cpu(pids, daemon_pid)
        started = time.monotonic()
        if seconds is not None:
            self.deadline.value = started + seconds
        self.start_event.set()
        if after_start is not None:
            after_start()
        cpu: dict[str, float | None] | None = None
        if seconds is not None:
            self._wait_until(started + seconds)
            cpu_after = _cpu(pids, daemon_pid)
            cpu = {k: _delta(cpu_before[k], cpu_after[k]) for k in cpu_before}
        payloads = [self.expect("result", math.inf) for _ in self._specs]
        for proc in workers:
            proc.join(STOP_TIMEOUT)
        result = _combine(payloads, started, seconds)
        if cpu is not None:
            result.cpu_seconds = cpu
        result.load_average = self.load.stop()
        return result

    def _wait_until(self, deadline: float) -> None:
        """Sleep to the deadline (the phase's clock, not a synchronisation), watching for deaths."""
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, POLL_SECONDS))
            self._check(math.inf, "the deadline")


def _cpu(pids: list[int], daemon_pid: int | None) -> dict[str, float | None]:
    return {
        "daemon": None if daemon_pid is None else cpu_seconds(daemon_pid),
        "clients": total_cpu_seconds(pids),
    }


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 3)


def _combine(payloads: list[dict[str, Any]], started: float, seconds: float | None) -> GroupResult:
    errors: dict[str, int] = {"database_locked": 0, "timeout": 0, "other": 0}
    samples: list[str] = []
    latencies: list[float] = []
    for p in payloads:
        for kind, count in p["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
        samples.extend(s for s in p["error_samples"] if len(samples) < 5)
        if p["latencies"] is not None:
            values = array("d")
            values.frombytes(p["latencies"])
            latencies.extend(values)
    own_clock = all(p["measured_seconds"] is not None for p in payloads)
    if seconds is not None:
        wall = seconds
    elif own_clock:
        wall = max(p["measured_seconds"] for p in payloads)  # the ceiling's own clock
    else:
        wall = max(p["ended"] for p in payloads) - started
    return GroupResult(
        wall_seconds=max(wall, 1e-9),
        attempted=sum(p["attempted"] for p in payloads),
        acknowledged=sum(p["acknowledged"] for p in payloads),
        errors=errors,
        error_samples=samples,
        latencies=latencies,
        in_window=sum(p["in_window"] for p in payloads),
        timed=seconds is not None or own_clock,
        cpu_seconds={"daemon": None, "clients": sum(p["cpu_seconds"] for p in payloads)}
        if own_clock
        else None,
    )


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(latencies: list[float], measures: str) -> dict[str, Any]:
    values = sorted(latencies)
    return {
        "measures": measures,
        "samples": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 3),
        "p99_ms": round(percentile(values, 99) * 1000, 3),
        "max_ms": round((values[-1] if values else 0.0) * 1000, 3),
    }


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in KiB, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in {"VmRSS", "VmHWM"}:
                found[key] = int(value.split()[0])
    return {"rss_kib": found.get("VmRSS", 0), "peak_rss_kib": found.get("VmHWM", 0)}


class DaemonProcess:
    """One ``sessionstore serve`` on a learning root, ready once it sent READY=1."""

    def __init__(
        self,
        learning_root: Path,
        *,
        durability: str,
        config: str | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.learning_root = learning_root
        self.env = dict(env or {})
        self.db_path = learning_root / "distillation.db"
        self.durability = durability
        self.config = config
        # ipc paths are limited to ~107 bytes: keep the sockets in a short private dir.
        self._sockdir = Path(tempfile.mkdtemp(prefix="ssb-"))
        self.address = f"ipc://{self._sockdir}/d.sock"
        self.log_path = log_path or learning_root.parent / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> DaemonProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        notify_path = self._sockdir / "notify.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "OPENJARVIS_HOME": str(self.learning_root.parent),
            "SESSIONSTORE_CONFIG": self.config or "",
            **self.env,
        }
        command = [
            sys.executable, "-m", "sessionstore", "serve",
            "--learning-root", str(self.learning_root),
            "--db", str(self.db_path),
            "--address", self.address,
            "--durability", self.durability,
        ]  # fmt: skip
        self.learning_root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Own session: a Ctrl-C on the terminal reaches us, and we stop the daemon.
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._notify is not None and self.proc is not None
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while time.monotonic() < deadline:
            self._notify.settimeout(POLL_SECONDS)
            try:
                message = self._notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                self.check()
                continue
            if "READY=1" in message.split("\n"):
                return
        raise BenchError(f"daemon sent no READY=1 within {DAEMON_START_TIMEOUT:g}s{self._tail()}")

    def check(self) -> None:
        """Raise if the daemon is no longer running (called while waiting on workers)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"daemon exited with {self.proc.returncode}{self._tail()}")

    def memory(self) -> dict[str, int]:
        self.check()
        return memory_kib(self.pid)

    def _tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            return ""
        return (": " + " | ".join(lines)) if lines else ""

    def stop(self) -> None:
        """SIGTERM and wait (the daemon drains and checkpoints); SIGKILL if it hangs."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            if self._notify is not None:
                self._notify.close()
                self._notify = None
            shutil.rmtree(self._sockdir, ignore_errors=True)
