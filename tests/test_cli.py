"""The `sessionstore` command, run as a real process against a real daemon.

Every command is run through ``python -m sessionstore`` with a private
``$OPENJARVIS_HOME`` (so the default learning root is the daemon's) and no config
file; output is checked both as the human table and as ``--json``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_helpers import Run, as_json, ok, one_line_error, runner
from daemon_helpers import EDIT, Daemon, outcome, session
from sessionfiles import plan_dict, session_dict, write_session

from sessionstore import SessionStore, SessionStoreClient, __version__
from sessionstore.cli import build_parser, main
from sessionstore.models import SessionStatus


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """Run the CLI with OPENJARVIS_HOME=tmp_path (learning root tmp_path/learning)."""
    return runner(tmp_path)


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
    assert "--debug" in out


def command_parser(command: str) -> argparse.ArgumentParser:
    (action,) = [a for a in build_parser()._actions if a.dest == "command"]
    return action.choices[command]  # type: ignore[index,no-any-return]


@pytest.mark.parametrize("command", ["", *subcommands()])
def test_every_option_and_argument_has_help_text(command: str) -> None:
    parser = command_parser(command) if command else build_parser()
    for action in parser._actions:
        if action.dest in {"help", "command"}:
            continue
        assert action.help and action.help.strip(), (
            f"{command} {action.option_strings or action.dest}"
        )


# Options a command has no use for are not offered (and refused before the command name).
NOT_OFFERED = {
    "serve": {"--timeout", "--json"},
    "rebuild": {"--timeout", "--address"},
    "restore": {"--timeout", "--address"},  # offline, like rebuild: it works on the files
    "bench": {"--address"},
    "keygen": {"--timeout", "--address", "--config"},
    "config": {"--timeout", "--address"},
}


@pytest.mark.parametrize("command", subcommands())
def test_a_command_offers_the_global_options_it_uses_and_no_others(command: str) -> None:
    offered = {s for a in command_parser(command)._actions for s in a.option_strings}
    client = {"--config", "--address", "--timeout", "--json", "--debug"}
    assert offered & client == client - NOT_OFFERED.get(command, set())


# -- against a running daemon --------------------------------------------------------------


def test_status_table_and_json(run: Run, daemon: Daemon) -> None:
    seed(daemon)
    table = ok(run("status", "--address", daemon.address))
    assert daemon.address in table
    for key in ("frames received", "saves applied", "wal size", "sessions"):
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
    sessions = as_json(run("ls", "--json", "--outcomes", "--address", daemon.address))
    assert isinstance(sessions, list)
    assert [s["id"] for s in sessions] == ["s3", "s2", "s1"]
    assert [len(s["edit_outcomes"]) for s in sessions] == [2, 0, 0]
    assert ls_ids(run, daemon, "--status", "completed") == ["s3", "s1"]
    assert ls_ids(run, daemon, "--status", "completed", "--limit", "1") == ["s3"]
    lines = ok(run("ls", "--address", daemon.address)).splitlines()
    assert lines[0].split() == ["id", "status", "trigger", "started", "outcomes"] + [
        "before", "after", "cost", "$"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["s3", "s2", "s1"]


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
    lines = ok(run("show", "s2", "--address", daemon.address)).splitlines()
    assert lines[0].split() == ["id", "s2"]
    assert ["error", "benchmark", "broke"] in [line.split() for line in lines]
    assert lines[-1].split() == ["edit", "id", "status", "benchmark", "delta", "applied", "error"]


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
    shown = ok(run("checkpoint", "--address", daemon.address)).splitlines()
    assert shown[0].split() == ["mode", "TRUNCATE"]
    assert ["wal", "size", "after", "0", "B"] in [line.split() for line in shown]


def test_reconcile_dry_run_reports_then_reconcile_inserts(run: Run, manual_daemon: Daemon) -> None:
    seed(manual_daemon)
    write_session_files(manual_daemon.learning_root, ["f1", "f2"])
    dry = as_json(run("reconcile", "--dry-run", "--json", "--address", manual_daemon.address))
    assert isinstance(dry, dict)
    assert dry["dry_run"] is True
    assert (dry["scanned"], dry["inserted"], dry["outcomes_added"]) == (2, 2, 4)
    assert dry["invalid"] == []
    assert ls_ids(run, manual_daemon) == ["s3", "s2", "s1"]  # the dry run changed nothing

    done = as_json(run("reconcile", "--json", "--address", manual_daemon.address))
    assert isinstance(done, dict)
    assert done["dry_run"] is False
    assert (done["inserted"], done["outcomes_added"], done["outcomes_placeholder"]) == (2, 4, 0)
    assert done["index_only"] == 3  # the sessions saved without files are counted, kept
    assert set(ls_ids(run, manual_daemon)) == {"s1", "s2", "s3", "f1", "f2"}
    client = SessionStoreClient(manual_daemon.address, timeout=10)
    assert [o.edit_id for o in client.list_outcomes("f1")] == ["e1", "e2"]
    again = client.reconcile()
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 2)


def test_reconcile_full_restores_a_row_a_later_save_made_differ_from_its_file(
    run: Run, manual_daemon: Daemon
) -> None:
    write_session_files(manual_daemon.learning_root, ["f1"])
    client = SessionStoreClient(manual_daemon.address, timeout=10)
    assert client.reconcile()["inserted"] == 1  # and its file's size and mtime are recorded
    indexed = client.get_session("f1")
    assert indexed is not None and indexed.status.value == "completed"
    client.save_session(
        indexed.model_copy(update={"status": SessionStatus.FAILED})
    )  # the file stays
    quick = as_json(run("reconcile", "--json", "--address", manual_daemon.address))
    assert isinstance(quick, dict) and (quick["full"], quick["unchanged"]) == (False, 1)
    assert client.get_session("f1").status.value == "failed"  # type: ignore[union-attr]
    full = as_json(run("reconcile", "--full", "--json", "--address", manual_daemon.address))
    assert isinstance(full, dict) and (full["full"], full["updated"]) == (True, 1)
    assert client.get_session("f1").status.value == "completed"  # type: ignore[union-attr]


def test_integrity_reports_ok(run: Run, daemon: Daemon) -> None:
    seed(daemon)
    result = as_json(run("integrity", "--json", "--address", daemon.address))
    assert result == {"ok": True, "messages": ["ok"]}
    assert ok(run("integrity", "--address", daemon.address)).splitlines()[0].split() == [
        "ok",
        "yes",
    ]


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


def test_rebuild_keeps_sessions_only_the_index_has_and_refuses_an_unreadable_index(
    run: Run, daemon: Daemon
) -> None:
    seed(daemon)  # three sessions and two outcomes in the index only
    write_session_files(daemon.learning_root, ["f1"])
    assert daemon.stop() == 0

    result = as_json(run("rebuild", "--json"))
    assert isinstance(result, dict)
    assert (result["inserted"], result["index_only_kept"], result["outcomes_kept"]) == (1, 3, 2)
    assert result["dropped"] == 0 and "index_only" not in result  # reconcile's count, not this
    assert re.search(r"sessions without a file \(kept\) +3", ok(run("rebuild")))  # the table too

    daemon.db_path.write_bytes(b"\0" * 4096)  # an index that lost its header
    refused = run("rebuild")
    assert refused.returncode == 1
    line = one_line_error(refused, "rebuild")
    assert "cannot read the old index" in line and "--files-only" in line
    assert daemon.db_path.read_bytes() == b"\0" * 4096

    result = as_json(run("rebuild", "--files-only", "--json"))
    assert isinstance(result, dict)
    assert (result["inserted"], result["index_only_kept"], result["dropped"]) == (1, 0, None)


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


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short private directory: an ipc:// path must stay within 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ss-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def silent_address(sockdir: Path) -> Iterator[str]:
    """An ipc:// socket that accepts connections and never answers (a wedged daemon)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sockdir / "silent.sock"))
        listener.listen(64)
        yield f"ipc://{sockdir}/silent.sock"


@pytest.mark.parametrize("args", NO_DAEMON_COMMANDS, ids=lambda a: a[0])
def test_without_a_socket_file_a_command_fails_at_once_not_after_its_timeout(
    run: Run, sockdir: Path, args: list[str]
) -> None:
    address = f"ipc://{sockdir}/nobody.sock"
    started = time.monotonic()
    try:
        done = run(*args, "--address", address, "--timeout", "120", timeout=60.0)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`sessionstore {args[0]}` waited for a daemon whose socket file is absent")
    line = one_line_error(done, args[0])
    assert done.returncode == 1
    assert f"no daemon at {address}" in line and "start one with `sessionstore serve`" in line
    assert time.monotonic() - started < 30  # process start-up only, however loaded the machine


def test_a_socket_file_left_by_a_killed_daemon_fails_at_once(
    run: Run, daemon_factory: Callable[..., Daemon]
) -> None:
    killed = daemon_factory().start()
    killed.kill()
    assert Path(killed.address[len("ipc://") :]).exists()  # SIGKILL left it behind
    try:
        done = run("status", "--address", killed.address, "--timeout", "120", timeout=60.0)
    except subprocess.TimeoutExpired:
        pytest.fail("`sessionstore status` waited on a socket file nobody listens on")
    line = one_line_error(done, "status")
    assert f"no daemon at {killed.address}" in line and "gone" in line


def test_an_address_that_is_no_socket_is_a_configuration_error(run: Run, sockdir: Path) -> None:
    (sockdir / "notes.txt").write_text("not a socket", encoding="utf-8")
    for path in (sockdir, sockdir / "notes.txt"):
        done = run("status", "--address", f"ipc://{path}", "--timeout", "120", timeout=60.0)
        assert done.returncode == 2
        assert one_line_error(done, "status").endswith(f"{path} is not a socket")


@pytest.mark.parametrize("args", NO_DAEMON_COMMANDS, ids=lambda a: a[0])
def test_a_daemon_that_does_not_answer_fails_within_the_timeout(
    run: Run, silent_address: str, args: list[str]
) -> None:
    started = time.monotonic()
    try:
        done = run(*args, "--address", silent_address, "--timeout", "0.5", timeout=30.0)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`sessionstore {args[0]} --timeout 0.5` still waiting after 30 s")
    line = one_line_error(done, args[0])
    assert done.returncode == 1
    assert silent_address in line and "within 0.5s" in line
    assert time.monotonic() - started < 20


def test_the_default_timeout_is_the_client_timeout_setting(run: Run, silent_address: str) -> None:
    done = run("status", "--address", silent_address, SESSIONSTORE_CLIENT_TIMEOUT="1.5")
    assert "within 1.5s" in one_line_error(done, "status")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_a_usage_error(
    run: Run, daemon: Daemon, value: str
) -> None:
    done = run("status", "--address", daemon.address, f"--timeout={value}")
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("sessionstore status: error: argument --timeout: ")
    )
    assert value in done.stderr and done.stdout == ""


def test_debug_shows_the_traceback(run: Run, sockdir: Path) -> None:
    address = f"ipc://{sockdir}/nobody.sock"
    done = run("status", "--address", address, "--timeout", "0.5", "--debug")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "DaemonUnavailable" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("sessionstore status: error: ")
