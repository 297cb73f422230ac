"""SIGHUP (``systemctl reload``) re-reads the settings and the daemon keeps serving.

Real daemon processes with a real settings file: the file is edited, SIGHUP is
sent, and the daemon's notify messages (RELOADING=1 … READY=1), its log and a
save after the reload show what happened. The same promise under a real
systemd manager is in ``test_systemd_units.py``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import EDIT, Daemon, outcome, session

from sessionstore import SessionStoreClient

RELOAD_TIMEOUT = 10.0


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sessiond.toml"
    path.write_text('log_level = "INFO"\nbatch_max = 512\n')
    return path


@pytest.fixture
def configured(daemon_factory: Callable[..., Daemon], config_file: Path) -> Daemon:
    return daemon_factory(extra_env={"SESSIONSTORE_CONFIG": str(config_file)}).start()


def reload(daemon: Daemon) -> None:
    """SIGHUP, then wait for the daemon to bracket the reload with RELOADING=1 … READY=1."""
    assert daemon.proc is not None
    daemon.messages.clear()
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("RELOADING=1", RELOAD_TIMEOUT)
    daemon.wait_for("READY=1", RELOAD_TIMEOUT)


def wait_for_log(daemon: Daemon, text: str, timeout: float = RELOAD_TIMEOUT) -> str:
    """The daemon's stderr once it holds ``text`` (the line is written after READY=1)."""
    deadline = time.monotonic() + timeout
    while text not in daemon.stderr():
        assert time.monotonic() < deadline, f"no {text!r} in the log: {daemon.stderr()}"
        time.sleep(0.05)
    return daemon.stderr()


def assert_still_serving(daemon: Daemon, session_id: str) -> None:
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.stderr()
    with SessionStoreClient(daemon.address, timeout=10) as client:
        client.save_session(session(session_id))
        client.save_outcome(session_id, outcome(f"{session_id}-e1"), **EDIT)
        assert [o.edit_id for o in client.list_outcomes(session_id)] == [f"{session_id}-e1"]


def test_sighup_applies_log_level_and_names_what_needs_a_restart(
    configured: Daemon, config_file: Path
) -> None:
    assert_still_serving(configured, "before")
    config_file.write_text('log_level = "WARNING"\nbatch_max = 7\n')
    reload(configured)
    log = wait_for_log(configured, "reload: batch_max changed")
    assert "reload: log_level INFO -> WARNING" in log
    assert "reload: batch_max changed (512 -> 7); takes effect at the next restart" in log
    assert_still_serving(configured, "after")
    reload(configured)  # the file as it is: batch_max still waits for a restart
    wait_for_log(configured, "reload: batch_max changed (512 -> 7)")
    assert configured.stderr().count("batch_max changed") == 2
    assert configured.stop() == 0
    # WARNING applied: the INFO lines of a clean stop are not written any more.
    assert "final checkpoint" not in configured.stderr()
    assert "stopped:" not in configured.stderr()


def test_sighup_with_an_invalid_file_keeps_the_settings_and_serving(
    configured: Daemon, config_file: Path
) -> None:
    config_file.write_text('log_level = "LOUD"\n')
    reload(configured)
    log = wait_for_log(configured, "keeping the current settings")
    assert "log_level" in log.split("keeping the current settings")[0].splitlines()[-1]
    config_file.write_text("this is [not toml\n")
    reload(configured)
    wait_for_log(configured, "sessiond.toml")
    assert configured.stderr().count("keeping the current settings") == 2
    assert_still_serving(configured, "after-bad-files")


def test_sighup_with_nothing_changed_says_so(configured: Daemon) -> None:
    reload(configured)
    wait_for_log(configured, "reload: settings unchanged")
    assert_still_serving(configured, "unchanged")


def test_sighup_storm_never_stops_the_daemon(configured: Daemon) -> None:
    """Many hangups in a row (a log rotator gone wrong) while saves go on."""
    assert configured.proc is not None and configured.notify is not None
    notify = configured.notify
    # Read the notify socket as systemd would: a full one makes each send wait its timeout.
    drained = threading.Event()

    def drain() -> None:
        notify.settimeout(0.2)
        while not drained.is_set():
            with contextlib.suppress(TimeoutError):
                notify.recv(4096)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        with SessionStoreClient(configured.address, timeout=10) as client:
            client.save_session(session("storm"))
            for i in range(200):
                if i % 4 == 0:
                    configured.proc.send_signal(signal.SIGHUP)
                client.save_outcome("storm", outcome(f"storm-{i:03d}"), **EDIT)
            assert len(client.list_outcomes("storm")) == 200
    finally:
        drained.set()
        reader.join()
    assert configured.stop() == 0
    assert "reload: settings unchanged" in configured.stderr()
