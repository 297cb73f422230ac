"""The two managers: :class:`UserSandbox` and :class:`SystemSandbox` (see the package docstring)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from systemd_sandbox.machine import (
    CGROUP_PREFIX,
    JOURNALD,
    SCRATCH_PREFIX,
    SYSTEMD,
    free_ids,
    own_cgroup2_dir,
    remove_cgroup_tree,
    remove_leftovers,
    scratch_name,
)
from systemd_sandbox.units import JOURNALD_CONF, START_TARGET, write_units

PID1 = Path(__file__).resolve().parent / "pid1.py"
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# Short on purpose: AF_UNIX socket paths under a sandbox must stay below 108 bytes.
SCRATCH_PARENT = Path("/tmp")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


class Sandbox:
    """One manager, started by :meth:`start`, always removed by :meth:`close`."""

    mode = ""

    def __init__(self, venv: Path) -> None:
        remove_leftovers(own_cgroup2_dir(), SCRATCH_PARENT)
        self.base = Path(tempfile.mkdtemp(prefix=scratch_name(SCRATCH_PREFIX), dir=SCRATCH_PARENT))
        self.base.chmod(0o755)  # the sandbox's accounts traverse it
        self.venv = venv
        self.cgroup: Path | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        uid = free_ids(3)
        self.service = Account("sessionstore", uid[0], uid[0], "/var/lib/sessionstore")
        self.alice = Account("alice", uid[1], uid[1], str(self.base / "home"))
        self.mallory = Account("mallory", uid[2], uid[2], "/nonexistent")
        self._write_accounts()

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> Sandbox:
        self._prepare()
        self.cgroup = own_cgroup2_dir() / f"{scratch_name(CGROUP_PREFIX)}{uuid.uuid4().hex[:8]}"
        self.cgroup.mkdir()
        config = {"mode": self.mode, "base": str(self.base), "venv": str(self.venv)}
        config.update(self._init_config())
        # Into the sub-cgroup first (the shell moves itself, then execs), then the
        # namespaces; setpriv makes `unshare` die with this process.
        argv = [
            "sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup),
            "setpriv", "--pdeathsig=KILL",
            "unshare", "--pid", "--fork", "--mount-proc", "--mount",
            "--propagation", "private", "--cgroup", "--uts", "--ipc",
            sys.executable, str(PID1), json.dumps(config),
        ]  # fmt: skip
        with open(self.base / "init.out", "wb") as out:
            self._launcher = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        self.init_pid = self._wait_for_init(deadline)
        self._wait_for_manager(deadline)
        return self

    def close(self) -> None:
        """Kill everything in the sandbox, remove its cgroup and its files."""
        if self.init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        if self._launcher is not None:
            try:
                self._launcher.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._launcher.kill()
                self._launcher.wait(STOP_TIMEOUT)
        if self.cgroup is not None:
            remove_cgroup_tree(self.cgroup, STOP_TIMEOUT)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running things inside --------------------------------------------------------

    def command(
        self, *argv: str, account: Account | None = None, env: dict[str, str] | None = None
    ) -> list[str]:
        """``argv`` as run inside the sandbox's namespaces, as root or as ``account``."""
        assert self.init_pid is not None, "sandbox not started"
        prefix = ["nsenter", "-t", str(self.init_pid), "-m", "-p", "-C", "-u", "-i", "--"]
        if account is not None:
            prefix += ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}"]
            prefix += ["--init-groups"]
        environment = {"PATH": PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
        if account is not None:
            environment.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
        environment.update(env or {})
        return [*prefix, "env", "-i", *(f"{k}={v}" for k, v in environment.items()), *argv]

    def run(
        self,
        *argv: str,
        account: Account | None = None,
        env: dict[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*argv, account=account, env=env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}\n{self.diagnostics()}"
            )
        return result

    def popen(
        self, *argv: str, account: Account | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*argv, account=account, env=env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    # -- the manager ------------------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> str:
        return self.run(*self._systemctl(), *args, check=check, timeout=timeout).stdout

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show -p …`` as a dict."""
        args = [f"--property={p}" for p in properties]
        out = self.systemctl("show", *args, unit)
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, *args: str) -> str:
        """The unit's journal: its own lines and the manager's about it. Read as root, which
        reads every journal file; ``journalctl --user-unit`` would match root's uid only."""
        unit = unit if "." in unit else f"{unit}.service"
        if self.mode == "user":
            selector = [f"_SYSTEMD_USER_UNIT={unit}", "+", f"USER_UNIT={unit}"]
        else:
            selector = ["--unit", unit]
        return self.run("journalctl", "--no-pager", "--quiet", *args, *selector).stdout

    def wait_for_journal(self, unit: str, text: str, timeout: float = 20.0) -> str:
        """Poll the unit's journal until a line contains ``text``; that line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.journal(unit).splitlines():
                if text in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the journal of {unit}\n{self.diagnostics()}")
            time.sleep(0.2)

    def wait_for(self, unit: str, timeout: float = 30.0, **expected: str) -> dict[str, str]:
        """Poll ``systemctl show`` until every property has the expected value."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.show(unit, *expected)
            if all(state.get(k) == v for k, v in expected.items()):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{unit}: expected {expected}, have {state}\n{self.diagnostics()}"
                )
            time.sleep(0.1)

    def diagnostics(self) -> str:
        """The manager's journal tail, for failure messages."""
        try:
            out = subprocess.run(
                self.command("journalctl", "--no-pager", "-n", "60"),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
            ).stdout
        except (subprocess.SubprocessError, AssertionError):
            out = "(journal unreadable)"
        return f"--- sandbox journal (last 60 lines) ---\n{out}"

    # -- what the kinds differ in -------------------------------------------------------

    unit_dir: Path

    def _systemctl(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        raise NotImplementedError

    def _init_config(self) -> dict[str, object]:
        raise NotImplementedError

    def _manager_socket(self) -> Path:
        raise NotImplementedError

    def _write_accounts(self) -> None:
        """Copies of passwd and group with the sandbox's accounts; the machine's stay untouched."""
        s, a, m = self.service, self.alice, self.mallory
        passwd = Path("/etc/passwd").read_text().rstrip("\n") + "\n"
        passwd += f"{s.name}:x:{s.uid}:{s.gid}::{s.home}:/usr/sbin/nologin\n"
        passwd += f"{a.name}:x:{a.uid}:{a.gid}::{a.home}:/bin/sh\n"
        passwd += f"{m.name}:x:{m.uid}:{m.gid}::{m.home}:/bin/sh\n"
        group = Path("/etc/group").read_text().rstrip("\n") + "\n"
        group += f"{s.name}:x:{s.gid}:{a.name}\n{a.name}:x:{a.gid}:\n{m.name}:x:{m.gid}:\n"
        (self.base / "passwd").write_text(passwd)
        (self.base / "group").write_text(group)
        for name in ("passwd", "group"):
            (self.base / name).chmod(0o644)
        (self.base / "var-log-journal").mkdir()
        (self.base / "journald.conf").write_text(JOURNALD_CONF)

    def _wait_for_init(self, deadline: float) -> int:
        assert self._launcher is not None
        children = Path(f"/proc/{self._launcher.pid}/task/{self._launcher.pid}/children")
        while time.monotonic() < deadline:
            if self._launcher.poll() is not None:
                raise RuntimeError(f"sandbox launcher exited: {self._log('init.out')}")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                return int(pids[0])
            time.sleep(0.02)
        raise TimeoutError(f"sandbox init did not start: {self._log('init.out')}")

    def _wait_for_manager(self, deadline: float) -> None:
        socket = self._manager_socket()
        while not socket.exists():
            if self._launcher is not None and self._launcher.poll() is not None:
                raise RuntimeError(f"sandbox init exited: {self._log('init.out')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.mode} manager did not come up: {self._log('init.out')}")
            time.sleep(0.05)
        remaining = max(1.0, deadline - time.monotonic())
        result = self.run(
            *self._systemctl(), "is-system-running", "--wait", check=False, timeout=remaining
        )
        if result.stdout.strip() != "running":
            failed = self.systemctl("list-units", "--failed", "--no-legend", check=False)
            raise RuntimeError(
                f"{self.mode} manager is {result.stdout.strip()!r}, failed units: {failed}\n"
                f"{self.diagnostics()}"
            )

    def _log(self, name: str) -> str:
        path = self.base / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


class UserSandbox(Sandbox):
    """``systemd --user`` run by the account ``alice``, HOME in the sandbox."""

    mode = "user"

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def unit_dir(self) -> Path:  # type: ignore[override]
        return self.home / ".config/systemd/user"

    @property
    def runtime_dir(self) -> Path:
        return self.base / "run"

    def manager_env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "USER": self.alice.name,
            "LOGNAME": self.alice.name,
            "PATH": PATH,
            "LANG": "C.UTF-8",
        }

    def run_as_user(self, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run as the manager's own user with its environment (as in their login shell)."""
        return self.run(*argv, account=self.alice, env=self.manager_env(), **kwargs)  # type: ignore[arg-type]

    def _systemctl(self) -> list[str]:
        # systemctl --user finds the manager through $XDG_RUNTIME_DIR, as the user.
        return [
            "setpriv", f"--reuid={self.alice.uid}", f"--regid={self.alice.gid}", "--init-groups",
            "env", f"XDG_RUNTIME_DIR={self.runtime_dir}", f"HOME={self.home}",
            "systemctl", "--user",
        ]  # fmt: skip

    def _prepare(self) -> None:
        for name in ("run-systemd", "run-log"):
            (self.base / name).mkdir()
        self.runtime_dir.mkdir(mode=0o700)
        self.unit_dir.mkdir(parents=True)
        (self.home / ".local/share/sessionstore/venv").mkdir(parents=True)
        for path in [self.runtime_dir, self.home, *self.home.rglob("*")]:
            os.chown(path, self.alice.uid, self.alice.gid)

    def _init_config(self) -> dict[str, object]:
        return {
            "systemd": SYSTEMD,
            "journald": JOURNALD,
            "uid": self.alice.uid,
            "gid": self.alice.gid,
            "environment": self.manager_env(),
            "user_venv": str(self.home / ".local/share/sessionstore/venv"),
        }

    def _manager_socket(self) -> Path:
        return self.runtime_dir / "systemd/private"


class SystemSandbox(Sandbox):
    """``systemd --system`` as PID 1 of its own pid namespace."""

    mode = "system"

    @property
    def unit_dir(self) -> Path:  # type: ignore[override]
        """Where ``/etc/systemd/system`` of the sandbox lives on this machine."""
        return self.base / "etc-systemd-system"

    @property
    def state_dir(self) -> Path:
        """Where ``/var/lib`` of the sandbox lives on this machine."""
        return self.base / "var-lib"

    def _systemctl(self) -> list[str]:
        return ["systemctl"]

    def _prepare(self) -> None:
        for name in ("var-lib", "var-tmp", "etc-systemd-system", "units", "no-generators"):
            (self.base / name).mkdir()
        (self.base / "var-tmp").chmod(0o1777)
        (self.base / "console").touch()
        write_units(self.base / "units")

    def _init_config(self) -> dict[str, object]:
        return {
            "systemd": SYSTEMD,
            "start_target": START_TARGET,
            "environment": {
                "PATH": PATH,
                "LANG": "C.UTF-8",
                # A container: PID 1 leaves the clock, kernel modules and hardware alone.
                "container": "sessionstore-test",
                # Our units only: /etc/systemd/system (private, for the unit under
                # test), then the stubs; no generators, no machine units.
                "SYSTEMD_UNIT_PATH": f"/etc/systemd/system:{self.base / 'units'}",
                "SYSTEMD_GENERATOR_PATH": str(self.base / "no-generators"),
                "SYSTEMD_ENVIRONMENT_GENERATOR_PATH": str(self.base / "no-generators"),
            },
        }

    def _manager_socket(self) -> Path:
        return Path(f"/proc/{self.init_pid}/root/run/systemd/private")
