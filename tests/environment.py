"""Tests that need something of the machine: skip here, fail where it is required.

Some tests need an environment a developer's machine may lack: root, a writable
cgroup2 hierarchy and systemd binaries (real systemd managers), the released
``openjarvis`` package, ``mount``, ``systemd-analyze``, litestream. Where it is
missing they skip with the reason. CI sets ``SESSIONSTORE_REQUIRE_ENVIRONMENT=1``
(``.ci/run`` does), and there such a skip is a failure instead: a check that CI
quietly stopped running would look exactly like a check that passes.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_VARIABLE = "SESSIONSTORE_REQUIRE_ENVIRONMENT"


def environment_required() -> bool:
    """True where a missing environment must fail the run (CI)."""
    return os.environ.get(REQUIRE_VARIABLE, "") not in ("", "0")


def missing(reason: str) -> NoReturn:
    """Skip the calling test because ``reason`` (what is missing); fail instead in CI."""
    if environment_required():
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE} is set: this test must run here)")
    pytest.skip(reason)
