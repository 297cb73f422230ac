"""Daemon logging: journald-friendly under systemd, timestamped lines otherwise.

Under systemd (``$JOURNAL_STREAM`` names our stderr) each line starts with a
syslog priority prefix (``<3>``) so journald records the level, and carries no
timestamp of its own (the journal adds one). Rejected requests are logged through
:class:`RateLimited`, so a client spraying bad frames cannot flood the log.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def configure_logging(level: str, *, journal: bool) -> None:
    """Send the daemon's log to stderr, in the form the environment expects."""
    handler = logging.StreamHandler(sys.stderr)
    if journal:
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    """The daemon's log level (at start, and again on reload); APScheduler's own lines
    only from WARNING up, whatever the level."""
    root = logging.getLogger()
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))


class RateLimited:
    """Log at most ``burst`` lines per ``window`` seconds per key; then say how many were held back."""

    def __init__(
        self,
        log: Callable[[str], None],
        *,
        burst: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._burst = burst
        self._window = window
        self._clock = clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (start, logged, held)

    def flush(self, *, expired_only: bool = False) -> None:
        """Report held-back counts: of finished windows only, or (at shutdown) of all."""
        now = self._clock()
        for key, (start, _, held) in list(self._windows.items()):
            if expired_only and now - start < self._window:
                continue
            if held:
                self._log(
                    f"{held} more {key} rejection(s) not logged in the last {now - start:.0f}s"
                )
            del self._windows[key]

    def __call__(self, key: str, message: str) -> None:
        now = self._clock()
        start, logged, held = self._windows.get(key, (now, 0, 0))
        if now - start >= self._window:
            if held:
                self._log(
                    f"{held} more {key} rejection(s) not logged in the last {self._window:g}s"
                )
            start, logged, held = now, 0, 0
        if logged < self._burst:
            self._log(message)
            logged += 1
        else:
            held += 1
        self._windows[key] = (start, logged, held)
