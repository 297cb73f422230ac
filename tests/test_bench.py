"""``sessionstore bench``: one run of every scenario, a well-formed report, clear refusals.

No timing is asserted: the numbers depend on the machine. What is proven is the
shape of the report, that every number is a number and not negative, that the
counts add up, that each timed phase lasts its --seconds and reports CPU per save
and the load average around it, that the direct baseline is measured before and
after the daemon phases (with OpenJarvis's own store when it is installed), and
that the run leaves no process and no directory behind. The runs here use phases
far shorter than the 3 s minimum, which only the hidden --allow-short-phases allows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from numbers import Number
from pathlib import Path
from typing import Any

import pytest
import upstream

from sessionstore.benchmarks.measure import cpu_seconds, load_warnings
from sessionstore.benchmarks.options import DEFAULT_SCENARIOS
from sessionstore.cli import main

PHASE = 0.5
SMALL_RUN = [
    "--processes", "2",
    "--seconds", str(PHASE),
    "--allow-short-phases",
    "--reconcile-files", "50",
    "--lock-seconds", "0.5",
    "--listing-sessions", "20",
    "--listing-outcomes", "3",
]  # fmt: skip

WRITER_FIELDS = {
    "processes",
    "timed",
    "saves_attempted",
    "saves_acknowledged",
    "saves_in_window",
    "saves_failed",
    "wall_seconds",
    "saves_per_second",
    "latency",
    "errors",
    "error_samples",
}
LATENCY_FIELDS = {"measures", "samples", "p50_ms", "p99_ms", "max_ms"}
DIRECT_FIELDS = {
    "writer",
    "implementation",
    "openjarvis_version",
    "saves_per_second",
    "spread_percent",
    "saves_failed",
    "cpu_us_per_save",
    "before",
    "after",
}
ERROR_KINDS = {"database_locked", "timeout", "other"}
DAEMON_FIELDS = {"pid", "rss_kib", "peak_rss_kib", "batches", "mean_batch_size", "max_commit_ms"}


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    env = {**os.environ, "OPENJARVIS_HOME": str(tmp_path / "home"), "SESSIONSTORE_CONFIG": ""}
    done = subprocess.run(
        [sys.executable, "-m", "sessionstore", "bench", *args, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done, json.loads(done.stdout)


def numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(value, bool):
        return
    if isinstance(value, Number):
        yield path, float(value)  # type: ignore[arg-type]
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}[{i}]")


def check_writers(name: str, report: dict[str, Any], *, daemon: bool) -> None:
    assert set(report) >= WRITER_FIELDS, name
    assert set(report["latency"]) >= LATENCY_FIELDS, name
    assert set(report["errors"]) == ERROR_KINDS, name
    assert report["saves_acknowledged"] + report["saves_failed"] == report["saves_attempted"]
    assert 0 < report["saves_in_window"] <= report["saves_acknowledged"], name
    assert report["saves_failed"] == sum(report["errors"].values())
    load = report["load_average"]
    assert len(load["before"]) == len(load["after"]) == 3, name
    assert load["cpu_count"] >= 1 and isinstance(load["exceeds_cores"], bool)
    assert report["latency"]["p50_ms"] <= report["latency"]["p99_ms"] <= report["latency"]["max_ms"]
    if daemon:
        assert set(report["daemon"]) >= DAEMON_FIELDS, name
        assert report["daemon"]["peak_rss_kib"] > 0
    else:
        assert "daemon" not in report


def check_timed(name: str, report: dict[str, Any], *, daemon: bool) -> None:
    """A timed phase: its window is --seconds, CPU per save measured for whoever worked."""
    check_writers(name, report, daemon=daemon)
    assert report["timed"] is True, name
    cpu = report["cpu_us_per_save"]
    assert cpu["clients"] > 0, name
    if daemon:
        assert cpu["daemon"] > 0, name
    else:
        assert cpu["daemon"] is None, name


def check_direct(name: str, row: dict[str, Any], phase: float = PHASE) -> None:
    """The direct row: before and after the daemon phases, and their mean."""
    assert set(row) >= DIRECT_FIELDS, name
    for when in ("before", "after"):
        check_timed(f"{name} {when}", row[when], daemon=False)
        assert row[when]["wall_seconds"] == phase
    rates = [row["before"]["saves_per_second"], row["after"]["saves_per_second"]]
    assert row["saves_per_second"] == pytest.approx(sum(rates) / 2, abs=0.1)
    assert row["cpu_us_per_save"]["clients"] > 0 and row["cpu_us_per_save"]["daemon"] is None


def bench_processes(tmp_path: Path) -> list[str]:
    """Command lines of live processes that mention this test's directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(tmp_path) in cmdline:
            found.append(cmdline)
    return found


def test_bench_reports_every_scenario_with_every_field(tmp_path: Path) -> None:
    done, report = run_bench(tmp_path, *SMALL_RUN)

    assert set(report) >= {"machine", "settings", "scenarios", "ratios", "warnings"}
    machine = report["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["cpu_model"] and machine["python_version"] and machine["sqlite_version"]
    assert machine["filesystem"]["type"]
    settings = report["settings"]
    assert settings["processes"] == 2 and settings["phase_seconds"] == PHASE
    assert settings["short_phases"] is True
    assert settings["durability"] == "full" and settings["lock_seconds"] == 0.5
    assert settings["scenarios"] == list(DEFAULT_SCENARIOS)
    assert any("numbers not meaningful" in w for w in report["warnings"])

    scenarios = report["scenarios"]
    assert set(scenarios) == set(DEFAULT_SCENARIOS) | {"direct_ours"}
    check_direct("direct", scenarios["direct"])
    check_direct("direct_ours", scenarios["direct_ours"])
    assert scenarios["direct"]["writer"] in {"openjarvis", "sqlite3"}
    assert scenarios["direct_ours"]["writer"] == "ours"
    for name in ("sync", "pipelined"):
        check_timed(name, scenarios[name], daemon=True)
        assert scenarios[name]["wall_seconds"] == PHASE
    ceiling = scenarios["ceiling"]
    check_timed("ceiling", ceiling, daemon=False)
    assert ceiling["wall_seconds"] >= PHASE  # its clock runs inside its transactions only
    assert ceiling["statements"] == ["batch.INSERT_APPLIED", "batch.INSERT_OUTCOME"]
    assert ceiling["saves_in_window"] % ceiling["batch_size"] == 0
    contention = scenarios["contention"]
    check_writers("direct_under_lock", contention["direct_under_lock"], daemon=False)
    assert contention["direct_under_lock"]["lock_holder"]["cycles"] >= 1
    check_writers("daemon_under_reconcile", contention["daemon_under_reconcile"], daemon=True)
    reconcile = contention["daemon_under_reconcile"]["reconcile"]
    assert reconcile["files"] == 50 and {"ok", "failed", "seconds"} <= set(reconcile)

    listing = scenarios["listing"]
    assert listing["sessions"] == 20 and listing["outcomes"] == 60
    assert listing["speedup"] > 0 and listing["speedup_ceiling"] > 0
    assert report["targets"]["listing_batched_vs_per_session"]["want"] == ">= 5"
    reads = scenarios["reads"]
    for mode in ("on_loop", "on_readers"):
        check_writers(mode, reads[mode], daemon=True)
        assert len(reads[mode]["listing_seconds"]) == reads["listings"] == 3
        assert "listing_error" not in reads[mode]

    assert set(report["ratios"]) == {
        "daemon_sync_vs_direct",
        "daemon_pipelined_vs_direct",
        "daemon_sync_vs_direct_ours",
        "daemon_pipelined_vs_direct_ours",
        "direct_ours_vs_direct",
        "daemon_sync_vs_ceiling",
        "daemon_pipelined_vs_ceiling",
    }
    assert all(isinstance(v, float | int) for v in report["ratios"].values())
    for path, value in numbers(report):
        assert value >= 0, path

    assert (
        "direct before" in done.stderr
    )  # one progress line per phase when stderr is not a terminal
    assert "direct after" in done.stderr
    assert "warning: phases of 0.5s" in done.stderr
    assert not list(tmp_path.glob("sessionstore-bench-*")), "work directory left behind"
    assert bench_processes(tmp_path) == []


def test_direct_runs_before_and_after_the_daemon_phases(tmp_path: Path) -> None:
    """The order of the progress lines: original, ours, the daemon phases, ours, original."""
    done, _ = run_bench(
        tmp_path, "--processes", "1", "--seconds", "0.2", "--allow-short-phases",
        "--scenarios", "pipelined,direct",
    )  # fmt: skip
    phases = [
        line.split(": ")[1] + (" ours" if "this project's" in line else "")
        for line in done.stderr.splitlines()
        if line.startswith("sessionstore bench: direct") or "through the daemon" in line
    ]
    assert phases == [
        "direct before",
        "direct before ours",
        "pipelined",
        "direct after ours",
        "direct after",
    ]


def test_direct_baseline_is_openjarvis_own_store_when_installed(tmp_path: Path) -> None:
    upstream.session_store_class()  # skips (fails in CI) where openjarvis 1.0.4 is missing
    _, report = run_bench(
        tmp_path, "--processes", "2", "--seconds", "0.2", "--allow-short-phases",
        "--scenarios", "direct",
    )  # fmt: skip
    direct = report["scenarios"]["direct"]
    assert report["settings"]["direct_writer"] == direct["writer"] == "openjarvis"
    assert direct["openjarvis_version"] == upstream.RELEASE
    assert "openjarvis.learning.spec_search.storage.session_store" in direct["implementation"]
    check_direct("direct", direct, 0.2)
    check_direct("direct_ours", report["scenarios"]["direct_ours"], 0.2)


def test_direct_baseline_in_plain_sqlite3_when_asked(tmp_path: Path) -> None:
    _, report = run_bench(
        tmp_path, "--processes", "2", "--seconds", "0.2", "--allow-short-phases",
        "--scenarios", "direct", "--direct-writer", "sqlite3",
    )  # fmt: skip
    direct = report["scenarios"]["direct"]
    assert direct["writer"] == "sqlite3" and direct["openjarvis_version"] is None
    check_direct("direct", direct, 0.2)


def test_cpu_seconds_reads_a_live_process_and_none_for_a_gone_one() -> None:
    assert (cpu_seconds(os.getpid()) or 0.0) > 0.0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert cpu_seconds(child.pid) is None


def test_load_above_the_cores_is_a_warning_naming_the_phase() -> None:
    report = {
        "sync": {"load_average": {"before": [0.5, 0, 0], "after": [9.0, 0, 0], "cpu_count": 2,
                                  "exceeds_cores": True}},
        "pipelined": {"load_average": {"before": [0.5, 0, 0], "after": [1.0, 0, 0],
                                       "cpu_count": 2, "exceeds_cores": False}},
    }  # fmt: skip
    assert load_warnings(report) == [
        "sync: load average 0.50 before, 9.00 after, above the 2 cores "
        "(this phase's numbers are less trustworthy)"
    ]


def test_rss_scenario_reports_memory_after_both_phases(tmp_path: Path) -> None:
    _, report = run_bench(
        tmp_path, "--processes", "2", "--scenarios", "rss", "--rss-outcomes", "400"
    )
    rss = report["scenarios"]["rss"]
    assert rss["outcomes_first"] == 40 and rss["outcomes_total"] == 400
    assert rss["rss_kib_after_first"] > 0 and rss["rss_kib_after_total"] > 0
    assert rss["rss_ratio"] > 0 and rss["saves_failed"] == 0
    assert "rss_ratio_total_vs_first" in report["targets"]
    assert report["ratios"]["daemon_pipelined_vs_direct"] is None  # not measured in this run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "0"], "invalid --processes 0: must be at least 1"),
        (["--seconds", "1"], "invalid --seconds 1: must be at least 3"),
        (
            ["--seconds", "0.01", "--allow-short-phases"],
            "invalid --seconds 0.01: must be at least 0.1",
        ),
        (["--saves", "20"], "--saves was replaced by --seconds"),
        (["--lock-seconds", "0"], "invalid --lock-seconds 0: must be greater than 0"),
        (["--reconcile-files", "0"], "invalid --reconcile-files 0"),
        (["--listing-sessions", "0"], "invalid --listing-sessions 0: must be at least 1"),
        (["--scenarios", "direct,warp"], "invalid --scenarios 'direct,warp': choose from"),
    ],
)
def test_invalid_options_give_a_one_line_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SESSIONSTORE_CONFIG", "")
    assert main(["bench", *args]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sessionstore bench: error: ")
    assert message in err
    assert list(tmp_path.iterdir()) == []  # refused before anything was created


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--address", "ipc:///tmp/x.sock"], "--address does not apply to this command"),
        (["--address", "ipc:///tmp/x.sock", "bench"], "--address does not apply to this command"),
    ],
)
def test_bench_takes_no_address_it_starts_its_own_daemons(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"sessionstore bench: error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_invalid_option_through_the_command_exits_non_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sessionstore", "bench", "--processes", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip() == (
        "sessionstore bench: error: invalid --processes 0: must be at least 1"
    )


def test_listing_alone_prints_its_line_and_target_without_an_empty_table(tmp_path: Path) -> None:
    env = {**os.environ, "OPENJARVIS_HOME": str(tmp_path / "home"), "SESSIONSTORE_CONFIG": ""}
    done = subprocess.run(
        [sys.executable, "-m", "sessionstore", "bench", "--scenarios", "listing",
         "--listing-sessions", "12", "--listing-outcomes", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "listing 12 sessions x 2 outcomes: list_sessions" in done.stdout
    assert "target listing_batched_vs_per_session:" in done.stdout
    assert "saves/s" not in done.stdout  # no writer scenario ran, so no writers' table
    assert not list(tmp_path.glob("sessionstore-bench-*")), "work directory left behind"
