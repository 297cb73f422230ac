"""Values for people: local times, sizes, durations, and labels made from JSON keys.

The CLI's ``--json`` output carries the exact numbers (epoch seconds, bytes,
unrounded floats); the tables carry these. A value is formatted by what its key
says it is (``*_at`` a time, ``*_bytes`` a size, ``*_seconds`` / ``*_ms`` a
duration), so a counter added to ``status`` later is shown sensibly without a
change here.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def clean(text: str) -> str:
    """One line with no control characters: a value from a session.json or an error
    message must neither break a line apart nor send escape sequences to a terminal."""
    return _CONTROL.sub(" ", text)


def local_time(value: float | datetime | str | None) -> str:
    """Epoch seconds or a datetime as local ISO 8601 to the second, with its UTC offset.

    A naive datetime is shown as it is (it has no zone to convert from).
    """
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return clean(str(value))
    if isinstance(value, datetime):
        moment = value.astimezone() if value.tzinfo is not None else value
    else:
        moment = datetime.fromtimestamp(value).astimezone()
    return moment.isoformat(sep=" ", timespec="seconds")


def relative_time(epoch: float | None, now: float | None = None) -> str:
    """A moment near now, as ``docker ps`` shows one: ``2 min ago``, ``in 58 s``."""
    if epoch is None:
        return "-"
    delta = epoch - (time.time() if now is None else now)
    if abs(delta) < 1:
        return "now"
    span = duration(abs(delta)) if abs(delta) >= 60 else f"{abs(delta):.0f} s"
    return f"in {span}" if delta > 0 else f"{span} ago"


def size(count: int | None) -> str:
    """Bytes in binary units: ``0 B``, ``512 B``, ``48.3 KiB``, ``1.2 GiB``."""
    if count is None:
        return "-"
    value = float(count)
    for unit in _SIZE_UNITS:
        if abs(value) < 1024 or unit == _SIZE_UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """A duration at the precision a person wants: ``0.31 ms``, ``42 ms``, ``2.7 s``,
    ``3 min 12 s``, ``2 h 5 min``, ``3 d 4 h``."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0 ms"
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    for big, big_unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "min")):
        if whole >= big:
            return _two_units(whole, big, big_unit, small, small_unit)
    return _two_units(whole, 60, "min", 1, "s")


def _two_units(whole: int, big: int, big_unit: str, small: int, small_unit: str) -> str:
    rest = (whole % big) // small
    return f"{whole // big} {big_unit}" + (f" {rest} {small_unit}" if rest else "")


def number(value: float) -> str:
    """A float without binary noise: 0.0003119970000398098 -> 0.000312; ints as they are."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.6g}"


def label(key: str) -> str:
    """A JSON key as a column or row label: the unit goes, the value will say it.

    ``wal_bytes_before`` -> ``wal size before``; ``uptime_seconds`` -> ``uptime``;
    ``last_commit_ms`` -> ``last commit``; ``last_commit_at`` -> ``last commit at``.
    """
    words = key.replace("_bytes", "_size").split("_")
    if words[-1] in {"seconds", "ms"} and len(words) > 1:
        words = words[:-1]
    return " ".join(words)


def value(key: str, raw: Any) -> str:
    """One value as a person reads it, chosen by what its key says it is."""
    if raw is None:
        return "-"
    if isinstance(raw, bool):
        return "yes" if raw else "no"
    if key.endswith("_at"):
        return local_time(raw)
    if key.endswith("_bytes") or "_bytes_" in key:
        return size(raw)
    if key.endswith("_seconds"):
        return duration(raw)
    if key.endswith("_ms"):
        return duration(raw / 1000)
    if key == "socket_mode" and isinstance(raw, int):
        return f"{raw:04o}"
    if isinstance(raw, dict):
        return counts(raw) if all(isinstance(v, int) for v in raw.values()) else compact(raw)
    if isinstance(raw, list):
        return compact(raw)
    if isinstance(raw, float):
        return number(raw)
    return clean(str(raw))


def counts(tally: dict[str, int]) -> str:
    """``{"invalid": 3, "malformed": 1}`` -> ``invalid 3, malformed 1``; empty -> ``none``."""
    return ", ".join(f"{name} {value(name, n)}" for name, n in tally.items()) or "none"


def compact(raw: Any) -> str:
    """A JSON value on one line (a session's trigger_metadata, a snapshot's cluster scores)."""
    return clean(json.dumps(raw, separators=(", ", ": "), default=str, ensure_ascii=False))


def plural(n: int, thing: str, things: str | None = None) -> str:
    return f"{n} {thing if n == 1 else things or thing + 's'}"
