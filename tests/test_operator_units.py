"""The metrics and replication unit files, checked offline by systemd-analyze.

They run under a real manager in test_systemd_units.py; here: they pass
``verify`` silently, and the drop-ins cost the system unit nothing in
``systemd-analyze security`` (docs/metrics.md, docs/replication.md give the numbers).
"""

from __future__ import annotations

import re
from pathlib import Path

from test_systemd import checkable_copy, run_analyze, systemd_analyze  # noqa: F401

UNITS = Path(__file__).resolve().parent.parent / "systemd"
DROP_INS = UNITS / "sessionstore.service.d"


def exposure(tool: str, unit: Path) -> float:
    code, output = run_analyze(tool, "security", "--offline=yes", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert code == 0 and match, output
    return float(match.group(1))


def with_drop_in(tmp_path: Path, drop_in: Path, name: str) -> Path:
    """The system unit with ``drop_in`` appended, as systemd merges it."""
    base = checkable_copy(UNITS / "sessionstore.service", tmp_path)
    merged = tmp_path / name / "sessionstore.service"
    merged.parent.mkdir()
    merged.write_text(base.read_text() + "\n" + drop_in.read_text())
    return merged


def test_metrics_socket_and_proxy_pass_verify_silently(
    systemd_analyze: str,  # noqa: F811
) -> None:
    code, output = run_analyze(
        systemd_analyze,
        "verify",
        str(UNITS / "sessionstore-metrics.socket"),
        str(UNITS / "sessionstore-metrics-proxy.service"),
    )
    assert (code, output) == (0, "")


def test_the_metrics_proxy_is_as_confined_as_the_daemon(
    systemd_analyze: str,  # noqa: F811
) -> None:
    assert exposure(systemd_analyze, UNITS / "sessionstore-metrics-proxy.service") <= 0.3


def test_the_metrics_and_replication_drop_ins_cost_the_unit_nothing(
    systemd_analyze: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    plain = exposure(systemd_analyze, checkable_copy(UNITS / "sessionstore.service", tmp_path))
    for name in ("metrics.conf", "replication.conf"):
        merged = with_drop_in(tmp_path, DROP_INS / name, name)
        assert exposure(systemd_analyze, merged) == plain, name
        code, output = run_analyze(systemd_analyze, "verify", str(merged))
        assert (code, output) == (0, ""), name
