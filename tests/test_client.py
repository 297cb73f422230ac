"""The client's transport: what a failed call leaves behind, sockets per thread, resends.

Daemon-facing behaviour runs against real ``sessionstore serve`` processes. Where the
thing under test is only the client's timing (how often it resends), a ROUTER socket
bound by the test plays the daemon and answers exactly as the test says.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq
from daemon_helpers import EDIT, outcome, session

from sessionstore import SessionStoreClient
from sessionstore.errors import DaemonUnavailable, MalformedRequest, PipelineError


def test_pipelined_saves_reported_failed_are_not_applied_after_a_restart(daemon_factory) -> None:
    d = daemon_factory().start()
    client = SessionStoreClient(d.address, timeout=2.0)
    client.save_session(session("s"))
    assert d.stop() == 0
    with pytest.raises(PipelineError) as caught, client.pipeline() as pipe:
        for i in range(5):
            pipe.save_outcome("s", outcome(f"lost-{i}"), **EDIT)
    assert len(caught.value.failures) == 5
    d.start()
    # Same thread, so the same socket if it survived: anything still queued in it is
    # delivered ahead of this save and committed no later than it.
    client.save_outcome("s", outcome("after-restart"), **EDIT)
    assert [o.edit_id for o in client.list_outcomes("s")] == ["after-restart"]
    client.close()


def test_sockets_of_finished_threads_are_closed_so_descriptors_stay_bounded(daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    client.get_session("warm-up")  # the zmq context's own descriptors exist from here on
    before = open_descriptors()
    for i in range(300):
        thread = threading.Thread(target=client.get_session, args=(f"nobody-{i}",))
        thread.start()
        thread.join(10)
        assert not thread.is_alive()
    # zmq closes descriptors on its reaper thread, a moment after Socket.close()
    assert settles(lambda: open_descriptors() <= before + 8), (before, open_descriptors())
    client.close()
    assert settles(lambda: open_descriptors() < before), (before, open_descriptors())


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def settles(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition``: True once it holds, False if ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def test_retryable_refusal_is_resent_on_the_back_off_schedule_not_at_once() -> None:
    def refuse(request: dict, earlier: int) -> list[dict]:
        error = {"code": "shutting_down", "message": "stopping"}
        return [{"v": 1, "id": request["id"], "ok": False, "error": error}]

    with fake_daemon(refuse) as fake:
        client = SessionStoreClient(fake.address, timeout=2.5)
        started = time.monotonic()
        with pytest.raises(DaemonUnavailable, match="within 2.5s"):
            client.list_sessions()
        took = time.monotonic() - started
        client.close()
    early = [t for t in fake.received_at if t - started < 1.5]
    assert 1 <= len(early) <= 2, f"{len(early)} attempts in the first 1.5 s"
    assert len(fake.received_at) <= 3  # sent at 0 s, 1 s; the next would be at 3 s
    assert 2.5 <= took < 4.0


def test_a_reply_to_any_attempt_answers_the_call_and_extra_replies_are_skipped() -> None:
    first_id: list[str] = []

    def answer_the_resend_twice(request: dict, earlier: int) -> list[dict]:
        first_id[:1] = first_id or [request["id"]]
        if request["id"] != first_id[0]:
            return [{"v": 1, "id": request["id"], "ok": True, "result": None}]
        if earlier == 0:
            return []  # the first attempt goes unanswered: the client resends
        # one reply per attempt, as if the first had only been slow
        page = {"sessions": [], "next": None}
        return [{"v": 1, "id": request["id"], "ok": True, "result": page}] * 2

    with fake_daemon(answer_the_resend_twice) as fake:
        client = SessionStoreClient(fake.address, timeout=10)
        assert client.list_sessions() == []
        assert client.get_session("other") is None  # not confused by the spare reply
        client.close()
    assert [r["op"] for r in fake.requests] == ["list_sessions_page"] * 2 + ["get_session"]


class FakeDaemon:
    """What a ROUTER bound by the test received, and where clients reach it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.requests: list[dict] = []
        self.received_at: list[float] = []


@contextmanager
def fake_daemon(answer: Callable[[dict, int], list[dict]]) -> Iterator[FakeDaemon]:
    """A thread serving a ROUTER socket: ``answer(request, earlier attempts)`` -> replies.

    The thread, its socket and its context are gone when the block exits.
    """
    sockdir = Path(tempfile.mkdtemp(prefix="ss-"))  # ipc paths are limited to ~107 bytes
    fake = FakeDaemon(f"ipc://{sockdir}/fake.sock")
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(fake.address)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not router.poll(50, zmq.POLLIN):
                continue
            identity, frame = router.recv_multipart()
            fake.received_at.append(time.monotonic())
            request = json.loads(frame)
            earlier = sum(r["id"] == request["id"] for r in fake.requests)
            fake.requests.append(request)
            for reply in answer(request, earlier):
                router.send_multipart([identity, json.dumps(reply).encode()])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        stop.set()
        thread.join(5)
        router.close()
        context.term()
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.parametrize(
    ("call", "result"),
    [
        (lambda c: c.list_sessions(), {"sessions": [{"id": 1}], "next": None}),
        (
            lambda c: c.list_outcomes("s"),
            {"outcomes": [{"edit_id": "e", "status": "exploded"}], "next": None},
        ),
        (lambda c: c.get_session("s"), {"id": "s"}),
        (lambda c: c.list_sessions(), {"not": "a list"}),
        (lambda c: c.list_sessions(), [{"id": "a bare list"}]),
        (lambda c: c.list_outcomes("s"), {"outcomes": [], "next": 7}),  # would never end
    ],
    ids=[
        "list_sessions",
        "list_outcomes",
        "get_session",
        "not-a-page",
        "bare-list",
        "empty-page-with-next",
    ],
)
def test_a_reply_that_does_not_validate_raises_our_error_naming_the_op(
    call: Callable[[SessionStoreClient], object], result: object
) -> None:
    def answer(request: dict, earlier: int) -> list[dict]:
        return [{"v": 1, "id": request["id"], "ok": True, "result": result}]

    with fake_daemon(answer) as fake:
        client = SessionStoreClient(fake.address, timeout=5)
        with pytest.raises(
            MalformedRequest, match=r"(list_sessions|list_outcomes|get_session) reply from sessiond"
        ):
            call(client)
        client.close()


def test_timeout_set_on_a_client_bounds_its_next_call(tmp_path: Path) -> None:
    client = SessionStoreClient(f"ipc://{tmp_path / 'nobody.sock'}", timeout=30)
    client.timeout = 0.3
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match=r"within 0\.3s"):
        client.get_session("s")
    assert time.monotonic() - started < 5
    assert client.max_message_bytes > 0
    client.close()
