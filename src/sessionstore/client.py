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

import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import zmq
from pydantic import TypeAdapter, ValidationError

from sessionstore import paging, protocol, retries
from sessionstore.config import load_settings
from sessionstore.errors import (
    DaemonUnavailable,
    DeadlineExpired,
    MalformedRequest,
    PipelineError,
    ShuttingDown,
)
from sessionstore.inputs import describe_validation_error, listing_args, query_id
from sessionstore.models import EditOutcome, LearningSession, SessionStatus
from sessionstore.pipeline import Pipeline
from sessionstore.records import gc_paused, read_models
from sessionstore.transport import Transport, recv_within

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
        self.transport = Transport(
            settings,
            timeout=float(timeout if timeout is not None else settings.client_timeout),
            max_message_bytes=max_message_bytes,
        )
        self.max_in_flight = max_in_flight or settings.max_in_flight

    @property
    def address(self) -> str:
        return self.transport.address

    @property
    def timeout(self) -> float:
        """Seconds one call may take, retries included."""
        return self.transport.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self.transport.timeout = float(seconds)

    @property
    def max_message_bytes(self) -> int:
        """The largest request this client sends (a bigger one is refused before sending)."""
        return self.transport.max_message_bytes

    # -- the SessionStore API --------------------------------------------------

    def close(self) -> None:
        """Close every socket this client opened in this process (the context is shared)."""
        self.transport.close()

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
        pipe = Pipeline(self.transport, max_in_flight or self.max_in_flight)
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
        self.transport.check_size(frame)
        sock = self.transport.socket()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            return self._exchange(sock, rid, frame, deadline, timeout)
        except DeadlineExpired:
            raise  # answered: the peer is alive, and its other copies expire too
        except DaemonUnavailable:
            self.transport.reset_socket()  # requests queued for a dead peer must not pile up
            raise

    def _exchange(
        self, sock: zmq.Socket, rid: str, frame: bytes, deadline: float, timeout: float | None
    ) -> Any:
        transport = self.transport
        retry_after = transport.retry_first
        transport.send(sock, frame, deadline)
        resend_at = time.monotonic() + retry_after
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise transport.unavailable(timeout)
            received = recv_within(sock, max(1, int((min(resend_at, deadline) - now) * 1000)))
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
            retry_after = min(retry_after * 2, transport.retry_max)
            resend_at = time.monotonic() + retry_after
            transport.send(sock, frame, deadline)
