"""The `sessionstore` command, run as a real process against a real daemon.

Every command is run through ``python -m sessionstore`` with a private
``$OPENJARVIS_HOME`` (so the default learning root is the daemon's) and no config
file; output is checked both as the human table and as ``--json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import EDIT, Daemon, outcome, session
from sessionfiles import plan_dict, session_dict, write_session

from sessionstore import SessionStore, SessionStoreClient, __version__
from sessionstore.cli import build_parser, main
from sessionstore.models import SessionStatus

Run = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """Run the CLI with OPENJARVIS_HOME=tmp_path (learning root tmp_path/learning)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONSTORE_")}
    env.update(OPENJARVIS_HOME=str(tmp_path), SESSIONSTORE_CONFIG="", COLUMNS="200")

    def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "sessionstore", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run_cli


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return done.stdout


def as_json(done: subprocess.CompletedProcess) -> object:
    return json.loads(ok(done))


def one_line_error(done: subprocess.CompletedProcess, command: str) -> str:
    """The single stderr line of a failed command (no traceback)."""
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"sessionstore {command}: error: "), lines[0]
    return lines[0]


def seed(daemon: Daemon) -> SessionStoreClient:
    """Three sessions saved through the daemon: s1 oldest ... s3 newest; s2 failed."""
    client = SessionStoreClient(daemon.address, timeout=10)
    client.save_session(session("s1", 1, status=SessionStatus.COMPLETED))
    client.save_session(session("s2", 2, status=SessionStatus.FAILED, error="benchmark broke"))
    client.save_session(session("s3", 3, status=SessionStatus.COMPLETED))
    client.save_outcome("s3", outcome("e1"), **EDIT)
    client.save_outcome("s3", outcome("e2", status="rejected_by_gate"), **EDIT)
    return client


def write_session_files(root: Path, ids: list[str]) -> None:
    for sid in ids:
        write_session(root, sid, session_dict(sid), plan=plan_dict(sid))


def ls_ids(run: Run, daemon: Daemon, *args: str) -> list[str]:
    sessions = as_json(run("ls", "--json", "--address", daemon.address, *args))
    assert isinstance(sessions, list)
    return [s["id"] for s in sessions]


# -- no daemon needed ------------------------------------------------------------------


def test_version(run: Run) -> None:
    assert ok(run("--version")).strip() == f"sessionstore {__version__}"


def subcommands() -> list[str]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return sorted(action.choices)  # type: ignore[arg-type]


def test_every_documented_subcommand_exists() -> None:
    documented = {"serve", "status", "ls", "show", "checkpoint", "reconcile", "rebuild", "bench"}
    assert documented <= set(subcommands())


def test_help_exits_zero(run: Run) -> None:
    assert ok(run("--help")).startswith("usage: sessionstore")


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_help_exits_zero(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sessionstore {command}")
    assert "--address" in out and "--json" in out and "--timeout" in out


# -- against a running daemon --------------------------------------------------------------


def test_status_table_and_json(run: Run, daemon: Daemon) -> None:
    seed(daemon)
    table = ok(run("status", "--address", daemon.address))
    assert daemon.address in table
    for key in ("frames_received", "saves_applied", "wal_bytes", "sessions"):
        assert key in table
    assert "reconcile" in table  # the jobs table
    report = as_json(run("status", "--json", "--address", daemon.address))
    assert isinstance(report, dict)
    for key in (
        "frames_received", "saves_applied", "saves_rejected", "batches",
        "db_bytes", "wal_bytes", "sessions", "outcomes", "jobs", "address",
    ):  # fmt: skip
        assert key in report, key
    assert report["saves_applied"] == 5
    assert (report["sessions"], report["outcomes"]) == (3, 2)
    assert report["address"] == daemon.address


def test_ls_lists_newest_first_with_status_and_limit(run: Run, daemon: Daemon) -> None:
    seed(daemon)
    sessions = as_json(run("ls", "--json", "--address", daemon.address))
    assert isinstance(sessions, list)
    assert [s["id"] for s in sessions] == ["s3", "s2", "s1"]
    assert [len(s["edit_outcomes"]) for s in sessions] == [2, 0, 0]
    assert ls_ids(run, daemon, "--status", "completed") == ["s3", "s1"]
    assert ls_ids(run, daemon, "--status", "completed", "--limit", "1") == ["s3"]
    table = ok(run("ls", "--address", daemon.address))
    assert "3 session(s), newest first" in table
    assert table.index("s3") < table.index("s2") < table.index("s1")


def test_ls_rejects_an_unknown_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ls", "--status", "sleeping"])
    assert exited.value.code == 2
    assert "invalid choice: 'sleeping'" in capsys.readouterr().err


def test_show_prints_one_session_with_its_outcomes(run: Run, daemon: Daemon) -> None:
    seed(daemon)
    shown = as_json(run("show", "s3", "--json", "--address", daemon.address))
    assert isinstance(shown, dict)
    assert shown["id"] == "s3"
    assert [o["edit_id"] for o in shown["edit_outcomes"]] == ["e1", "e2"]
    table = ok(run("show", "s2", "--address", daemon.address))
    assert "session s2" in table and "benchmark broke" in table and "0 outcome(s)" in table


def test_show_unknown_id_fails_with_one_line(run: Run, daemon: Daemon) -> None:
    done = run("show", "nope", "--json", "--address", daemon.address)
    assert done.returncode == 1
    assert "nope" in one_line_error(done, "show")
    assert done.stdout == ""


def test_checkpoint_truncates_the_wal_after_thousands_of_writes(run: Run, daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=30)
    client.save_session(session("big"))
    wal_at_start = client.status()["wal_bytes"]
    with client.pipeline() as pipe:
        for i in range(3000):
            pipe.save_outcome("big", outcome(f"e{i:05d}"), **EDIT)
    wal_after_writes = client.status()["wal_bytes"]
    assert wal_after_writes > wal_at_start
    result = as_json(run("checkpoint", "--json", "--address", daemon.address))
    assert isinstance(result, dict)
    assert result["mode"] == "TRUNCATE"
    assert result["wal_bytes_before"] >= wal_after_writes > 0
    assert result["wal_bytes_after"] == 0
    assert result["blocked_by_readers"] is False
    assert Path(f"{daemon.db_path}-wal").stat().st_size == 0
    assert len(client.list_outcomes("big")) == 3000
    assert "checkpoint (TRUNCATE)" in ok(run("checkpoint", "--address", daemon.address))


def test_reconcile_dry_run_reports_then_reconcile_inserts(run: Run, daemon: Daemon) -> None:
    seed(daemon)
    write_session_files(daemon.learning_root, ["f1", "f2"])
    dry = as_json(run("reconcile", "--dry-run", "--json", "--address", daemon.address))
    assert isinstance(dry, dict)
    assert dry["dry_run"] is True
    assert (dry["scanned"], dry["inserted"], dry["outcomes_added"]) == (2, 2, 4)
    assert dry["invalid"] == []
    assert ls_ids(run, daemon) == ["s3", "s2", "s1"]  # the dry run changed nothing

    done = as_json(run("reconcile", "--json", "--address", daemon.address))
    assert isinstance(done, dict)
    assert done["dry_run"] is False
    assert (done["inserted"], done["outcomes_added"], done["outcomes_placeholder"]) == (2, 4, 0)
    assert done["index_only"] == 3  # the sessions saved without files are counted, kept
    assert set(ls_ids(run, daemon)) == {"s1", "s2", "s3", "f1", "f2"}
    client = SessionStoreClient(daemon.address, timeout=10)
    assert [o.edit_id for o in client.list_outcomes("f1")] == ["e1", "e2"]
    again = client.reconcile()
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 2)


def test_reconcile_full_restores_a_row_a_later_save_made_differ_from_its_file(
    run: Run, daemon: Daemon
) -> None:
    write_session_files(daemon.learning_root, ["f1"])
    client = SessionStoreClient(daemon.address, timeout=10)
    assert client.reconcile()["inserted"] == 1  # and its file's size and mtime are recorded
    indexed = client.get_session("f1")
    assert indexed is not None and indexed.status.value == "completed"
    client.save_session(
        indexed.model_copy(update={"status": SessionStatus.FAILED})
    )  # the file stays
    quick = as_json(run("reconcile", "--json", "--address", daemon.address))
    assert isinstance(quick, dict) and (quick["full"], quick["unchanged"]) == (False, 1)
    assert client.get_session("f1").status.value == "failed"  # type: ignore[union-attr]
    full = as_json(run("reconcile", "--full", "--json", "--address", daemon.address))
    assert isinstance(full, dict) and (full["full"], full["updated"]) == (True, 1)
    assert client.get_session("f1").status.value == "completed"  # type: ignore[union-attr]


def test_integrity_reports_ok(run: Run, daemon: Daemon) -> None:
    seed(daemon)
    result = as_json(run("integrity", "--json", "--address", daemon.address))
    assert result == {"ok": True, "messages": ["ok"]}
    assert "integrity check" in ok(run("integrity", "--address", daemon.address))


def test_rebuild_refuses_while_the_daemon_runs_then_rebuilds_from_the_files(
    run: Run, daemon: Daemon
) -> None:
    client = seed(daemon)  # three sessions in the index only
    write_session_files(daemon.learning_root, ["f1", "f2", "f3"])
    refused = run("rebuild", "--json")
    line = one_line_error(refused, "rebuild")
    assert "running sessiond" in line and str(daemon.db_path) in line
    assert refused.stdout == ""
    assert client.status()["sessions"] == 3  # the running daemon's index is untouched

    assert daemon.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{daemon.db_path}{suffix}").unlink(missing_ok=True)
    result = as_json(run("rebuild", "--json"))
    assert isinstance(result, dict)
    assert (result["inserted"], result["outcomes_added"], result["invalid"]) == (3, 6, [])
    store = SessionStore(daemon.db_path, readonly=True)
    try:
        assert sorted(s.id for s in store.list_sessions()) == ["f1", "f2", "f3"]
        assert [o.edit_id for o in store.list_outcomes("f2")] == ["e1", "e2"]
    finally:
        store.close()


def test_rebuild_without_a_previous_index_writes_it_owner_only_under_umask_022(
    run: Run, tmp_path: Path
) -> None:
    learning = tmp_path / "learning"
    write_session_files(learning, ["f1"])
    previous = os.umask(0o022)  # inherited by the command
    try:
        result = as_json(run("rebuild", "--json"))
    finally:
        os.umask(previous)
    assert isinstance(result, dict) and result["inserted"] == 1
    modes = {p.name: p.stat().st_mode & 0o777 for p in learning.iterdir() if p.is_file()}
    assert modes == {"distillation.db": 0o600, "distillation.db.lock": 0o600}


# -- no daemon at the address --------------------------------------------------------------

NO_DAEMON_COMMANDS = [
    ["status"],
    ["ls"],
    ["show", "s1"],
    ["checkpoint"],
    ["reconcile"],
    ["integrity"],
]


@pytest.mark.parametrize("args", NO_DAEMON_COMMANDS, ids=lambda a: a[0])
def test_without_a_daemon_a_command_fails_within_its_timeout(
    run: Run, tmp_path: Path, args: list[str]
) -> None:
    address = f"ipc://{tmp_path}/nobody.sock"
    started = time.monotonic()
    try:
        done = run(*args, "--address", address, "--timeout", "0.5", timeout=3.0)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`sessionstore {args[0]} --timeout 0.5` still waiting after 3 s")
    took = time.monotonic() - started
    line = one_line_error(done, args[0])
    assert done.returncode == 1
    assert address in line and "within 0.5s" in line
    assert took < 2.5


def test_debug_shows_the_traceback(run: Run, tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/nobody.sock"
    done = run("status", "--address", address, "--timeout", "0.5", "--debug")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "DaemonUnavailable" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("sessionstore status: error: ")
