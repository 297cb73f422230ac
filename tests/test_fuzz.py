"""Bad input at scale, against one live daemon: every frame is answered, rejects change nothing.

Each frame goes out alone on a DEALER socket and must get exactly one reply: an
error for anything that is not a valid request (an oversized frame gets none and
loses its connection). For a rejected frame the index files, database and WAL,
must be byte-for-byte what they were before it. A mutation of a valid frame may
still be valid and be applied; only rejected frames are held to "changes nothing".
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from daemon_helpers import EDIT, Daemon, outcome, session
from fuzzframes import (
    FUZZ_SESSION,
    dumps,
    json_values,
    mutated_valid_frames,
    random_frames,
    request_shaped,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stress_helpers import index_files, raw_socket, scaled

from sessionstore import SessionStoreClient, protocol
from sessionstore.errors import ERROR_CODES

LIMIT = 1 << 20  # the daemon's max_message_bytes (its default)
REPLY_TIMEOUT_MS = 10_000
FUZZ_FRAMES = scaled(3000, 50_000)
FUZZ_SECONDS = scaled(45, 1200)
SEED = int(os.environ.get("SESSIONSTORE_FUZZ_SEED", "20260301"))
HYPOTHESIS = settings(
    max_examples=scaled(150, 2000),
    deadline=None,
    # one daemon serves every example: that is the point, not an accident of fixtures
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


class Probe:
    """Sends one message at a time to the daemon and judges the reply against the files."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.sock = raw_socket(daemon.address)
        self.codes: Counter[str] = Counter()
        self.before = index_files(daemon.db_path)

    def snapshot(self) -> None:
        self.before = index_files(self.daemon.db_path)

    def check(self, frames: list[bytes]) -> dict:
        """Send ``frames`` as one message; assert the guarantees; return the reply."""
        self.sock.send_multipart(frames)
        assert self.sock.poll(REPLY_TIMEOUT_MS), f"no reply to {frames!r:.300}"
        reply = json.loads(self.sock.recv())
        assert self.sock.poll(0) == 0, "more than one reply to one message"
        assert self.daemon.proc is not None and self.daemon.proc.poll() is None
        if reply["ok"]:
            self.codes["ok"] += 1
            self.snapshot()
            if not reply.get("duplicate"):
                self.read_back(frames[0])
            return reply
        code = reply["error"]["code"]
        self.codes[code] += 1
        message = reply["error"]["message"]
        assert code in ERROR_CODES and message, reply
        assert code != "internal", ("a daemon bug, not a refusal", frames, reply)
        expected_id = protocol.peek_id(frames[0]) if len(frames) == 1 else None
        if expected_id is not None:
            assert reply["id"] == expected_id, reply
        # every refusal, including those decided inside the write transaction
        assert index_files(self.daemon.db_path) == self.before, (frames, reply)
        return reply

    def read_back(self, frame: bytes) -> None:
        """A session that was accepted must read back: one stored row must never break reads."""
        request = json.loads(frame)
        if request.get("op") != "save_session":
            return
        sid = request["session"]["id"]
        self.sock.send(
            protocol.encode_request(f"read-{request['id']}", "get_session", session_id=sid)
        )
        assert self.sock.poll(REPLY_TIMEOUT_MS), "no reply to a read-back"
        reply = json.loads(self.sock.recv())
        assert reply["ok"] and reply["result"]["id"] == sid, ("accepted, unreadable", frame, reply)

    def list_all(self) -> None:
        self.sock.send(protocol.encode_request("list-all", "list_sessions"))
        assert self.sock.poll(REPLY_TIMEOUT_MS), "no reply to list_sessions"
        reply = json.loads(self.sock.recv())
        assert reply["ok"], ("listing broken", reply)

    def oversized(self, size: int) -> None:
        """A frame over the limit: no reply, that connection dropped, nothing changed."""
        sock = raw_socket(self.daemon.address)
        try:
            sock.send(b"{" + b" " * (size - 1))
            assert not sock.poll(300), "an oversized frame must not be answered"
        finally:
            sock.close()
        assert index_files(self.daemon.db_path) == self.before
        self.codes["too_large(dropped)"] += 1

    def keep_wal_small(self) -> None:
        if len(self.before[1]) > (1 << 20):
            self.check([protocol.encode_request("trim", "checkpoint", mode="TRUNCATE")])

    def alive(self) -> None:
        status = SessionStoreClient(self.daemon.address, timeout=10).status()
        assert self.daemon.proc is not None
        assert status["pid"] == self.daemon.proc.pid  # the same process answered throughout
        self.list_all()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the whole module, with no scheduled job to touch the files."""
    d = Daemon(
        tmp_path_factory.mktemp("fuzz") / "learning",
        extra_env={
            "SESSIONSTORE_CHECKPOINT_INTERVAL": "3600",
            "SESSIONSTORE_RECONCILE_INTERVAL": "3600",
            "SESSIONSTORE_RECONCILE_ON_START": "false",
        },
    )
    try:
        d.start()
        SessionStoreClient(d.address, timeout=10).save_session(session(FUZZ_SESSION))
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def probe(live: Daemon) -> Iterator[Probe]:
    p = Probe(live)
    yield p
    p.sock.close()


@pytest.fixture
def fresh(probe: Probe) -> Iterator[Probe]:
    probe.snapshot()
    yield probe
    probe.alive()


@HYPOTHESIS
@given(frames=st.lists(st.binary(max_size=512), min_size=1, max_size=3))
@example(frames=[b""])
@example(frames=[b"\xff" * 40])
@example(frames=[b'{"v":1,"id":"a","op":"status"}', b""])
def test_arbitrary_bytes_get_an_error_reply_and_change_nothing(
    fresh: Probe, frames: list[bytes]
) -> None:
    reply = fresh.check(frames)
    assert not reply["ok"] or len(frames) == 1


@HYPOTHESIS
@given(value=json_values)
def test_arbitrary_json_values_get_an_error_reply_and_change_nothing(
    fresh: Probe, value: object
) -> None:
    assert fresh.check([dumps(value)])["ok"] is False


@HYPOTHESIS
@given(request=request_shaped)
def test_request_shaped_objects_are_answered_and_rejects_change_nothing(
    fresh: Probe, request: dict
) -> None:
    fresh.check([dumps(request)])


@HYPOTHESIS
@given(frames=mutated_valid_frames())
def test_mutated_valid_frames_are_answered_and_rejects_change_nothing(
    fresh: Probe, frames: list[bytes]
) -> None:
    fresh.check(frames)
    fresh.keep_wal_small()


@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_thousands_of_random_and_mutated_frames_leave_the_daemon_serving(
    fresh: Probe,
) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    sent = 0
    for n in range(FUZZ_FRAMES):
        if time.monotonic() - started > FUZZ_SECONDS:
            break
        if n % 1000 == 999:
            fresh.oversized(LIMIT + 1 + rng.randrange(1000))
        try:
            fresh.check(random_frames(rng, n))
        except AssertionError as err:
            raise AssertionError(f"frame {n} (SESSIONSTORE_FUZZ_SEED={SEED}): {err}") from None
        fresh.keep_wal_small()
        if n % 500 == 499:
            fresh.list_all()
        sent += 1
    print(f"fuzz: {sent} frames in {time.monotonic() - started:.1f}s: {dict(fresh.codes)}")
    assert sent >= min(FUZZ_FRAMES, 1000)
    assert fresh.codes["ok"] > 0 and fresh.codes["malformed"] > 0 and fresh.codes["invalid"] > 0
    # and ordinary work goes on
    client = SessionStoreClient(fresh.daemon.address, timeout=10)
    client.save_outcome(FUZZ_SESSION, outcome("after-fuzz"), **EDIT)
    assert client.list_outcomes(FUZZ_SESSION)[-1].edit_id == "after-fuzz"


def test_oversized_frames_are_dropped_unanswered_and_change_nothing(fresh: Probe) -> None:
    for size in (LIMIT + 1, LIMIT + 4096, 2 * LIMIT):
        fresh.oversized(size)
    fresh.check([protocol.encode_request("after-oversized", "status")])


# -- what the fuzzing found: each a test of its own ----------------------------------------------


@pytest.fixture
def own(daemon: Daemon) -> Daemon:
    """A daemon of its own: a bug reproduced here must not poison the module's daemon."""
    SessionStoreClient(daemon.address, timeout=10).save_session(session(FUZZ_SESSION))
    return daemon


def _send_batch(address: str, frames: list[bytes]) -> list[dict]:
    """Send frames back to back on one socket (so they share a batch); replies by position."""
    sock = raw_socket(address)
    try:
        for frame in frames:
            sock.send(frame)
        replies: dict[str | None, dict] = {}
        while len(replies) < len(frames):
            assert sock.poll(REPLY_TIMEOUT_MS), f"{len(replies)} of {len(frames)} replies"
            reply = json.loads(sock.recv())
            replies[reply["id"]] = reply
        # the envelope's id comes first in every frame built here; a frame too deep to
        # parse is answered with id null, since the daemon cannot read its id
        ids = [re.search(rb'"id": ?"([^"]+)"', frame).group(1).decode() for frame in frames]  # type: ignore[union-attr]
        return [replies[rid] if rid in replies else replies[None] for rid in ids]
    finally:
        sock.close()


def _ask(daemon: Daemon, request_id: str, op: str, **params: object) -> dict:
    return _send_batch(daemon.address, [protocol.encode_request(request_id, op, **params)])[0]


def _bad_session_frame(rid: str, **fields: object) -> bytes:
    obj = json.loads(protocol.encode_save_session(rid, session(rid)))
    obj["session"].update(fields)
    return json.dumps(obj).encode()


def _good_frames(prefix: str, count: int) -> list[bytes]:
    return [
        protocol.encode_save_outcome(
            f"{prefix}-{i}", FUZZ_SESSION, outcome(f"{prefix}-{i}"), rationale="", **EDIT
        )
        for i in range(count)
    ]


def test_unencodable_string_in_one_save_fails_alone_not_its_batch(own: Daemon) -> None:
    outcome_frame = json.loads(_good_frames("sur-edit", 1)[0])
    outcome_frame["outcome"]["edit_id"] = "e\udc80"
    bad = [
        _bad_session_frame("sur-id", id="\udc00"),
        _bad_session_frame("sur-path", diagnosis_path="sessions/\ud800/diagnosis.md"),
        _bad_session_frame("sur-error", error="x\udfffy"),
        json.dumps(outcome_frame).encode(),
    ]
    good = _good_frames("beside-surrogate", 10)
    replies = _send_batch(own.address, [*good[:5], *bad, *good[5:]])
    codes = [r["error"]["code"] if not r["ok"] else "ok" for r in replies]
    assert codes == ["ok"] * 5 + ["invalid"] * len(bad) + ["ok"] * 5


def test_deeply_nested_record_fails_alone_and_never_breaks_reads(own: Daemon) -> None:
    """Accepted or refused as invalid, never 'internal'; batch-mates are always acked; and
    whatever was accepted reads back, alone and in listings."""
    for depth in (50, 300, 600, *range(900, 1000, 5)):
        bad = _bad_session_frame(f"deep-{depth}")
        bad = bad.replace(
            b'"trigger_metadata": {}',
            b'"trigger_metadata": {"a": ' + b"[" * depth + b"]" * depth + b"}",
        )
        assert b"[[[" in bad
        good = _good_frames(f"beside-deep-{depth}", 4)
        replies = _send_batch(own.address, [*good[:2], bad, *good[2:]])
        assert [r["ok"] for r in (*replies[:2], *replies[3:])] == [True] * 4, (depth, replies)
        if replies[2]["ok"]:
            read = _ask(own, f"read-deep-{depth}", "get_session", session_id=f"deep-{depth}")
            assert read["ok"], (depth, read)
        else:
            assert replies[2]["error"]["code"] in {"malformed", "invalid"}, (depth, replies[2])
    listing = _ask(own, "list-deep", "list_sessions")
    assert listing["ok"], listing


def test_number_out_of_float_range_is_refused_like_nan(own: Daemon) -> None:
    """1e999 is valid JSON but no float holds it: stored, it would come back as Infinity."""
    frame = _bad_session_frame("inf-cost").replace(
        b'"teacher_cost_usd": 0.1', b'"teacher_cost_usd": 1e999'
    )
    assert b"1e999" in frame
    reply = _send_batch(own.address, [frame])[0]
    assert reply["ok"] is False and reply["error"]["code"] in {"malformed", "invalid"}, reply


def test_list_limit_beyond_sqlite_integers_is_refused_as_malformed(own: Daemon) -> None:
    for limit in (2**63, 10**30):
        reply = _ask(own, f"limit-{limit}", "list_sessions", limit=limit)
        assert reply["ok"] is False and reply["error"]["code"] == "malformed", reply
    reply = _ask(own, "limit-max", "list_sessions", limit=2**63 - 1)
    assert reply["ok"] is True, reply


def test_ill_typed_checkpoint_mode_is_malformed_not_internal(own: Daemon) -> None:
    modes: list[object] = [[], {}, ["TRUNCATE"]]
    for mode in modes:
        reply = _ask(own, f"mode-{type(mode).__name__}", "checkpoint", mode=mode)
        assert reply["ok"] is False and reply["error"]["code"] == "malformed", reply
    assert "Traceback" not in own.stderr()


def test_ill_typed_reconcile_flags_are_malformed_not_internal(own: Daemon) -> None:
    for flag in ("dry_run", "full"):
        for value in (1, "yes", None, []):
            reply = _ask(own, f"{flag}-{value!r}", "reconcile", **{flag: value})
            assert reply["ok"] is False and reply["error"]["code"] == "malformed", reply
            assert flag in reply["error"]["message"]
    assert "Traceback" not in own.stderr()


def test_session_id_that_is_saved_can_be_read_back(own: Daemon) -> None:
    """An id is either refused when saved, or it works everywhere an id is taken."""
    frame = _bad_session_frame("empty-id", id="")
    reply = _send_batch(own.address, [frame])[0]
    if not reply["ok"]:
        assert reply["error"]["code"] == "invalid", reply
        return
    assert _ask(own, "read-empty", "get_session", session_id="")["ok"]


def test_refused_write_leaves_the_index_files_byte_identical(own: Daemon) -> None:
    before = index_files(own.db_path)
    frame = protocol.encode_save_outcome(
        "orphan-1", "no-such-session", outcome("e"), rationale="", **EDIT
    )
    reply = _send_batch(own.address, [frame])[0]
    assert reply["error"]["code"] == "unknown_session"
    after = index_files(own.db_path)
    assert (len(after[1]) - len(before[1]), after == before) == (0, True)
