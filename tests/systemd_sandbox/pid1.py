"""PID 1 of a systemd sandbox: make the namespaces look like a machine, then start a manager.

Run by :mod:`systemd_sandbox.managers` as ``python pid1.py CONFIG_JSON`` under
``unshare --pid --fork --mount --propagation private --cgroup --uts --ipc``, from
inside a dedicated sub-cgroup, so every mount below is private to the sandbox
and the cgroup2 hierarchy mounted here is rooted at that sub-cgroup (a manager
that sees the machine's real root cgroup would move every process of the
machine into a cgroup of its own). Standard library only: it runs before any
virtual environment exists in the sandbox.

System mode execs ``systemd --system`` as PID 1. User mode starts
``systemd-journald`` and ``systemd --user`` (as an unprivileged account, in a
delegated cgroup, as user@.service would) and stays PID 1 to reap orphans.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
JOURNAL_WAIT_SECONDS = 10.0


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def bind(source: str | Path, target: str | Path, *, read_only: bool = False) -> None:
    mount("--bind", str(source), str(target))
    if read_only:
        mount("-o", "remount,bind,ro", str(target))


def die_with_parent() -> None:
    """SIGKILL this init (and so the whole pid namespace) when `unshare` dies: a test
    process killed without running its teardown leaves nothing behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def common_mounts(config: dict[str, Any]) -> None:
    """The mounts both managers need: cgroup2 rooted at our sub-cgroup, private journal
    storage, the service accounts, the test venv at /opt/sessionstore, read-only sysctls."""
    base = Path(config["base"])
    mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/sys/fs/cgroup")
    mount("-t", "cgroup2", "none", "/sys/fs/cgroup")
    bind(base / "var-log-journal", "/var/log/journal")
    # The sandbox's journal holds the sandbox's lines only, not the machine's kernel log.
    bind(base / "journald.conf", "/etc/systemd/journald.conf", read_only=True)
    bind(base / "passwd", "/etc/passwd", read_only=True)
    bind(base / "group", "/etc/group", read_only=True)
    # /opt/sessionstore is where the system unit's ExecStart looks, and where the venv's
    # scripts were built to find their interpreter (their #! line).
    mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/opt")
    Path("/opt/sessionstore").mkdir()
    bind(config["venv"], "/opt/sessionstore", read_only=True)
    # The manager writes a few sysctls at start (e.g. net.unix.max_dgram_qlen); they
    # are not namespaced, so they must fail here instead of changing the machine.
    bind("/proc/sys", "/proc/sys", read_only=True)


def move_to_cgroup(path: str) -> None:
    Path("/sys/fs/cgroup", path, "cgroup.procs").write_text(str(os.getpid()))


def become_user_manager(path: str) -> None:
    """What user@.service gives a user manager: its cgroup, and the soft open-file limit a
    system manager gives every service (DefaultLimitNOFILE=1024:…); the hard one stays."""
    move_to_cgroup(path)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


def run_system(config: dict[str, Any]) -> None:
    base = Path(config["base"])
    mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run")
    bind(base / "var-lib", "/var/lib")
    bind(base / "var-tmp", "/var/tmp")
    bind(base / "etc-systemd-system", "/etc/systemd/system")
    # PID 1 opens /dev/console for its status output; give it a file, not the machine's.
    bind(base / "console", "/dev/console")
    os.execve(
        config["systemd"],
        [
            config["systemd"],
            "--system",
            f"--unit={config['start_target']}",
            "--log-target=journal",
            "--log-color=no",
            "--show-status=no",
        ],
        config["environment"],
    )


def run_user(config: dict[str, Any]) -> None:
    base = Path(config["base"])
    uid, gid = config["uid"], config["gid"]
    bind(base / "run-systemd", "/run/systemd")
    for directory in ("system", "journal"):
        Path("/run/systemd", directory).mkdir(exist_ok=True)
    # As if systemd-journal-flush.service had run: journald writes /var/log/journal, where
    # each user gets a journal file of their own to read with `journalctl --user-unit`.
    Path("/run/systemd/journal/flushed").touch()
    bind(base / "run-log", "/run/log")
    # The user unit's ExecStart: ~/.local/share/sessionstore/venv.
    bind(config["venv"], config["user_venv"], read_only=True)
    manager_cgroup = f"user.slice/user-{uid}.slice/user@{uid}.service"
    Path("/sys/fs/cgroup/journald").mkdir()
    Path("/sys/fs/cgroup", manager_cgroup).mkdir(parents=True)
    # Delegate the manager's cgroup to its user, as user@.service (Delegate=yes) does.
    for entry in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
        os.chown(Path("/sys/fs/cgroup", manager_cgroup, entry), uid, gid)
    with open(base / "journald.out", "wb") as out:
        subprocess.Popen(
            [config["journald"]],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: move_to_cgroup("journald"),
        )
    deadline = time.monotonic() + JOURNAL_WAIT_SECONDS
    while not Path("/run/systemd/journal/stdout").exists():
        if time.monotonic() > deadline:
            sys.exit("systemd-journald did not create its stdout socket")
        time.sleep(0.05)
    manager = [
        "setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups",
        "env", "-i", *(f"{k}={v}" for k, v in config["environment"].items()),
        config["systemd"], "--user", "--log-target=journal",
    ]  # fmt: skip
    with open(base / "manager.out", "wb") as out:
        subprocess.Popen(
            manager,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: become_user_manager(manager_cgroup),
        )
    while True:  # PID 1: reap whatever is orphaned to us
        try:
            os.wait()
        except ChildProcessError:
            signal.pause()


def main() -> None:
    config = json.loads(sys.argv[1])
    die_with_parent()
    common_mounts(config)
    if config["mode"] == "system":
        run_system(config)
    else:
        run_user(config)


if __name__ == "__main__":
    main()
