"""What the command prints, as a person and as a script meet it.

On a terminal (a real pseudo-terminal of a given width): tables, when they fit.
Piped: one record per line, aligned, never wrapped, no borders; remarks on stderr.
``--json``: the exact values. Times are local ISO 8601, sizes and durations are
for people. ``ls`` shows the newest 20 with a "N more" line. Options work before
and after the command name. Problems the user must fix exit 3, listed once.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from cli_helpers import Run, as_json, cli_env, in_terminal, ok, read_until, runner
from daemon_helpers import EDIT, Daemon, outcome, session
from sessionfiles import plan_dict, session_dict, write_session

from sessionstore import SessionStoreClient
from sessionstore.cli import NOT_REBUILD

BOX = set("┏┃━┡│└┌─")
LOCAL_ISO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d$")
LONG_ID = "run-" + "z" * 150  # wider than any terminal here


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return runner(tmp_path)


def fields(text: str) -> dict[str, str]:
    """Piped ``label  value`` lines (labels may hold one space, columns are 2+ apart)."""
    pairs = (re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def save_sessions(daemon: Daemon, count: int, **overrides: object) -> SessionStoreClient:
    """``count`` sessions s000 (oldest) ... ; every third one failed."""
    client = SessionStoreClient(daemon.address, timeout=30)
    with client.pipeline() as pipe:
        for i in range(count):
            status = "failed" if i % 3 == 0 else "completed"
            pipe.save_session(session(f"s{i:03d}", i, status=status, **overrides))  # type: ignore[arg-type]
    return client


# -- piped: plain lines -------------------------------------------------------------------


def test_piped_ls_prints_one_unwrapped_line_per_session_whatever_columns_says(
    run: Run, daemon: Daemon
) -> None:
    client = save_sessions(daemon, 2)
    client.save_session(session(LONG_ID, 10))
    done = run("ls", "--address", daemon.address, COLUMNS="40")
    lines = ok(done).splitlines()
    assert len(lines) == 4  # a header and three sessions, however long the id
    assert lines[0].split() == [
        "id",
        "status",
        "trigger",
        "started",
        "outcomes",
        "before",
        "after",
        "cost",
        "$",
    ]
    assert [line.split()[0] for line in lines[1:]] == [LONG_ID, "s001", "s000"]
    assert not BOX & set(done.stdout)
    started = lines[1].split()[3:5]
    assert LOCAL_ISO.match(" ".join(started))
    assert done.stderr == ""  # everything was shown: no remark


def test_piped_status_shows_times_sizes_and_durations_for_people_and_json_the_exact_values(
    run: Run, daemon: Daemon
) -> None:
    save_sessions(daemon, 3)
    out = ok(run("status", "--address", daemon.address))
    shown = fields(out)
    assert LOCAL_ISO.match(shown["started at"]), shown["started at"]
    assert re.fullmatch(r"\d+(\.\d)? (B|KiB|MiB)", shown["db size"]), shown["db size"]
    assert re.fullmatch(r"[\d.]+ (ms|s|min|h)( \d+ (s|min))?", shown["uptime"]), shown["uptime"]
    assert shown["sessions"] == "3" and shown["saves rejected"] == "none"
    assert not re.search(r"\d\.\d{5,}", out)  # no float noise, no raw epoch seconds
    job_lines = out.split("\n\n")[1].splitlines()
    assert job_lines[0].split() == ["job", "runs", "failed", "last", "run", "took", "next"] + [
        "run", "last", "result"
    ]  # fmt: skip
    assert any(line.startswith("reconcile ") and "in " in line for line in job_lines)

    report = as_json(run("status", "--json", "--address", daemon.address))
    assert isinstance(report, dict)
    assert isinstance(report["started_at"], float) and isinstance(report["db_bytes"], int)
    started = datetime.fromtimestamp(report["started_at"]).astimezone()
    assert shown["started at"] == started.isoformat(sep=" ", timespec="seconds")


def test_status_shows_a_jobs_last_result_in_words_not_json(run: Run, daemon: Daemon) -> None:
    ok(run("checkpoint", "--address", daemon.address))
    out = ok(run("status", "--address", daemon.address))
    (line,) = [line for line in out.splitlines() if line.startswith("checkpoint ")]
    assert re.search(r"TRUNCATE: WAL [\d.]+ (B|KiB|MiB) → 0 B$", line), line
    assert "{" not in line


# -- on a terminal: tables when they fit ---------------------------------------------------------


def test_on_a_wide_terminal_ls_and_status_are_tables(tmp_path: Path, daemon: Daemon) -> None:
    save_sessions(daemon, 3)
    shown = in_terminal(tmp_path, "ls", "--address", daemon.address, columns=140)
    assert shown.returncode == 0, shown.output
    assert "3 session(s), newest first" in shown.output
    assert {"┏", "┃", "│"} <= set(shown.output)
    rows = [line for line in shown.output.splitlines() if line.startswith("│ s0")]
    assert [row.split()[1] for row in rows] == ["s002", "s001", "s000"]  # one line each
    status = in_terminal(tmp_path, "status", "--address", daemon.address, columns=140)
    assert status.returncode == 0, status.output
    assert f"sessiond at {daemon.address}" in status.output and "jobs" in status.output
    assert re.search(r"│ reconcile\s+│", status.output)


def test_on_a_narrow_terminal_a_table_that_does_not_fit_becomes_plain_lines(
    tmp_path: Path, daemon: Daemon
) -> None:
    client = save_sessions(daemon, 2)
    client.save_session(session(LONG_ID, 10))
    shown = in_terminal(tmp_path, "ls", "--address", daemon.address, columns=60)
    assert shown.returncode == 0, shown.output
    assert not BOX & set(shown.output)  # no cell folded into a column a few characters wide
    lines = [line for line in shown.output.splitlines() if line]
    assert [line.split()[0] for line in lines] == ["id", LONG_ID, "s001", "s000"]


def test_the_terminal_table_shows_values_as_text_not_markup(tmp_path: Path, daemon: Daemon) -> None:
    client = SessionStoreClient(daemon.address, timeout=30)
    client.save_session(session("[bold]x[/bold]", 1, error="line one\nline two\x1b[31m"))
    shown = in_terminal(tmp_path, "show", "[bold]x[/bold]", "--address", daemon.address)
    assert shown.returncode == 0, shown.output
    assert "[bold]x[/bold]" in shown.output
    assert "line one line two" in shown.output and "\x1b[31m" not in shown.output


# -- ls: short by default -----------------------------------------------------------------


def test_ls_shows_the_newest_20_and_says_how_many_more(
    run: Run, daemon: Daemon, tmp_path: Path
) -> None:
    save_sessions(daemon, 25)
    done = run("ls", "--address", daemon.address)
    lines = ok(done).splitlines()
    assert len(lines) == 21 and lines[1].split()[0] == "s024" and lines[-1].split()[0] == "s005"
    assert done.stderr.splitlines() == [
        "5 more not shown: --all for every one, --limit N for the newest N"
    ]
    every = run("ls", "--all", "--address", daemon.address)
    assert len(ok(every).splitlines()) == 26 and every.stderr == ""
    assert len(ok(run("ls", "--limit", "3", "--address", daemon.address)).splitlines()) == 4

    failed = run("ls", "--status", "failed", "--limit", "2", "--address", daemon.address)
    assert [line.split()[0] for line in ok(failed).splitlines()[1:]] == ["s024", "s021"]
    assert "more sessions in status failed not shown" in failed.stderr

    on_terminal = in_terminal(tmp_path, "ls", "--address", daemon.address)
    assert "newest 20 of 25 sessions" in on_terminal.output
    assert "5 more not shown" in on_terminal.output


def test_ls_json_leaves_outcomes_out_unless_asked(run: Run, daemon: Daemon) -> None:
    client = save_sessions(daemon, 22)
    client.save_outcome("s021", outcome("e1"), **EDIT)
    done = run("ls", "--json", "--address", daemon.address)
    listed = json.loads(ok(done))
    assert len(listed) == 20 and listed[0]["id"] == "s021"
    assert all("edit_outcomes" not in s for s in listed)
    assert "2 more not shown" in done.stderr  # stdout stays pure JSON
    with_outcomes = as_json(
        run("ls", "--json", "--outcomes", "--limit", "1", "--address", daemon.address)
    )
    assert isinstance(with_outcomes, list)
    assert [o["edit_id"] for o in with_outcomes[0]["edit_outcomes"]] == ["e1"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--limit", "0"], "argument --limit: must be 1 or more, got 0"),
        (["--limit", "ten"], "argument --limit: not a whole number: 'ten'"),
        (["--limit", "3", "--all"], "argument --all: not allowed with argument --limit"),
    ],
)
def test_ls_refuses_a_bad_limit(run: Run, args: list[str], says: str) -> None:
    done = run("ls", *args)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == f"sessionstore ls: error: {says}"


# -- options before or after the command; none that do nothing ------------------------------------


def test_global_options_work_before_and_after_the_command_name(run: Run, daemon: Daemon) -> None:
    save_sessions(daemon, 1)
    after = as_json(run("status", "--json", "--address", daemon.address, "--timeout", "20"))
    before = as_json(run("--json", "--address", daemon.address, "--timeout", "20", "status"))
    mixed = as_json(run("--json", "ls", "--address", daemon.address))
    assert isinstance(after, dict) and isinstance(before, dict)
    assert before["address"] == after["address"] == daemon.address
    assert isinstance(mixed, list) and [s["id"] for s in mixed] == ["s000"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--timeout", "5", "serve"],
        ["--json", "serve"],
        ["--address", "ipc:///tmp/x.sock", "rebuild"],
        ["--address", "ipc:///tmp/x.sock", "keygen", "/tmp/k"],
        ["--timeout", "5", "config"],
        ["serve", "--timeout", "5"],
        ["keygen", "/tmp/k", "--address=ipc:///tmp/x.sock"],
    ],
    ids=lambda a: " ".join(a),
)
def test_an_option_a_command_has_no_use_for_is_refused(run: Run, argv: list[str]) -> None:
    done = run(*argv)
    assert done.returncode == 2
    command = next(word for word in argv if word in {"serve", "rebuild", "keygen", "config"})
    option = next(word for word in argv if word.startswith("--")).split("=")[0]
    assert done.stderr.splitlines()[-1] == (
        f"sessionstore {command}: error: {option} does not apply to this command"
    )


# -- config -----------------------------------------------------------------------------------


def test_config_shows_the_socket_mode_in_octal(run: Run) -> None:
    shown = fields(ok(run("config", SESSIONSTORE_SOCKET_MODE="0660")))
    assert shown["socket_mode"] == "0660"
    values = as_json(run("config", "--json"))
    assert isinstance(values, dict) and values["socket_mode"] == "0600"


def test_config_reference_with_json_is_json(run: Run) -> None:
    reference = as_json(run("config", "--reference", "--json"))
    assert isinstance(reference, list)
    by_key = {entry["key"]: entry for entry in reference}
    assert by_key["batch_max"] == {
        "key": "batch_max",
        "env": "SESSIONSTORE_BATCH_MAX",
        "default": 512,
        "meaning": by_key["batch_max"]["meaning"],
    }
    assert by_key["socket_mode"]["default"] == "0600"
    assert by_key["address"]["default"] == "(derived)"


# -- problems the user must fix: exit 3, reported once ----------------------------------------------


def write_bad_session(root: Path, name: str, text: str = "{not json") -> None:
    path = root / "sessions" / name / "session.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_reconcile_with_an_unusable_file_exits_3_and_names_it_once(
    run: Run, manual_daemon: Daemon
) -> None:
    write_session(manual_daemon.learning_root, "good", session_dict("good"), plan=plan_dict("good"))
    write_bad_session(manual_daemon.learning_root, "bad")
    done = run("reconcile", "--address", manual_daemon.address)
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines() == [
        "sessionstore reconcile: sessions/bad/session.json: not valid JSON: "
        "Expecting property name enclosed in double quotes at line 1, column 2"
    ]
    shown = fields(done.stdout)
    assert (shown["sessions inserted"], shown["unusable files"]) == ("1", "1")

    as_script = run("reconcile", "--json", "--address", manual_daemon.address)
    assert as_script.returncode == 3 and as_script.stderr == ""
    result = json.loads(as_script.stdout)
    assert [p["path"] for p in result["invalid"]] == ["sessions/bad/session.json"]
    clean = run("reconcile", "--dry-run", "--address", manual_daemon.address)
    assert clean.returncode == 3  # still there: still the user's to fix


def test_rebuild_reports_what_a_rebuild_does_and_exits_3_on_an_unusable_file(
    run: Run, tmp_path: Path
) -> None:
    learning = tmp_path / "learning"
    for sid in ("f1", "f2"):
        write_session(learning, sid, session_dict(sid), plan=plan_dict(sid))
    write_bad_session(learning, "bad", "[]")
    done = run("rebuild", "--json")
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert not NOT_REBUILD & set(report)  # no unchanged, updated, dry_run, ...
    assert (report["scanned"], report["inserted"], report["outcomes_added"]) == (3, 2, 4)
    assert [p["path"] for p in report["invalid"]] == ["sessions/bad/session.json"]
    human = run("rebuild")
    assert human.returncode == 3
    assert human.stderr.splitlines()[-1].startswith(
        "sessionstore rebuild: sessions/bad/session.json: "
    )
    shown = fields(human.stdout)
    assert shown["sessions inserted"] == "2" and re.fullmatch(r"[\d.]+ m?s", shown["took"])
    assert "unchanged" not in shown and "dry run" not in shown


# -- serve says where it works and how to stop it -------------------------------------------------


def test_serve_started_by_hand_says_where_its_data_and_socket_are_and_how_to_stop_it(
    tmp_path: Path,
) -> None:
    sockdir = Path(tempfile.mkdtemp(prefix="ss-"))
    address = f"ipc://{sockdir}/s.sock"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionstore", "serve", "--address", address],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli_env(tmp_path),
    )
    os.close(slave)
    try:
        text = read_until(master, lambda t: "ready at" in t, 60, proc)
        learning = tmp_path / "learning"
        assert f"sessionstore serve: sessiond {proc.pid} runs in the foreground" in text
        assert f"learning root  {learning}" in text
        assert f"index          {learning / 'distillation.db'}" in text
        assert f"socket         {address}" in text
        assert f"stop it with Ctrl-C, or `kill {proc.pid}`" in text
        assert "OPENJARVIS_HOME" in text
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        for leftover in sockdir.iterdir():
            leftover.unlink()
        sockdir.rmdir()


def test_serve_under_a_service_manager_prints_no_banner(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory().start()  # stderr is a file, as under systemd
    assert d.stop() == 0
    assert "runs in the foreground" not in d.stderr()
