"""The ingest loop: the one thread that owns the write connection.

Each turn drains the requests waiting on the ROUTER socket (at most
``batch_max``, waiting at most ``batch_wait_ms`` for more), applies every save in
one transaction through :meth:`SessionStore.apply_batch`, commits, and only then
replies — an ack before COMMIT would promise durability we do not have. Reads
(get_session, list_sessions, list_outcomes) go to reader threads with their own
read-only connections (:mod:`sessiond.queries`), handed over after the batch, so a
client that saved and then asks sees its save; the loop sends their replies
(:mod:`sessiond.in_progress` keeps track of who is owed which answer).
Maintenance work (checkpoint, reconcile, integrity) arrives as a
:class:`~sessiond.tasks.Task` from other threads and runs here, one slice per
turn, between batches, or on a thread of its own (:mod:`sessiond.tasks`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from sessiond.connections import ConnectionGate
from sessiond.in_progress import InProgress
from sessiond.logs import RateLimited
from sessiond.queries import READ_OPS, reply
from sessiond.replies import ReplyBudget
from sessiond.security import enable_curve
from sessiond.stats import IngestStats
from sessiond.tasks import OffLoopTasks, SlicedTasks, Task
from sessionstore import fastpath, protocol
from sessionstore.config import Settings
from sessionstore.errors import (
    DaemonUnavailable,
    InternalError,
    MalformedRequest,
    SessionStoreError,
    ShuttingDown,
    StorageFailure,
)
from sessionstore.store import SessionStore, Write, WriteResult

log = logging.getLogger("sessiond.ingest")

# Bounded drain on shutdown: what was received gets answered, but a client that
# keeps sending cannot hold the daemon up past systemd's stop timeout.
SHUTDOWN_DRAIN_SECONDS = 10.0
IDLE_POLL_MS = 1000


class IngestLoop:
    def __init__(
        self,
        store: SessionStore,
        settings: Settings,
        context: zmq.Context,
    ) -> None:
        self.store = store
        self.settings = settings
        self.stats = IngestStats()
        self._heartbeat: Callable[[], None] = lambda: None
        self._admin: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self._idle_poll_ms = IDLE_POLL_MS
        self._on_stopping: Callable[[], object] = lambda: None
        self._context = context
        self._router = context.socket(zmq.ROUTER)
        self._replies = ReplyBudget(
            self._router,
            self._count_rejection,
            reply_bytes=settings.max_reply_bytes,
            peer_bytes=settings.peer_reply_bytes,
            total_bytes=settings.total_reply_bytes,
        )
        self._tasks: queue.Queue[Task] = queue.Queue()
        self._sliced = SlicedTasks()
        self._off_loop = OffLoopTasks(self._wake)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()  # against a write into the pipe once it is closed
        self._pipe_open = True
        self._stopping = False
        self._reject_log = RateLimited(log.warning)
        self._in_progress = InProgress(
            self.stats, self._send, self._reject, self._count_rejection, send_read=self._send_read
        )
        self._submit_lock = threading.Lock()
        self.idle = True
        self.connections = ConnectionGate(self._router, settings, self._wake, self.request_stop)

    # -- lifecycle (called from the main thread) -------------------------------

    def configure(
        self,
        *,
        heartbeat: Callable[[], None],
        admin: dict[str, Callable[[dict[str, Any]], Any]],
        idle_poll_ms: int = IDLE_POLL_MS,
        on_stopping: Callable[[], object] = lambda: None,
    ) -> None:
        """Attach what is called every turn, the admin ops (jobs), and the shutdown hook."""
        self._heartbeat = heartbeat
        self._admin = admin
        self._idle_poll_ms = idle_poll_ms
        self._on_stopping = on_stopping

    def bind(self) -> None:
        """Bind the ROUTER socket with every bound that keeps the daemon's memory flat."""
        sock, s = self._router, self.settings
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, s.max_message_bytes)
        sock.setsockopt(zmq.RCVHWM, s.high_water_mark)
        sock.setsockopt(zmq.SNDHWM, s.high_water_mark)
        self.connections.bind()  # and unbinds while the connections are at capacity

    def enable_curve(self) -> ThreadAuthenticator:
        """Require CURVE keys from clients (see :mod:`sessiond.security`); before :meth:`bind`."""
        return enable_curve(self._context, self._router, self.settings)

    def start_readers(self) -> None:
        """Open ``query_threads`` read-only connections and start their threads (0: none,
        the loop answers reads itself)."""
        self._in_progress.start_readers(self.settings, self._wake)

    def reads_pending(self) -> int:
        """Reads handed to the readers and not yet answered (any thread may ask)."""
        return self._in_progress.reads_pending

    def request_stop(self) -> None:
        """Ask the loop to drain and return; safe from a signal handler or another thread."""
        self._stopping = True
        self._wake(from_signal=True)

    def submit(self, task: Task) -> Future[Any]:
        """Hand maintenance work to the loop; safe from any thread."""
        with self._submit_lock:  # see _drain_for_shutdown: no task slips in after its last take
            if self._stopping:
                task.future.set_exception(ShuttingDown("sessiond is shutting down"))
                return task.future
            self._tasks.put(task)
        self._wake()
        return task.future

    def _wake(self, from_signal: bool = False) -> None:
        """Make the loop's poll return. Every caller queues its work first, so one byte
        in the pipe serves them all. A thread finishing after :meth:`close` must not
        write: the descriptor may already belong to another file. A signal handler
        does not wait for the lock (its own thread may hold it, in close)."""
        if not self._wake_lock.acquire(blocking=not from_signal):
            return  # close() holds it: nobody is left to wake
        try:
            if self._pipe_open:
                with contextlib.suppress(BlockingIOError):  # full: the loop is due to wake
                    os.write(self._wake_w, b"x")
        finally:
            self._wake_lock.release()

    # -- the loop ------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`request_stop`; then answer what was received and return."""
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stopping:
            timeout = (
                math.ceil(self._sliced.wait_seconds * 1000) if self._sliced else self._idle_poll_ms
            )
            events = dict(poller.poll(timeout))
            if self._wake_r in events:
                self._take_tasks()
                self._in_progress.send_answers()
            self.idle = self._router not in events
            if not self.idle:
                self._serve_batch()
            if self._sliced:
                self._sliced.run_slice()
            elif self.idle:
                self._reject_log.flush(expired_only=True)
            self._heartbeat()
            self.connections.check()
        self._on_stopping()
        self._drain_for_shutdown()
        self._reject_log.flush()

    def close(self) -> None:
        self._in_progress.close_readers(SHUTDOWN_DRAIN_SECONDS)
        self.connections.close()
        self._router.close()
        with self._wake_lock:
            self._pipe_open = False
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _take_tasks(self, launch: bool = True) -> None:
        """Empty the wake pipe, start the tasks handed over (or, at shutdown, refuse
        them unstarted) and settle the off-loop ones that finished."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if launch:
                self._launch(task)
            else:
                task.future.set_exception(ShuttingDown(f"{task.name}: sessiond is shutting down"))
        self._off_loop.settle()

    def _launch(self, task: Task) -> None:
        task.future.set_running_or_notify_cancel()
        if task.off_loop is None:
            self._sliced.add(task)
        else:
            self._off_loop.start(task)

    def _drain_for_shutdown(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_DRAIN_SECONDS
        while time.monotonic() < deadline and self._router.poll(0, zmq.POLLIN):
            self._serve_batch()
        self._in_progress.await_answers(deadline, self._wait_for_wake, SHUTDOWN_DRAIN_SECONDS)
        with self._submit_lock:  # _stopping is set: once we hold this, nothing more comes
            self._take_tasks(launch=False)
        self._sliced.refuse_all()
        self._off_loop.refuse_all()

    def _wait_for_wake(self, deadline: float) -> None:
        """Wait for the wake pipe until ``deadline``; stopping: new jobs are refused, not started."""
        remaining_ms = math.ceil((deadline - time.monotonic()) * 1000)
        if zmq.select([self._wake_r], [], [], max(remaining_ms, 1) / 1000)[0]:
            self._take_tasks(launch=False)

    # -- one turn --------------------------------------------------------------------

    def _receive(self) -> list[list[bytes]]:
        """Drain up to batch_max waiting messages (and batch_max_bytes: a save_batch frame
        carries up to 1000 saves, so a count alone would let one turn decode hundreds of
        thousands), waiting briefly for more to group them."""
        messages: list[list[bytes]] = []
        batch_max, budget = self.settings.batch_max, self.settings.batch_max_bytes
        wait_until = time.monotonic() + self.settings.batch_wait_ms / 1000
        while len(messages) < batch_max and budget > 0:
            # EVENTS, not a receive that fails: the zmq.Again it raised once a turn cost
            # more than the check (sync clients make turns of one save)
            if self._router.get(zmq.EVENTS) & zmq.POLLIN:
                try:
                    frames = self._router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:  # not expected after EVENTS said so; checked again
                    continue
                messages.append(frames)
                budget -= sum(len(frame) for frame in frames)
            else:
                remaining_ms = (wait_until - time.monotonic()) * 1000
                # zmq polls in whole milliseconds and truncates: round up, or a wait
                # under 1 ms would silently be no wait at all.
                if remaining_ms <= 0 or not self._router.poll(math.ceil(remaining_ms), zmq.POLLIN):
                    break
        return messages

    def _serve_batch(self) -> None:
        saves: list[tuple[bytes, protocol.Request]] = []
        others: list[tuple[bytes, protocol.Request]] = []
        for frames in self._receive():
            request = self._decode(frames)
            if request is not None:
                (saves if request.is_save else others).append((frames[0], request))
        if saves:
            self._commit(saves)
        for identity, request in others:
            self._answer(identity, request)
            self.connections.check()  # a turn of 512 requests is too long to wait at capacity

    def _decode(self, frames: list[bytes]) -> protocol.Request | None:
        self.stats.frames_received += 1
        identity = frames[0]
        if len(frames) != 2:
            self._reject(
                identity, None, MalformedRequest(f"expected 1 frame, got {len(frames) - 1}")
            )
            return None
        frame = frames[1]
        try:
            # the fast path for save_outcome frames; anything it is unsure of, strictly
            return fastpath.decode_fast(frame, self.settings.max_message_bytes)
        except SessionStoreError as err:
            self._reject(identity, protocol.peek_id(frame), err)
        except Exception as err:  # a decoder bug must cost one request, not the daemon
            log.debug("decoding a request failed unexpectedly", exc_info=True)
            self._reject(
                identity, protocol.peek_id(frame), InternalError(f"cannot decode: {err!r}")
            )
        return None

    def _commit(self, saves: list[tuple[bytes, protocol.Request]]) -> None:
        """Apply every save of this turn in one transaction, then reply to each request."""
        writes = [
            write
            for _, request in saves
            for write in (
                [request.write] if request.items is None else [i.write for i in request.items]
            )
            if write is not None
        ]
        results = iter(self._apply(writes))
        for identity, request in saves:
            if request.items is None:
                self._reply_to_save(identity, request.id, next(results))
                continue
            replies = []
            for item in request.items:
                result = (
                    next(results)
                    if item.write is not None
                    else WriteResult(False, error=item.error)
                )
                replies.append(self._settle(item.id, result))
            self._send(identity, protocol.encode_ok(request.id, replies))

    def _apply(self, writes: list[Write]) -> list[WriteResult]:
        if not writes:
            return []
        started = time.perf_counter()
        failed = True
        try:
            results = self.store.apply_batch(writes)
            failed = False
        except StorageFailure as err:
            log.error("batch of %d save(s) not committed: %s", len(writes), err)
            results = [WriteResult(ok=False, error=err)] * len(writes)
        except Exception as err:
            log.exception("batch of %d save(s) failed unexpectedly", len(writes))
            failure = InternalError(f"batch failed: {err}")
            results = [WriteResult(ok=False, error=failure)] * len(writes)
        # apply_batch commits exactly when one save was new (else it rolls back)
        committed = any(result.ok and not result.duplicate for result in results)
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.stats.record_batch(len(writes), elapsed_ms, committed=committed, failed=failed)
        return results

    def _settle(self, request_id: str | None, result: WriteResult) -> dict[str, Any]:
        """Count one save's fate (and log a refusal); its entry for a save_batch reply."""
        if result.ok:
            self._count_acknowledged(result)
            return protocol.item_result(request_id, True, duplicate=result.duplicate)
        assert result.error is not None
        self.stats.saves_rejected[result.error.code] += 1
        self._log_rejection(request_id, result.error)
        return protocol.item_result(request_id, False, result.error)

    def _count_acknowledged(self, result: WriteResult) -> None:
        if result.duplicate:
            self.stats.saves_duplicate += 1
        else:
            self.stats.saves_applied += 1

    def _reply_to_save(self, identity: bytes, request_id: str, result: WriteResult) -> None:
        if result.ok:
            self._count_acknowledged(result)
            self._send(identity, protocol.encode_ack(request_id, duplicate=result.duplicate))
        else:
            assert result.error is not None
            self.stats.saves_rejected[result.error.code] += 1
            self._reject(identity, request_id, result.error)

    def _answer(self, identity: bytes, request: protocol.Request) -> None:
        reads = self._in_progress.reads_from(identity)
        if request.op in READ_OPS and (full := self._replies.full(identity, reads)) is not None:
            self._reject(identity, request.id, DaemonUnavailable(f"sessiond: {full}; retry later"))
            return
        if self._in_progress.take(identity, request):
            return  # a resend of a running request, or a read for the readers
        try:
            result = self._query(identity, request)
        except SessionStoreError as err:
            self._reject(identity, request.id, err)
            return
        except Exception as err:
            log.exception("%s failed unexpectedly", request.op)
            self._reject(identity, request.id, InternalError(f"{request.op} failed: {err}"))
            return
        if isinstance(result, Task):  # an on-demand job: replied to when it finishes
            self._in_progress.answer_when_done(identity, request, result)
            if not result.future.running():  # else a run under way this request shares
                self._launch(result)
        elif isinstance(result, bytes | bytearray):  # a read's reply, encoded already
            self._send_read(identity, result)
        else:
            self._send(identity, protocol.encode_ok(request.id, result))

    def _query(self, identity: bytes, request: protocol.Request) -> Any:
        if request.op in READ_OPS:
            return reply(self.store, request, self.settings.max_reply_bytes)
        if request.op == "status":
            return self.status()
        handler = self._admin.get(request.op)
        if handler is None:
            raise MalformedRequest(f"op: {request.op!r} is not served by this daemon")
        return handler(request.params)

    def _reject(self, identity: bytes, request_id: str | None, err: SessionStoreError) -> None:
        self._count_rejection(request_id, err)
        self._send(identity, protocol.encode_error(request_id, err))

    def _count_rejection(self, request_id: str | None, err: SessionStoreError) -> None:
        """Count and log one frame answered with an error reply."""
        self.stats.frames_rejected[err.code] += 1
        self._log_rejection(request_id, err)

    def _log_rejection(self, request_id: str | None, err: SessionStoreError) -> None:
        self._reject_log(err.code, f"rejected request {request_id or '(no id)'}: {err.code}: {err}")

    def _send(self, identity: bytes, payload: bytes | bytearray) -> None:
        """The loop's one way to reply (see :mod:`sessiond.replies` for the byte limits)."""
        if not self._replies.deliver(identity, payload, read=False):
            self.stats.replies_dropped += 1  # peer gone or its queue full: it retries

    def _send_read(self, identity: bytes, payload: bytes | bytearray) -> None:
        if not self._replies.deliver(identity, payload, read=True):
            self.stats.replies_dropped += 1

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        report = self.stats.to_dict()
        report.update(self.store.file_sizes())
        report.update(self.store.counts())
        report["address"] = self.settings.endpoint
        report["db_path"] = str(self.settings.index_path)
        report["tasks_pending"] = len(self._sliced) + len(self._off_loop) + self._tasks.qsize()
        report["reads_pending"] = self._in_progress.reads_pending
        report["connections"] = self.connections.status()
        report.update(self._replies.to_dict())
        for name, handler in self._admin.items():
            if name.startswith("status:"):
                report[name.split(":", 1)[1]] = handler({})
        return report
