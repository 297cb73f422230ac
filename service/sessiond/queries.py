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
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from sessionstore import protocol
from sessionstore.errors import InternalError, RequestTooLarge, SessionStoreError
from sessionstore.records import gc_paused
from sessionstore.store import SessionStore

log = logging.getLogger("sessiond.queries")

READ_OPS = frozenset(
    {"get_session", "list_sessions", "list_outcomes", "list_sessions_page", "list_outcomes_page"}
)
"""The ops readers serve; everything else is answered by the loop."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished reply for the loop to send; ``error`` is set when it is a refusal."""

    identity: bytes
    request_id: str
    payload: bytes | bytearray
    error: SessionStoreError | None = None


def reply(store: SessionStore, request: protocol.Request, max_bytes: int) -> bytes | bytearray:
    """The encoded ok-reply to one read op (the same whether a reader or the loop answers).

    A reader shares the GIL with the loop, so no step of a big listing may hold it
    long, and a listing should not hold every record at once: records come a chunk
    at a time from one read transaction, each is encoded by its own pydantic-core
    call into one growing buffer (no intermediate dicts, no join copying megabytes
    in one call), and each chunk is freed before the next is read.

    A reply holds at most ``max_bytes`` (``max_reply_bytes``) unless it carries a
    single record bigger than that: a page stops before the record that would pass
    it and names the key to continue ``after``; an unpaged listing that would pass
    it is refused as ``too_large`` (what it costs is paid by the reader, once, not
    queued).
    """
    with gc_paused():  # until the result is freed too: see gc_paused
        return _reply(store, request, max_bytes)


def _reply(store: SessionStore, request: protocol.Request, max_bytes: int) -> bytes | bytearray:
    params = request.params
    if request.op == "get_session":
        session = store.get_session(params["session_id"])
        return protocol.encode_ok_json(request.id, to_json(session))
    chunks: Generator[list[tuple[Any, Any]], None, None]
    key_json: Callable[[Any], bytes]
    if request.op in {"list_sessions", "list_sessions_page"}:
        chunks = store.iter_sessions(
            params["status"], params["limit"], after=params.get("after"), chunk=PAGE_CHUNK
        )
        field, key_json = "sessions", _session_key_json
    elif request.op in {"list_outcomes", "list_outcomes_page"}:
        chunks = store.iter_outcomes(params["session_id"], after=params.get("after"))
        field, key_json = "outcomes", _outcome_key_json
    else:
        raise InternalError(f"{request.op} is not a read op")
    listing = _Listing(request, max_bytes, field if request.op.endswith("_page") else None)
    try:
        return listing.encode(chunks, key_json)
    finally:
        chunks.close()  # ends the read transaction even if encoding failed


PAGE_CHUNK = 64
"""Sessions read per query while filling a page: what is read past the page's end is
wasted, and a 1 MiB page holds about 500 sessions with 10 outcomes each."""


def _session_key_json(key: tuple[str, str]) -> bytes:
    return to_json({"started_at": key[0], "id": key[1]})


def _outcome_key_json(key: int) -> bytes:
    return to_json(key)


class _Listing:
    """One listing's reply: records appended until the next would pass ``max_bytes``.

    ``page`` names the records' field in a page reply (``{"sessions": [...], "next":
    key}``); None is the unpaged form, a bare list, refused past ``max_bytes``.
    """

    def __init__(self, request: protocol.Request, max_bytes: int, page: str | None) -> None:
        self._request = request
        self._max_bytes = max_bytes
        self._page = page
        self._reply = bytearray(protocol.ok_reply_head(request.id))
        if page is not None:
            self._reply += b'{"' + page.encode() + b'":'
        self._reply += b"["
        self._count = 0

    def encode(
        self, chunks: Iterable[list[tuple[Any, Any]]], key_json: Callable[[Any], bytes]
    ) -> bytearray:
        """Append each chunk's records, freeing each chunk before the next is read."""
        last_key: bytes = b"null"
        for chunk in chunks:
            for key, model in chunk:
                record, this_key = to_json(model), key_json(key)
                size = len(self._reply) + 1 + len(record) + len(self._tail(this_key))
                if self._count and size > self._max_bytes:
                    return self._finish(last_key, cut=True)
                if self._count:
                    self._reply += b","
                self._reply += record
                self._count += 1
                last_key = this_key
            chunk.clear()
        return self._finish(b"null", cut=False)

    def _tail(self, next_key: bytes) -> bytes:
        return b"]}" if self._page is None else b'],"next":' + next_key + b"}}"

    def _finish(self, next_key: bytes, *, cut: bool) -> bytearray:
        if cut and self._page is None:
            raise RequestTooLarge(
                f"{self._request.op}: the reply would exceed max_reply_bytes "
                f"({self._max_bytes} bytes) after {self._count} records; ask for pages "
                f"({self._request.op}_page: SessionStoreClient pages by itself) or set a limit"
            )
        self._reply += self._tail(next_key)
        return self._reply


class Readers:
    """``threads`` reader threads, each with its own read-only :class:`SessionStore`.

    At most ``queue_max`` queries wait for a reader; :meth:`submit` refuses more, so a
    flood of queries costs its senders a retry, not the daemon its memory. Finished
    replies wait for the loop, which takes them between batches; a reader takes its
    next query only while those hold less than ``threads`` x ``max_reply_bytes``
    (measured: during a long turn under load 212 replies had piled up, and refusals
    that kept their listing alive through the traceback held 280 MiB). ``wake`` is
    called after each reply is queued (the loop's wake-up pipe).
    """

    def __init__(
        self,
        db_path: Path,
        threads: int,
        queue_max: int,
        wake: Callable[[], None],
        *,
        max_reply_bytes: int,
    ) -> None:
        self._max_reply_bytes = max_reply_bytes
        self._inbox: queue.Queue[tuple[bytes, protocol.Request] | None] = queue.Queue(queue_max)
        self._outbox: queue.SimpleQueue[Answer] = queue.SimpleQueue()
        self._room = threading.Condition()
        self._outbox_bytes = 0  # under _room
        self._outbox_max = threads * max_reply_bytes
        self._closing = False  # under _room: readers stop waiting for room
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
            with self._room:
                self._outbox_bytes -= len(done.payload)
                self._room.notify_all()
            yield done

    def close(self, timeout: float) -> list[tuple[bytes, protocol.Request]]:
        """Stop the readers after the queries they are on; close their stores.

        Returns the queries still waiting, unanswered, for the loop to refuse (it has
        given up on them by now). Taking them out also makes room for the stop
        markers: a full queue would otherwise block this put, and the daemon's exit.
        """
        dropped: list[tuple[bytes, protocol.Request]] = []
        with self._room:
            self._closing = True
            self._room.notify_all()
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
            answer = self._answer(store, identity, request, self._max_reply_bytes)
            with self._room:
                self._outbox_bytes += len(answer.payload)
                self._outbox.put(answer)
            self._wake()
            with self._room:
                self._room.wait_for(lambda: self._outbox_bytes < self._outbox_max or self._closing)

    @staticmethod
    def _answer(
        store: SessionStore, identity: bytes, request: protocol.Request, max_bytes: int
    ) -> Answer:
        try:
            return Answer(identity, request.id, reply(store, request, max_bytes))
        except SessionStoreError as err:
            # Without its traceback: that holds the frames, and so the listing being built.
            refusal = err.with_traceback(None)
            return Answer(identity, request.id, protocol.encode_error(request.id, err), refusal)
        except Exception as err:  # a reader must outlive any one query
            log.exception("%s failed unexpectedly", request.op)
            failure = InternalError(f"{request.op} failed: {err}")
            return Answer(identity, request.id, protocol.encode_error(request.id, failure), failure)
