"""sd_notify, spoken by hand: READY, STATUS, WATCHDOG, STOPPING.

The protocol is one AF_UNIX datagram per message to the socket named in
``$NOTIFY_SOCKET``, holding newline-separated ``KEY=VALUE`` assignments
(sd_notify(3)). It is small enough that a dependency on python-systemd (a C
extension that needs libsystemd headers to build) would cost more than it
saves. Without ``$NOTIFY_SOCKET`` every method is a no-op, so the daemon calls
them unconditionally whether it runs under systemd, in a terminal or in tests.

A failed send is logged once and swallowed: the daemon's job is to keep
acknowledging saves, and it must not die because the service manager went away
or restarted (systemd re-creates the notify socket at the same path, so a later
send may work again).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from types import TracebackType

log = logging.getLogger("sessiond.systemd")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
JOURNAL_STREAM_ENV = "JOURNAL_STREAM"

# systemd keeps STATUS= for `systemctl status`; a line longer than a terminal
# helps nobody, and one datagram must stay far below the socket buffer size.
STATUS_MAX_BYTES = 512
# A full notify queue (PID 1 stalled) must not stall the ingest loop for long:
# the message is dropped and logged instead.
SEND_TIMEOUT_SECONDS = 2.0


class Notifier:
    """Sends sd_notify messages to the service manager, or does nothing.

    Thread-safe: the watchdog thread and the loop may both send. The socket is
    created on the first send and kept until :meth:`close`.
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Build a notifier from ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``."""
        address = environ.get(NOTIFY_SOCKET_ENV) or None
        if address is not None and not address.startswith(("/", "@")):
            # sd_notify(3) rejects relative paths too; vsock: needs systemd >= 254.
            log.warning("systemd: ignoring unsupported %s=%r", NOTIFY_SOCKET_ENV, address)
            address = None
        return cls(
            address,
            watchdog_usec=_env_int(environ, WATCHDOG_USEC_ENV),
            watchdog_pid=_env_int(environ, WATCHDOG_PID_ENV),
        )

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
        advises; None when no watchdog is armed or it is armed for another process."""
        if not self._watchdog_usec or self._watchdog_usec <= 0:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self) -> bool:
        """Tell systemd start-up is done (the socket is bound): ``READY=1``."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status``: ``STATUS=<text>``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        """Tell systemd shutdown has begun (draining): ``STOPPING=1``."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """Keep the watchdog from firing: ``WATCHDOG=1``."""
        return self.notify("WATCHDOG=1")

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True if it was sent.

        Raises ValueError for a malformed assignment (a bug in the caller);
        never raises for a failed send.
        """
        for assignment in assignments:
            key, sep, _ = assignment.partition("=")
            if not sep or not key or "\n" in assignment:
                raise ValueError(f"sd_notify assignment must be one KEY=VALUE line: {assignment!r}")
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.settimeout(SEND_TIMEOUT_SECONDS)
                self._sock.sendto(payload, self._address)
            except OSError as err:
                self._report_failure(payload, err)
                return False
            if self._failing:
                self._failing = False
                log.info("systemd: notify socket %s reachable again", self._display_address)
            return True

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _display_address(self) -> str:
        assert self._address is not None
        return os.fsdecode(self._address).replace("\0", "@", 1)

    def _report_failure(self, payload: bytes, err: OSError) -> None:
        # Once per outage: the watchdog pings every few seconds and would flood the log.
        first_line = payload.split(b"\n", 1)[0].decode("utf-8", "replace")
        if self._failing:
            log.debug("systemd: cannot send %s: %s", first_line, err)
            return
        self._failing = True
        log.warning(
            "systemd: cannot send %s to notify socket %s: %s (further failures not logged)",
            first_line,
            self._display_address,
            err,
        )


def journal_stream_active(environ: Mapping[str, str] = os.environ) -> bool:
    """True when stderr is the journald stream systemd connected us to.

    ``$JOURNAL_STREAM`` is ``DEV:INODE`` of that stream; it is inherited by
    children whose stderr may have been redirected elsewhere, so it only counts
    when it matches fd 2 itself (systemd.exec(5)). Lets the daemon drop its own
    timestamps and use journald priorities when logging to the journal.
    """
    value = environ.get(JOURNAL_STREAM_ENV, "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        expected = (int(dev), int(ino))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == expected


def _socket_address(address: str) -> bytes:
    """``@name`` is an abstract socket: the name with a leading NUL byte."""
    raw = os.fsencode(address)
    return b"\0" + raw[1:] if raw.startswith(b"@") else raw


def _one_line(text: str) -> str:
    """Whitespace runs (newlines included) folded to one space; cut at STATUS_MAX_BYTES
    of UTF-8 on a character boundary."""
    line = " ".join(text.split())
    encoded = line.encode("utf-8")
    if len(encoded) <= STATUS_MAX_BYTES:
        return line
    ellipsis = "..."
    cut = encoded[: STATUS_MAX_BYTES - len(ellipsis)].decode("utf-8", "ignore")
    return cut.rstrip() + ellipsis


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        log.warning("systemd: ignoring non-integer %s=%r", name, value)
        return None
