"""What a timed phase records besides saves: CPU time of its processes and the machine's load.

CPU is read from ``/proc/<pid>/stat`` (``utime + stime``: every thread of the
process, the zmq I/O thread included) at the start line and at the deadline,
so a phase's CPU per save is the work its processes did for the saves counted
in the same window. The load average is read before and after each phase: a
number measured while something else kept the cores busy says little, and the
report should say so instead of hiding it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_UTIME_FIELD = 13
"""utime is field 14 of /proc/<pid>/stat (13 counted from 0); stime follows it."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a live process has used so far; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(b")") + 2 :].split()
    utime, stime = fields[_UTIME_FIELD - 2], fields[_UTIME_FIELD - 1]
    return (int(utime) + int(stime)) / _TICKS_PER_SECOND


def total_cpu_seconds(pids: Iterable[int]) -> float | None:
    """The sum of :func:`cpu_seconds` over ``pids``; None if any of them is gone."""
    total = 0.0
    for pid in pids:
        seconds = cpu_seconds(pid)
        if seconds is None:
            return None
        total += seconds
    return total


def per_save_us(seconds: float | None, saves: int) -> float | None:
    """CPU microseconds per save, or None when either side is unknown or zero."""
    if seconds is None or saves <= 0:
        return None
    return round(seconds * 1e6 / saves, 1)


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine skews every number."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cores() -> int:
    return os.cpu_count() or 1


@dataclass(slots=True)
class LoadWatch:
    """The load average before and after one phase, and whether it exceeded the core count.

    The 1-minute figure is compared: it is the one a phase of a few seconds moves.
    It includes the benchmark's own processes (a phase of 8 writers and a daemon on
    2 cores raises it by itself), which is why both ends are kept.
    """

    phase: str
    before: list[float] = field(default_factory=load_average)
    after: list[float] = field(default_factory=list)

    def stop(self) -> dict[str, Any]:
        self.after = load_average()
        return self.report()

    def report(self) -> dict[str, Any]:
        highest = max((x[0] for x in (self.before, self.after) if x), default=0.0)
        return {
            "before": self.before,
            "after": self.after,
            "cpu_count": cores(),
            "exceeds_cores": highest > cores(),
        }


def load_warnings(report: Any, path: str = "") -> list[str]:
    """One line per phase of ``report`` whose load average exceeded the core count."""
    found: list[str] = []
    if isinstance(report, dict):
        load = report.get("load_average")
        if isinstance(load, dict) and load.get("exceeds_cores"):
            found.append(
                f"{path or 'phase'}: load average {_first(load['before'])} before, "
                f"{_first(load['after'])} after, above the {load['cpu_count']} cores "
                "(this phase's numbers are less trustworthy)"
            )
        for key, value in report.items():
            if key != "load_average":
                found.extend(load_warnings(value, f"{path}.{key}" if path else key))
    return found


def _first(values: list[float]) -> str:
    return f"{values[0]:.2f}" if values else "?"
