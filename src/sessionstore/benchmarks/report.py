"""How ``sessionstore bench`` describes the machine, shows progress and prints its results."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.status import Status
from rich.table import Table

from sessionstore.benchmarks.measure import load_average


def machine(workdir: Path) -> dict[str, Any]:
    """CPU, Python, SQLite and the filesystem the benchmark wrote to."""
    return {
        "cpu_count": os.cpu_count() or 0,
        "cpu_model": _cpu_model(),
        "memory_total_kib": _meminfo("MemTotal"),
        "kernel": platform.release(),
        "python_version": platform.python_version(),
        "sqlite_version": sqlite3.sqlite_version,
        "filesystem": filesystem(workdir),
        "load_average_at_start": load_average(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in {"model name", "Model", "cpu model"}:
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo(key: str) -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                name, _, value = line.partition(":")
                if name == key:
                    return int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def filesystem(path: Path) -> dict[str, str]:
    """Type, device and mount point of the filesystem holding ``path`` (``df -PT``)."""
    try:
        out = subprocess.run(
            ["df", "-PT", str(path)], capture_output=True, text=True, check=True, timeout=10
        ).stdout.splitlines()
        fields = out[-1].split()
        return {"type": fields[1], "device": fields[0], "mount_point": fields[-1]}
    except (OSError, subprocess.SubprocessError, IndexError):
        return _from_proc_mounts(path)


def _from_proc_mounts(path: Path) -> dict[str, str]:
    """The longest mount point that contains ``path``, from /proc/mounts."""
    best = {"type": "unknown", "device": "unknown", "mount_point": "/"}
    resolved = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                device, mount_point, fstype = line.split()[:3]
                inside = resolved == mount_point or resolved.startswith(
                    mount_point.rstrip("/") + "/"
                )
                if inside and len(mount_point) >= len(best["mount_point"]):
                    best = {"type": fstype, "device": device, "mount_point": mount_point}
    except (OSError, ValueError):
        pass
    return best


class Progress:
    """One line per phase on stderr; a spinner with elapsed times when stderr is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._console = Console(file=self._stream, highlight=False)
        self._status: Status | None = None
        self._current: str | None = None
        self._since = time.monotonic()

    def __enter__(self) -> Progress:
        if self._tty:
            self._status = self._console.status("starting")
            self._status.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._status is not None:
            self._status.stop()
        if exc is None:
            self._finish()

    def __call__(self, message: str) -> None:
        self._finish()
        self._current, self._since = message, time.monotonic()
        if self._status is not None:
            self._status.update(message)
        else:
            print(f"sessionstore bench: {message}", file=self._stream, flush=True)

    def warn(self, message: str) -> None:
        """A warning line on stderr, between the progress lines (also under the spinner)."""
        if self._tty:
            self._console.print(f"[yellow]warning:[/] {message}")
        else:
            print(f"sessionstore bench: warning: {message}", file=self._stream, flush=True)

    def _finish(self) -> None:
        if self._tty and self._current is not None:
            took = time.monotonic() - self._since
            self._console.print(f"[green]done[/] {self._current} [dim]({took:.1f}s)[/]")
        self._current = None


def _ms(latency: dict[str, Any], key: str) -> str:
    return f"{latency[key]:.2f}"


def _failed(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    if not total:
        return "0"
    return f"{total} (locked {errors['database_locked']}, timeout {errors['timeout']}, other {errors['other']})"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


_LABELS = {
    "sync": "daemon sync",
    "pipelined": "daemon pipelined",
    "ceiling": "ceiling (daemon's INSERTs, 1000/commit)",
}
PIPE_WIDTH = 160
"""Table width when stdout is not a terminal (rich would otherwise wrap at 80)."""


def _us(cpu: dict[str, Any] | None, who: str) -> str:
    value = None if cpu is None else cpu.get(who)
    return "-" if value is None else f"{value:,.1f}"


def _load(s: dict[str, Any]) -> str:
    load = s.get("load_average")
    if not load or not load["before"] or not load["after"]:
        return "-"
    mark = " !" if load["exceeds_cores"] else ""
    return f"{load['before'][0]:.2f} > {load['after'][0]:.2f}{mark}"


def _direct_label(s: dict[str, Any]) -> str:
    if s["writer"] == "openjarvis":
        return f"direct, original (openjarvis {s['openjarvis_version']})"
    if s["writer"] == "sqlite3":
        return "direct, original (plain sqlite3)"
    return "direct, this project's SessionStore"


def render(report: dict[str, Any], console: Console | None = None) -> None:
    """The results as tables: one row per scenario, then the ratios and targets."""
    if console is None:
        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=PIPE_WIDTH)
    settings, scenarios = report["settings"], report["scenarios"]
    fs = report["machine"]["filesystem"]
    table = Table(
        title=(
            f"sessionstore bench: {settings['processes']} processes, "
            f"{settings['phase_seconds']:g}s per timed phase, "
            f"durability {settings['durability']}, {fs['type']} at {fs['mount_point']}"
        ),
        title_justify="left",
    )
    for column, justify in (
        ("scenario", "left"),
        ("acked", "right"),
        ("saves/s", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("max ms", "right"),
        ("failed", "left"),
        ("CPU µs/save daemon", "right"),
        ("CPU µs/save clients", "right"),
        ("load 1m", "right"),
        ("daemon RSS peak MiB", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]

    def row(label: str, s: dict[str, Any]) -> None:
        lat = s["latency"]
        table.add_row(
            label,
            str(s["saves_in_window"]),
            f"{s['saves_per_second']:,.0f}",
            _ms(lat, "p50_ms"),
            _ms(lat, "p99_ms"),
            _ms(lat, "max_ms"),
            _failed(s["errors"]),
            _us(s.get("cpu_us_per_save"), "daemon"),
            _us(s.get("cpu_us_per_save"), "clients"),
            _load(s),
            _mib(s.get("daemon", {}).get("peak_rss_kib")),
        )

    def direct_rows(s: dict[str, Any]) -> None:
        table.add_row(
            f"{_direct_label(s)}: mean", "", f"{s['saves_per_second']:,.0f}", "", "", "",
            str(s["saves_failed"]), "-", _us(s["cpu_us_per_save"], "clients"), "", "",
        )  # fmt: skip
        row("  before the daemon phases", s["before"])
        row("  after the daemon phases", s["after"])

    for name in ("direct", "direct_ours"):
        if scenarios.get(name):
            direct_rows(scenarios[name])
    for name, label in _LABELS.items():
        if name in scenarios:
            row(label, scenarios[name])
    if "contention" in scenarios:
        c = scenarios["contention"]
        lock = c["direct_under_lock"]["lock_holder"]["lock_seconds"]
        row(f"direct vs {lock:g}s lock", c["direct_under_lock"])
        files = c["daemon_under_reconcile"]["reconcile"]["files"]
        row(f"daemon vs reconcile ({files} files)", c["daemon_under_reconcile"])
    if "reads" in scenarios:
        for mode, label in (("on_loop", "reads on the loop"), ("on_readers", "reads on readers")):
            row(f"daemon sync, {label}", scenarios["reads"][mode])
    if table.row_count:
        console.print(table)
    if "contention" in scenarios:
        rec = scenarios["contention"]["daemon_under_reconcile"]["reconcile"]
        outcome = "ok" if rec["ok"] else f"FAILED: {rec.get('error')}"
        console.print(
            f"reconcile during contention: {rec['files']} files in {rec['seconds']:.2f}s, {outcome}"
        )
    if "reads" in scenarios:
        for mode in ("on_loop", "on_readers"):
            r = scenarios["reads"][mode]
            took = ", ".join(f"{t:.2f}" for t in r["listing_seconds"])
            error = f" ({r['listing_error']})" if "listing_error" in r else ""
            console.print(f"reads {mode.replace('_', ' ')}: listings took {took} s{error}")
    if "rss" in scenarios:
        r = scenarios["rss"]
        console.print(
            f"rss: daemon RSS {_mib(r['rss_kib_after_first'])} MiB after {r['outcomes_first']:,} "
            f"outcomes, {_mib(r['rss_kib_after_total'])} MiB after {r['outcomes_total']:,} "
            f"(ratio {r['rss_ratio']:.3f}; peak {_mib(r['peak_rss_kib'])} MiB; "
            f"{r['saves_failed']} failed)"
        )
    if "listing" in scenarios:
        li = scenarios["listing"]
        console.print(
            f"listing {li['sessions']:,} sessions x {li['outcomes'] // max(li['sessions'], 1)} "
            f"outcomes: list_sessions {li['batched_seconds'] * 1000:.1f} ms, one query per "
            f"session {li['per_session_seconds'] * 1000:.1f} ms ({li['speedup']:.2f}x); "
            f"floor: rows alone {li['rows_seconds'] * 1000:.1f} ms, rows + unvalidated objects "
            f"{li['unvalidated_seconds'] * 1000:.1f} ms (ceiling {li['speedup_ceiling']:.2f}x)"
        )
    ratios = {k: v for k, v in report["ratios"].items() if v is not None}
    if ratios:
        console.print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    for name, target in report["targets"].items():
        verdict = "[green]met[/]" if target["met"] else "[red]missed[/]"
        console.print(f"target {name}: {target['value']} (want {target['want']}) {verdict}")
    for line in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {line}")
