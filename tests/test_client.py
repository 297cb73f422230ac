"""The client's transport: what a failed call leaves behind, sockets per thread, resends.

Daemon-facing behaviour runs against real ``sessionstore serve`` processes. Where the
thing under test is only the client's timing (how often it resends), a ROUTER socket
bound by the test plays the daemon and answers exactly as the test says.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest
from daemon_helpers import EDIT, outcome, session

from sessionstore import SessionStoreClient
from sessionstore.errors import PipelineError


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
