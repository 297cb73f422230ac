"""Crash safety: SIGKILL the daemon again and again under load; nothing acknowledged is lost.

Writers are real processes saving through ``SessionStoreClient`` with a long
timeout, so each call rides out the restarts by re-sending with the *same*
request id. The daemon is killed after a varied number of acks has been observed
(never after a sleep), including right after READY=1 and while the writers'
first saves are in flight. Checkpoints run every few hundred milliseconds, so
some kills land during one.

Whether a random kill lands between a commit and the writer reading its ack is
luck, so every cycle also makes that case on purpose: a probe save is sent, seen
committed in the index, its ack left unread, the daemon killed, and the same
frame re-sent to the next daemon, which must call it a duplicate. A broken
request-id store fails every run, not only some seeds.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
from daemon_helpers import EDIT, Daemon, outcome, session
from stress_helpers import (
    LONG,
    Writer,
    ask,
    duplicated_outcomes,
    integrity,
    outcome_ids,
    raw_socket,
    scaled,
    session_ids,
    total_acks,
    wait_until,
)

from sessionstore import SessionStoreClient, protocol

CYCLES = scaled(3, 12)
SYNC_WRITERS = 4
EDITS_PER_WRITER = scaled(700, 2500)
WRITER_TIMEOUT = 60.0  # seconds one save may take, retries across restarts included
SEED = int(os.environ.get("SESSIONSTORE_CRASH_SEED", "7"))


def kill_gaps(rng: random.Random, cycles: int) -> list[int]:
    """Acks to observe after each (re)start before the next kill: the first kill hits the
    writers' first saves (0 acks), another comes right after READY=1, the rest vary."""
    gaps = [0] + [rng.choice([1, 5, 40, 150, 400]) for _ in range(cycles - 1)]
    gaps[rng.randrange(1, cycles)] = 0
    return gaps


PROBES = "probes"


def commit_unacknowledged_probe(d: Daemon, edit_id: str) -> bytes:
    """Send a save whose ack nobody reads and wait until the index holds it; its frame.

    What a writer sees when the daemon dies between COMMIT and the ack reaching it.
    """
    frame = protocol.encode_save_outcome(
        f"rid-{edit_id}", PROBES, outcome(edit_id), rationale="", **EDIT
    )
    sock = raw_socket(d.address)
    try:
        sock.send(frame)  # its ack is never read
        wait_until(lambda: edit_id in outcome_ids(d.db_path, PROBES), 30, f"{edit_id} committed")
    finally:
        sock.close()
    return frame


@pytest.mark.timeout(1200 if LONG else 120)
def test_acknowledged_saves_survive_repeated_sigkill_exactly_once(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory(
        extra_env={
            "SESSIONSTORE_CHECKPOINT_INTERVAL": "0.3",
            "SESSIONSTORE_WAL_TRUNCATE_BYTES": "0",
        }
    ).start()
    sync = [
        Writer(d.address, str(i), EDITS_PER_WRITER, "sync", WRITER_TIMEOUT)
        for i in range(SYNC_WRITERS)
    ]
    piped = Writer(d.address, str(SYNC_WRITERS), EDITS_PER_WRITER, "pipeline", WRITER_TIMEOUT)
    writers = [*sync, piped]
    total = SYNC_WRITERS * EDITS_PER_WRITER
    pids, acks_at_kill, probes = [], [], []
    SessionStoreClient(d.address, timeout=10).save_session(session(PROBES))
    try:
        for cycle, gap in enumerate(kill_gaps(random.Random(SEED), CYCLES)):
            point = total_acks(sync) + gap

            def reached(point: int = point) -> bool:
                failed = [w for w in writers if w.proc.poll() not in (None, 0)]
                assert not failed, (
                    f"writer {failed[0].writer_id} died with {failed[0].finish(5)}: {failed[0].stderr}"
                )
                return total_acks(sync) >= point

            wait_until(reached, 60, f"{point} acks (daemon log: {d.stderr()})")
            assert d.proc is not None
            pids.append(d.proc.pid)
            probe = commit_unacknowledged_probe(d, f"probe-{cycle}")
            d.kill()
            acks_at_kill.append(total_acks(sync))
            d.start()
            again = ask(raw_socket(d.address), probe)
            assert again["ok"] is True and again.get("duplicate") is True, again
            probes.append(f"probe-{cycle}")
        codes = {w.writer_id: w.finish(timeout=120) for w in writers}
    finally:
        for w in writers:
            w.kill()

    assert len(set(pids)) == CYCLES  # each kill hit a fresh process
    assert max(acks_at_kill) < total, "every kill must land while writers are still saving"
    for w in writers:
        assert codes[w.writer_id] == 0, f"writer {w.writer_id}: {w.stderr}"
        assert sorted(w.acked) == w.attempted  # all it attempted was acknowledged
    # one more crash, now that everything is acked, then read the file as a restart would
    d.kill()
    assert integrity(d.db_path) == ["ok"]
    assert duplicated_outcomes(d.db_path) == []
    for w in sync:  # a sync writer's acks come in order: the index holds exactly them, in order
        assert w.acked == w.attempted
        assert outcome_ids(d.db_path, w.session_id) == w.attempted
    assert sorted(outcome_ids(d.db_path, piped.session_id)) == piped.attempted
    assert {w.session_id for w in writers} <= session_ids(d.db_path)
    assert outcome_ids(d.db_path, PROBES) == probes  # each committed once, re-sends not stored
    assert len(outcome_ids(d.db_path)) == len(writers) * EDITS_PER_WRITER + len(probes)
    # and the daemon starts on what the last crash left, with every row counted
    d.start()
    status = SessionStoreClient(d.address, timeout=10).status()
    assert status["outcomes"] == len(writers) * EDITS_PER_WRITER + len(probes)
