"""SessionStoreClient: the SessionStore API, served by the ``sessionstore serve`` daemon.

Each call blocks until the daemon has committed (for saves) or answered (for
queries). A call that gets no reply, or a "not now" refusal, is re-sent with the
*same* request id 1 s, 2 s, then every 4 s after the previous send, until its
``timeout`` (the total time the call may take) runs out; any one reply to that id
answers it. The daemon remembers applied ids in the index, so a retried save is
never applied twice, even when the daemon restarted in between. A save also carries
its deadline, a little before the call's timeout ends: the daemon refuses it unapplied
once that has passed, so a save reported failed does not turn up later (the window
that remains is in docs/retries.md; ``DaemonUnavailable.unknown_request_ids`` names
the saves it leaves in doubt). One DEALER socket per thread (and per process, so the
client keeps working in a child after ``fork``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import zmq
import zmq.auth
from pydantic import TypeAdapter, ValidationError

from sessionstore import paging, protocol, retries
from sessionstore.config import load_settings
from sessionstore.errors import (
    ConfigError,
    DaemonUnavailable,
    DeadlineExpired,
    MalformedRequest,
    PipelineError,
    RequestTooLarge,
    ShuttingDown,
)
from sessionstore.inputs import describe_validation_error, listing_args, query_id
from sessionstore.models import EditOutcome, LearningSession, SessionStatus
from sessionstore.pipeline import Pipeline
from sessionstore.records import gc_paused, read_models

# Resend an unanswered request after this long, doubling up to the cap: long enough
# that a busy daemon is not flooded with copies, short enough to ride out a restart.
RETRY_FIRST = 1.0
RETRY_MAX = 4.0
_RETRYABLE = (ShuttingDown, DaemonUnavailable)
"""Refusals that mean "not now": retried with back-off until the call's deadline."""


def _records(adapter: TypeAdapter[list[Any]], result: Any, op: str) -> list[Any]:
    """A read's records as models, validated in one call (as the store does); a reply
    that does not validate is the daemon's fault, reported as one of ours."""
    try:
        with gc_paused():
            return adapter.validate_python(result)
    except ValidationError as err:
        raise MalformedRequest(
            describe_validation_error(f"{op} reply from sessiond", err)
        ) from None


@dataclass(slots=True)
class _Thread:
    pid: int
    socket: zmq.Socket


class SessionStoreClient:
    """A drop-in for :class:`sessionstore.SessionStore` that talks to the daemon.

    Like the store, it saves any ``LearningSession`` / ``EditOutcome`` with our fields
    (checked and converted before encoding, with the store's messages), and reads
    return ``sessionstore.models`` objects or, with ``models=``, the caller's classes.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float | None = None,
        max_in_flight: int | None = None,
        max_message_bytes: int | None = None,
        models: ModuleType | str | None = None,
    ) -> None:
        self._models = read_models(models)
        settings = load_settings(address=address)
        self.address = settings.endpoint
        self.timeout = float(timeout if timeout is not None else settings.client_timeout)
        self.max_in_flight = max_in_flight or settings.max_in_flight
        self.max_message_bytes = max_message_bytes or settings.max_message_bytes
        self._high_water_mark = settings.high_water_mark
        self.retry_first = RETRY_FIRST
        self.retry_max = RETRY_MAX
        self._curve = _curve_keys(settings.curve_server_key, settings.curve_client_secret_key)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sockets: dict[zmq.Socket, threading.Thread] = {}  # socket -> the thread using it
        self._sockets_pid = os.getpid()

    # -- the SessionStore API --------------------------------------------------

    def close(self) -> None:
        """Close every socket this client opened in this process (the context is shared)."""
        with self._lock:
            if self._sockets_pid == os.getpid():
                for sock in self._sockets:
                    sock.close(linger=0)
            self._sockets = {}
        self._local.__dict__.clear()

    def __enter__(self) -> SessionStoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save_session(self, session: LearningSession, *, request_id: str | None = None) -> None:
        """Insert or update a session; returns once the daemon has committed it.

        ``request_id`` names this save (default: a new id). Saving again under the id of
        a failed call's ``unknown_request_ids`` applies it exactly once.
        """
        rid = retries.checked_request_id(request_id)
        self._save(rid, protocol.encode_save_session(rid, session))

    def save_outcome(
        self,
        session_id: str,
        outcome: EditOutcome,
        *,
        pillar: str,
        op: str,
        target: str,
        risk_tier: str,
        rationale: str = "",
        request_id: str | None = None,
    ) -> None:
        """Add one outcome row; returns once the daemon has committed it.

        ``request_id`` as for :meth:`save_session`.
        """
        rid = retries.checked_request_id(request_id)
        frame = protocol.encode_save_outcome(
            rid, session_id, outcome, pillar=pillar, op=op, target=target,
            risk_tier=risk_tier, rationale=rationale,
        )  # fmt: skip
        self._save(rid, frame)

    def get_session(self, session_id: str) -> LearningSession | None:
        sid = query_id(session_id)  # "" and None: no such session, as in the store
        result = None if sid is None else self._query("get_session", session_id=sid)
        if result is None:
            return None
        return _records(self._models.sessions, [result], "get_session")[0]  # type: ignore[no-any-return]

    def list_sessions(
        self, status: SessionStatus | None = None, limit: int | None = None
    ) -> list[LearningSession]:
        """Newest first, in pages underneath (see :mod:`sessionstore.paging` for what a
        paged listing guarantees); the timeout applies to each page."""
        wire_status, wire_limit = listing_args(status, limit)  # the store's rules, checked here
        result = paging.list_sessions(self._query, wire_status, wire_limit)
        return _records(self._models.sessions, result, "list_sessions")

    def list_outcomes(self, session_id: str) -> list[EditOutcome]:
        sid = query_id(session_id)
        if sid is None:
            return []
        result = paging.list_outcomes(self._query, sid)
        return _records(self._models.outcomes, result, "list_outcomes")

    # -- operations ------------------------------------------------------------------

    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The daemon's counters, job states and index sizes."""
        return self._query("status", timeout=timeout)  # type: ignore[no-any-return]

    def checkpoint(self, mode: str = "TRUNCATE", *, timeout: float | None = None) -> dict[str, Any]:
        return self._query("checkpoint", mode=mode, timeout=timeout)  # type: ignore[no-any-return]

    def reconcile(
        self, *, dry_run: bool = False, full: bool = False, timeout: float | None = None
    ) -> dict[str, Any]:
        """Reconcile now; ``full`` parses every file, not only those changed since last time."""
        return self._query("reconcile", dry_run=dry_run, full=full, timeout=timeout)  # type: ignore[no-any-return]

    def integrity_check(self, *, timeout: float | None = None) -> dict[str, Any]:
        return self._query("integrity_check", timeout=timeout)  # type: ignore[no-any-return]

    @contextmanager
    def pipeline(self, max_in_flight: int | None = None) -> Iterator[Pipeline]:
        """Send saves without waiting for each ack; on exit wait for all, raise if any failed."""
        pipe = Pipeline(self, max_in_flight or self.max_in_flight)
        try:
            yield pipe
        except BaseException:
            pipe.drain()  # what was sent still lands; the caller's error wins
            raise
        pipe.drain()
        if pipe.failures:
            raise PipelineError(pipe.failures)

    # -- transport ----------------------------------------------------------------------

    def _query(self, op: str, *, timeout: float | None = None, **params: Any) -> Any:
        rid = protocol.new_request_id()
        return self._call(rid, protocol.encode_request(rid, op, **params), timeout)

    def _save(self, rid: str, frame: bytes) -> None:
        """Send a save with its deadline; a timeout names it as a save in doubt."""
        try:
            self._call(rid, protocol.with_deadline(frame, retries.save_deadline(self.timeout)))
        except DaemonUnavailable as err:  # DeadlineExpired too: the same advice holds
            raise type(err)(
                f"{err}; not known to be applied: save it again with "
                f"request_id={rid!r} to apply it once",
                unknown_request_ids=(rid,),
            ) from None

    def _call(self, rid: str, frame: bytes, timeout: float | None = None) -> Any:
        self._check_size(frame)
        sock = self.socket()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            return self._exchange(sock, rid, frame, deadline, timeout)
        except DeadlineExpired:
            raise  # answered: the peer is alive, and its other copies expire too
        except DaemonUnavailable:
            self._reset_socket()  # requests queued for a dead peer must not pile up
            raise

    def _exchange(
        self, sock: zmq.Socket, rid: str, frame: bytes, deadline: float, timeout: float | None
    ) -> Any:
        retry_after = self.retry_first
        self._send(sock, frame, deadline)
        resend_at = time.monotonic() + retry_after
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise self._unavailable(timeout)
            received = _recv_within(sock, max(1, int((min(resend_at, deadline) - now) * 1000)))
            if received is not None:
                reply = protocol.decode_reply(received)
                if reply.id != rid:
                    continue  # a late answer to an earlier call that gave up
                if reply.ok:
                    return reply.result
                assert reply.error is not None
                if isinstance(reply.error, DeadlineExpired) or not isinstance(
                    reply.error, _RETRYABLE
                ):  # expired is final: every copy carries the same deadline
                    raise reply.error
                # "Not now" is no reason to resend at once: that turned a stopping
                # daemon's refusals into thousands of resends a second.
                continue
            if time.monotonic() < resend_at:
                continue
            retry_after = min(retry_after * 2, self.retry_max)
            resend_at = time.monotonic() + retry_after
            self._send(sock, frame, deadline)

    def _send(self, sock: zmq.Socket, frame: bytes, deadline: float) -> None:
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

    def _check_size(self, frame: bytes) -> None:
        if len(frame) > self.max_message_bytes:
            raise RequestTooLarge(
                f"request of {len(frame)} bytes exceeds the limit of {self.max_message_bytes}"
            )

    def _unavailable(self, timeout: float | None) -> DaemonUnavailable:
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

    def _reset_socket(self) -> None:
        """Drop this thread's socket so requests queued for a dead peer do not pile up."""
        state: _Thread | None = getattr(self._local, "state", None)
        if state is None or state.pid != os.getpid():
            return
        with self._lock:
            self._sockets.pop(state.socket, None)
        state.socket.close(linger=0)
        del self._local.state


def _recv_within(sock: zmq.Socket, timeout_ms: int) -> bytes | None:
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
