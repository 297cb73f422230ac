"""The daemon through real processes and real sockets: group commit, acks, bad frames, stop."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
from daemon_helpers import EDIT, Daemon, outcome, session

from sessionstore import SessionStore, SessionStoreClient, protocol
from sessionstore.errors import (
    DaemonUnavailable,
    InvalidRecord,
    PipelineError,
    RequestTooLarge,
    UnknownSession,
)

TESTS = Path(__file__).parent


def raw_socket(address: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def ask(sock: zmq.Socket, *frames: bytes, timeout_ms: int = 10_000) -> dict:
    sock.send_multipart(list(frames))
    assert sock.poll(timeout_ms), "no reply from the daemon"
    return json.loads(sock.recv())


def start_writers(address: str, writers: dict[str, tuple[int, str]], timeout: float = 20.0):
    """writers: id -> (saves, "sync" | "pipeline"); each runs tests/writer.py in its own process."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return {
        wid: subprocess.Popen(
            [sys.executable, str(TESTS / "writer.py"), address, wid, str(n), mode, str(timeout)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for wid, (n, mode) in writers.items()
    }


def finish(
    procs: dict[str, subprocess.Popen], timeout: float = 120.0
) -> dict[str, tuple[int, list[str], str]]:
    results = {}
    for wid, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[wid] = (proc.returncode, out.split(), err)
    return results


def stored_edit_ids(db_path: Path, session_id: str) -> list[str]:
    store = SessionStore(db_path, readonly=True)
    try:
        return [o.edit_id for o in store.list_outcomes(session_id)]
    finally:
        store.close()


def test_parallel_writers_every_ack_stored_once_and_in_order(daemon: Daemon) -> None:
    writers = {"1": (150, "sync"), "2": (150, "sync"), "3": (150, "sync"), "4": (1000, "pipeline")}
    results = finish(start_writers(daemon.address, writers))
    for wid, (code, acked, err) in results.items():
        assert code == 0, err
        assert len(acked) == writers[wid][0]
        assert stored_edit_ids(daemon.db_path, f"writer-{wid}") == acked
    status = SessionStoreClient(daemon.address, timeout=10).status()
    assert status["saves_applied"] == sum(n for n, _ in writers.values()) + len(writers)
    assert status["mean_batch_size"] > 1  # group commit happened


def test_saves_waiting_behind_a_commit_are_committed_together(daemon_factory) -> None:
    """Group commit: the saves that arrive while a transaction commits wait on the socket,
    and the next turn commits them all in one transaction, each acknowledged on its own.
    The commit is held up on purpose (another process holds the index's write lock) so
    the saves are certain to pile up behind it."""
    d = daemon_factory(extra_env={"WATCHDOG_USEC": "400000"}).start()
    client = SessionStoreClient(d.address, timeout=30)
    client.save_session(session("s"))
    batches_before = client.status()["batches"]
    socks = [raw_socket(d.address) for _ in range(20)]
    lock_holder = sqlite3.connect(d.db_path, isolation_level=None)
    lock_holder.execute("BEGIN IMMEDIATE")
    try:
        for n, sock in enumerate(socks):
            sock.send(
                protocol.encode_save_outcome(f"r{n}", "s", outcome(f"e{n}"), rationale="", **EDIT)
            )
        d.wait_for_stalled_loop()  # stuck committing the first of them; the rest wait
    finally:
        lock_holder.execute("ROLLBACK")
        lock_holder.close()
    for n, sock in enumerate(socks):
        assert sock.poll(10_000), f"save {n} was not answered"
        assert json.loads(sock.recv())["ok"] is True
        sock.close()
    assert sorted(stored_edit_ids(d.db_path, "s")) == sorted(f"e{n}" for n in range(20))
    batches = client.status()["batches"] - batches_before
    assert batches <= 3, f"20 saves waiting together took {batches} transactions"


@pytest.mark.parametrize("size", [3, 40], ids=["small-batch", "set-wise-batch"])
def test_a_save_refused_inside_a_committed_transaction_leaves_no_trace_of_itself(
    daemon: Daemon, size: int
) -> None:
    """One save_batch frame is one transaction. Its refused save (an outcome for a
    session the index does not hold: it decodes, and only applying it can refuse it)
    fails alone: the others commit, and the refused one leaves nothing behind, not
    even its request id, so the same save re-sent once its session exists is applied
    (not taken for a duplicate) and stored once."""
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("s"))
    refused_at = size // 2
    items = {
        f"item-{n}": protocol.encode_save_outcome(
            f"item-{n}", "later" if n == refused_at else "s", outcome(f"e{n}"), rationale="", **EDIT
        )
        for n in range(size)
    }
    sock = raw_socket(daemon.address)
    reply = ask(sock, protocol.encode_save_batch("batch-1", list(items.values())))

    results = {item["id"]: item for item in reply["result"]}
    assert results.pop(f"item-{refused_at}")["error"]["code"] == "unknown_session"
    assert all(item["ok"] and not item.get("duplicate") for item in results.values())
    status = client.status()
    assert status["batches"] == 2  # the session, then the whole frame in one transaction
    expected = [f"e{n}" for n in range(size) if n != refused_at]
    assert stored_edit_ids(daemon.db_path, "s") == expected
    assert stored_edit_ids(daemon.db_path, "later") == []

    client.save_session(session("later"))
    again = ask(sock, protocol.encode_save_batch("batch-2", [items[f"item-{refused_at}"]]))
    assert again["result"] == [{"id": f"item-{refused_at}", "ok": True}]
    assert stored_edit_ids(daemon.db_path, "later") == [f"e{refused_at}"]
    assert stored_edit_ids(daemon.db_path, "s") == expected


def test_save_for_unknown_session_is_refused_not_acked(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    with pytest.raises(UnknownSession, match="nope"):
        client.save_outcome("nope", outcome("e1"), **EDIT)
    assert client.list_outcomes("nope") == []
    assert client.status()["saves_rejected"] == {"unknown_session": 1}


def test_invalid_record_is_refused_with_the_field_named(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    bad = session("s1")
    bad.teacher_cost_usd = -1.0  # pydantic does not validate assignment; save checks again
    with pytest.raises(InvalidRecord, match="teacher_cost_usd"):
        client.save_session(bad)  # refused by the client, as the store refuses it
    with pytest.raises(InvalidRecord, match="pillar"):
        client.save_outcome("s1", outcome("e"), **{**EDIT, "pillar": "vibes"})
    # the daemon checks a frame again on its own: a client that skipped the check
    frame = json.loads(protocol.encode_save_session("raw-1", session("s1")))
    frame["session"]["teacher_cost_usd"] = -1.0
    reply = ask(raw_socket(daemon.address), json.dumps(frame).encode())
    assert reply["error"]["code"] == "invalid"
    assert "teacher_cost_usd" in reply["error"]["message"]
    assert client.get_session("s1") is None


MALFORMED: list[tuple[str, list[bytes], str]] = [
    ("not json", [b"{nope"], "malformed"),
    ("not utf-8", [b'{"v":1,"id":"\xff\xfe"}'], "malformed"),
    ("not an object", [b"[1, 2, 3]"], "malformed"),
    ("no id", [b'{"v":1,"op":"status"}'], "malformed"),
    ("id not a string", [b'{"v":1,"id":7,"op":"status"}'], "malformed"),
    ("wrong version", [b'{"v":99,"id":"a","op":"status"}'], "malformed"),
    ("unknown op", [b'{"v":1,"id":"a","op":"drop_table"}'], "malformed"),
    ("missing field", [b'{"v":1,"id":"a","op":"save_outcome","session_id":"s"}'], "malformed"),
    ("unexpected field", [b'{"v":1,"id":"a","op":"status","x":1}'], "malformed"),
    ("ill-typed field", [b'{"v":1,"id":"a","op":"save_session","session":"text"}'], "malformed"),
    ("ill-typed limit", [b'{"v":1,"id":"a","op":"list_sessions","limit":"ten"}'], "malformed"),
    ("NaN", [b'{"v":1,"id":"a","op":"list_sessions","limit":NaN}'], "malformed"),
    ("two frames", [b'{"v":1,"id":"a","op":"status"}', b"extra"], "malformed"),
    ("empty frame", [b""], "malformed"),
    ("invalid enum", [b'{"v":1,"id":"a","op":"list_sessions","status":"sleeping"}'], "invalid"),
    (
        "invalid record",
        [b'{"v":1,"id":"a","op":"save_session","session":{"id":"x","trigger":"psychic"}}'],
        "invalid",
    ),
]


def test_every_malformed_frame_gets_an_error_reply_and_changes_nothing(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("keep"))
    before = daemon.db_path.read_bytes(), Path(f"{daemon.db_path}-wal").read_bytes()
    sock = raw_socket(daemon.address)
    for name, frames, code in MALFORMED:
        reply = ask(sock, *frames)
        assert reply["ok"] is False, name
        assert reply["error"]["code"] == code, (name, reply)
        assert reply["error"]["message"], name
    # well-formed saves that only applying them can refuse: their transaction is rolled
    # back, not committed (which would write WAL frames for nothing)
    orphan = protocol.encode_save_outcome("orphan", "nope", outcome("e1"), rationale="", **EDIT)
    stray = session("stray", parent_session_id="nope")
    for frame in (orphan, protocol.encode_save_session("stray", stray)):
        reply = ask(sock, frame)
        assert reply["error"]["code"] == "unknown_session", reply
    # good traffic continues on the same connection and on others
    good = ask(sock, protocol.encode_request("good-1", "get_session", session_id="keep"))
    assert good["ok"] and good["result"]["id"] == "keep"
    assert (daemon.db_path.read_bytes(), Path(f"{daemon.db_path}-wal").read_bytes()) == before
    status = client.status()
    assert sum(status["frames_rejected"].values()) == len(MALFORMED) + 2  # one reply each
    assert status["saves_rejected"] == {"unknown_session": 2}  # the two that were saves


def test_oversized_frame_drops_the_connection_and_the_daemon_carries_on(daemon_factory) -> None:
    d = daemon_factory().start()
    limit = 1 << 20
    sock = raw_socket(d.address)
    sock.send(b"x" * (limit + 1))
    assert not sock.poll(1000), "an oversized frame must not be answered"
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("after"))
    assert client.get_session("after") is not None
    with pytest.raises(RequestTooLarge):
        client.save_session(session("big", trigger_metadata={"blob": "y" * limit}))


def test_retry_with_same_id_after_restart_is_not_applied_twice(daemon_factory) -> None:
    d = daemon_factory().start()
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("s"))
    frame = protocol.encode_save_outcome("retry-me", "s", outcome("e1"), rationale="", **EDIT)
    items = [
        protocol.encode_save_outcome(f"item-{n}", "s", outcome(f"b{n}"), rationale="", **EDIT)
        for n in range(50)
    ]
    sock = raw_socket(d.address)
    assert ask(sock, frame)["ok"] is True
    first = ask(sock, protocol.encode_save_batch("batch-1", items[:40]))  # the set-wise path
    assert all(item["ok"] and not item.get("duplicate") for item in first["result"])
    assert d.stop() == 0
    d.start()
    sock = raw_socket(d.address)
    again = ask(sock, frame)
    assert again["ok"] is True and again.get("duplicate") is True
    # the 40 re-sent in one transaction with 10 new ones: only the new are stored
    mixed = ask(sock, protocol.encode_save_batch("batch-2", items))["result"]
    assert [bool(item.get("duplicate")) for item in mixed] == [True] * 40 + [False] * 10
    assert stored_edit_ids(d.db_path, "s") == ["e1", *(f"b{n}" for n in range(50))]


def test_sigterm_under_load_loses_no_acknowledged_write(daemon_factory) -> None:
    d = daemon_factory().start()
    procs = start_writers(d.address, {str(w): (100_000, "sync") for w in range(4)}, timeout=3.0)
    first_acks = {}
    for wid, proc in procs.items():  # wait until every writer has had an ack: load is on
        assert proc.stdout is not None
        first_acks[wid] = proc.stdout.readline().strip()
        assert first_acks[wid]
    assert d.stop(signal.SIGTERM) == 0
    assert "STOPPING=1" in "\n".join(d.messages) or d.wait_for("STOPPING=1", 5)
    for wid, proc in procs.items():
        assert proc.stdout is not None and proc.stderr is not None
        acked = [first_acks[wid], *proc.stdout.read().split()]  # same buffered reader
        assert proc.wait(60) == 3, proc.stderr.read()  # the daemon went away under it
        stored = stored_edit_ids(d.db_path, f"writer-{wid}")
        assert stored[: len(acked)] == acked  # everything acked is stored, in order
        assert len(stored) - len(acked) <= 1  # at most the one in flight when it stopped
    assert Path(f"{d.db_path}-wal").stat().st_size == 0  # final TRUNCATE checkpoint ran


def test_client_without_daemon_fails_clearly_within_its_timeout(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/nobody.sock"
    client = SessionStoreClient(address, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="nobody.sock"):
        client.save_session(session("s"))
    assert time.monotonic() - started < 3.0


def test_client_from_many_threads_and_after_fork(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("shared"))
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                client.save_outcome("shared", outcome(f"t{t}-{i}"), **EDIT)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    pid = os.fork()
    if pid == 0:  # child: the inherited client must work with its own socket
        code = 1
        try:
            client.save_outcome("shared", outcome("from-child"), **EDIT)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ids = [o.edit_id for o in client.list_outcomes("shared")]
    assert len(ids) == 201 and len(set(ids)) == 201 and "from-child" in ids


def test_pipeline_raises_naming_each_failed_save(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("p"))
    with pytest.raises(PipelineError, match="ghost") as caught, client.pipeline(8) as pipe:
        for i in range(100):
            pipe.save_outcome("p", outcome(f"ok-{i}"), **EDIT)
        pipe.save_outcome("ghost", outcome("lost"), **EDIT)
    assert len(caught.value.failures) == 1
    assert len(client.list_outcomes("p")) == 100


def test_status_reports_counters_sizes_and_jobs(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("s"))
    report = client.status()
    for key in (
        "uptime_seconds", "frames_received", "frames_rejected", "saves_applied",
        "saves_duplicate", "saves_rejected",
        "batches", "mean_batch_size", "last_commit_ms", "db_bytes", "wal_bytes",
        "sessions", "outcomes", "jobs",
    ):  # fmt: skip
        assert key in report, key
    assert report["sessions"] == 1 and report["saves_applied"] == 1
    assert {"checkpoint", "reconcile", "integrity"} <= set(report["jobs"])


def test_save_batch_gives_each_save_its_own_result_and_resends_apply_once(daemon: Daemon) -> None:
    SessionStoreClient(daemon.address, timeout=10).save_session(session("b"))
    saves = [
        protocol.encode_save_outcome("i1", "b", outcome("e1"), rationale="", **EDIT),
        protocol.encode_save_outcome("i2", "ghost", outcome("e2"), rationale="", **EDIT),
        b'"not a request"',
        protocol.encode_save_outcome("i3", "b", outcome("e3"), rationale="", **EDIT),
    ]
    frame = protocol.encode_save_batch("batch-1", saves)
    sock = raw_socket(daemon.address)
    reply = ask(sock, frame)
    assert reply["ok"] is True and reply["id"] == "batch-1"
    assert [(r["id"], r["ok"]) for r in reply["result"]] == [
        ("i1", True), ("i2", False), (None, False), ("i3", True),
    ]  # fmt: skip
    assert reply["result"][1]["error"]["code"] == "unknown_session"
    assert reply["result"][2]["error"]["code"] == "malformed"
    again = ask(sock, frame)  # a resend: the applied saves are recognised, not re-applied
    assert [r.get("duplicate", False) for r in again["result"]] == [True, False, False, True]
    assert stored_edit_ids(daemon.db_path, "b") == ["e1", "e3"]
    empty = ask(sock, protocol.encode_save_batch("batch-2", []))
    assert empty["ok"] is False and empty["error"]["code"] == "malformed"
