"""Reads off the loop: get_session, list_sessions and list_outcomes on reader threads.

Answering a listing means reading, validating and encoding every listed record:
for 2,000 sessions with 10 outcomes each that is about half a second, and on the
loop thread every save waiting behind it would wait that long too (measured
before this module existed: a save's latency went from 5 ms to 380 ms during
one such listing). Readers have their own read-only connections, which WAL lets
read while the loop commits, and hand their finished reply frames back to the
loop, which alone touches the ROUTER socket and the write connection.

A reader starts each query in a fresh read transaction, and the loop hands a
query over only after committing the saves received with it, so a client that
saw its save acknowledged and then asks sees that save.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from sessionstore import protocol
from sessionstore.errors import InternalError, SessionStoreError
from sessionstore.records import gc_paused
from sessionstore.store import SessionStore

log = logging.getLogger("sessiond.queries")

READ_OPS = frozenset({"get_session", "list_sessions", "list_outcomes"})
"""The ops readers serve; everything else is answered by the loop."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished reply for the loop to send; ``error`` is set when it is a refusal."""

    identity: bytes
    request_id: str
    payload: bytes | bytearray
    error: SessionStoreError | None = None


def reply(store: SessionStore, request: protocol.Request) -> bytes | bytearray:
    """The encoded ok-reply to one read op (the same whether a reader or the loop answers).

    A reader shares the GIL with the loop, so no step of a big listing may hold it
    long, and a listing should not hold every record at once: sessions come 256 at a
    time from one read transaction, each record is encoded by its own pydantic-core
    call into one growing buffer (no intermediate dicts, no join copying megabytes
    in one call), and each chunk is freed before the next is read.
    """
    with gc_paused():  # until the result is freed too: see gc_paused
        return _reply(store, request)


def _reply(store: SessionStore, request: protocol.Request) -> bytes | bytearray:
    params = request.params
    if request.op == "get_session":
        session = store.get_session(params["session_id"])
        return protocol.encode_ok_json(request.id, to_json(session))
    if request.op == "list_sessions":
        chunks = store.iter_sessions(params["status"], params["limit"])
        try:
            return _list_reply(request.id, chunks)
        finally:
            chunks.close()  # ends the read transaction even if encoding failed
    if request.op == "list_outcomes":
        return _list_reply(request.id, [store.list_outcomes(params["session_id"])])
    raise InternalError(f"{request.op} is not a read op")


def _list_reply(request_id: str, chunks: Iterable[list[Any]]) -> bytearray:
    """The ok-reply holding every record of ``chunks``; each chunk is encoded and freed
    before the next is read, so the records never all exist at once."""
    reply = bytearray(protocol.ok_reply_head(request_id))
    reply += b"["
    first = True
    for chunk in chunks:
        for model in chunk:
            if not first:
                reply += b","
            reply += to_json(model)
            first = False
        chunk.clear()
    reply += b"]}"
    return reply


class Readers:
    """``threads`` reader threads, each with its own read-only :class:`SessionStore`.

    At most ``queue_max`` queries wait for a reader; :meth:`submit` refuses more, so a
    flood of queries costs its senders a retry, not the daemon its memory. Replies
    wait in an unbounded queue, but only as many as there are readers can be in the
    making at once and the loop sends them on every turn. ``wake`` is called after
    each reply is queued (the loop's wake-up pipe).
    """

    def __init__(
        self, db_path: Path, threads: int, queue_max: int, wake: Callable[[], None]
    ) -> None:
        self._inbox: queue.Queue[tuple[bytes, protocol.Request] | None] = queue.Queue(queue_max)
        self._outbox: queue.SimpleQueue[Answer] = queue.SimpleQueue()
        self._wake = wake
        self._pending = 0  # submitted and not yet taken back by the loop: loop thread only
        self._stores: list[SessionStore] = []
        try:
            for _ in range(threads):
                self._stores.append(SessionStore(db_path, readonly=True))
        except BaseException:
            self._close_stores()
            raise
        self._threads = [
            threading.Thread(
                target=self._serve, args=(store,), name=f"sessiond-reader-{n}", daemon=True
            )
            for n, store in enumerate(self._stores)
        ]

    @property
    def pending(self) -> int:
        """Queries handed over whose replies the loop has not yet taken."""
        return self._pending

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, identity: bytes, request: protocol.Request) -> bool:
        """Queue a read for a reader; False when ``queue_max`` are already waiting."""
        try:
            self._inbox.put_nowait((identity, request))
        except queue.Full:
            return False
        self._pending += 1
        return True

    def answers(self) -> Iterator[Answer]:
        """The replies finished so far (loop thread)."""
        while True:
            try:
                done = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._pending -= 1
            yield done

    def close(self, timeout: float) -> list[tuple[bytes, protocol.Request]]:
        """Stop the readers after the queries they are on; close their stores.

        Returns the queries still waiting, unanswered, for the loop to refuse (it has
        given up on them by now). Taking them out also makes room for the stop
        markers: a full queue would otherwise block this put, and the daemon's exit.
        """
        dropped: list[tuple[bytes, protocol.Request]] = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                dropped.append(item)
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout)
        if any(thread.is_alive() for thread in self._threads):
            log.warning("a reader did not finish within %.0fs; its store stays open", timeout)
        else:
            self._close_stores()
        return dropped

    def _close_stores(self) -> None:
        for store in self._stores:
            store.close()

    def _serve(self, store: SessionStore) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            identity, request = item
            self._outbox.put(self._answer(store, identity, request))
            self._wake()

    @staticmethod
    def _answer(store: SessionStore, identity: bytes, request: protocol.Request) -> Answer:
        try:
            return Answer(identity, request.id, reply(store, request))
        except SessionStoreError as err:
            return Answer(identity, request.id, protocol.encode_error(request.id, err), err)
        except Exception as err:  # a reader must outlive any one query
            log.exception("%s failed unexpectedly", request.op)
            failure = InternalError(f"{request.op} failed: {err}")
            return Answer(identity, request.id, protocol.encode_error(request.id, failure), failure)
