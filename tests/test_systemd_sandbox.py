"""The systemd sandbox itself keeps its safety promises: contained, and gone when done.

A manager that escaped its sub-cgroup would move every process of this machine
into a cgroup of its own; a sandbox that outlived its test would leave managers
running on a machine others share. These run a bare manager (no unit, no venv).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from environment import missing
from systemd_sandbox import Sandbox, SystemSandbox, UserSandbox, unavailable_reason
from systemd_sandbox.machine import CGROUP_PREFIX

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def empty_venv(tmp_path: Path) -> Path:
    reason = unavailable_reason()
    if reason is not None:
        missing(reason)
    venv = tmp_path / "venv"
    venv.mkdir()
    return venv


@pytest.fixture(params=["user", "system"])
def sandbox(request: pytest.FixtureRequest, empty_venv: Path) -> Iterator[Sandbox]:
    box: Sandbox = UserSandbox(empty_venv) if request.param == "user" else SystemSandbox(empty_venv)
    try:
        yield box.start()
    finally:
        box.close()


def machine_cgroups() -> dict[int, str]:
    """The cgroup2 path of every process of this machine outside any sandbox right now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines = (entry / "cgroup").read_text().splitlines()
            except OSError:  # gone meanwhile
                continue
            found[int(entry.name)] = next((x for x in lines if x.startswith("0::")), "")
    return found


@pytest.mark.timeout(60)
def test_manager_sees_its_sub_cgroup_as_root_and_moves_nothing_outside(
    empty_venv: Path,
) -> None:
    before = machine_cgroups()
    for kind in (UserSandbox, SystemSandbox):
        box = kind(empty_venv)
        try:
            box.start()
            assert box.cgroup is not None
            inside = box.run("cat", "/proc/1/cgroup").stdout
            assert "0::/" in inside and box.cgroup.name not in inside  # a namespace root
            after = machine_cgroups()
            # A launcher moving itself into its sandbox's sub-cgroup (ours, or another test
            # run's) is by design; a manager moving anything else (to init.scope) is not.
            moved = {
                pid: (cgroup, after[pid])
                for pid, cgroup in before.items()
                if pid in after and after[pid] != cgroup and CGROUP_PREFIX not in after[pid]
            }
            assert moved == {}, f"{kind.__name__} moved processes of the machine: {moved}"
            populated = (box.cgroup / "cgroup.events").read_text()
            assert "populated 1" in populated  # the manager lives in our sub-cgroup
        finally:
            box.close()


@pytest.mark.timeout(60)
def test_closed_sandbox_leaves_no_process_cgroup_or_files(sandbox: Sandbox) -> None:
    assert sandbox.init_pid is not None and sandbox.cgroup is not None
    init_pid, cgroup, base = sandbox.init_pid, sandbox.cgroup, sandbox.base
    assert sandbox.systemctl("is-system-running").strip() == "running"
    sandbox.close()
    assert not Path(f"/proc/{init_pid}").exists()
    assert not cgroup.exists()
    assert not base.exists()


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from systemd_sandbox import SystemSandbox
box = SystemSandbox(Path({venv!r})).start()
print(box.init_pid, box.cgroup, box.base, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(60)
def test_sandbox_dies_with_a_test_process_killed_outright(empty_venv: Path) -> None:
    """SIGKILL leaves no teardown to run: the namespace must die with the process, and
    the next sandbox removes what is left (an empty sub-cgroup, the scratch directory)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS), venv=str(empty_venv))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        init_pid, cgroup, base = child.stdout.readline().split()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{init_pid}").exists() or "populated 1" in _events(Path(cgroup)):
            assert time.monotonic() < deadline, "the sandbox outlived its test process"
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert Path(cgroup).exists() and Path(base).exists()  # left behind, empty
    with SystemSandbox(empty_venv):
        assert not Path(cgroup).exists()
        assert not Path(base).exists()


def _events(cgroup: Path) -> str:
    try:
        return (cgroup / "cgroup.events").read_text()
    except FileNotFoundError:
        return ""
