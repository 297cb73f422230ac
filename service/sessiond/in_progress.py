"""Reads and admin jobs the loop is still answering, and the glue to the reader threads.

A client re-sends a request it has waited on for a second (same id, same
request). A resend that finds its request still running is not run again, and
the answer goes to the newest sender (a client that reset its socket has a new
identity); another request under a running id is refused. Reads run on the
reader threads (:mod:`sessiond.queries`), admin jobs as tasks
(:mod:`sessiond.tasks`); both answer through here.

Everything here runs on the loop thread and nothing here touches the ROUTER
socket: replies go out through the ``send`` and ``reject`` callbacks the loop
passes in, so the loop stays the socket's only user.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sessiond.queries import READ_OPS, Readers
from sessiond.stats import IngestStats
from sessiond.tasks import Task
from sessionstore import protocol
from sessionstore.config import Settings
from sessionstore.errors import (
    DaemonUnavailable,
    InternalError,
    MalformedRequest,
    SessionStoreError,
    ShuttingDown,
)

# The loop's logger: these lines were the loop's before this module split off,
# and keep the name they have in the daemon's log.
log = logging.getLogger("sessiond.ingest")

QUERY_QUEUE_MAX = 256
"""Reads waiting for a reader thread at most; more are refused as ``unavailable``."""

Send = Callable[[bytes, bytes | bytearray], None]
Reject = Callable[[bytes, str | None, SessionStoreError], None]
CountRejection = Callable[[str | None, SessionStoreError], None]


@dataclass(slots=True)
class _Running:
    """A read or job being answered: who asked last, and what (to tell a resend apart)."""

    identity: bytes
    op: str
    params: dict[str, Any]


class InProgress:
    """The reads and admin jobs taken on and not yet answered, by request id (loop thread).

    ``send`` and ``reject`` are the loop's own replies on its socket;
    ``count_rejection`` counts and logs a refusal whose reply is already encoded
    (a reader's error reply).
    """

    def __init__(
        self,
        stats: IngestStats,
        send: Send,
        reject: Reject,
        count_rejection: CountRejection,
        *,
        send_read: Send | None = None,
    ) -> None:
        self._stats = stats
        self._send = send
        self._send_read = send_read or send  # a read's reply: see sessiond.replies
        self._reject = reject
        self._count_rejection = count_rejection
        self._running: dict[str, _Running] = {}
        self._reads_by_sender: collections.Counter[bytes] = collections.Counter()
        self._readers: Readers | None = None

    @property
    def reads_pending(self) -> int:
        """Reads handed to the readers whose replies have not been sent yet."""
        return 0 if self._readers is None else self._readers.pending

    def start_readers(self, settings: Settings, wake: Callable[[], None]) -> None:
        """Open ``query_threads`` read-only connections and start their threads (0: none,
        the loop answers reads itself); ``wake`` is called when a reply is ready."""
        if settings.query_threads > 0:
            self._readers = Readers(
                settings.index_path,
                settings.query_threads,
                QUERY_QUEUE_MAX,
                wake,
                max_reply_bytes=settings.max_reply_bytes,
            )
            self._readers.start()

    def take(self, identity: bytes, request: protocol.Request) -> bool:
        """Take a request that is a resend of a running one, or a read for the readers
        (refused as ``unavailable`` when too many wait). False: the loop answers it."""
        running = self._running.get(request.id)
        if running is not None:
            self._resent(identity, request, running)
            return True
        if self._readers is None or request.op not in READ_OPS:
            return False
        if self._readers.submit(identity, request):
            self._running[request.id] = _Running(identity, request.op, request.params)
            self._reads_by_sender[identity] += 1
        else:
            self._reject(
                identity,
                request.id,
                DaemonUnavailable(
                    f"sessiond is busy: {QUERY_QUEUE_MAX} reads already waiting; retry later"
                ),
            )
        return True

    def answer_when_done(self, identity: bytes, request: protocol.Request, task: Task) -> None:
        """Reply to an admin job's request when its task settles; the loop launches it."""

        def settle(future: Future[Any]) -> None:
            to = self._reply_to(request.id, identity)
            err = future.exception()
            if err is None:
                self._send(to, protocol.encode_ok(request.id, future.result()))
            elif isinstance(err, SessionStoreError):
                self._reject(to, request.id, err)
            else:
                self._reject(to, request.id, InternalError(f"{task.name} failed: {err}"))

        self._running[request.id] = _Running(identity, request.op, request.params)
        task.future.add_done_callback(settle)  # runs on the loop thread: the loop settles futures

    def send_answers(self) -> None:
        """Send the replies the readers have finished so far."""
        if self._readers is None:
            return
        for done in self._readers.answers():
            if done.error is not None:
                self._count_rejection(done.request_id, done.error)
            self._send_read(self._reply_to(done.request_id, done.identity), done.payload)

    def await_answers(self, deadline: float, wait: Callable[[float], None], timeout: float) -> None:
        """Send the replies of reads still with the readers, until they are done or
        ``deadline`` passes (``wait(deadline)`` blocks until a reader wakes the loop);
        then close the readers."""
        readers = self._readers
        if readers is None:
            return
        self.send_answers()
        while readers.pending and time.monotonic() < deadline:
            wait(deadline)
            self.send_answers()
        if readers.pending:
            log.warning(
                "%d read(s) not done at shutdown: refused as shutting_down", readers.pending
            )
        self.close_readers(timeout)  # before the final checkpoint, which they could block

    def close_readers(self, timeout: float) -> None:
        """Stop the readers; the reads they had not started are refused as shutting down
        (the client re-sends those after its back-off, to whatever serves next)."""
        if self._readers is None:
            return
        dropped = self._readers.close(timeout=timeout)
        self.send_answers()  # the reads the readers were on when told to stop
        self._readers = None
        for identity, request in dropped:
            self._reject(
                self._reply_to(request.id, identity),
                request.id,
                ShuttingDown("sessiond is shutting down: read not started"),
            )

    def _resent(self, identity: bytes, request: protocol.Request, running: _Running) -> None:
        """A request whose id is still running: the same request re-sent, or a clash.

        Only an identical request is a resend. Another request under the same id (a
        client numbering its requests 1, 2, 3…) is refused: answering it with the
        running request's result would hand one client another's data.
        """
        if (request.op, request.params) != (running.op, running.params):
            self._reject(
                identity,
                request.id,
                MalformedRequest(
                    f"id: {request.id!r} is already in use by a running {running.op} "
                    "request; give every request its own id"
                ),
            )
            return
        if running.op in READ_OPS:
            self._forget_read(running.identity)
            self._reads_by_sender[identity] += 1
        running.identity = identity
        self._stats.resends_in_progress += 1

    def _reply_to(self, request_id: str, identity: bytes) -> bytes:
        """Who gets a finished request's answer: its newest sender."""
        running = self._running.pop(request_id, None)
        if running is None:
            return identity
        if running.op in READ_OPS:
            self._forget_read(running.identity)
        return running.identity

    def reads_from(self, identity: bytes) -> int:
        """Reads from this connection taken on and not answered yet."""
        return self._reads_by_sender[identity]

    def _forget_read(self, identity: bytes) -> None:
        self._reads_by_sender[identity] -= 1
        if self._reads_by_sender[identity] <= 0:
            del self._reads_by_sender[identity]
