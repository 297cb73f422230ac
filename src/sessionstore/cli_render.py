"""How the CLI shows a result: tables on a terminal, plain lines when piped, JSON on request.

On a terminal a result is a rich table sized to the window. Piped (stdout not a
terminal) it is plain text, as ``git``, ``docker`` and ``ls`` print: one record
per line, columns aligned with spaces and never wrapped, no borders and no
titles, so ``grep``, ``sort`` and ``awk '{print $1}'`` work; remarks such as
"N more" go to stderr there, so they do not mix with the records. ``--json`` is
the exact data (epoch seconds, bytes, unrounded numbers) with sorted keys.
Values are formatted for people by :mod:`sessionstore.cli_format`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sessionstore.cli_format import (
    clean,
    compact,
    duration,
    label,
    local_time,
    number,
    plural,
    relative_time,
    size,
    value,
)
from sessionstore.config import Settings
from sessionstore.models import BenchmarkSnapshot, LearningSession, SessionStatus

Row = tuple[str, str]
# Narrowest a free-text column of a terminal table may be folded to.
FOLD_WIDTH = 18
# Plain progress lines (rebuild, no terminal) every this many files.
PROGRESS_EVERY = 1000

# Labels that say more than the key does; other keys go through cli_format.label.
LABELS = {
    "scanned": "session files",
    "parsed": "read (new or changed)",
    "inserted": "sessions inserted",
    "updated": "sessions updated",
    "outcomes_placeholder": "outcomes with placeholder edit",
    "invalid": "unusable files",
    "index_only": "sessions without a file (kept)",
    "index_only_kept": "sessions without a file (kept)",
    "duration_seconds": "took",
    "full": "full pass",
    "dry_run": "dry run",
    "wal_frames": "frames in WAL",
    "checkpointed_frames": "frames copied",
    "blocked_by_readers": "blocked by readers",
}


def on_terminal() -> bool:
    return sys.stdout.isatty()


def _console() -> Console:
    return Console(highlight=False, markup=False, emoji=False)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str, ensure_ascii=False))


def print_fields(title: str, rows: Sequence[Row]) -> None:
    """Key/value rows: a two-column table on a terminal, aligned ``key  value`` lines piped."""
    if on_terminal():
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        for key, shown in rows:
            table.add_row(Text(clean(key)), Text(clean(shown)))
        _console().print(table)
        return
    _print_plain([[key, shown] for key, shown in rows])


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    caption: str | None = None,
    *,
    folds: str | None = None,
) -> None:
    """Records: a rich table on a terminal wide enough for it; otherwise (narrow, or piped)
    a header line and one line per record, which a narrow terminal wraps as it does
    ``docker ps``: folding every cell into a column a few characters wide helps nobody.
    Only the column ``folds`` (free text: a result, an error) may fold its lines, and
    the table is used only if that column keeps at least FOLD_WIDTH characters."""
    lines = [list(columns), *[list(row) for row in rows]]
    if on_terminal():
        console = _console()
        narrowest = _table(title, columns, rows, caption, folds, FOLD_WIDTH)
        unbounded = console.options.update_width(1 << 16)
        if console.measure(narrowest, options=unbounded).maximum <= console.width:
            console.print(_table(title, columns, rows, caption, folds, None))
            return
        _print_plain(lines)
        if caption:
            print(caption)
        return
    _print_plain(lines)
    if caption:
        print(caption, file=sys.stderr)


def _table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    caption: str | None,
    folds: str | None,
    fold_width: int | None,
) -> Table:
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for column in columns:
        if column == folds:
            table.add_column(column, overflow="fold", max_width=fold_width)
        else:
            table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(Text(clean(cell)) for cell in row))
    return table


def _print_plain(lines: list[list[str]]) -> None:
    """Columns aligned with two spaces; the last one unpadded; nothing wrapped."""
    lines = [[clean(cell) for cell in line] for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))] if lines else []
    for line in lines:
        padded = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=False)]
        print("  ".join([*padded, line[-1]]).rstrip())


def blank_line() -> None:
    """Between two blocks of one result (the jobs table after the counters)."""
    if not on_terminal():
        print()


def note(text: str) -> None:
    """A remark after a result: under it on a terminal, on stderr when piped or JSON."""
    if on_terminal():
        _console().print(Text(text, style="dim"))
    else:
        print(text, file=sys.stderr)


def print_problems(command: str, problems: Sequence[dict[str, Any]]) -> None:
    """Files a command could not use, one line each on stderr: the user has to act on them."""
    for problem in problems:
        print(
            f"sessionstore {command}: {clean(problem['path'])}: {clean(problem['reason'])}",
            file=sys.stderr,
        )


# -- what each command shows ------------------------------------------------------


def result_rows(result: dict[str, Any]) -> list[Row]:
    """A job's result as rows; a list (reconcile's invalid files) is shown as its length."""
    return [
        (LABELS.get(key, label(key)), str(len(raw)) if isinstance(raw, list) else value(key, raw))
        for key, raw in result.items()
    ]


def render_result(title: str, result: dict[str, Any]) -> None:
    print_fields(title, result_rows(result))


def render_status(report: dict[str, Any]) -> None:
    counters = {k: v for k, v in report.items() if k != "jobs"}
    print_fields(f"sessiond at {report.get('address')}", result_rows(counters))
    jobs = report.get("jobs") or {}
    if not jobs:
        return
    blank_line()
    rows = [
        [
            name,
            str(job.get("runs", 0)),
            str(job.get("failures", 0)),
            relative_time(job.get("last_started_at")),
            duration(job.get("last_duration_seconds")),
            relative_time(job.get("next_run_at")),
            f"error: {job['last_error']}" if job.get("last_error") else job_summary(name, job),
        ]
        for name, job in jobs.items()
    ]
    columns = ("job", "runs", "failed", "last run", "took", "next run", "last result")
    print_table("jobs", columns, rows, folds="last result")


def job_summary(name: str, job: dict[str, Any]) -> str:
    """A job's last result in a few words, not its JSON."""
    result = job.get("last_result")
    if not isinstance(result, dict):
        return "-" if result is None else value("", result)
    if name == "checkpoint" and "wal_bytes_before" in result:
        blocked = ", blocked by readers" if result.get("blocked_by_readers") else ""
        return (
            f"{result.get('mode')}: WAL {size(result['wal_bytes_before'])} → "
            f"{size(result.get('wal_bytes_after'))}{blocked}"
        )
    if name == "reconcile" and "scanned" in result:
        return reconcile_summary(result)
    if name == "integrity" and "ok" in result:
        return "ok" if result["ok"] else "FAILED: " + "; ".join(result.get("messages", [])[:2])
    parts = [
        f"{label(key)} {value(key, raw)}"
        for key, raw in result.items()
        if raw not in (0, False, None) and not isinstance(raw, list | dict)
    ]
    return ", ".join(parts) or "nothing to do"


def reconcile_summary(result: dict[str, Any]) -> str:
    """``12 files: 2 inserted, 1 updated, 3 outcomes added, 1 unusable``."""
    tallies = (
        ("inserted", "inserted"),
        ("updated", "updated"),
        ("outcomes_added", "outcomes added"),
        ("outcomes_corrected", "outcomes corrected"),
        ("placeholders_upgraded", "placeholders upgraded"),
        ("invalid", "unusable"),
    )
    parts = []
    for key, words in tallies:
        raw = result.get(key) or 0
        n = len(raw) if isinstance(raw, list) else raw
        if n:
            parts.append(f"{n} {words}")
    return f"{plural(result.get('scanned', 0), 'file')}: " + (", ".join(parts) or "no change")


def listing_words(
    shown: int, more: bool, total: int | None, status: SessionStatus | None
) -> tuple[str, str | None]:
    """The title of an ``ls`` table, and the remark under it when more sessions exist."""
    in_status = f" in status {status.value}" if status else ""
    if not more:
        return f"{shown} session(s){in_status}, newest first", None
    if total is not None:  # known without a status filter (the daemon's count)
        hidden = max(1, total - shown)  # a save between the two calls may make it 0
        return (
            f"newest {shown} of {total} sessions",
            f"{hidden} more not shown: --all for every one, --limit N for the newest N",
        )
    return (
        f"newest {shown} sessions{in_status}",
        f"more sessions{in_status} not shown: --all for every one, --limit N",
    )


SESSION_COLUMNS = ("id", "status", "trigger", "started", "outcomes", "before", "after", "cost $")


def render_sessions(sessions: list[LearningSession], title: str, caption: str | None) -> None:
    rows = [
        [
            s.id,
            s.status.value,
            s.trigger.value,
            local_time(s.started_at),
            str(len(s.edit_outcomes)),
            f"{s.benchmark_before.overall_score:.3f}",
            f"{s.benchmark_after.overall_score:.3f}" if s.benchmark_after else "-",
            f"{s.teacher_cost_usd:.2f}",
        ]
        for s in sessions
    ]
    print_table(title, SESSION_COLUMNS, rows, caption)


def _snapshot(snapshot: BenchmarkSnapshot | None) -> str:
    if snapshot is None:
        return "-"
    text = (
        f"{snapshot.overall_score:.3f} on {snapshot.benchmark_version} "
        f"({plural(snapshot.task_count, 'task')} in {duration(snapshot.elapsed_seconds)})"
    )
    clusters = ", ".join(f"{k} {v:.3f}" for k, v in snapshot.cluster_scores.items())
    return f"{text}; {clusters}" if clusters else text


def render_session(session: LearningSession) -> None:
    fields = session.model_dump(mode="json", exclude={"edit_outcomes"})
    rows: list[Row] = []
    for key, raw in fields.items():
        if key.startswith("benchmark_"):
            shown = _snapshot(getattr(session, key))
        elif key == "trigger_metadata":
            shown = compact(raw)
        elif key == "teacher_cost_usd":
            shown = f"{raw:.4g}"
        else:
            shown = value(key, raw)
        rows.append((label(key), shown))
    print_fields(f"session {clean(session.id)}", rows)
    blank_line()
    outcome_rows = [
        [
            o.edit_id,
            o.status,
            "-" if o.benchmark_delta is None else number(o.benchmark_delta),
            local_time(o.applied_at),
            o.error or "-",
        ]
        for o in session.edit_outcomes
    ]
    columns = ("edit id", "status", "benchmark delta", "applied", "error")
    title = plural(len(session.edit_outcomes), "outcome")
    print_table(title, columns, outcome_rows, folds="error")


def serve_banner(settings: Settings, pid: int) -> str:
    """What ``serve`` started by hand says first: where its data and socket are, how to stop it."""
    return "\n".join(
        [
            f"sessionstore serve: sessiond {pid} runs in the foreground",
            f"  learning root  {settings.learning_root}",
            f"  index          {settings.index_path}",
            f"  sessions       {settings.sessions_dir}",
            f"  socket         {settings.endpoint}",
            f"  stop it with Ctrl-C, or `kill {pid}` from elsewhere (it commits what it received)",
            "  another learning root: OPENJARVIS_HOME=DIR or --learning-root DIR",
        ]
    )


@contextmanager
def rebuild_progress(interactive: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on a terminal; a line on stderr every PROGRESS_EVERY files otherwise."""
    if interactive:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("rebuilding index", total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return

    def report(done: int, total: int) -> None:
        if done and (done == total or done % PROGRESS_EVERY == 0):
            print(f"rebuild: {done}/{total} session files", file=sys.stderr, flush=True)

    yield report


def config_reference() -> list[dict[str, Any]]:
    """Every setting: name, environment variable, default and meaning (for --json)."""
    reference = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=False)
        if name in {"learning_root", "db_path", "address"}:
            default = "(derived)"
        elif name == "socket_mode":
            default = f"{default:04o}"
        reference.append(
            {
                "key": name,
                "env": f"SESSIONSTORE_{name.upper()}",
                "default": default,
                "meaning": field.description or "",
            }
        )
    return reference


def config_reference_markdown() -> str:
    """The Markdown settings table of docs/configuration.md, made from the settings model."""
    lines = ["| key | env var | default | meaning |", "|---|---|---|---|"]
    for entry in config_reference():
        default = entry["default"]
        shown = (
            default if default == "(derived)" else "unset" if default is None else f"`{default}`"
        )
        lines.append(f"| `{entry['key']}` | `{entry['env']}` | {shown} | {entry['meaning']} |")
    return "\n".join(lines)
