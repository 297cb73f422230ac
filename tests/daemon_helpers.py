"""Start and stop real ``sessionstore serve`` processes for tests.

Readiness is an event, not a sleep: each daemon gets its own ``$NOTIFY_SOCKET``
(a datagram socket the test owns) and the helper waits for ``READY=1`` on it,
exactly as systemd would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sessionstore.models import (
    AutonomyMode,
    BenchmarkSnapshot,
    EditOutcome,
    LearningSession,
    SessionStatus,
    TriggerKind,
)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


class Daemon:
    """One daemon process on a learning root, with its own notify socket."""

    def __init__(
        self,
        learning_root: Path,
        *,
        extra_env: dict[str, str] | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        self.learning_root = learning_root
        self.nofile = nofile  # (soft, hard) RLIMIT_NOFILE to start the daemon with
        # ipc paths are limited to ~107 bytes: keep the socket in a short private dir.
        self._sockdir = Path(tempfile.mkdtemp(prefix="ss-"))
        self.address = f"ipc://{self._sockdir}/d.sock"
        self.db_path = learning_root / "distillation.db"
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None
        self.stderr_path = self._sockdir / "stderr.log"
        self.messages: list[str] = []

    def start(self, *args: str, timeout: float = START_TIMEOUT) -> Daemon:
        notify_path = self._sockdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "OPENJARVIS_HOME": str(self.learning_root.parent),
            "SESSIONSTORE_CONFIG": "",
            **self.extra_env,
        }
        command = [
            sys.executable, "-m", "sessionstore", "serve",
            "--learning-root", str(self.learning_root),
            "--address", self.address,
            *args,
        ]  # fmt: skip
        if self.nofile is not None:
            command = [*_with_nofile(*self.nofile), *command]
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(command, env=env, stderr=stderr, stdout=subprocess.DEVNULL)
        self.wait_for("READY=1", timeout)
        return self

    def wait_for(self, assignment: str, timeout: float) -> str:
        """Wait for a notify datagram containing ``assignment``; fail if the daemon dies first."""
        assert self.notify is not None
        deadline = _now() + timeout
        while _now() < deadline:
            self.notify.settimeout(min(0.5, max(0.01, deadline - _now())))
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                if self.proc is not None and self.proc.poll() is not None:
                    pytest.fail(f"daemon exited with {self.proc.returncode}: {self.stderr()}")
                continue
            self.messages.append(message)
            if assignment in message.split("\n"):
                return message
        pytest.fail(f"no {assignment} from daemon within {timeout}s: {self.stderr()}")

    def wait_for_stalled_loop(self, quiet: float = 1.5, within: float = 4.0) -> None:
        """Wait until no WATCHDOG=1 has come for ``quiet`` seconds: the loop is stuck.

        Needs a daemon started with ``WATCHDOG_USEC`` (pings at half of it) and a stall
        made on purpose (another process holding the index's write lock keeps the loop
        in SQLite's busy handler for up to 5 s). Fails if pings go on for ``within`` s.
        """
        assert self.notify is not None
        stalled_since = last_ping = _now()
        self.notify.settimeout(0.05)
        while (now := _now()) - last_ping < quiet:
            if now - stalled_since > within:
                pytest.fail(f"WATCHDOG=1 kept coming for {within}s: the loop is not stalled")
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(message)
            if "WATCHDOG=1" in message.split("\n"):
                last_ping = _now()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the daemon and wait for it; returns its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(
                f"daemon did not stop within {timeout}s after signal {sig}: {self.stderr()}"
            )

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.notify is not None:
            self.notify.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)


def _now() -> float:
    return time.monotonic()


_SET_NOFILE = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


def _with_nofile(soft: int, hard: int) -> list[str]:
    """A command prefix that sets RLIMIT_NOFILE and then execs the rest (same pid)."""
    return [sys.executable, "-c", _SET_NOFILE, str(soft), str(hard)]


BASE_TIME = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def session(session_id: str, n: int = 0, **overrides: object) -> LearningSession:
    """A valid session for tests that run outside pytest fixtures (e.g. writer processes)."""
    fields: dict[str, object] = {
        "id": session_id,
        "trigger": TriggerKind.ON_DEMAND,
        "status": SessionStatus.EXECUTING,
        "autonomy_mode": AutonomyMode.AUTO,
        "started_at": BASE_TIME + timedelta(seconds=n),
        "diagnosis_path": f"sessions/{session_id}/diagnosis.md",
        "plan_path": f"sessions/{session_id}/plan.json",
        "benchmark_before": BenchmarkSnapshot(
            benchmark_version="v1", overall_score=0.5, task_count=10, elapsed_seconds=1.0
        ),
        "git_checkpoint_pre": "0" * 40,
        "teacher_cost_usd": 0.1,
    }
    fields.update(overrides)
    return LearningSession(**fields)  # type: ignore[arg-type]


def outcome(edit_id: str, **overrides: object) -> EditOutcome:
    fields: dict[str, object] = {"edit_id": edit_id, "status": "applied", "benchmark_delta": 0.01}
    fields.update(overrides)
    return EditOutcome(**fields)  # type: ignore[arg-type]


EDIT = {
    "pillar": "agent",
    "op": "patch_system_prompt",
    "target": "agents.simple.system_prompt",
    "risk_tier": "auto",
}
