"""The distribution builds as ``pip install .`` builds it, without deprecation warnings.

pip builds in an isolated environment with the newest setuptools the index offers
(the ``[build-system]`` range). Setuptools 77+ warns that ``project.license`` as a
table is deprecated, and from 2027-02-18 refuses it: the license must be an SPDX
expression, which lands in the wheel's metadata as ``License-Expression``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from environment import missing

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_builds_with_an_spdx_license_and_no_deprecation_warning(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: the build writes build/ and egg-info next to it
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for tree in ("src", "service"):
        shutil.copytree(
            ROOT / tree, source / tree, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-v",
            "-w",
            str(tmp_path / "dist"),
            ".",
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0 and "No matching distribution found for setuptools" in output:
        missing("a package index offering setuptools>=77 to build with")
    assert done.returncode == 0, output[-3000:]
    assert "Deprecat" not in output, [line for line in output.splitlines() if "eprecat" in line]
    (wheel,) = (tmp_path / "dist").glob("sessionstore-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        fields = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in fields
    assert not [f for f in fields if f.startswith("License:")]  # the deprecated field is gone
