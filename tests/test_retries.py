"""Retrying a save is safe: a failed call is not applied later, and an id names one save.

A save carries a deadline (the daemon refuses it unapplied once passed) and a request
id (saving again under it applies the save once; other content under it is refused).
Daemon behaviour runs against real ``sessionstore serve`` processes, stopped with
SIGSTOP where a test needs the daemon to miss a client's timeout.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from daemon_helpers import EDIT, Daemon, outcome, session
from stress_helpers import ask, raw_socket, wait_until

from sessionstore import SessionStore, SessionStoreClient, protocol, retries, schema
from sessionstore.batch import DIGEST_BYTES
from sessionstore.errors import (
    DaemonUnavailable,
    DeadlineExpired,
    MalformedRequest,
    PipelineError,
    RequestIdConflict,
)
from sessionstore.records import OutcomeEdit
from sessionstore.store import OutcomeWrite, SessionWrite

OUTCOME_EDIT = OutcomeEdit(**EDIT)
TIMEOUT = 1.5
"""The clients' timeout where a test outlasts it with a stopped daemon."""


@contextmanager
def stopped(d: Daemon) -> Iterator[None]:
    """The daemon is SIGSTOPped inside the block, and continued however the block ends."""
    assert d.proc is not None
    d.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        d.proc.send_signal(signal.SIGCONT)


def edit_ids(db_path: Path, session_id: str) -> list[str]:
    store = SessionStore(db_path, readonly=True)
    try:
        return [o.edit_id for o in store.list_outcomes(session_id)]
    finally:
        store.close()


def rejected(client: SessionStoreClient, code: str) -> int:
    return int(client.status()["saves_rejected"].get(code, 0))


def settled(client: SessionStoreClient) -> int:
    """Saves the daemon has answered: applied, duplicate or refused as expired."""
    report = client.status()
    answered = report["saves_applied"] + report["saves_duplicate"]
    return int(answered) + int(report["saves_rejected"].get("expired", 0))


# -- item 7: a save reported failed is not applied later; its retry applies it once -----


def test_saves_reported_failed_while_the_daemon_was_stopped_are_not_applied_later(
    daemon: Daemon,
) -> None:
    single = SessionStoreClient(daemon.address, timeout=TIMEOUT)
    piped = SessionStoreClient(daemon.address, timeout=TIMEOUT)
    single.save_session(session("s"))
    piped.get_session("s")  # both sockets connected before the daemon stops
    outcomes = {}
    with stopped(daemon):
        with pytest.raises(DaemonUnavailable, match="request_id=") as one:
            single.save_outcome("s", outcome("lone"), **EDIT)
        with (
            pytest.raises(PipelineError, match="outcome unknown for 100") as many,
            piped.pipeline() as pipe,
        ):
            for i in range(100):
                o = outcome(f"piped-{i:03d}")
                outcomes[pipe.save_outcome("s", o, **EDIT)] = o
    assert len(one.value.unknown_request_ids) == 1
    assert set(many.value.unknown_request_ids) == set(outcomes)

    # Continued, the daemon takes what was queued for it: past its deadline, all refused.
    status = SessionStoreClient(daemon.address, timeout=10)
    wait_until(lambda: settled(status) >= 1 + 101, 20, "the queued saves to be settled")
    assert edit_ids(daemon.db_path, "s") == []
    assert status.status()["saves_applied"] == 1  # the session only

    # The caller's retry under the same ids applies each save once, however often it runs.
    for _ in range(2):
        single.save_outcome(
            "s", outcome("lone"), **EDIT, request_id=one.value.unknown_request_ids[0]
        )
        with piped.pipeline() as pipe:
            for rid in many.value.unknown_request_ids:
                pipe.save_outcome("s", outcomes[rid], **EDIT, request_id=rid)
    stored = edit_ids(daemon.db_path, "s")
    assert sorted(stored) == sorted(["lone", *(o.edit_id for o in outcomes.values())])


def test_a_save_that_waits_past_its_deadline_for_the_write_lock_is_refused(daemon: Daemon) -> None:
    """The deadline is checked once the daemon holds the write lock, not when it read the frame."""
    client = SessionStoreClient(daemon.address, timeout=TIMEOUT)
    client.save_session(session("s"))
    holder = sqlite3.connect(daemon.db_path, timeout=10, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the daemon's next write waits for this
    try:
        with pytest.raises(DaemonUnavailable) as caught:
            client.save_outcome("s", outcome("late"), **EDIT)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    status = SessionStoreClient(daemon.address, timeout=10)
    wait_until(lambda: rejected(status, "expired") >= 1, 10, "the late save's refusal")
    assert edit_ids(daemon.db_path, "s") == []
    client.save_outcome(
        "s", outcome("late"), **EDIT, request_id=caught.value.unknown_request_ids[0]
    )
    assert edit_ids(daemon.db_path, "s") == ["late"]


def test_a_save_without_deadline_is_applied_late_and_its_retry_is_a_duplicate(
    daemon: Daemon,
) -> None:
    """Old clients send no deadline: served as before. A save applied after its caller
    gave up is the window that remains; the retry under its id then stores nothing new."""
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("s"))
    sock = raw_socket(daemon.address)
    old = protocol.encode_save_outcome("old-client-1", "s", outcome("e1"), rationale="", **EDIT)
    assert b"deadline" not in old
    assert ask(sock, protocol.encode_request("warm-up", "status"))["ok"]
    with stopped(daemon):
        sock.send(old)
        assert not sock.poll(int(TIMEOUT * 1000))  # the caller gives up
    assert json.loads(sock.recv(copy=True)) == {
        "v": 1, "id": "old-client-1", "ok": True, "result": None,
    }  # fmt: skip
    client.save_outcome("s", outcome("e1"), **EDIT, request_id="old-client-1")
    assert edit_ids(daemon.db_path, "s") == ["e1"]
    assert client.status()["saves_duplicate"] == 1


def test_an_expired_save_is_refused_with_its_own_code_and_leaves_its_id_unused(
    daemon: Daemon,
) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("s"))
    sock = raw_socket(daemon.address)
    frame = protocol.encode_save_outcome("r-late", "s", outcome("e1"), rationale="", **EDIT)
    reply = ask(sock, protocol.with_deadline(frame, time.time() - 5))
    assert reply["ok"] is False and reply["error"]["code"] == "expired"
    assert "'e1'" in reply["error"]["message"] and "not applied" in reply["error"]["message"]
    assert edit_ids(daemon.db_path, "s") == []
    # a save_batch's deadline is each item's; an item's own, if earlier, wins
    late_item = protocol.with_deadline(
        protocol.encode_save_outcome("r-item", "s", outcome("e2"), rationale="", **EDIT),
        time.time() - 5,
    )
    batch = protocol.encode_save_batch("b-1", [frame, late_item])
    reply = ask(sock, protocol.with_deadline(batch, time.time() + 30))
    assert [(r["id"], r["ok"]) for r in reply["result"]] == [("r-late", True), ("r-item", False)]
    assert reply["result"][1]["error"]["code"] == "expired"
    reply = ask(sock, protocol.with_deadline(protocol.encode_save_batch("b-2", [late_item]), 0.0))
    assert reply["result"][0]["error"]["code"] == "expired"
    assert edit_ids(daemon.db_path, "s") == ["e1"]  # the id refused late was not used up
    # a late copy of a save already applied is answered as the duplicate it is
    reply = ask(sock, protocol.with_deadline(frame, time.time() - 5))
    assert reply == {"v": 1, "id": "r-late", "ok": True, "result": None, "duplicate": True}


def test_a_client_that_still_waits_when_its_save_expires_gets_deadline_expired(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its clock is behind the daemon's (or the daemon stalled into the margin before the
    caller's timeout): refused at once, not applied, and retried under its id like any
    DaemonUnavailable."""
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("s"))
    with monkeypatch.context() as clock_behind:
        clock_behind.setattr(retries, "save_deadline", lambda timeout: time.time() - 60 + timeout)
        started = time.monotonic()
        with pytest.raises(DeadlineExpired, match="behind sessiond's") as caught:
            client.save_outcome("s", outcome("e1"), **EDIT)
        assert time.monotonic() - started < 5  # answered, not waited out
        with pytest.raises(PipelineError) as piped, client.pipeline() as pipe:
            rid = pipe.save_outcome("s", outcome("e2"), **EDIT)
    assert isinstance(caught.value, DaemonUnavailable)
    assert isinstance(piped.value.failures[0][1], DeadlineExpired)
    assert piped.value.unknown_request_ids == (rid,)
    assert edit_ids(daemon.db_path, "s") == []
    client.save_outcome("s", outcome("e1"), **EDIT, request_id=caught.value.unknown_request_ids[0])
    client.save_outcome("s", outcome("e2"), **EDIT, request_id=rid)
    assert edit_ids(daemon.db_path, "s") == ["e1", "e2"]


@pytest.mark.parametrize(
    "deadline", [b'"soon"', b"true", b"[1]", b"{}"], ids=["string", "bool", "list", "object"]
)
def test_a_deadline_that_is_not_a_number_is_malformed(deadline: bytes) -> None:
    frame = protocol.encode_save_session("r", session("s"))[:-1] + b',"deadline":' + deadline + b"}"
    with pytest.raises(MalformedRequest, match="deadline must be a number"):
        protocol.decode_request(frame, 1 << 20)


def test_a_deadline_is_decoded_as_unix_seconds_and_a_huge_one_never_expires() -> None:
    frame = protocol.encode_save_session("r", session("s"))
    decoded = protocol.decode_request(protocol.with_deadline(frame, 1.5e9), 1 << 20)
    assert decoded.write is not None and decoded.write.deadline == 1.5e9
    huge = frame[:-1] + b',"deadline":' + b"9" * 400 + b"}"
    decoded = protocol.decode_request(huge, 1 << 20)
    assert decoded.write is not None and decoded.write.deadline is None


def test_request_id_must_be_one_the_daemon_accepts(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    with pytest.raises(ValueError, match="request_id: expected a string of 1-128"):
        client.save_session(session("s"), request_id="x" * 129)
    with client.pipeline() as pipe:
        pipe.save_session(session("s"), request_id="mine")
        with pytest.raises(ValueError, match="'mine' is already in flight"):
            pipe.save_session(session("s"), request_id="mine")
        with pytest.raises(ValueError, match="expected EditOutcome"):
            pipe.save_outcome("s", "not an outcome", **EDIT, request_id="again")  # type: ignore[arg-type]
        assert pipe.in_flight == 1
        pipe.save_outcome(
            "s", outcome("e1"), **EDIT, request_id="again"
        )  # not taken by the refusal
    with client.pipeline() as pipe:
        pipe.save_session(session("s"), request_id="mine")  # settled above: free again here
    assert client.status()["saves_duplicate"] == 1


# -- item 8: a request id names one save; other content under it is refused ------------


def test_reused_request_id_with_other_content_is_refused_never_acknowledged(
    daemon: Daemon,
) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("s"), request_id="sess-r")
    client.save_outcome("s", outcome("e1"), **EDIT, request_id="r")
    with pytest.raises(RequestIdConflict, match="request id 'r' was already used"):
        client.save_outcome("s", outcome("e2"), **EDIT, request_id="r")
    with pytest.raises(RequestIdConflict):  # a changed field, same edit id
        client.save_outcome("s", outcome("e1", benchmark_delta=0.5), **EDIT, request_id="r")
    with pytest.raises(RequestIdConflict):  # a session save under an outcome's id
        client.save_session(session("s"), request_id="r")
    with pytest.raises(RequestIdConflict):
        client.save_session(session("s", status="completed"), request_id="sess-r")
    client.save_outcome("s", outcome("e1"), **EDIT, request_id="r")  # the same save: a duplicate
    client.save_session(session("s"), request_id="sess-r")

    with pytest.raises(PipelineError) as caught, client.pipeline() as pipe:
        for i in range(20):  # the set-wise path: a batch of outcomes only
            pipe.save_outcome("s", outcome(f"p{i}"), **EDIT, request_id=f"p{i}")
        pipe.save_outcome("s", outcome("e3"), **EDIT, request_id="r")
    assert [type(err) for _, err in caught.value.failures] == [RequestIdConflict]
    assert caught.value.unknown_request_ids == ()  # refused: its fate is known

    reply = ask(raw_socket(daemon.address), protocol.encode_save_outcome(
        "r", "s", outcome("e4"), rationale="", **EDIT
    ))  # fmt: skip
    assert reply["ok"] is False and reply["error"]["code"] == "id_conflict"
    assert edit_ids(daemon.db_path, "s") == ["e1", *(f"p{i}" for i in range(20))]
    assert client.get_session("s").status == "executing"  # type: ignore[union-attr]
    assert client.status()["saves_rejected"]["id_conflict"] == 6


def test_direct_and_daemon_saves_agree_on_what_the_same_save_is(
    daemon_factory: Callable[..., Daemon], make_session, make_outcome
) -> None:
    """The digest is of what a save stores: the same save through SessionStore and the
    daemon (and through a save_batch) is a duplicate, whichever came first."""
    d = daemon_factory()
    d.learning_root.mkdir(parents=True)
    first, later = make_session(), make_session()  # nested metadata, datetimes, floats
    direct = SessionStore(d.db_path)
    direct.save_session(first, request_id="s-first")
    direct.save_outcome(first.id, o1 := make_outcome(), **EDIT, rationale="why", request_id="o1")
    direct.close()

    d.start()
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(first, request_id="s-first")
    client.save_outcome(first.id, o1, **EDIT, rationale="why", request_id="o1")
    with pytest.raises(RequestIdConflict):
        client.save_outcome(first.id, o1, **EDIT, rationale="other", request_id="o1")
    client.save_session(later, request_id="s-later")
    o2 = make_outcome(benchmark_delta=1 / 3, cluster_deltas={"b": 1e-300, "a": -0.0})
    with client.pipeline() as pipe:
        pipe.save_outcome(later.id, o2, **EDIT, request_id="o2")
    assert client.status()["saves_duplicate"] == 2
    assert d.stop() == 0

    direct = SessionStore(d.db_path)
    try:
        direct.save_session(later, request_id="s-later")
        direct.save_outcome(later.id, o2, **EDIT, request_id="o2")
        direct.save_outcome(first.id, o1, **EDIT, rationale="why", request_id="o1")
        with pytest.raises(RequestIdConflict):
            direct.save_outcome(later.id, o1, **EDIT, request_id="o2")
        assert [o.edit_id for o in direct.list_outcomes(first.id)] == [o1.edit_id]
        assert [o.edit_id for o in direct.list_outcomes(later.id)] == [o2.edit_id]
    finally:
        direct.close()


# -- the store: deadlines and digests without a daemon ----------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    s = SessionStore(tmp_path / "distillation.db")
    yield s
    s.close()


def test_store_refuses_an_expired_write_alone_and_answers_a_late_copy_as_duplicate(
    store: SessionStore,
) -> None:
    s = session("s")
    store.save_session(s)
    past = time.time() - 1
    writes = [
        OutcomeWrite("s", outcome("e1"), OUTCOME_EDIT, "r1"),
        OutcomeWrite("s", outcome("e2"), OUTCOME_EDIT, "r2", deadline=past),
        SessionWrite(s, "rs", deadline=past),
        OutcomeWrite("s", outcome("e3"), OUTCOME_EDIT, "r3", deadline=time.time() + 60),
    ]
    results = store.apply_batch(writes)
    assert [r.ok for r in results] == [True, False, False, True]
    assert isinstance(results[1].error, DeadlineExpired) and "'e2'" in str(results[1].error)
    assert isinstance(results[2].error, DeadlineExpired)
    assert [o.edit_id for o in store.list_outcomes("s")] == ["e1", "e3"]
    # a late copy of r1 is a duplicate; one of r1's id with other content is a conflict
    late = store.apply_batch([
        OutcomeWrite("s", outcome("e1"), OUTCOME_EDIT, "r1", deadline=past),
        OutcomeWrite("s", outcome("x"), OUTCOME_EDIT, "r3", deadline=past),
    ])  # fmt: skip
    assert [(r.ok, r.duplicate) for r in late] == [(True, True), (False, False)]
    assert isinstance(late[1].error, DeadlineExpired)
    store.save_outcome("s", outcome("e2"), **EDIT, request_id="r2")  # not used up
    assert [o.edit_id for o in store.list_outcomes("s")] == ["e1", "e3", "e2"]


def test_index_at_schema_3_migrates_and_its_ids_without_digest_stay_duplicates(
    tmp_path: Path,
) -> None:
    """Ids applied before digests were kept count as the same save for the same op."""
    path = tmp_path / "distillation.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for version, statements in schema.MIGRATIONS:
        for statement in statements if version <= 3 else []:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.executemany(
        "INSERT INTO applied_requests (request_id, op, applied_at) VALUES (?, ?, ?)",
        [("old-o", "save_outcome", time.time()), ("old-s", "save_session", time.time())],
    )
    conn.close()

    store = SessionStore(path)
    try:
        store.save_session(session("s"))
        store.save_outcome("s", outcome("e1"), **EDIT, request_id="old-o")  # a duplicate
        store.save_session(session("s", status="completed"), request_id="old-s")
        with pytest.raises(RequestIdConflict, match="different save_session"):
            store.save_outcome("s", outcome("e2"), **EDIT, request_id="old-s")
        store.save_outcome("s", outcome("e3"), **EDIT, request_id="new")
        with pytest.raises(RequestIdConflict):
            store.save_outcome("s", outcome("e4"), **EDIT, request_id="new")
        assert store.list_outcomes("s") == [outcome("e3")]
        assert store.get_session("s").status == "executing"  # type: ignore[union-attr]
    finally:
        store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.LATEST_VERSION
    digests = dict(conn.execute("SELECT request_id, length(digest) FROM applied_requests"))
    assert digests == {"old-o": None, "old-s": None, "new": DIGEST_BYTES}
    conn.close()
