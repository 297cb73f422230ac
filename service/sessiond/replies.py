"""Reply bytes the daemon has handed to ZeroMQ and ZeroMQ has not yet written out.

The ROUTER's high-water mark counts messages, not bytes: twelve connections that
asked for 3.7 MB listings and never read held the daemon at 1.2 GiB for as long
as they stayed connected. So replies of :data:`TRACKED_MIN_BYTES` and more are
sent zero-copy with a ``MessageTracker``: libzmq holds our buffer until it has
written the reply to the connection (or dropped it with a peer that left), and
the tracker says when it let go. The bytes not yet let go are counted per
connection and in all, and a reply that would pass ``peer_reply_bytes`` or
``total_reply_bytes`` is not sent: the loop answers ``unavailable`` instead (a
few hundred bytes), and the client retries on its schedule.

Smaller replies (a save's ack, an error) are copied and not tracked: tracking
costs 20-80 us a send (measured; an ack costs about 15), too much on the hot
path, and the high-water mark already bounds them to ``high_water_mark`` x 1 KiB
per connection.

A connection's replies leave in order, so each connection's trackers are kept in
a FIFO and released from its head; a full sweep of every connection runs at most
every :data:`SWEEP_SECONDS` (and whenever the total is what refuses a reply).
Loop thread only, like the socket.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from sessionstore import protocol
from sessionstore.errors import DaemonUnavailable, SessionStoreError

log = logging.getLogger("sessiond.ingest")

TRACKED_MIN_BYTES = 1024
"""Replies this big or bigger are tracked and counted; smaller ones are bounded by the HWM."""

SWEEP_SECONDS = 1.0
"""How stale the count of a connection nobody sends to may get (it only ever overstates)."""


class ReplyBudget:
    """Sends replies on the ROUTER, keeping the untaken ones within their byte limits."""

    def __init__(
        self,
        router: zmq.Socket,
        count_rejection: Callable[[str | None, SessionStoreError], None],
        *,
        reply_bytes: int,
        peer_bytes: int,
        total_bytes: int,
    ) -> None:
        self._router = router
        self._count_rejection = count_rejection
        self._reply_max = reply_bytes
        # pyzmq copies a copy=False message under its copy_threshold (64 KiB) and reports
        # it released at once; every tracked reply must really be zero-copy to be counted.
        router.copy_threshold = 0
        self._peer_max = peer_bytes
        self._total_max = total_bytes
        self._queues: dict[bytes, collections.deque[tuple[zmq.MessageTracker, int]]] = {}
        self._peer_bytes: dict[bytes, int] = {}
        self.queued_bytes = 0
        self.peak_bytes = 0
        self.refused_over_peer = 0
        self.refused_over_total = 0
        self._next_sweep = 0.0

    def full(self, identity: bytes, reads_running: int = 0) -> str | None:
        """Why a read from ``identity`` is not worth starting, or None when there is room.

        Refused up front, a read costs no reader time (building a reply only to
        withhold it would spend a reader on nothing): there is room when its reply
        and those of the connection's ``reads_running``, at ``max_reply_bytes``
        each, would still fit under ``peer_reply_bytes`` with what is queued for
        it, or when it has nothing queued or running; and when a reply of
        ``max_reply_bytes`` would fit under the total, or nothing is queued.
        """
        self._release(identity)
        self._sweep_if_due()
        peer = self._peer_bytes.get(identity, 0)
        claim = peer + (reads_running + 1) * self._reply_max
        if (peer or reads_running) and claim > self._peer_max:
            self.refused_over_peer += 1
            return (
                f"{peer} reply bytes wait for this connection to read them and {reads_running} "
                f"of its reads run (peer_reply_bytes {self._peer_max}, max_reply_bytes "
                f"{self._reply_max} a read)"
            )
        if self.queued_bytes and self.queued_bytes + self._reply_max > self._total_max:
            self.sweep()
            if self.queued_bytes and self.queued_bytes + self._reply_max > self._total_max:
                self.refused_over_total += 1
                return self._over_total()
        return None

    def deliver(self, identity: bytes, payload: bytes | bytearray, *, read: bool) -> bool:
        """Send a reply, or, when it would pass a limit, an ``unavailable`` refusal in
        its place (small, untracked); False when zmq took neither (peer gone, or its
        queue full: the client re-sends after its timeout)."""
        try:
            withheld = self.send(identity, payload, read=read)
            if withheld is not None:
                request_id = protocol.reply_id(payload)
                refusal = DaemonUnavailable(
                    f"sessiond: reply of {len(payload)} bytes withheld: {withheld}; retry later"
                )
                self._count_rejection(request_id, refusal)
                self._router.send_multipart(
                    [identity, protocol.encode_error(request_id, refusal)], zmq.NOBLOCK
                )
        except zmq.ZMQError as err:
            log.debug("reply not delivered: %s", err)
            return False
        return True

    def send(self, identity: bytes, payload: bytes | bytearray, *, read: bool) -> str | None:
        """Send one reply; None when sent, else why it was not (a limit it would pass).

        Every reply is held to ``peer_reply_bytes``; a ``read``'s also to
        ``total_reply_bytes``, so peers that ask for listings and never read cannot
        hold back the replies to other clients' saves and admin requests (those
        are one per request, a save_batch's at most ~100 KB). zmq errors (peer
        gone, its queue full) propagate as they would from the socket. A reply
        bigger than a limit goes out only to a connection with nothing queued, and
        only when nothing else is queued for that limit: a record bigger than the
        limits is still served, alone.
        """
        size = len(payload)
        if size < TRACKED_MIN_BYTES:
            self._router.send_multipart([identity, payload], zmq.NOBLOCK)
            return None
        self._release(identity)
        self._sweep_if_due()
        peer = self._peer_bytes.get(identity, 0)
        if peer and peer + size > self._peer_max:
            self.refused_over_peer += 1
            return self._over_peer(peer)
        if read and self.queued_bytes and self.queued_bytes + size > self._total_max:
            self.sweep()
            if self.queued_bytes and self.queued_bytes + size > self._total_max:
                self.refused_over_total += 1
                return self._over_total()
        self._router.send(identity, zmq.SNDMORE | zmq.NOBLOCK)
        tracker = self._router.send(payload, zmq.NOBLOCK, copy=False, track=True)
        if not tracker.done:
            self._queues.setdefault(identity, collections.deque()).append((tracker, size))
            self._peer_bytes[identity] = self._peer_bytes.get(identity, 0) + size
            self.queued_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.queued_bytes)
        return None

    def sweep(self) -> None:
        """Release what libzmq has let go of, on every connection."""
        for identity in list(self._queues):
            self._release(identity)
        self._next_sweep = time.monotonic() + SWEEP_SECONDS

    def to_dict(self) -> dict[str, Any]:
        """The counters ``status`` reports."""
        self.sweep()
        return {
            "reply_bytes_queued": self.queued_bytes,
            "reply_bytes_queued_peak": self.peak_bytes,
            "reply_connections_queued": len(self._queues),
            "replies_refused_peer_limit": self.refused_over_peer,
            "replies_refused_total_limit": self.refused_over_total,
        }

    def _over_peer(self, peer: int) -> str:
        return f"{peer} reply bytes wait for this connection to read them (peer_reply_bytes {self._peer_max})"

    def _over_total(self) -> str:
        return f"{self.queued_bytes} reply bytes wait for their connections to read them (total_reply_bytes {self._total_max})"

    def _sweep_if_due(self) -> None:
        if time.monotonic() >= self._next_sweep:
            self.sweep()

    def _release(self, identity: bytes) -> None:
        queue = self._queues.get(identity)
        if queue is None:
            return
        released = 0
        while queue and queue[0][0].done:
            released += queue.popleft()[1]
        if released:
            self.queued_bytes -= released
            self._peer_bytes[identity] -= released
        if not queue:
            del self._queues[identity]
            del self._peer_bytes[identity]
