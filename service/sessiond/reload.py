"""SIGHUP (``systemctl reload``): re-read the settings, apply what can change live.

The settings are read again exactly as at start (command-line flags, then the
environment the daemon was started with, then the TOML file, which is the part
an operator edits). ``log_level`` takes effect at once; every other changed
setting is named in a WARNING and takes effect at the next restart, because it
is baked into a bound socket, an open connection or a thread already running.
An invalid file is reported and changes nothing. The daemon keeps serving
throughout: without a handler, SIGHUP's default action would end the process
on the spot, unacknowledged saves and all.

The signal handler only sets a flag (it may interrupt the loop holding the
notify lock or a logging lock); the loop thread applies the reload on its next
turn, within one idle poll (at most a second).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sessiond.logs import set_level
from sessiond.systemd import Notifier
from sessionstore.config import Settings
from sessionstore.errors import ConfigError

log = logging.getLogger("sessiond.reload")

LIVE_SETTINGS = frozenset({"log_level"})
"""Settings a reload applies at once; the others need a restart."""


class Reloader:
    """Owns the daemon's view of its settings across reloads."""

    def __init__(
        self,
        settings: Settings,
        load: Callable[[], Settings] | None,
        notifier: Notifier,
        status: Callable[[], str],
    ) -> None:
        self._settings = settings
        self._load = load
        self._notifier = notifier
        self._status = status
        self._requested = False

    def request(self) -> None:
        """Ask for a reload; safe from a signal handler (only sets a flag)."""
        self._requested = True

    def __call__(self) -> None:
        """On the loop thread, every turn: reload if one was asked for."""
        if not self._requested:
            return
        self._requested = False
        # RELOADING=1 … READY=1 brackets the reload for the service manager (sd_notify(3)).
        self._notifier.notify("RELOADING=1")
        try:
            self._reload()
        except Exception:  # a reload must never cost the daemon; the old settings stay
            log.exception("reload failed unexpectedly; keeping the current settings")
        self._notifier.notify("READY=1", f"STATUS={self._status()}")

    def _reload(self) -> None:
        if self._load is None:
            log.warning("reload: this daemon was started without a way to re-read its settings")
            return
        try:
            new = self._load()
        except ConfigError as err:  # names the file, the setting and the problem
            log.error("reload: %s; keeping the current settings", err)
            return
        changed = _differences(self._settings, new)
        if not changed:
            log.info("reload: settings unchanged")
            return
        for name, (old, value) in sorted(changed.items()):
            if name in LIVE_SETTINGS:
                log.info("reload: %s %s -> %s", name, old, value)
                setattr(self._settings, name, value)
            else:
                log.warning(
                    "reload: %s changed (%s -> %s); takes effect at the next restart",
                    name,
                    old,
                    value,
                )
        set_level(self._settings.log_level)


def _differences(current: Settings, new: Settings) -> dict[str, tuple[Any, Any]]:
    old_values, new_values = current.model_dump(), new.model_dump()
    return {
        name: (old_values[name], value)
        for name, value in new_values.items()
        if old_values.get(name) != value
    }
