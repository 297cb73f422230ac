"""How the CLI shows things to a person (rich tables) or to a script (JSON)."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from sessionstore.config import Settings
from sessionstore.models import LearningSession

_console = Console(highlight=False)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _flat(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return "-" if value is None else str(value)


def render_result(title: str, result: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in result.items():
        table.add_row(key, _flat(value))
    _console.print(table)


def render_status(report: dict[str, Any]) -> None:
    jobs = report.pop("jobs", {}) or {}
    render_result(f"sessiond at {report.get('address')}", report)
    if not jobs:
        return
    table = Table(title="jobs", title_justify="left")
    for column in (
        "job",
        "runs",
        "failures",
        "last run",
        "took (s)",
        "next run",
        "last result / error",
    ):
        table.add_column(column, overflow="fold")
    for name, job in jobs.items():
        table.add_row(
            name,
            str(job["runs"]),
            str(job["failures"]),
            _when(job["last_started_at"]),
            _flat(job["last_duration_seconds"]),
            _when(job["next_run_at"]),
            job["last_error"] or _flat(job["last_result"]),
        )
    _console.print(table)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def render_sessions(sessions: list[LearningSession]) -> None:
    table = Table(title=f"{len(sessions)} session(s), newest first", title_justify="left")
    for column in (
        "id",
        "status",
        "trigger",
        "started",
        "outcomes",
        "score before → after",
        "cost $",
    ):
        table.add_column(column, overflow="fold")
    for s in sessions:
        after = f"{s.benchmark_after.overall_score:.3f}" if s.benchmark_after else "-"
        table.add_row(
            s.id,
            s.status.value,
            s.trigger.value,
            s.started_at.isoformat(timespec="seconds"),
            str(len(s.edit_outcomes)),
            f"{s.benchmark_before.overall_score:.3f} → {after}",
            f"{s.teacher_cost_usd:.2f}",
        )
    _console.print(table)


def render_session(session: LearningSession) -> None:
    fields = session.model_dump(mode="json", exclude={"edit_outcomes"})
    render_result(f"session {session.id}", fields)
    table = Table(title=f"{len(session.edit_outcomes)} outcome(s)", title_justify="left")
    for column in ("edit_id", "status", "benchmark_delta", "applied_at", "error"):
        table.add_column(column, overflow="fold")
    for o in session.edit_outcomes:
        table.add_row(
            o.edit_id,
            o.status,
            _flat(o.benchmark_delta),
            o.applied_at.isoformat(timespec="seconds") if o.applied_at else "-",
            o.error or "-",
        )
    _console.print(table)


def config_reference() -> str:
    """The Markdown settings table of docs/configuration.md, made from the settings model itself."""
    lines = ["| key | env var | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=False)
        if name in {"learning_root", "db_path", "address"}:
            shown = "(derived)"
        elif default is None:
            shown = "unset"
        elif name == "socket_mode":
            shown = f"`{default:04o}`"
        else:
            shown = f"`{default}`"
        lines.append(
            f"| `{name}` | `SESSIONSTORE_{name.upper()}` | {shown} | {field.description or ''} |"
        )
    return "\n".join(lines)
