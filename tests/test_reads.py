"""Reads through the daemon: answered by reader threads, the same as on the loop, bounded.

Every test runs real daemon processes on real index files; requests go over real
sockets, some through a bare DEALER to control ids and timing exactly.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from daemon_helpers import EDIT, Daemon, outcome, session
from stress_helpers import filled_root, raw_socket

from sessionstore import SessionStore, SessionStoreClient, protocol

WHOLE_LISTINGS = {
    "SESSIONSTORE_MAX_REPLY_BYTES": str(64 << 20),
    "SESSIONSTORE_PEER_REPLY_BYTES": str(1 << 30),
    "SESSIONSTORE_TOTAL_REPLY_BYTES": str(1 << 30),
}
"""For tests that need a read slow enough to still be running when they act: an unpaged
listing of thousands of sessions, as one reply, queued for peers that read late."""


def odd_records(root: Path) -> Path:
    """A few sessions with parents, errors, nested metadata and outcomes without dates."""
    root.mkdir(parents=True)
    store = SessionStore(root / "distillation.db")
    try:
        store.save_session(session("parent", 1, trigger_metadata={"deep": {"l": [1, 2.5, None]}}))
        store.save_session(session("child", 2, parent_session_id="parent", error="boom"))
        store.save_session(session("done", 3, status="completed", teacher_cost_usd=2**40))
        for sid in ("parent", "child"):
            store.save_outcome(sid, outcome(f"{sid}-1", cluster_deltas={"m": -0.5}), **EDIT)
            store.save_outcome(sid, outcome(f"{sid}-2", applied_at=None, error="gate"), **EDIT)
    finally:
        store.close()
    return root


def result_of(sock: zmq.Socket, request_id: str, op: str, **params: object) -> dict:
    sock.send(protocol.encode_request(request_id, op, **params))
    assert sock.poll(10_000), f"no reply to {op}"
    reply = json.loads(sock.recv())
    assert reply["id"] == request_id
    return reply


def wait_for_reads(probe: SessionStoreClient, at_least: int, timeout: float = 30.0) -> None:
    """Ask the daemon's status until ``at_least`` reads are with its readers."""
    deadline = time.monotonic() + timeout
    while probe.status()["reads_pending"] < at_least:
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {at_least} reads reached the readers within {timeout}s")


READS: list[tuple[str, dict[str, object]]] = [
    ("get_session", {"session_id": "child"}),
    ("get_session", {"session_id": "nobody"}),
    ("list_sessions", {"status": None, "limit": None}),
    ("list_sessions", {"status": "completed", "limit": None}),
    ("list_sessions", {"status": None, "limit": 2}),
    ("list_sessions", {"status": "exploded", "limit": None}),
    ("list_outcomes", {"session_id": "parent"}),
    ("list_outcomes", {"session_id": "nobody"}),
]


def test_readers_answer_exactly_as_the_loop_does(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    on_readers = daemon_factory(odd_records(tmp_path / "a" / "learning")).start()
    on_loop = daemon_factory(
        odd_records(tmp_path / "b" / "learning"), extra_env={"SESSIONSTORE_QUERY_THREADS": "0"}
    ).start()
    a, b = raw_socket(on_readers.address), raw_socket(on_loop.address)
    for n, (op, params) in enumerate(READS):
        ra = result_of(a, f"r{n}", op, **params)
        rb = result_of(b, f"r{n}", op, **params)
        assert ra == rb, op
    assert result_of(a, "x", "list_sessions", status=None, limit=None)["result"][0]["id"] == "done"
    bad = result_of(a, "y", "list_sessions", status="exploded", limit=None)
    assert bad["ok"] is False and bad["error"]["code"] == "invalid"
    # and the client turns the readers' JSON back into equal models
    client = SessionStoreClient(on_readers.address, timeout=10)
    direct = SessionStore(on_readers.db_path, readonly=True)
    try:
        assert client.list_sessions() == direct.list_sessions()
        assert client.list_outcomes("child") == direct.list_outcomes("child")
    finally:
        direct.close()


def test_an_acknowledged_save_is_seen_by_the_next_read(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("s"))
    for n in range(60):
        client.save_outcome("s", outcome(f"e{n}"), **EDIT)
        assert [o.edit_id for o in client.list_outcomes("s")][-1] == f"e{n}"
        client.save_session(session("s", error=f"step {n}"))
        got = client.get_session("s")
        assert got is not None and got.error == f"step {n}"
        assert len(got.edit_outcomes) == n + 1


def test_a_resent_read_still_running_is_answered_once_to_the_newest_sender(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    d = daemon_factory(
        filled_root(tmp_path / "learning", 2000, 10), extra_env=WHOLE_LISTINGS
    ).start()
    first, second = raw_socket(d.address), raw_socket(d.address)
    probe = SessionStoreClient(d.address, timeout=10)
    frame = protocol.encode_request("slow-read", "list_sessions", status=None, limit=None)
    first.send(frame)
    first.send(frame)  # a resend on the same connection
    wait_for_reads(probe, 1)  # two connections keep no order: wait until the first runs
    second.send(frame)  # and one from a client that reset its socket
    assert second.poll(30_000), "no reply to the resent listing"
    reply = json.loads(second.recv())
    assert reply["id"] == "slow-read" and reply["ok"] is True
    assert len(reply["result"]) == 2000
    assert not second.poll(1000), "the listing was answered twice"
    assert not first.poll(0), "the answer went to the older sender too"
    status = probe.status()
    assert status["resends_in_progress"] == 2
    assert status["reads_pending"] == 0


def test_another_request_under_a_running_id_is_refused_not_answered_with_its_data(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    d = daemon_factory(
        filled_root(tmp_path / "learning", 2000, 10), extra_env=WHOLE_LISTINGS
    ).start()
    a, b = raw_socket(d.address), raw_socket(d.address)
    probe = SessionStoreClient(d.address, timeout=10)
    a.send(protocol.encode_request("req-1", "list_sessions", status=None, limit=None))
    wait_for_reads(probe, 1)
    refused = result_of(b, "req-1", "get_session", session_id="bench-000001")
    assert refused["ok"] is False and refused["error"]["code"] == "malformed"
    assert "'req-1' is already in use by a running list_sessions" in refused["error"]["message"]
    assert a.poll(30_000), "the listing was not answered"
    listed = json.loads(a.recv())
    assert listed["id"] == "req-1" and listed["ok"] and len(listed["result"]) == 2000
    assert not b.poll(500), "the other client got the listing too"
    # once answered, the id is free again
    again = result_of(b, "req-1", "get_session", session_id="bench-000001")
    assert again["ok"] and again["result"]["id"] == "bench-000001"


@pytest.mark.timeout(120)
def test_a_flood_of_reads_is_refused_past_the_queue_and_the_daemon_carries_on(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    """700 listings from 350 connections at once (two each: what one connection may
    have running is bounded too, see test_reply_bounds.py)."""
    d = daemon_factory(filled_root(tmp_path / "learning", 300, 5)).start()
    socks = [raw_socket(d.address, SNDHWM=0, RCVHWM=0) for _ in range(350)]
    for n in range(700):
        frame = protocol.encode_request(f"flood-{n}", "list_sessions", status=None, limit=None)
        socks[n % 350].send(frame)
    codes: dict[str, int] = {}
    client = SessionStoreClient(d.address, timeout=30)
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)

    def drained() -> bool:
        for sock in socks:
            while sock.poll(0):
                reply = json.loads(sock.recv())
                code = "ok" if reply["ok"] else reply["error"]["code"]
                codes[code] = codes.get(code, 0) + 1
        return client.status()["reads_pending"] == 0

    for _ in range(600):  # poll, not sleep: each round waits up to 100 ms for replies
        if drained():
            break
        poller.poll(100)
    assert drained(), "the readers never caught up"
    assert set(codes) <= {"ok", "unavailable"}, codes
    assert codes.get("ok", 0) >= 256  # everything queued was answered (none dropped: it read)
    rejected = client.status()["frames_rejected"]
    assert rejected.get("unavailable", 0) >= 700 - 512  # a turn takes 512; 256 wait at most
    assert len(client.list_sessions(limit=3)) == 3  # and reads still work afterwards
    for sock in socks:
        sock.close()


def test_sigterm_answers_the_reads_already_with_the_readers(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    d = daemon_factory(
        filled_root(tmp_path / "learning", 1000, 5), extra_env=WHOLE_LISTINGS
    ).start()
    sock = raw_socket(d.address)
    for n in range(12):
        sock.send(protocol.encode_request(f"r{n}", "list_sessions", status=None, limit=None))
    wait_for_reads(SessionStoreClient(d.address, timeout=10), 1)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    replies = []
    while len(replies) < 12 and sock.poll(20_000):
        replies.append(json.loads(sock.recv()))
    assert d.proc.wait(60) == 0  # one SIGTERM: a second one would cut the final checkpoint
    assert sorted(r["id"] for r in replies) == sorted(f"r{n}" for n in range(12))
    assert all(r["ok"] and len(r["result"]) == 1000 for r in replies)
    assert "not done at shutdown" not in d.stderr()


@pytest.mark.timeout(120)
def test_sigterm_with_a_full_read_queue_stops_in_bounded_time_and_answers_every_read(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    """240 listings of 2,000 sessions wait for two readers (about a minute of work):
    the drain answers what it can in its 10 s and refuses the rest as shutting_down,
    which clients re-send; every read gets exactly one reply and the daemon exits."""
    d = daemon_factory(
        filled_root(tmp_path / "learning", 2000, 10), extra_env=WHOLE_LISTINGS
    ).start()
    clients = [raw_socket(d.address) for _ in range(20)]
    for c, sock in enumerate(clients):  # 12 each: below the high-water mark per connection
        for n in range(12):
            sock.send(
                protocol.encode_request(f"c{c}-{n}", "list_sessions", status=None, limit=None)
            )
    wait_for_reads(SessionStoreClient(d.address, timeout=10), 200)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    codes: dict[str, int] = {}
    for c, sock in enumerate(clients):
        ids = []
        while len(ids) < 12 and sock.poll(30_000):
            reply = json.loads(sock.recv())
            ids.append(reply["id"])
            code = "ok" if reply["ok"] else reply["error"]["code"]
            codes[code] = codes.get(code, 0) + 1
        assert sorted(ids) == sorted(f"c{c}-{n}" for n in range(12)), f"client {c}"
        sock.close()
    assert d.proc.wait(60) == 0
    assert set(codes) == {"ok", "shutting_down"}, codes
    assert "did not finish" not in d.stderr()  # readers stop after their current listing
