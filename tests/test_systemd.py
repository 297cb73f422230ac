"""sd_notify over real datagram sockets, and the unit files checked by systemd-analyze.

The notify tests bind the socket systemd would own (a path socket and an
abstract one) and read exactly what the daemon would send. The unit-file tests
need systemd-analyze (.ci/install-systemd-tools) and skip without it; systemd
does not have to be PID 1 for `verify` and `security --offline=yes`. Both units
run under a real systemd manager in test_systemd_units.py.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from environment import missing
from sessiond.systemd import STATUS_MAX_BYTES, Notifier, journal_stream_active

RECV_TIMEOUT = 5.0
UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
SYSTEM_UNIT = UNIT_DIR / "sessionstore.service"
USER_UNIT = UNIT_DIR / "sessionstore-user.service"
MAX_EXPOSURE = 2.0


# --- sd_notify -----------------------------------------------------------------------------------


def bind_receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(RECV_TIMEOUT)
    return sock


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Short on purpose: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sd-", dir="/tmp") as tmp:
        yield Path(tmp) / "notify"


@pytest.fixture
def receiver(socket_path: Path) -> Iterator[socket.socket]:
    sock = bind_receiver(str(socket_path))
    yield sock
    sock.close()


def test_messages_arrive_exactly_on_a_path_socket(
    receiver: socket.socket, socket_path: Path
) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": str(socket_path)}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert receive(receiver) == "READY=1"
        assert notifier.status("serving: 3 clients")
        assert receive(receiver) == "STATUS=serving: 3 clients"
        assert notifier.watchdog()
        assert receive(receiver) == "WATCHDOG=1"
        assert notifier.stopping()
        assert receive(receiver) == "STOPPING=1"


def test_at_name_is_an_abstract_socket() -> None:
    name = f"sessiond-test-{uuid.uuid4().hex}"
    sock = bind_receiver(b"\0" + name.encode())
    try:
        with Notifier.from_env({"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.ready()
            assert receive(sock) == "READY=1"
            assert notifier.stopping()
            assert receive(sock) == "STOPPING=1"
    finally:
        sock.close()


def test_from_env_reads_the_process_environment_by_default(
    receiver: socket.socket, socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(socket_path))
    with Notifier.from_env() as notifier:
        assert notifier.ready()
    assert receive(receiver) == "READY=1"


def test_notify_sends_all_assignments_in_one_datagram(
    receiver: socket.socket, socket_path: Path
) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": str(socket_path)}) as notifier:
        assert notifier.notify("STATUS=draining", "EXTEND_TIMEOUT_USEC=5000000")
    assert receive(receiver) == "STATUS=draining\nEXTEND_TIMEOUT_USEC=5000000"


@pytest.mark.parametrize("bad", ["READY", "=1", "STATUS=two\nlines"])
def test_malformed_assignment_is_refused_before_sending(bad: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        Notifier.from_env({}).notify(bad)


def test_status_is_folded_to_one_line(receiver: socket.socket, socket_path: Path) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": str(socket_path)}) as notifier:
        notifier.status("draining\n  12 pending\r\nsaves\n")
    assert receive(receiver) == "STATUS=draining 12 pending saves"


def test_long_status_is_cut_on_a_character_boundary(
    receiver: socket.socket, socket_path: Path
) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": str(socket_path)}) as notifier:
        notifier.status("é" * 1000)
    message = receiver.recv(4096)
    text = message.decode("utf-8")  # a split character would raise here
    assert text.startswith("STATUS=éé")
    assert text.endswith("...")
    assert len(message) <= len(b"STATUS=") + STATUS_MAX_BYTES


def test_without_notify_socket_everything_is_a_noop() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.status("anything")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert not notifier.notify("READY=1")
    assert notifier.watchdog_interval() is None
    notifier.close()


def test_relative_notify_socket_is_ignored() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "relative/notify"}).enabled


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    environ: dict[str, str], expected: float | None
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **environ})
    assert notifier.watchdog_interval() == expected


def test_vanished_socket_does_not_raise_is_logged_once_and_recovers(
    socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sessiond.systemd")
    first = bind_receiver(str(socket_path))
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(socket_path)})
    assert notifier.ready()
    assert receive(first) == "READY=1"

    first.close()
    socket_path.unlink()  # the service manager went away
    assert not notifier.watchdog()
    assert not notifier.status("still serving")
    assert not notifier.watchdog()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert str(socket_path) in warnings[0].getMessage()

    second = bind_receiver(str(socket_path))  # and came back at the same path
    try:
        assert notifier.watchdog()
        assert receive(second) == "WATCHDOG=1"
    finally:
        second.close()
        notifier.close()


def test_journal_stream_active_when_it_matches_stderr() -> None:
    st = os.fstat(2)
    assert journal_stream_active({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})


@pytest.mark.parametrize(
    "value", [None, "", "garbage", "1:2:3", "-1:-1", "{dev}:{other_ino}", "{other_dev}:{ino}"]
)
def test_journal_stream_inactive_otherwise(value: str | None) -> None:
    st = os.fstat(2)
    environ = {}
    if value is not None:
        environ["JOURNAL_STREAM"] = value.format(
            dev=st.st_dev, ino=st.st_ino, other_dev=st.st_dev + 1, other_ino=st.st_ino + 1
        )
    assert not journal_stream_active(environ)


@pytest.mark.parametrize("matching", [True, False])
def test_journal_stream_is_checked_against_the_real_fd_2(tmp_path: Path, matching: bool) -> None:
    """A child whose stderr is a given file sees JOURNAL_STREAM as active only for that file."""
    stderr_file = tmp_path / "stderr"
    other_file = tmp_path / "other"
    stderr_file.touch()
    other_file.touch()
    st = os.stat(stderr_file if matching else other_file)
    child = "from sessiond.systemd import journal_stream_active as a; print(a())"
    with stderr_file.open("w") as stderr:
        result = subprocess.run(
            [sys.executable, "-c", child],
            stderr=stderr,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            timeout=60,
            check=True,
        )
    assert result.stdout.strip() == str(matching)


# --- unit files ----------------------------------------------------------------------------------


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """Every KEY=VALUE line of a unit file, values in order (Environment= repeats)."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_system_unit_points_daemon_and_clients_at_the_service_directories() -> None:
    s = unit_settings(SYSTEM_UNIT)
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == ["/opt/sessionstore/bin/sessionstore serve"]
    assert s["WatchdogSec"] == ["30"]
    assert s["StateDirectory"] == ["sessionstore"]
    assert s["RuntimeDirectory"] == ["sessionstore"]
    assert "OPENJARVIS_HOME=/var/lib/sessionstore" in s["Environment"]
    assert "SESSIONSTORE_ADDRESS=ipc:///run/sessionstore/sessiond.sock" in s["Environment"]


def test_user_unit_uses_the_default_home_clients_also_use() -> None:
    s = unit_settings(USER_UNIT)
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == ["%h/.local/share/sessionstore/venv/bin/sessionstore serve"]
    assert s["WatchdogSec"] == ["30"]
    assert "OPENJARVIS_HOME=%h/.openjarvis" in s["Environment"]
    assert s["WantedBy"] == ["default.target"]


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_unit_reloads_with_sighup_and_allows_many_clients(unit: Path) -> None:
    s = unit_settings(unit)
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["LimitNOFILE"] == ["65536"]


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_filter_gives_back_exactly_sched_setscheduler_after_the_denials(unit: Path) -> None:
    """libzmq aborts when sched_setscheduler fails (issue 11); the allowance must come after
    the ~@resources denial, or the denial takes it away again. The whole filter is checked
    under a real manager in test_systemd_units.py."""
    assert unit_settings(unit)["SystemCallFilter"] == [
        "@system-service",
        "~@privileged @resources",
        "sched_setscheduler",
    ]


@pytest.fixture
def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing("systemd-analyze not installed (run .ci/install-systemd-tools)")
    return tool


def checkable_copy(unit: Path, directory: Path) -> Path:
    """The unit with its ExecStart binary replaced by /bin/true.

    `systemd-analyze verify` reports an ExecStart that does not exist, and the
    daemon is not installed in /opt/sessionstore or ~/.local/share on a test
    machine; every other line is checked as written.
    """
    text, count = re.subn(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", unit.read_text())
    assert count == 1, f"{unit.name}: expected exactly one ExecStart="
    copy = directory / unit.name
    copy.write_text(text)
    return copy


def run_analyze(tool: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [tool, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", **(env or {})},
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


def test_system_unit_passes_verify_silently(systemd_analyze: str, tmp_path: Path) -> None:
    code, output = run_analyze(
        systemd_analyze, "verify", str(checkable_copy(SYSTEM_UNIT, tmp_path))
    )
    assert (code, output) == (0, "")


def test_system_unit_security_exposure_is_at_most_2(systemd_analyze: str, tmp_path: Path) -> None:
    copy = checkable_copy(SYSTEM_UNIT, tmp_path)
    code, output = run_analyze(
        systemd_analyze, "security", "--offline=yes", "--no-pager", str(copy)
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert code == 0 and match, output
    assert float(match.group(1)) <= MAX_EXPOSURE, output


def test_user_unit_passes_verify_silently(systemd_analyze: str, tmp_path: Path) -> None:
    # A user manager needs $XDG_RUNTIME_DIR, which a CI shell (or root) usually lacks.
    runtime_dir = tmp_path / "xdg-runtime"
    runtime_dir.mkdir(mode=0o700)
    copy = checkable_copy(USER_UNIT, tmp_path)
    code, output = run_analyze(
        systemd_analyze, "verify", "--user", str(copy), env={"XDG_RUNTIME_DIR": str(runtime_dir)}
    )
    assert (code, output) == (0, "")
