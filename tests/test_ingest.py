"""The ingest loop's own lifecycle, in process: a real ROUTER socket and a real index.

What the daemon tests cannot time from outside: a job handed over just before the
final drain, and a wake-up arriving after the loop has closed its pipe.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from sessiond.ingest import IngestLoop
from sessiond.tasks import Task

from sessionstore.config import load_settings
from sessionstore.errors import ShuttingDown
from sessionstore.store import SessionStore


@pytest.fixture
def loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IngestLoop]:
    monkeypatch.setenv("SESSIONSTORE_CONFIG", "")
    sockdir = Path(tempfile.mkdtemp(prefix="ss-"))  # ipc paths must stay short
    settings = load_settings(
        learning_root=str(tmp_path / "learning"), address=f"ipc://{sockdir}/d.sock"
    )
    settings.index_path.parent.mkdir(parents=True)
    store = SessionStore(settings.index_path)
    context = zmq.Context()
    ingest = IngestLoop(store, settings, context)
    ingest.bind()
    try:
        yield ingest
    finally:
        store.close()
        context.term()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_a_job_handed_over_before_the_final_drain_is_refused_unstarted(loop: IngestLoop) -> None:
    ran = threading.Event()
    task = Task("integrity", None, off_loop=ran.set)
    future = loop.submit(task)  # queued, and the loop has not taken it yet
    loop.request_stop()
    loop.run()  # stops at once: drains, refuses what is queued
    loop.close()
    assert isinstance(future.exception(timeout=5), ShuttingDown)
    assert not ran.wait(0.5), "a job was started during shutdown"


def test_a_wake_after_close_writes_nowhere(loop: IngestLoop) -> None:
    loop.request_stop()
    loop.run()
    loop.close()
    loop._wake()  # an off-loop job finishing late: must neither raise nor write
    loop.request_stop()  # a second SIGTERM during close: must not block
    assert isinstance(
        loop.submit(Task("late", None, off_loop=lambda: None)).exception(timeout=5), ShuttingDown
    )
