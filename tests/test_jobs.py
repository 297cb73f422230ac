"""Maintenance through the live daemon: jobs run on the loop, between batches, and never kill it."""

from __future__ import annotations

import threading
import time

from daemon_helpers import EDIT, Daemon, outcome, session
from sessionfiles import plan_dict, session_dict, write_session

from sessionstore import SessionStore, SessionStoreClient
from sessionstore.models import SessionStatus


def wait_until(predicate, timeout: float = 30.0, every: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll a condition of the daemon's state with a deadline (its reports are the events)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def test_saves_are_acknowledged_while_a_large_reconcile_runs(daemon_factory) -> None:
    d: Daemon = daemon_factory()
    for i in range(3000):
        sid = f"file-{i:05d}"
        write_session(d.learning_root, sid, session_dict(sid), plan=plan_dict(sid))
    d.start()
    client = SessionStoreClient(d.address, timeout=30)
    client.save_session(session("live"))
    reconcile_result: dict = {}
    acked_during: list[int] = []

    def run_reconcile() -> None:
        reconcile_result.update(client.reconcile(timeout=300))

    worker = threading.Thread(target=run_reconcile)
    worker.start()
    i = 0
    while worker.is_alive() or i == 0:
        client.save_outcome("live", outcome(f"e{i}"), **EDIT)
        if worker.is_alive():
            acked_during.append(i)
        i += 1
    worker.join(300)
    assert reconcile_result["inserted"] == 3000
    # the reconcile was sliced: saves were acknowledged while it was still running
    assert len(acked_during) >= 5, acked_during
    assert len(client.list_outcomes("live")) == i
    assert client.status()["jobs"]["reconcile"]["runs"] == 1


def test_scheduled_checkpoint_truncates_a_grown_wal_when_idle(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        extra_env={
            "SESSIONSTORE_CHECKPOINT_INTERVAL": "0.3",
            "SESSIONSTORE_WAL_TRUNCATE_BYTES": "0",
        }
    ).start()
    client = SessionStoreClient(d.address, timeout=30)
    client.save_session(session("s"))
    with client.pipeline() as pipe:
        for i in range(3000):
            pipe.save_outcome("s", outcome(f"e{i}"), **EDIT)
    assert client.status()["wal_bytes"] > 0
    runs_before = client.status()["jobs"]["checkpoint"]["runs"]

    def truncated() -> bool:
        report = client.status()
        job = report["jobs"]["checkpoint"]
        return job["runs"] > runs_before and report["wal_bytes"] == 0

    wait_until(truncated)
    last = client.status()["jobs"]["checkpoint"]["last_result"]
    assert last["mode"] == "TRUNCATE" and last["blocked_by_readers"] is False


def test_checkpoint_on_demand_reports_blocking_reader(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=30)
    client.save_session(session("s"))
    with client.pipeline() as pipe:
        for i in range(500):
            pipe.save_outcome("s", outcome(f"e{i}"), **EDIT)
    reader = SessionStore(daemon.db_path, readonly=True)
    try:
        reader._conn.execute("BEGIN")
        reader._conn.execute("SELECT count(*) FROM edit_outcomes").fetchone()  # pins a snapshot
        started = time.monotonic()
        blocked = client.checkpoint("TRUNCATE")
        # reported at once, not after the 5 s busy timeout the loop used to sit out
        assert time.monotonic() - started < 2.5
        assert blocked["blocked_by_readers"] is True and blocked["wal_bytes_after"] > 0
        reader._conn.execute("COMMIT")
    finally:
        reader.close()
    freed = client.checkpoint("TRUNCATE")
    assert freed["blocked_by_readers"] is False and freed["wal_bytes_after"] == 0


def test_integrity_check_on_demand_reports_ok(daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=30)
    assert client.integrity_check() == {"ok": True, "messages": ["ok"]}
    assert client.status()["integrity_ok"] is True


def test_a_scheduled_full_pass_restores_a_row_a_later_save_made_differ(daemon_factory) -> None:
    d = daemon_factory(
        extra_env={
            "SESSIONSTORE_RECONCILE_INTERVAL": "0.5",
            "SESSIONSTORE_RECONCILE_FULL_INTERVAL": "2",
            "SESSIONSTORE_RECONCILE_ON_START": "false",
        }
    )
    write_session(d.learning_root, "f1", session_dict("f1"), plan=plan_dict("f1"))
    d.start()
    client = SessionStoreClient(d.address, timeout=10)
    deadline = time.monotonic() + 30
    while client.get_session("f1") is None:  # the first passes are incremental
        assert time.monotonic() < deadline, "f1 was never reconciled"
        time.sleep(0.05)  # polling interval; the deadline decides
    indexed = client.get_session("f1")
    assert indexed is not None
    client.save_session(indexed.model_copy(update={"status": SessionStatus.FAILED}))
    # only a full pass re-reads the unchanged file (see the CLI test for the contrast)
    while (got := client.get_session("f1")) is None or got.status.value != "completed":
        assert time.monotonic() < deadline, "no full pass restored the file's status"
        time.sleep(0.05)


def test_an_unusable_file_is_logged_once_not_at_every_scheduled_pass(daemon_factory) -> None:
    d: Daemon = daemon_factory(extra_env={"SESSIONSTORE_RECONCILE_INTERVAL": "0.2"})
    bad = d.learning_root / "sessions" / "bad" / "session.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json", encoding="utf-8")
    d.start()
    client = SessionStoreClient(d.address, timeout=30)

    def passes_with(n_invalid: int, at_least: int) -> int:
        def done() -> int:
            job = client.status()["jobs"]["reconcile"]
            found = len((job["last_result"] or {}).get("invalid", []))
            return job["runs"] if job["runs"] >= at_least and found == n_invalid else 0

        return int(wait_until(done))

    runs = passes_with(1, at_least=4)  # four passes, each finding the file unusable
    worse = d.learning_root / "sessions" / "worse" / "session.json"
    worse.parent.mkdir(parents=True)
    worse.write_text("[]", encoding="utf-8")
    passes_with(2, at_least=runs + 4)
    log = d.stderr()
    assert log.count("reconcile: cannot use sessions/bad/session.json:") == 1, log
    assert log.count("reconcile: cannot use sessions/worse/session.json:") == 1, log
    done_lines = [line for line in log.splitlines() if "reconcile done in" in line]
    assert done_lines and all("invalid=" in line for line in done_lines)
    assert not [line for line in done_lines if "duration_seconds" in line]  # said once, rounded


def test_status_keeps_the_first_unusable_files_of_a_reconcile_and_counts_the_rest(
    daemon_factory,
) -> None:
    d: Daemon = daemon_factory(extra_env={"SESSIONSTORE_RECONCILE_ON_START": "false"})
    for i in range(30):
        write_session(d.learning_root, f"broken-{i:02d}", b"{")
    d.start()
    client = SessionStoreClient(d.address, timeout=30)
    reply = client.reconcile()
    assert len(reply["invalid"]) == 30  # the caller who asked gets the whole list
    shown = client.status()["jobs"]["reconcile"]["last_result"]
    assert shown["invalid"] == reply["invalid"][:20]
    assert shown["invalid_count"] == 30
