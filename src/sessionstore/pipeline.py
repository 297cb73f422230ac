"""Pipelined saves: many in flight, few frames, one wait at the end.

Saves are encoded as they are submitted and sent in ``save_batch`` frames of up
to :data:`FRAME_ITEMS` saves (one frame, one reply for the lot: the daemon's and
the client's per-message costs dominated a one-frame-per-save pipeline). Each
save keeps its own request id, so the daemon applies and de-duplicates it
exactly as if it had come alone, and a resent frame never applies a save twice.
At most ``max_in_flight`` saves are unacknowledged; submitting more blocks until
replies make room (back-pressure, never silent loss). A frame carries the deadline
of its saves (see :func:`sessionstore.retries.save_deadline`), fixed when it is first
sent, so its resends are the same bytes; saves that time out are listed in
``PipelineError.unknown_request_ids`` for the caller to save again under those ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from sessionstore import protocol, retries
from sessionstore.errors import (
    DaemonUnavailable,
    InvalidRecord,
    SessionStoreError,
    ShuttingDown,
    error_for_code,
    unknown_request_ids,
)
from sessionstore.models import EditOutcome, LearningSession
from sessionstore.transport import Transport

FRAME_ITEMS = 64
"""Saves per save_batch frame (fewer when they would not fit in the message size limit)."""
FRAME_OVERHEAD = 256


@dataclass(slots=True)
class _Frame:
    """One sent save_batch frame and the saves of it still waiting for their result."""

    frame: bytes
    waiting: dict[str, str]  # save request id -> what it was, for error reports
    deadline: float
    resend_at: float
    retry_after: float


@dataclass(slots=True)
class _Buffer:
    saves: list[tuple[str, bytes, str]] = field(default_factory=list)
    size: int = 0


class Pipeline:
    """Saves sent without waiting for each ack, at most ``max_in_flight`` unacknowledged.

    ``on_sent(ids)`` and ``on_settled(id, ok)`` let a caller (the benchmark) observe
    when each save left and when its result came back.
    """

    def __init__(
        self,
        transport: Transport,
        max_in_flight: int,
        *,
        on_sent: Callable[[list[str]], None] | None = None,
        on_settled: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._transport = transport
        self._max_in_flight = max_in_flight
        self._frame_items = max(1, min(FRAME_ITEMS, max_in_flight))
        self._frames: dict[str, _Frame] = {}
        self._buffer = _Buffer()
        self._unsettled = 0
        self._on_sent = on_sent
        self._on_settled = on_settled
        self._last_heard = time.monotonic()
        self.failures: list[tuple[str, SessionStoreError]] = []
        self._caller_ids: set[str] = set()
        self.acknowledged = 0

    # -- what callers use --------------------------------------------------------

    def save_session(self, session: LearningSession, *, request_id: str | None = None) -> str:
        """Queue a session save; returns its request id (``request_id`` if given)."""
        rid = self._request_id(request_id)
        frame = protocol.encode_save_session(rid, session)
        self._submit(rid, frame, f"save_session {session.id!r}", request_id is not None)
        return rid

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
    ) -> str:
        """Queue an outcome save; returns its request id (``request_id`` if given)."""
        rid = self._request_id(request_id)
        frame = protocol.encode_save_outcome(
            rid, session_id, outcome, pillar=pillar, op=op, target=target,
            risk_tier=risk_tier, rationale=rationale,
        )  # fmt: skip
        what = f"save_outcome {outcome.edit_id!r} for session {session_id!r}"
        self._submit(rid, frame, what, request_id is not None)
        return rid

    @property
    def unknown_request_ids(self) -> tuple[str, ...]:
        """Failed saves that may still have been applied (as on :class:`PipelineError`)."""
        return unknown_request_ids(self.failures)

    @property
    def in_flight(self) -> int:
        """Saves submitted whose result has not come back yet (buffered ones included)."""
        return self._unsettled

    def flush(self) -> None:
        """Send what is buffered now, without waiting for replies."""
        if not self._buffer.saves:
            return
        saves, self._buffer = self._buffer.saves, _Buffer()
        frame_id = protocol.new_request_id()
        frame = protocol.with_deadline(
            protocol.encode_save_batch(frame_id, [encoded for _, encoded, _ in saves]),
            retries.save_deadline(self._transport.timeout),
        )
        now = time.monotonic()
        entry = _Frame(
            frame,
            {rid: what for rid, _, what in saves},
            now + self._transport.timeout,
            now + self._transport.retry_first,
            self._transport.retry_first,
        )
        try:
            self._transport.send(self._sock, frame, entry.deadline)
        except DaemonUnavailable as err:
            self._fail_all(entry, err)
            return
        self._frames[frame_id] = entry
        if self._on_sent is not None:
            self._on_sent(list(entry.waiting))

    def drain(self) -> None:
        """Wait until every save submitted has been acknowledged, refused or timed out."""
        self.flush()
        while self._frames:
            self._collect()

    # -- the machinery --------------------------------------------------------------

    def _request_id(self, request_id: str | None) -> str:
        """A new id, or the caller's if not already waiting here: two saves under one id
        in flight at once would share one result and leave a slot of the window taken."""
        rid = retries.checked_request_id(request_id)
        if rid in self._caller_ids:
            raise InvalidRecord(f"request_id {rid!r} is already in flight in this pipeline")
        return rid

    def _submit(self, rid: str, encoded: bytes, what: str, callers_id: bool) -> None:
        self._transport.check_size(encoded)
        while self._unsettled >= self._max_in_flight:  # back-pressure: wait for results
            self.flush()
            self._collect()
        if self._buffer.size + len(encoded) + FRAME_OVERHEAD > self._transport.max_message_bytes:
            self.flush()
        if callers_id:  # tracked from here on: its result (_done) forgets it
            self._caller_ids.add(rid)
        self._buffer.saves.append((rid, encoded, what))
        self._buffer.size += len(encoded) + 1
        self._unsettled += 1
        if len(self._buffer.saves) >= self._frame_items:
            self.flush()

    def _collect(self) -> None:
        """Take the replies that arrive within a short wait; resend or expire overdue frames."""
        if not self._frames:
            return
        wake_at = min(min(f.resend_at, f.deadline) for f in self._frames.values())
        if self._sock.poll(max(1, int((wake_at - time.monotonic()) * 1000)), zmq.POLLIN):
            while self._sock.poll(0, zmq.POLLIN):
                self._settle(protocol.decode_reply(self._sock.recv()))
            self._last_heard = time.monotonic()
        now = time.monotonic()
        # A daemon that answered lately is alive and working through our queue: resending
        # then only doubles its work (and its replies), so wait for silence instead.
        daemon_quiet = now - self._last_heard >= self._transport.retry_first
        for frame_id, entry in list(self._frames.items()):
            if now >= entry.deadline:
                del self._frames[frame_id]
                self._fail_all(entry, self._transport.unavailable())
            elif now >= entry.resend_at:
                entry.retry_after = min(entry.retry_after * 2, self._transport.retry_max)
                entry.resend_at = now + entry.retry_after
                if not daemon_quiet:
                    continue
                try:
                    self._transport.send(self._sock, entry.frame, entry.deadline)
                except DaemonUnavailable as err:
                    del self._frames[frame_id]
                    self._fail_all(entry, err)

    def _settle(self, reply: protocol.Reply) -> None:
        entry = self._frames.get(reply.id or "")
        if entry is None:
            return  # an answer to a resend that was already settled
        if not reply.ok:  # the frame as a whole was refused
            assert reply.error is not None
            if not isinstance(reply.error, ShuttingDown):  # else resent when due
                del self._frames[reply.id or ""]
                self._fail_all(entry, reply.error)
            return
        for result in reply.result:
            what = entry.waiting.get(result.get("id"))
            if what is None:
                continue
            if result["ok"]:
                self.acknowledged += 1
                self._done(entry, result["id"], True)
                continue
            error = error_for_code(result["error"]["code"], result["error"]["message"])
            if isinstance(error, ShuttingDown):
                continue  # stays waiting; the frame is resent when due
            if isinstance(error, DaemonUnavailable):  # expired: saved again under its id
                error = type(error)(str(error), unknown_request_ids=(result["id"],))
            self.failures.append((what, error))
            self._done(entry, result["id"], False)
        if not entry.waiting:
            del self._frames[reply.id or ""]

    def _done(self, entry: _Frame, rid: str, ok: bool) -> None:
        del entry.waiting[rid]
        self._caller_ids.discard(rid)
        self._unsettled -= 1
        if self._on_settled is not None:
            self._on_settled(rid, ok)

    @property
    def _sock(self) -> zmq.Socket:
        """The thread's socket, asked for each time: giving up on frames replaces it."""
        return self._transport.socket()

    def _fail_all(self, entry: _Frame, err: SessionStoreError) -> None:
        if isinstance(err, DaemonUnavailable):
            # The frame may still be queued in the socket; delivered once the daemon is
            # back, it would apply saves reported failed here (and retried by the caller
            # under new ids). Frames still in flight are resent on the new socket.
            self._transport.reset_socket()
        for rid, what in list(entry.waiting.items()):
            if isinstance(err, DaemonUnavailable):  # each save names its own id in doubt
                self.failures.append((what, type(err)(str(err), unknown_request_ids=(rid,))))
            else:
                self.failures.append((what, err))
            self._done(entry, rid, False)
