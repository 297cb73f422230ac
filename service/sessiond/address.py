"""Make sure no other daemon serves an ipc:// address before taking it.

libzmq's ipc bind removes whatever file is at the socket path before binding, and so
did the daemon: a second daemon at the same address (with another index) took the
socket away from the first, which kept running unreachable. The index lock does not
help (the indexes differ). So before a socket file is removed, a plain Unix-socket
connect finds out whether anything listens on it: refused means a stale file left by a
daemon that died, which is removed; accepted means a live listener, named by its pid
(``SO_PEERCRED``) and, when it is a sessiond that answers, by its index, and the
daemon refuses to start. A tcp:// address needs no probe: the bind itself fails with
"Address already in use".
"""

from __future__ import annotations

import socket
import stat
import struct
import uuid
from pathlib import Path

import zmq

from sessionstore import protocol
from sessionstore.errors import MalformedRequest, SessionStoreError

PROBE_TIMEOUT = 1.0
"""Seconds to wait for a connect to the socket file, and for a status reply on it."""


class AddressInUse(SessionStoreError):
    """Another process listens at the daemon's address."""

    code = "busy"


def ipc_path(address: str) -> Path | None:
    return Path(address[len("ipc://") :]) if address.startswith("ipc://") else None


def claim_ipc_address(address: str, context: zmq.Context) -> None:
    """Remove a stale socket file at ``address``; raise AddressInUse if someone listens there.

    ``context`` is used for the status request that names a daemon found there."""
    path = ipc_path(address)
    if path is None:
        return
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressInUse(f"address {address}: {path} exists and is not a socket; not removing it")
    pid = _listener_pid(path)
    if pid is None:
        path.unlink(missing_ok=True)  # nobody listens: left behind by a daemon that died
        return
    raise AddressInUse(f"address {address} is in use by {_describe(address, pid, context)}")


def _listener_pid(path: Path) -> int | None:
    """The pid of the process listening on ``path`` (0 if unknown), or None if nobody is."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except TimeoutError:
            return 0  # a full backlog: someone listens, too busy to accept us
        except OSError as err:  # e.g. EACCES: another user's socket; do not touch it
            raise AddressInUse(f"cannot tell whether {path} is in use: {err}") from err
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, _uid, _gid = struct.unpack("3i", creds)
        return pid


def _describe(address: str, pid: int, context: zmq.Context) -> str:
    """ "sessiond pid N (index P)" when a daemon answers a status request, else what we know."""
    who = f"pid {pid}" if pid else "another process"
    status = _status(address, context)
    if status is None:
        return f"{who} (it does not answer as a sessiond: another program, or CURVE required)"
    return f"a running sessiond, pid {status.get('pid', pid)} (index {status.get('db_path')})"


def _status(address: str, context: zmq.Context) -> dict[str, object] | None:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        request_id = f"probe-{uuid.uuid4().hex}"
        sock.send(protocol.encode_request(request_id, "status"))
        if not sock.poll(int(PROBE_TIMEOUT * 1000)):
            return None
        try:
            reply = protocol.decode_reply(sock.recv())
        except MalformedRequest:
            return None
        return reply.result if reply.ok and isinstance(reply.result, dict) else None
    finally:
        sock.close()
