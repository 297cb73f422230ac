"""Both unit files, installed as docs/systemd.md says and run by a real systemd manager.

Each test gets a fresh manager (:mod:`systemd_sandbox`): ``systemd --user`` run by
the account ``alice`` for the user unit, ``systemd --system`` as PID 1 of its own
pid namespace for the system unit (``User=sessionstore``). The daemon is the
project installed into a venv of the system Python, as a user would install it.
Clients run inside the sandbox as ``alice`` (in the ``sessionstore`` group) or
``mallory`` (in no group of ours), through :mod:`systemd_sandbox.client`.

Needs root, a writable cgroup2 hierarchy, systemd, util-linux and python3-venv
(``.ci/install-systemd-tools``); elsewhere the tests skip, in CI they fail.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from environment import missing
from sessionfiles import write_session
from stress_helpers import outcome_ids
from systemd_sandbox import (
    Account,
    Sandbox,
    SystemSandbox,
    UserSandbox,
    build_venv,
    unavailable_reason,
)

PROJECT = Path(__file__).resolve().parent.parent
UNITS = {
    "user": PROJECT / "systemd/sessionstore-user.service",
    "system": PROJECT / "systemd/sessionstore.service",
}
UNIT = "sessionstore.service"
CLIENT = (Path(__file__).resolve().parent / "systemd_sandbox/client.py").read_text()
PYTHON = "/opt/sessionstore/bin/python3"
UNREACHABLE = 3  # systemd_sandbox.client's exit status when the daemon cannot be reached
LOAD_ACKS = 20  # acknowledged saves per writer before the stop


class Service:
    """The unit under test in a started sandbox, installed as the docs say."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.kind = sandbox.mode
        if isinstance(sandbox, UserSandbox):
            self.learning_root = sandbox.home / ".openjarvis/learning"
            self.socket = str(self.learning_root / "sessiond.sock")
            self.owner = sandbox.alice
        else:
            assert isinstance(sandbox, SystemSandbox)
            self.learning_root = sandbox.state_dir / "sessionstore/learning"
            self.socket = "/run/sessionstore/sessiond.sock"
            self.owner = sandbox.service
        self.address = f"ipc://{self.socket}"

    def install(self) -> None:
        """``install`` the unit file, ``daemon-reload``, ``enable`` (not started yet)."""
        target = self.sandbox.unit_dir / UNIT
        shutil.copyfile(UNITS[self.kind], target)
        target.chmod(0o644)
        self.sandbox.systemctl("daemon-reload")
        self.sandbox.systemctl("enable", UNIT)

    def drop_in(self, name: str, text: str) -> None:
        directory = self.sandbox.unit_dir / f"{UNIT}.d"
        directory.mkdir(exist_ok=True)
        (directory / f"{name}.conf").write_text(f"[Service]\n{text}")
        self.sandbox.systemctl("daemon-reload")

    def start(self) -> None:
        self.sandbox.systemctl("start", UNIT)

    def state(self, *properties: str) -> dict[str, str]:
        return self.sandbox.show(UNIT, *properties)

    def main_pid(self) -> int:
        return int(self.state("MainPID")["MainPID"])

    def journal(self, *args: str) -> str:
        return self.sandbox.journal(UNIT, *args)

    def client(
        self, command: str, *args: str, account: Account | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a systemd_sandbox.client command inside the sandbox (as alice unless told)."""
        return self.sandbox.run(
            PYTHON, "-c", CLIENT, command, *args,
            account=account or self.sandbox.alice,
            env={"PYTHONDONTWRITEBYTECODE": "1"},
            check=check,
        )  # fmt: skip

    def ask(self, command: str, *args: str) -> Any:
        """A client command's JSON answer, run as alice against the unit's address."""
        return json.loads(self.client(command, self.address, *args).stdout)

    def inside(self, *argv: str) -> str:
        """A command's output, run as root inside the sandbox (where /run is the sandbox's)."""
        return self.sandbox.run(*argv).stdout.strip()

    def stored_edit_ids(self) -> list[str]:
        """Every outcome in the index, read from the file (the daemon stopped)."""
        uri = f"file:{self.learning_root / 'distillation.db'}?immutable=1"
        with sqlite3.connect(uri, uri=True) as db:
            return [row[0] for row in db.execute("SELECT edit_id FROM edit_outcomes")]

    def give_to_owner(self, path: Path) -> None:
        for item in [path, *path.rglob("*")]:
            shutil.chown(item, self.owner.uid, self.owner.gid)


@pytest.fixture(scope="session")
def sandbox_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project in a venv of the system Python, built once per test session."""
    reason = unavailable_reason()
    if reason is not None:
        missing(reason)
    # The project needs Python >= 3.11; the unit cannot see a Python under /root or /tmp.
    probe = [
        "/usr/bin/python3", "-c",
        "import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))",
    ]  # fmt: skip
    if not Path(probe[0]).exists() or subprocess.run(probe, capture_output=True).returncode:
        missing("needs /usr/bin/python3 >= 3.11 with venv (apt-get install python3-venv)")
    venv = tmp_path_factory.mktemp("sandbox") / "venv"
    build_venv(venv, PROJECT)
    return venv


def _service(kind: str, venv: Path) -> Iterator[Service]:
    sandbox: Sandbox = UserSandbox(venv) if kind == "user" else SystemSandbox(venv)
    try:
        sandbox.start()
        service = Service(sandbox)
        service.install()
        yield service
    finally:
        sandbox.close()


@pytest.fixture(params=["user", "system"])
def service(request: pytest.FixtureRequest, sandbox_venv: Path) -> Iterator[Service]:
    """Each unit in a manager of its own, installed and enabled, not started."""
    yield from _service(request.param, sandbox_venv)


@pytest.fixture
def system_service(sandbox_venv: Path) -> Iterator[Service]:
    yield from _service("system", sandbox_venv)


def wait_for_status(service: Service, pattern: str, timeout: float = 20.0) -> str:
    """Poll ``systemctl show -p StatusText`` until it matches ``pattern``."""
    deadline = time.monotonic() + timeout
    while True:
        text = service.state("StatusText")["StatusText"]
        if re.search(pattern, text):
            return text
        assert time.monotonic() < deadline, f"StatusText {text!r} never matched {pattern!r}"
        time.sleep(0.1)


# -- start, serve, access --------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_start_returns_once_ready_and_a_save_is_acknowledged(service: Service) -> None:
    service.start()
    # READY=1 is sent after the bind: when `systemctl start` returns, the socket is there.
    assert service.inside("stat", "-c", "%F", service.socket) == "socket"
    state = service.state("Type", "ActiveState", "SubState", "NRestarts", "MainPID")
    assert state["Type"] == "notify"
    assert (state["ActiveState"], state["SubState"], state["NRestarts"]) == (
        "active",
        "running",
        "0",
    )
    assert service.ask("save", "first", "3") == ["first-00000", "first-00001", "first-00002"]
    assert service.ask("outcomes", "first") == ["first-00000", "first-00001", "first-00002"]
    # What a user runs to check their own install.
    status = service.sandbox.systemctl("status", "--no-pager", UNIT)
    assert "Active: active (running)" in status
    assert re.search(r"Status: \"\d+ saves applied", status), status
    assert f"sessiond {state['MainPID']} ready at {service.address}" in service.journal()
    if isinstance(service.sandbox, UserSandbox):
        own_journal = service.sandbox.run_as_user(
            "journalctl", "--no-pager", "--quiet", "--user-unit", "sessionstore"
        ).stdout
        assert f"sessiond {state['MainPID']} ready at" in own_journal


@pytest.mark.timeout(120)
def test_socket_admits_its_owner_or_group_and_refuses_anyone_else(service: Service) -> None:
    service.start()
    sandbox = service.sandbox
    if service.kind == "system":
        # Group access: the socket 0660 in a 0750 directory, the data 0700.
        assert service.inside("stat", "-c", "%a %U %G", service.socket) == (
            "660 sessionstore sessionstore"
        )
        assert service.inside("stat", "-c", "%a %U %G", "/run/sessionstore") == (
            "750 sessionstore sessionstore"
        )
        assert service.inside("stat", "-c", "%a %U", "/var/lib/sessionstore") == "700 sessionstore"
    else:
        assert service.inside("stat", "-c", "%a %U", service.socket) == "600 alice"
        assert service.inside("stat", "-c", "%a %U", str(service.learning_root)) == "700 alice"
    assert service.ask("save", "alice", "2") == ["alice-00000", "alice-00001"]
    refused = service.client("connect", service.socket, account=sandbox.mallory)
    assert refused.stdout.strip() == '"EACCES"'
    save = service.client(
        "save", service.address, "mallory", "1", "2", account=sandbox.mallory, check=False
    )
    assert save.returncode == UNREACHABLE, save
    assert service.ask("outcomes", "mallory") == []
    assert service.ask("outcomes", "alice") == ["alice-00000", "alice-00001"]


@pytest.mark.timeout(120)
def test_unit_raises_the_open_file_limit_for_many_clients(service: Service) -> None:
    service.start()
    # LimitNOFILE=65536, or as close as the manager may go: an unprivileged one (and a
    # system one without CAP_SYS_RESOURCE) cannot raise a hard limit above its own.
    manager = open_file_limits(service.inside("cat", "/proc/1/limits"))
    expected = min(65536, manager[1])
    daemon = open_file_limits(service.inside("cat", f"/proc/{service.main_pid()}/limits"))
    assert daemon == (expected, expected), (daemon, manager)


def open_file_limits(limits: str) -> tuple[int, int]:
    match = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
    assert match, limits
    return int(match.group(1)), int(match.group(2))


# -- what systemd sees ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_status_text_carries_the_status_line_and_follows_saves(service: Service) -> None:
    service.drop_in("status", "Environment=SESSIONSTORE_STATUS_INTERVAL=0.5\n")
    service.start()
    before = wait_for_status(service, r"^0 saves applied in 0 batches, 0 saves rejected")
    service.ask("save", "status", "4")
    after = wait_for_status(
        service, r"^5 saves applied in \d+ batches, 0 saves rejected, last commit"
    )
    assert after != before


@pytest.mark.timeout(120)
def test_journal_gets_priorities_warning_shows_rejections_not_routine(service: Service) -> None:
    service.start()
    assert service.ask("reject") == "malformed"
    service.sandbox.wait_for_journal(UNIT, "rejected request sandbox-bad-frame")
    warnings = service.journal("--priority=warning")
    assert "rejected request sandbox-bad-frame: malformed" in warnings
    assert "ready at" not in warnings
    assert "<4>" not in warnings  # the prefix became the priority, not text
    assert "ready at" in service.journal("--priority=info")


# -- watchdog, stop, reload ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_watchdog_restarts_a_stopped_daemon_and_acknowledged_saves_survive(
    service: Service,
) -> None:
    service.drop_in("watchdog", "WatchdogSec=4\n")
    service.start()
    acked = service.ask("save", "watched", "30")
    stopped_pid = service.main_pid()
    started = time.monotonic()
    service.sandbox.systemctl("kill", "--kill-whom=main", "--signal=SIGSTOP", UNIT)
    service.sandbox.wait_for_journal(UNIT, "Watchdog timeout", timeout=30)
    service.sandbox.wait_for(UNIT, ActiveState="active", SubState="running", NRestarts="1")
    restarted_after = time.monotonic() - started
    assert service.main_pid() != stopped_pid
    assert service.ask("outcomes", "watched") == acked
    print(f"{service.kind} unit: watchdog restart {restarted_after:.1f}s after SIGSTOP")


@pytest.mark.timeout(180)
def test_stop_under_write_load_is_clean_and_keeps_every_acknowledged_save(
    service: Service,
) -> None:
    service.start()
    writers = [Writer(service, f"load-{n}") for n in range(3)]
    try:
        for writer in writers:
            writer.wait_for_acks(LOAD_ACKS)
        service.sandbox.systemctl("stop", UNIT, timeout=120)
        for writer in writers:
            writer.finish()
    finally:
        for writer in writers:
            writer.kill()
    state = service.state("Result", "ExecMainCode", "ExecMainStatus", "ActiveState")
    # ExecMainCode 1 is CLD_EXITED: the daemon exited by itself, it was not killed.
    assert state == {
        "Result": "success",
        "ExecMainCode": "1",
        "ExecMainStatus": "0",
        "ActiveState": "inactive",
    }
    assert "final checkpoint:" in service.journal()
    acked = [edit_id for writer in writers for edit_id in writer.acked]
    stored = service.stored_edit_ids()
    assert len(stored) == len(set(stored))
    assert set(acked) <= set(stored), f"lost: {sorted(set(acked) - set(stored))[:10]}"


@pytest.mark.timeout(120)
def test_reload_rereads_settings_and_keeps_serving(service: Service) -> None:
    service.start()
    pid = service.main_pid()
    config = service.learning_root / "sessiond.toml"
    config.write_text('log_level = "WARNING"\nbatch_max = 7\n')
    service.give_to_owner(config)
    service.sandbox.systemctl("reload", UNIT)
    service.sandbox.wait_for_journal(UNIT, "reload: batch_max changed (512 -> 7)")
    assert "reload: log_level INFO -> WARNING" in service.journal()
    assert service.ask("save", "reloaded", "2") == ["reloaded-00000", "reloaded-00001"]
    # A bare SIGHUP (kill -HUP, a log rotator) is the same reload.
    service.sandbox.systemctl("kill", "--kill-whom=main", "--signal=SIGHUP", UNIT)
    wait_until(lambda: service.journal().count("batch_max changed") == 2, "second reload")
    state = service.state("MainPID", "ActiveState", "SubState", "NRestarts")
    assert state == {
        "MainPID": str(pid),
        "ActiveState": "active",
        "SubState": "running",
        "NRestarts": "0",
    }
    assert service.ask("outcomes", "reloaded") == ["reloaded-00000", "reloaded-00001"]


# -- the system call filter -------------------------------------------------------------------

# A call outside the filter kills the daemon with SIGSYS instead of failing with EPERM,
# so nothing the daemon does can be refused quietly while the matrix runs; every job
# runs on a short interval and the watchdog is fed every second.
STRICT_FILTER = """SystemCallErrorNumber=
WatchdogSec=2
Environment=SESSIONSTORE_STATUS_INTERVAL=0.5 SESSIONSTORE_CHECKPOINT_INTERVAL=1
Environment=SESSIONSTORE_RECONCILE_INTERVAL=2 SESSIONSTORE_RECONCILE_FULL_INTERVAL=3
Environment=SESSIONSTORE_INTEGRITY_INTERVAL=2 SESSIONSTORE_REQUEST_ID_RETENTION=2
"""


@pytest.mark.timeout(180)
def test_filter_allows_every_system_call_the_daemon_makes(service: Service) -> None:
    service.drop_in("strict-filter", STRICT_FILTER)
    service.start()
    pid = service.main_pid()
    for n in range(3):
        write_session(service.learning_root, f"on-disk-{n}")
    write_session(service.learning_root, "broken", b"{not json")
    service.give_to_owner(service.learning_root / "sessions")
    report = service.ask("matrix")
    assert report["reads"] == [5, 3, 2020, True, True] and report["reads_consistent"]
    assert report["status_applied"] == 2106  # 6 sessions, 100 outcomes, 2000 pipelined
    assert report["checkpoint"] == "TRUNCATE"
    assert report["on_disk_indexed"] == [True, True, True]
    assert len(report["reconcile"]["invalid"]) == 1
    assert report["integrity"]["ok"] is True
    assert report["connections"] == 64
    assert report["big_session_bytes"] == 900_000 and report["oversized_dropped"]
    assert service.ask("reject") == "malformed"
    service.sandbox.systemctl("reload", UNIT)
    service.sandbox.wait_for_journal(UNIT, "reload: settings unchanged")
    for job in ("checkpoint done", "reconcile done", "integrity done", "prune_request_ids done"):
        service.sandbox.wait_for_journal(UNIT, job)
    assert service.state("MainPID", "NRestarts") == {"MainPID": str(pid), "NRestarts": "0"}
    service.sandbox.systemctl("stop", UNIT)
    state = service.state("Result", "ExecMainCode", "ExecMainStatus")
    assert state == {"Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}


@pytest.mark.timeout(120)
def test_strict_filter_does_catch_a_refused_call(system_service: Service) -> None:
    """The check above is not vacuous: take away the allowance and the daemon dies at start."""
    system_service.drop_in("strict-filter", STRICT_FILTER)
    system_service.drop_in("deny", "SystemCallFilter=~sched_setscheduler\n")
    result = system_service.sandbox.run("systemctl", "start", UNIT, check=False)
    assert result.returncode != 0
    system_service.sandbox.wait_for_journal(UNIT, "status=31/SYS")


# -- helpers ----------------------------------------------------------------------------------


def wait_until(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Writer:
    """A ``systemd_sandbox.client load`` process: its acknowledged edit ids, collected as they come."""

    def __init__(self, service: Service, session_id: str) -> None:
        self.acked: list[str] = []
        self._enough = threading.Event()
        self._wanted = 0
        self._proc = service.sandbox.popen(
            PYTHON, "-c", CLIENT, "load", service.address, session_id,
            account=service.sandbox.alice,
            env={"PYTHONDONTWRITEBYTECODE": "1"},
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip() != "session":
                self.acked.append(line.strip())
            if self._wanted and len(self.acked) >= self._wanted:
                self._enough.set()
        self._enough.set()

    def wait_for_acks(self, count: int, timeout: float = 60.0) -> None:
        self._wanted = count
        if len(self.acked) < count:
            self._enough.wait(timeout)
        assert len(self.acked) >= count, f"writer acked {len(self.acked)} of {count}"

    def finish(self, timeout: float = 60.0) -> None:
        """Wait for the writer to notice the daemon is gone and exit."""
        self._proc.wait(timeout)
        self._reader.join(timeout)
        assert self._proc.returncode == 0, self._proc.stderr.read() if self._proc.stderr else ""

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._reader.join()


# -- replication and metrics, as systemd/sessionstore.service.d/ ships them --------------------

DROP_INS = PROJECT / "systemd/sessionstore.service.d"


def install_shipped(service: Service, source: Path, target: str) -> None:
    """A file from systemd/ installed unchanged at ``target`` under the unit directory."""
    path = service.sandbox.unit_dir / target
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    path.chmod(0o644)


def replication_state(service: Service) -> dict[str, Any]:
    report = service.ask("status")["replication"]
    assert isinstance(report, dict)
    return report


@pytest.mark.timeout(240)
def test_replicated_unit_survives_reload_and_hangup_and_its_stop_uploads_every_save(
    system_service: Service, tmp_path: Path
) -> None:
    from replication_helpers import restored

    service = system_service
    install_shipped(service, DROP_INS / "replication.conf", f"{UNIT}.d/replication.conf")
    service.sandbox.systemctl("daemon-reload")
    service.start()
    main_pid = service.main_pid()
    first = replication_state(service)
    assert first["running"] and first["replica"] == "file:///var/lib/sessionstore-replica"
    assert service.state("KillMode")["KillMode"] == "mixed"
    writers = [Writer(service, f"replicated-{n}") for n in range(2)]
    try:
        for writer in writers:
            writer.wait_for_acks(LOAD_ACKS)
        service.sandbox.systemctl("reload", UNIT)  # SIGHUP to the daemon ($MAINPID)
        service.sandbox.wait_for_journal(UNIT, "reload: settings unchanged")
        # every process of the unit, Litestream and its keeper included
        service.sandbox.systemctl("kill", "--signal=SIGHUP", UNIT)
        wait_until(lambda: service.journal().count("reload: settings unchanged") == 2, "reload")
        more = [len(writer.acked) + LOAD_ACKS for writer in writers]
        wait_until(
            lambda: all(len(w.acked) >= n for w, n in zip(writers, more, strict=True)),
            "acknowledged saves after the hang-up",
            timeout=60,
        )
        state = replication_state(service)
        assert (state["pid"], state["restarts"]) == (first["pid"], 0)
        assert service.state("MainPID", "NRestarts") == {"MainPID": str(main_pid), "NRestarts": "0"}
        service.sandbox.systemctl("stop", UNIT, timeout=120)
        for writer in writers:
            writer.finish()
    finally:
        service.sandbox.systemctl("stop", UNIT, timeout=120, check=False)  # writers then end
        for writer in writers:
            writer.kill()
    state = service.state("Result", "ExecMainCode", "ExecMainStatus")
    assert state == {"Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}
    journal = service.journal()
    assert "litestream stopped in" in journal and "exited unasked" not in journal
    # what a new machine would get back from the replica
    replica = service.sandbox.state_dir / "sessionstore-replica"
    root = tmp_path / "new-machine" / "learning"
    report = restored(root, f"file://{replica}")
    restored_ids = set(outcome_ids(root / "distillation.db"))
    acked = [edit_id for writer in writers for edit_id in writer.acked]
    assert set(acked) <= restored_ids, (
        f"not in the replica: {sorted(set(acked) - restored_ids)[:5]}"
    )
    print(f"replicated system unit: {len(acked)} acknowledged saves, restored {report['restored']}")


LITESTREAM_CHOWN = "SystemCallFilter=~fchown:EPERM fchownat:EPERM\n"


@pytest.mark.timeout(180)
def test_filter_allows_every_system_call_of_replication(system_service: Service) -> None:
    """Litestream (Go) and its keeper under the unit's filter with refused calls fatal.

    One exception, named: Litestream gives each file it writes its database's owner
    (fchown, fchownat: @privileged), and ignores the refusal (``_ = os.Chown(...)`` in
    its source); the shipped unit refuses them with EPERM, and so does this test.
    """
    service = system_service
    install_shipped(service, DROP_INS / "replication.conf", f"{UNIT}.d/replication.conf")
    service.drop_in("strict-filter", STRICT_FILTER + LITESTREAM_CHOWN)
    service.start()
    first = replication_state(service)
    assert service.ask("save", "filtered", "50")[-1] == "filtered-00049"
    service.sandbox.systemctl("reload", UNIT)
    service.sandbox.wait_for_journal(UNIT, "reload: settings unchanged")
    for job in ("reconcile done", "integrity done"):
        service.sandbox.wait_for_journal(UNIT, job)
    assert replication_state(service)["pid"] == first["pid"]
    service.sandbox.systemctl("stop", UNIT)
    state = service.state("Result", "ExecMainStatus", "NRestarts")
    assert state == {"Result": "success", "ExecMainStatus": "0", "NRestarts": "0"}
    journal = service.journal()
    assert "exited unasked" not in journal and "litestream stopped in" in journal
    assert "SIGSYS" not in journal and "31/SYS" not in journal


@pytest.mark.timeout(180)
def test_metrics_reach_the_host_through_the_socket_proxy_with_private_network(
    system_service: Service,
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    service = system_service
    install_shipped(service, DROP_INS / "metrics.conf", f"{UNIT}.d/metrics.conf")
    for name in ("sessionstore-metrics.socket", "sessionstore-metrics-proxy.service"):
        install_shipped(service, PROJECT / "systemd" / name, name)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    # The sandbox shares this machine's network: a free port instead of 9464.
    port_drop_in = service.sandbox.unit_dir / "sessionstore-metrics.socket.d/port.conf"
    port_drop_in.parent.mkdir()
    port_drop_in.write_text(f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
    service.sandbox.systemctl("daemon-reload")
    service.start()
    service.sandbox.systemctl("start", "sessionstore-metrics.socket")
    assert service.state("PrivateNetwork")["PrivateNetwork"] == "yes"
    assert service.inside("stat", "-c", "%a %U", "/run/sessionstore/metrics.sock") == (
        "600 sessionstore"
    )
    service.ask("save", "scraped", "7")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as response:
        text = response.read().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["sessionstore_saves_applied"].samples[0].value == 8
    assert families["sessionstore_frames_received"].type == "counter"
    proxy = service.sandbox.show("sessionstore-metrics-proxy.service", "ActiveState", "User")
    assert proxy == {"ActiveState": "active", "User": "sessionstore"}


@pytest.fixture
def user_service(sandbox_venv: Path) -> Iterator[Service]:
    yield from _service("user", sandbox_venv)


@pytest.mark.timeout(180)
def test_replicated_user_unit_as_the_drop_in_says(user_service: Service, tmp_path: Path) -> None:
    """The user unit: KillMode=mixed in a drop-in, the replica named in sessiond.toml."""
    from replication_helpers import restored

    service = user_service
    service.drop_in("replication", "KillMode=mixed\n")
    replica = service.sandbox.home / "replica"
    config = service.learning_root / "sessiond.toml"
    config.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    config.write_text(f'replica = "{replica}"\n')
    service.give_to_owner(service.learning_root)
    service.start()
    assert replication_state(service)["running"]
    acked = service.ask("save", "user-replicated", "30")
    service.sandbox.systemctl("reload", UNIT)
    service.sandbox.wait_for_journal(UNIT, "reload: settings unchanged")
    assert replication_state(service)["restarts"] == 0
    service.sandbox.systemctl("stop", UNIT)
    state = service.state("Result", "ExecMainStatus")
    assert state == {"Result": "success", "ExecMainStatus": "0"}
    root = tmp_path / "new-machine" / "learning"
    restored(root, f"file://{replica}")
    assert set(acked) <= set(outcome_ids(root / "distillation.db"))
