"""The client's connection to the daemon: per-thread DEALER sockets and sending.

Both :class:`sessionstore.client.SessionStoreClient` (one request, one reply) and
:class:`sessionstore.pipeline.Pipeline` (many saves in flight) need the same narrow
piece: this thread's socket, a send that waits out back-pressure until a deadline,
the size check, and the words for "no reply". It lives here so that the pipeline
depends on it and not on the client.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from sessionstore.config import Settings
from sessionstore.errors import ConfigError, DaemonUnavailable, RequestTooLarge

# Resend an unanswered request after this long, doubling up to the cap: long enough
# that a busy daemon is not flooded with copies, short enough to ride out a restart.
RETRY_FIRST = 1.0
RETRY_MAX = 4.0


@dataclass(slots=True)
class _Thread:
    pid: int
    socket: zmq.Socket


class Transport:
    """One DEALER socket per thread (and per process, so it works in a forked child)."""

    def __init__(
        self, settings: Settings, *, timeout: float, max_message_bytes: int | None = None
    ) -> None:
        self.address = settings.endpoint
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes or settings.max_message_bytes
        self.retry_first = RETRY_FIRST
        self.retry_max = RETRY_MAX
        self._high_water_mark = settings.high_water_mark
        self._curve = _curve_keys(settings.curve_server_key, settings.curve_client_secret_key)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sockets: dict[zmq.Socket, threading.Thread] = {}  # socket -> the thread using it
        self._sockets_pid = os.getpid()

    def close(self) -> None:
        """Close every socket opened in this process (the context is shared)."""
        with self._lock:
            if self._sockets_pid == os.getpid():
                for sock in self._sockets:
                    sock.close(linger=0)
            self._sockets = {}
        self._local.__dict__.clear()

    def send(self, sock: zmq.Socket, frame: bytes, deadline: float) -> None:
        """Send, blocking while the socket's queue is full (back-pressure) until the deadline."""
        while True:
            try:
                sock.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DaemonUnavailable(
                        f"sessiond at {self.address} is not accepting requests "
                        "(send queue full until the timeout)"
                    ) from None
                sock.poll(max(1, int(remaining * 1000)), zmq.POLLOUT)

    def check_size(self, frame: bytes) -> None:
        if len(frame) > self.max_message_bytes:
            raise RequestTooLarge(
                f"request of {len(frame)} bytes exceeds the limit of {self.max_message_bytes}"
            )

    def unavailable(self, timeout: float | None = None) -> DaemonUnavailable:
        took = self.timeout if timeout is None else timeout
        return DaemonUnavailable(
            f"no reply from sessiond at {self.address} within {took:g}s "
            "(is `sessionstore serve` running there?)"
        )

    def socket(self) -> zmq.Socket:
        """This thread's DEALER socket, made anew in a forked child."""
        state: _Thread | None = getattr(self._local, "state", None)
        pid = os.getpid()
        if state is not None and state.pid == pid:
            return state.socket
        # Context.instance() is per process: pyzmq makes a new one in a forked child,
        # where the parent's context must not be touched (not even closed).
        sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self._high_water_mark)
        sock.setsockopt(zmq.RCVHWM, self._high_water_mark)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self._curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self._curve
        sock.connect(self.address)
        self._register(sock, pid)
        self._local.state = _Thread(pid, sock)
        return sock

    def _register(self, sock: zmq.Socket, pid: int) -> None:
        """Keep ``sock`` for :meth:`close`, and close the sockets of threads that have ended.

        Without the pruning, every short-lived thread that made one call left a socket
        (and its descriptors) open until ``close()``: a process starting threads for
        its calls ran out of file descriptors. A dead thread's socket is used by nobody,
        so closing it from this thread is safe even though zmq sockets are not.
        """
        with self._lock:
            if self._sockets_pid != pid:  # forked: the inherited sockets are the parent's
                self._sockets, self._sockets_pid = {}, pid
            for old, thread in list(self._sockets.items()):
                if not thread.is_alive():
                    del self._sockets[old]
                    old.close(linger=0)
            self._sockets[sock] = threading.current_thread()

    def reset_socket(self) -> None:
        """Drop this thread's socket so requests queued for a dead peer do not pile up."""
        state: _Thread | None = getattr(self._local, "state", None)
        if state is None or state.pid != os.getpid():
            return
        with self._lock:
            self._sockets.pop(state.socket, None)
        state.socket.close(linger=0)
        del self._local.state


def recv_within(sock: zmq.Socket, timeout_ms: int) -> bytes | None:
    """The next reply within ``timeout_ms``, or None: one blocking receive bounded by
    RCVTIMEO. A poll and then a receive made two calls per reply, and pyzmq builds a
    Poller for each ``Socket.poll``: measured, a tenth of a sync save's client CPU
    outside ZeroMQ's own thread (docs/hotpath.md)."""
    sock.rcvtimeo = timeout_ms
    try:
        return sock.recv()
    except zmq.Again:
        return None


def _curve_keys(
    server_key: Path | None, client_secret_key: Path | None
) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret) when CURVE is configured, else None."""
    if server_key is None and client_secret_key is None:
        return None
    if server_key is None or client_secret_key is None:
        raise ConfigError("CURVE needs both curve_server_key and curve_client_secret_key")
    server_public, _ = zmq.auth.load_certificate(str(server_key))
    client_public, client_secret = zmq.auth.load_certificate(str(client_secret_key))
    if client_secret is None:
        raise ConfigError(f"curve_client_secret_key: {client_secret_key} holds no secret key")
    return server_public, client_public, client_secret
