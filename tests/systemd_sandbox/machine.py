"""What a sandbox needs of this machine, and the pieces of it a sandbox borrows.

Nothing here starts a manager; :mod:`systemd_sandbox.managers` does, following the
safety rules in this package's docstring.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
JOURNALD = "/lib/systemd/systemd-journald"
TOOLS = ("unshare", "nsenter", "setpriv", "mount", "systemctl", "journalctl")
FIRST_FREE_ID = 61000
CGROUP_PREFIX = "sessionstore-test-"
SCRATCH_PREFIX = "ssd-"
VENV_BUILD_TIMEOUT = 600.0


def unavailable_reason() -> str | None:
    """Why a systemd sandbox cannot run on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "systemd sandbox needs root (namespaces, mounts, cgroups)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    missing += [path for path in (SYSTEMD, JOURNALD) if not os.access(path, os.X_OK)]
    if missing:
        return f"systemd sandbox needs {', '.join(missing)} (apt-get install systemd util-linux)"
    try:
        parent = own_cgroup2_dir()
    except LookupError as err:
        return f"systemd sandbox needs a cgroup2 hierarchy: {err}"
    if not os.access(parent, os.W_OK):
        return f"systemd sandbox needs a writable cgroup2 hierarchy ({parent} is read-only)"
    return None


def own_cgroup2_dir() -> Path:
    """This process's cgroup directory in the cgroup2 hierarchy: under
    ``/sys/fs/cgroup/unified`` on a hybrid machine, ``/sys/fs/cgroup`` on a unified one."""
    mount_point = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            mount_point = fields[4]
            break
    if mount_point is None:
        raise LookupError("no cgroup2 file system is mounted")
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return Path(mount_point, line[3:].lstrip("/"))
    raise LookupError("this process has no cgroup2 membership")


def remove_cgroup_tree(root: Path, timeout: float) -> None:
    """rmdir every cgroup under ``root``, deepest first; its processes are dying, so retry."""
    deadline = time.monotonic() + timeout
    while root.exists():
        for directory, _, _ in sorted(os.walk(root), key=lambda walk: -walk[0].count("/")):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError:
                if time.monotonic() > deadline:
                    raise
        if root.exists():
            time.sleep(0.05)


def scratch_name(prefix: str) -> str:
    """A name that says which test process made it (see :func:`remove_leftovers`)."""
    return f"{prefix}{os.getpid()}-"


def remove_leftovers(cgroup_parent: Path, scratch_parent: Path) -> None:
    """Remove the sub-cgroups and scratch directories of sandboxes whose test process
    was killed outright. Its namespaces died with it (PR_SET_PDEATHSIG), so these are
    empty and unmounted; those of a test process still alive are left alone."""
    stale = [
        *cgroup_parent.glob(f"{CGROUP_PREFIX}*"),
        *scratch_parent.glob(f"{SCRATCH_PREFIX}*"),
    ]
    for path in stale:
        pid = path.name.split("-")[-2]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        if path.is_relative_to(cgroup_parent):
            with contextlib.suppress(OSError):  # still populated: not ours to touch
                remove_cgroup_tree(path, timeout=0)
        else:
            shutil.rmtree(path, ignore_errors=True)


def free_ids(count: int) -> list[int]:
    """``count`` consecutive numbers that are neither a uid nor a gid on this machine."""
    used = set()
    for path in ("/etc/passwd", "/etc/group"):
        for line in Path(path).read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit():
                used.add(int(fields[2]))
    first = FIRST_FREE_ID
    while any(first + i in used for i in range(count)):
        first += count
    return list(range(first, first + count))


def build_venv(target: Path, project: Path) -> None:
    """A venv of the system Python (``/usr/bin/python3``) with the project installed.

    Built as ``/opt/sessionstore`` in a private mount namespace, so its scripts'
    ``#!`` lines name ``/opt/sessionstore/bin/python3``: the system unit's
    ExecStart path, where the sandboxes bind it. A Python under ``/root`` (pyenv)
    or ``/tmp`` would be hidden from the system unit by ProtectHome= and
    PrivateTmp=. The project is installed from a copy (pip builds in the source
    tree) and not in editable mode, as a user installs it, with the replication
    extra (litestream, in ``/opt/sessionstore/bin``) as docs/replication.md says.
    """
    source = target.parent / "source"
    source.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "service"):
        shutil.copytree(project / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(project / name, source / name)
    target.mkdir()
    target.chmod(0o755)
    script = (
        "set -e; mount -t tmpfs -o mode=755 tmpfs /opt; mkdir /opt/sessionstore; "
        'mount --bind "$0" /opt/sessionstore; /usr/bin/python3 -m venv /opt/sessionstore; '
        '/opt/sessionstore/bin/pip install --quiet --disable-pip-version-check "$1[replication]"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, target, source],
        capture_output=True,
        text=True,
        timeout=VENV_BUILD_TIMEOUT,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the sandbox venv failed:\n{result.stdout}\n{result.stderr}")
