"""Litestream beside the daemon, when ``replica`` is set: started, watched, stopped last.

Why beside and not ``litestream replicate -exec "sessionstore serve"``: with -exec
Litestream is the main process, so a SIGHUP (``systemctl reload``, a terminal
closing) kills it (exit 129; it does not handle SIGHUP) and leaves the daemon
running unreplicated, and under systemd READY=1, the watchdog and ``$MAINPID``
would all name the wrong process. Here the daemon stays the main process.

Litestream runs under a small keeper process (:data:`_KEEPER`), in a session of
its own, which tells it to stop exactly once: when the daemon closes the pipe
that is the keeper's stdin, or dies (the kernel closes the pipe then). Exactly
once matters: a second SIGTERM makes Litestream skip its final upload (that is
its "press Ctrl-C again" escape), and PR_SET_PDEATHSIG on Litestream itself sent
one SIGTERM per daemon *thread* as a killed daemon's threads died one by one
(measured: every kill -9 under load lost the last ~30 acknowledged saves from
the replica). So:

- Litestream starts after the schema is migrated and before READY=1; the start
  waits until it answers a sync of the index on its control socket, and fails
  with its exit status if it exits first (an unknown scheme, a bad config);
- SIGHUP, SIGINT and SIGTERM sent to the keeper or Litestream's group do not stop
  it (the keeper ignores them; Litestream ignores SIGHUP): ``systemctl reload`` and
  Ctrl-C reach the daemon only; the units use KillMode=mixed for the same reason;
- a daemon killed outright (kill -9, OOM) closes the pipe: Litestream uploads what
  the WAL holds and exits, so nothing acknowledged is lost and nothing is orphaned;
- if Litestream exits unasked it is started again after a back-off (logged, counted);
- at shutdown it is stopped after the daemon's last commit and after the index is
  closed, so its final upload holds every acknowledged save.

The daemon never checkpoints then (no job, ``wal_autocheckpoint`` 0, no final
checkpoint): Litestream must see every WAL frame before it goes into the database.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sessionstore.config import Settings
from sessionstore.errors import SessionStoreError
from sessionstore.replica import (
    control_socket,
    find_litestream,
    litestream_environment,
    write_litestream_config,
)

log = logging.getLogger("sessiond.replication")

START_TIMEOUT = 30.0
"""Seconds Litestream may take to take the index at start before the daemon goes on."""
SYNC_TIMEOUT = 10.0
"""Seconds one sync request to Litestream's control socket may take at start."""
STOP_TIMEOUT = 30.0
"""Seconds Litestream may take for its final upload at shutdown before it is killed."""
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds before each restart after Litestream exits unasked (the last one repeats)."""
HEALTHY_RUN = 300.0
"""Seconds of running after which an exit starts the back-off from its first step again."""

# The keeper: run with ``python -I -S -c`` (no site, no threads inherited), argv is
# Litestream's. It forks Litestream, then stops it with one SIGTERM once its stdin
# (the daemon's pipe) reaches EOF, and exits with Litestream's status (128+N if a
# signal N ended it). Litestream dies with the keeper if the keeper is killed.
# SIGTERM and SIGINT are *blocked*, not ignored, across the fork: a stop that comes
# before Litestream has started stays pending and is delivered when the Go runtime
# unblocks them (an ignored one would be lost, and Litestream orphaned). SIGHUP is
# ignored across the exec: Go keeps a signal ignored at start ignored.
_KEEPER = """
import ctypes, os, signal, sys, threading
STOP = {signal.SIGINT, signal.SIGTERM}
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, STOP)
keeper = os.getpid()
child = os.fork()
if child == 0:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != keeper:
        os._exit(70)
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
for sig in STOP:
    signal.signal(sig, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP)

def stop_when_released():
    while os.read(0, 4096):
        pass
    os.kill(child, signal.SIGTERM)

threading.Thread(target=stop_when_released, daemon=True).start()
code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
sys.exit(code if code >= 0 else 128 - code)
"""


class Replicator:
    """The Litestream process replicating the index (any thread may read its state)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._litestream = find_litestream(settings)  # ConfigError names where it looked
        self._config: Path | None = None
        self._keeper: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0
        self.last_exit: int | None = None

    @property
    def running(self) -> bool:
        keeper = self._keeper
        return keeper is not None and keeper.poll() is None

    @property
    def pid(self) -> int | None:
        """Litestream's pid (the keeper's only child), while it runs."""
        keeper = self._keeper
        if keeper is None or keeper.poll() is not None:
            return None
        try:
            children = Path(f"/proc/{keeper.pid}/task/{keeper.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def status(self) -> dict[str, Any]:
        return {
            "replica": self._settings.replica,
            "running": self.running,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }

    def start(self) -> None:
        """Start Litestream and wait until it has taken the index (see the module docstring)."""
        self._config = write_litestream_config(self._settings)
        self._keeper = self._spawn()
        self._await_takeover(self._keeper)
        self._watcher = threading.Thread(target=self._watch, name="sessiond-litestream")
        self._watcher.start()
        log.info(
            "replicating to %s with %s (pid %s, config %s)",
            self._settings.replica,
            self._litestream,
            self.pid,
            self._config,
        )

    def stop(self) -> None:
        """Release the keeper: Litestream uploads what is left and exits; killed after
        STOP_TIMEOUT (with the keeper, its whole process group)."""
        self._stopping.set()
        keeper = self._keeper
        if keeper is not None and keeper.poll() is None:
            started = time.monotonic()
            _release(keeper)
            try:
                keeper.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.error("litestream did not stop within %.0fs; killed", STOP_TIMEOUT)
                os.killpg(keeper.pid, signal.SIGKILL)
                keeper.wait()
            self.last_exit = keeper.returncode
            log.info(
                "litestream stopped in %.2fs (exit %s)",
                time.monotonic() - started,
                keeper.returncode,
            )
        if self._watcher is not None:
            self._watcher.join()

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._config is not None
        argv = [
            sys.executable, "-I", "-S", "-c", _KEEPER,
            str(self._litestream), "replicate", "-config", str(self._config), "-no-expand-env",
        ]  # fmt: skip
        assert self._settings.replica is not None
        environment, dropped = litestream_environment(self._settings.replica)
        for reason in dropped:
            log.warning("replication: %s", reason)
        try:
            # Its output goes where the daemon's does (the journal, under systemd).
            return subprocess.Popen(
                argv, stdin=subprocess.PIPE, start_new_session=True, env=environment
            )
        except OSError as err:
            raise SessionStoreError(f"replication: cannot start {self._litestream}: {err}") from err

    def _await_takeover(self, keeper: subprocess.Popen[bytes]) -> None:
        """Until Litestream has taken the index, or exits (then the start fails).

        Taken means: its control socket answers a sync of the index. It opens the socket
        once the index is open and its signal handlers are set, and the sync makes it
        set the index up for replication (its tables, its read lock) if it had not yet:
        a daemon stopped a moment after READY=1 would otherwise find a Litestream with
        nothing to upload on its way out.
        """
        socket_path = control_socket(self._settings)
        deadline = time.monotonic() + START_TIMEOUT
        while not _synced(socket_path, self._settings.index_path):
            if keeper.poll() is not None:
                self.last_exit = keeper.returncode
                raise SessionStoreError(
                    f"replication: litestream exited with status {keeper.returncode} before "
                    f"taking the index (replica {self._settings.replica}; its log is above)"
                )
            if time.monotonic() > deadline:
                log.warning(
                    "litestream has not taken the index after %.0fs (no sync through %s); "
                    "serving anyway",
                    START_TIMEOUT,
                    socket_path,
                )
                return
            self._stopping.wait(0.05)

    def _watch(self) -> None:
        """Wait for Litestream; start it again if it exits while the daemon is not stopping."""
        attempt, started = 0, time.monotonic()
        while True:
            keeper = self._keeper
            assert keeper is not None
            code = keeper.wait()
            if self._stopping.is_set():
                return
            _release(keeper)
            self.last_exit = code
            if time.monotonic() - started > HEALTHY_RUN:
                attempt = 0  # it ran well for a while: this is a new failure, not a loop
            delay = RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)]
            log.error(
                "litestream exited unasked (status %d): the replica falls behind; "
                "starting it again in %.0fs",
                code,
                delay,
            )
            if self._stopping.wait(delay):
                return
            try:
                self._keeper = self._spawn()
            except SessionStoreError as err:
                log.error("%s", err)
                attempt += 1
                continue
            self.restarts += 1
            attempt += 1
            started = time.monotonic()
            log.info("litestream started again (keeper pid %d)", self._keeper.pid)


def _release(keeper: subprocess.Popen[bytes]) -> None:
    """Close the keeper's stdin: its one signal to stop Litestream."""
    if keeper.stdin is not None:
        keeper.stdin.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("litestream", timeout=SYNC_TIMEOUT)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(SYNC_TIMEOUT)
        self.sock.connect(str(self._path))


def _synced(socket_path: Path, db_path: Path) -> bool:
    """Whether Litestream's control socket answers a (local) sync of ``db_path``: a
    socket file left by a Litestream killed outright refuses the connection."""
    connection = _UnixHTTPConnection(socket_path)
    try:
        connection.request(
            "POST",
            "/sync",
            json.dumps({"path": str(db_path)}),
            {"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        connection.close()
