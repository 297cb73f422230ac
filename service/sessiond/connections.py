"""Stop listening at the connection capacity; listen again once the connections are gone.

libzmq accepts connections without limit and aborts when it runs out of descriptors
(see :mod:`sessiond.limits`). So the daemon counts the ROUTER's connections with a
socket monitor: ``ACCEPTED`` adds the connection's descriptor, ``DISCONNECTED``
removes it. At capacity the loop unbinds the endpoint, and new connections are
refused by the kernel; the clients' reconnect logic keeps trying. Unbinding also
ends the connections accepted through that endpoint: libzmq's listener owns their
sessions and terminates them with it, without a ``DISCONNECTED`` event each, so the
listener's ``CLOSED`` event is the moment they are all gone. Their clients reconnect
and re-send what was not answered, under the same request ids (applied once). After
:data:`LISTEN_PAUSE` the loop binds the endpoint again, first making sure nobody else
took the address meanwhile (:mod:`sessiond.address`).

A thread of its own reads the monitor: libzmq sends the events from its I/O thread
with a blocking send, so a monitor left unread would stall every connection once its
queue filled. Only the loop thread binds and unbinds: zmq sockets are not
thread-safe. Events come from the context's one I/O thread in order, so a
descriptor's ``DISCONNECTED`` always precedes its reuse by a later ``ACCEPTED``.
"""

from __future__ import annotations

import logging
import os
import resource
import stat
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from sessiond.address import AddressInUse, claim_ipc_address, ipc_path
from sessiond.limits import Capacity, connection_capacity, descriptors_in_use
from sessionstore.config import Settings

log = logging.getLogger("sessiond.connections")

LISTEN_PAUSE = 1.0
"""Seconds the endpoint stays unbound after reaching capacity, so a flood of reconnects
is served in rounds rather than spinning the loop."""

REPORT_EVERY = 60.0
"""Seconds between log lines about pauses (each pause is counted in ``status``)."""

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED | zmq.EVENT_ACCEPT_FAILED
_POLL_MS = 100  # how often the monitor thread looks at its stop flag


class ConnectionGate:
    """Binds the ROUTER's endpoint, and unbinds it while the connections are at capacity.

    ``wake`` makes the loop come round (called from the monitor thread when the count
    reaches capacity); ``lost_address`` is called on the loop thread when another
    process took the address while this daemon was not listening.
    """

    def __init__(
        self,
        router: zmq.Socket,
        settings: Settings,
        wake: Callable[[], None],
        lost_address: Callable[[], None],
    ) -> None:
        self._router = router
        self._settings = settings
        self._endpoint = settings.endpoint
        self.capacity: Capacity | None = None  # known once bound
        self._wake = wake
        self._lost_address = lost_address
        self._lock = threading.Lock()
        self._open: set[int] = set()  # descriptors of accepted connections
        self._listener_closed = False
        self._peak = 0
        self._accept_failures = 0
        self._woken = False
        self._listening = False
        self._paused_until = 0.0
        self._pauses = 0
        self._next_report = 0.0
        self._reported = False
        self._socket_identity: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- loop thread ---------------------------------------------------------------

    def bind(self) -> None:
        """Derive the capacity, start counting and bind the endpoint (AddressInUse if taken).

        The capacity is derived from the open-files limit in force (raised at start by
        :func:`sessiond.limits.raise_open_files_limit`) and the descriptors open now."""
        self.capacity = connection_capacity(
            self._settings.max_connections,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            descriptors_in_use(),
        )
        monitor = self._router.get_monitor_socket(_EVENTS)
        self._thread = threading.Thread(
            target=self._watch, args=(monitor,), name="sessiond-connections", daemon=True
        )
        self._thread.start()
        try:
            claim_ipc_address(self._endpoint, self._router.context)
            self._listen()
        except BaseException:
            self.close()
            raise
        log.info("connections: %s", self.capacity.describe())

    def check(self) -> None:
        """Called every loop turn: stop listening at capacity, listen again after the pause."""
        assert self.capacity is not None
        with self._lock:
            count, closed = len(self._open), self._listener_closed
            self._woken = False
        if self._listening and count >= self.capacity.connections:
            self._stop_listening(count)
        elif not self._listening and closed and time.monotonic() >= self._paused_until:
            self._listen_again()

    def close(self) -> None:
        """Stop the monitor, then remove the socket file if it is still the one we bound."""
        if self._thread is None or self._stop.is_set():
            return
        self._router.disable_monitor()  # its thread is still reading: libzmq cannot block
        self._stop.set()
        self._thread.join()
        path = ipc_path(self._endpoint)
        if path is not None and self._socket_identity is not None:
            try:
                st = path.lstat()
            except FileNotFoundError:
                return
            if (st.st_dev, st.st_ino) == self._socket_identity:
                path.unlink(missing_ok=True)  # leave no stale socket file behind

    def status(self) -> dict[str, Any]:
        with self._lock:
            report = {
                "open": len(self._open),
                "peak": self._peak,
                "listening": self._listening,
                "capacity_pauses": self._pauses,
                "accept_failures": self._accept_failures,
            }
        if self.capacity is not None:
            report.update(self.capacity.to_dict())
        return report

    def _listen(self) -> None:
        self._router.bind(self._endpoint)
        self._listening = True
        with self._lock:
            self._listener_closed = False
        path = ipc_path(self._endpoint)
        if path is not None:
            os.chmod(path, self._settings.socket_mode)  # bound 0700 under the daemon's umask
            st = path.lstat()
            if stat.S_ISSOCK(st.st_mode):
                self._socket_identity = (st.st_dev, st.st_ino)

    def _stop_listening(self, count: int) -> None:
        assert self.capacity is not None
        endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT) or self._endpoint
        try:
            self._router.unbind(endpoint)
        except zmq.ZMQError as err:
            log.error("connections: cannot stop listening at %s: %s", endpoint, err)
            return
        self._listening = False
        self._pauses += 1
        now = time.monotonic()
        self._paused_until = now + LISTEN_PAUSE
        self._reported = now >= self._next_report
        if self._reported:  # a flood pauses every second: one line a minute is enough
            self._next_report = now + REPORT_EVERY
            log.warning(
                "connections: %d open, the capacity (%d): not listening at %s for %.1fs; "
                "the open connections are closed and their clients reconnect "
                "(%d pause(s) since start)",
                count,
                self.capacity.connections,
                self._endpoint,
                LISTEN_PAUSE,
                self._pauses,
            )

    def _listen_again(self) -> None:
        try:
            claim_ipc_address(self._endpoint, self._router.context)
            self._listen()
        except AddressInUse as err:
            log.error("connections: cannot listen again: %s; stopping", err)
            self._socket_identity = None  # the socket file is the other daemon's now
            self._paused_until = float("inf")
            self._lost_address()
            return
        except (zmq.ZMQError, OSError) as err:
            log.error("connections: cannot listen again at %s: %s", self._endpoint, err)
            self._paused_until = time.monotonic() + LISTEN_PAUSE
            return
        level = logging.INFO if self._reported else logging.DEBUG
        log.log(level, "connections: listening again at %s", self._endpoint)

    # -- monitor thread --------------------------------------------------------------

    def _watch(self, monitor: zmq.Socket) -> None:
        try:
            while not self._stop.is_set():
                if monitor.poll(_POLL_MS):
                    self._count(recv_monitor_message(monitor))
        except Exception:  # never leave libzmq's I/O thread blocked on an unread monitor
            log.exception("connections: monitor failed; connections are no longer counted")
            with self._lock:
                self._open.clear()  # nothing counts up to capacity any more,
                self._listener_closed = True  # and a paused endpoint is bound again
            while not self._stop.is_set():
                if monitor.poll(_POLL_MS):
                    monitor.recv_multipart(zmq.NOBLOCK)
        finally:
            monitor.close(linger=0)

    def _count(self, event: Mapping[str, Any]) -> None:
        kind, value = event["event"], event["value"]
        assert self.capacity is not None
        with self._lock:
            if kind == zmq.EVENT_ACCEPTED:
                self._open.add(value)
                self._peak = max(self._peak, len(self._open))
            elif kind == zmq.EVENT_DISCONNECTED:
                self._open.discard(value)
            elif kind == zmq.EVENT_CLOSED:
                self._open.clear()  # the listener took its connections with it
                self._listener_closed = True
            elif kind == zmq.EVENT_ACCEPT_FAILED:
                self._accept_failures += 1
            at_capacity = len(self._open) >= self.capacity.connections and not self._woken
            if at_capacity:
                self._woken = True
        if at_capacity:
            self._wake()
