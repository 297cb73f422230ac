"""Error messages echo what they refuse, shortened: a 100 KB id must not come back whole.

Each case sends a huge value where it is echoed (an unknown session id, an op name,
an enum value, a field name, a protocol version) through the real path a caller
uses (the daemon, the store, the command) and checks the message stays short but
still shows the value's start, its end and its length.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import EDIT, Daemon, outcome, session
from stress_helpers import ask, raw_socket

from sessionstore import SessionStore, SessionStoreClient
from sessionstore.errors import InvalidRecord, SessionStoreError, UnknownSession, shorten

HUGE = "run-" + "x" * 99_990 + "-tail!"  # 100,000 characters
MOST = 400  # characters a message about one huge value may take


def assert_shortened(message: str, value: str = HUGE) -> None:
    assert len(message) < MOST, f"{len(message)} characters: {message[:200]}…"
    assert value[:20] in message and value[-6:] in message
    assert f"({len(value)} characters)" in message


def test_shorten_keeps_short_values_whole_and_cuts_long_ones_in_the_middle() -> None:
    assert shorten("run-42") == "'run-42'"
    assert shorten(None) == "None"
    cut = shorten(HUGE)
    assert cut.startswith("'run-xxx") and cut.endswith("-tail!' (100000 characters)")
    assert len(cut) < 100
    assert shorten(b"\xff" * 1000).endswith("(1000 bytes)")
    assert shorten(list(range(10_000))).endswith(
        f"(list, {len(repr(list(range(10_000))))} characters)"
    )


def test_daemon_refusals_echo_a_huge_id_or_value_shortened(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=30)
    with pytest.raises(UnknownSession) as unknown:
        client.save_outcome(HUGE, outcome("e1"), **EDIT)
    assert_shortened(str(unknown.value))
    with pytest.raises(UnknownSession) as orphan:
        client.save_session(session("child", parent_session_id=HUGE))
    assert_shortened(str(orphan.value))

    sock = raw_socket(daemon.address)
    frames = {
        "op": {"v": 1, "id": "a", "op": HUGE},
        "version": {"v": HUGE, "id": "a", "op": "status"},
        "field name": {"v": 1, "id": "a", "op": "status", HUGE: 1},
        "status": {"v": 1, "id": "a", "op": "list_sessions", "status": HUGE},
    }
    for what, frame in frames.items():
        reply = ask(sock, json.dumps(frame).encode())
        assert reply["ok"] is False, what
        assert_shortened(reply["error"]["message"])
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_store_refusals_echo_a_huge_enum_value_shortened(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "i.db")
    try:
        store.save_session(session("s"))
        with pytest.raises(InvalidRecord) as caught:
            store.save_outcome("s", outcome("e"), **{**EDIT, "op": HUGE})
        assert_shortened(str(caught.value))
        with pytest.raises(SessionStoreError) as listing:
            store.list_sessions(status=HUGE)  # type: ignore[arg-type]
        assert_shortened(str(listing.value))
    finally:
        store.close()


def test_show_with_a_huge_id_answers_in_one_short_line(daemon: Daemon) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONSTORE_")}
    done = subprocess.run(
        [sys.executable, "-m", "sessionstore", "show", HUGE, "--address", daemon.address],
        env={**env, "SESSIONSTORE_CONFIG": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("sessionstore show: error: no session 'run-xx")
    assert_shortened(line)
