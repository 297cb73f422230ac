"""Run the ``sessionstore`` command as a real process: piped, or on a pseudo-terminal.

Piped is how a script or ``| less`` sees it (stdout not a terminal); the
pseudo-terminal is how a person at a terminal of a given width sees it. Both
runs get a private ``$OPENJARVIS_HOME``, no config file and no ``SESSIONSTORE_*``
variables from the outer environment.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess]


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONSTORE_")}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return {**env, "OPENJARVIS_HOME": str(home), "SESSIONSTORE_CONFIG": "", **extra}


def runner(home: Path) -> Run:
    """``run(*args, timeout=60, **env)``: the command, piped, with OPENJARVIS_HOME=home."""

    def run(*args: str, timeout: float = 60.0, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "sessionstore", *args],
            env=cli_env(home, **extra),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return str(done.stdout)


def as_json(done: subprocess.CompletedProcess) -> object:
    return json.loads(ok(done))


def one_line_error(done: subprocess.CompletedProcess, command: str) -> str:
    """The single stderr line of a failed command (no traceback)."""
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"sessionstore {command}: error: "), lines[0]
    return str(lines[0])


@dataclass
class TerminalRun:
    returncode: int
    output: str
    """stdout and stderr as the terminal received them, ``\\r\\n`` made ``\\n``."""


def in_terminal(
    home: Path, *args: str, columns: int = 120, timeout: float = 60.0, **extra: str
) -> TerminalRun:
    """Run the command on a pseudo-terminal ``columns`` wide until it exits."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionstore", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli_env(home, TERM="xterm-256color", **extra),
    )
    os.close(slave)
    output = read_until(master, lambda text: False, timeout, proc)
    os.close(master)
    return TerminalRun(proc.wait(timeout), output)


def read_until(
    master: int, done: Callable[[str], bool], timeout: float, proc: subprocess.Popen
) -> str:
    """Read a pseudo-terminal until ``done(text)``, the process's end, or a failure at timeout."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
        if done(text):
            return text
        left = deadline - time.monotonic()
        if left <= 0:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            pytest.fail(f"timed out after {timeout}s; the terminal showed: {text[-2000:]}")
        ready, _, _ = select.select([master], [], [], min(left, 0.5))
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer closed its end (the process is gone)
            chunk = b""
        if not chunk:
            return text
        chunks.append(chunk)
