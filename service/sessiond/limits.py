"""How many connections the daemon may hold: the open-files limit, raised, less what it needs.

Every client connection costs the daemon one file descriptor, and libzmq must never
run out of them: in libzmq 4.3.5 (the version pyzmq bundles) a failed ``accept()`` on
an ``ipc://`` listener with ``EMFILE`` is an assertion failure that aborts the whole
process (``src/ipc_listener.cpp``: only EAGAIN, EINTR, ECONNABORTED, EPROTO and ENFILE
are tolerated). On ``tcp://`` the error is tolerated, but the connection stays in the
backlog, the listening socket stays readable and the I/O thread spins on it. libzmq
offers no option that limits the connections a socket accepts.

So the daemon raises its soft ``RLIMIT_NOFILE`` to the hard limit at start (systemd
gives services a soft limit of 1024 and a hard one of 524288), and
:mod:`sessiond.connections` stops listening at a capacity derived here: half of what
the limit leaves once the descriptors in use and :data:`FD_HEADROOM` are set aside.
The other half is the margin for connections libzmq accepts between the count
reaching capacity and the listener closing (one loop turn).
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass
from typing import Any

from sessionstore.errors import ConfigError

log = logging.getLogger("sessiond")

FD_HEADROOM = 64
"""Descriptors kept free for what opens after start: the integrity check's read-only
connection (index, WAL, shared memory), session.json files being read, SQLite's
temporary files, the address probe before listening again."""

_NR_OPEN = "/proc/sys/fs/nr_open"


@dataclass(frozen=True)
class OpenFilesLimit:
    soft: int
    hard: int
    raised_from: int | None = None


def raise_open_files_limit() -> OpenFilesLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit (logged); return the limits in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _highest_allowed(hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, err)
            return OpenFilesLimit(soft, hard)
        log.info("raised the open-files limit (RLIMIT_NOFILE) from %d to %d", soft, target)
        return OpenFilesLimit(target, hard, raised_from=soft)
    return OpenFilesLimit(soft, hard)


def _highest_allowed(hard: int) -> int:
    """The hard limit, or the kernel's per-process ceiling when the hard limit is unlimited."""
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open(_NR_OPEN) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20  # the kernel's default nr_open


def descriptors_in_use() -> int:
    """Open file descriptors of this process (the listing's own is not counted)."""
    return len(os.listdir("/proc/self/fd")) - 1


@dataclass(frozen=True)
class Capacity:
    """The connection capacity and what it was derived from (logged and in ``status``)."""

    connections: int
    open_files_limit: int
    in_use: int
    max_connections: int

    def describe(self) -> str:
        spare = self.open_files_limit - self.in_use - FD_HEADROOM
        source = (
            "max_connections"
            if self.connections == self.max_connections
            else f"half of the {spare} descriptors the open-files limit leaves"
        )
        return (
            f"at most {self.connections} connections ({source}; limit {self.open_files_limit}, "
            f"{self.in_use} in use at start, {FD_HEADROOM} kept for jobs)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.connections,
            "open_files_limit": self.open_files_limit,
            "descriptors_at_start": self.in_use,
            "descriptors_kept_for_jobs": FD_HEADROOM,
        }


def connection_capacity(max_connections: int, open_files_limit: int, in_use: int) -> Capacity:
    """``max_connections``, or less if the open-files limit cannot hold twice as many."""
    by_limit = (open_files_limit - in_use - FD_HEADROOM) // 2
    if by_limit < 1:
        raise ConfigError(
            f"the open-files limit ({open_files_limit}) leaves no room for connections: "
            f"{in_use} descriptors are in use and {FD_HEADROOM} are kept for jobs; raise "
            "LimitNOFILE (or `ulimit -n`)"
        )
    return Capacity(min(max_connections, by_limit), open_files_limit, in_use, max_connections)
