"""The README's snippets run as pasted, and the docs generated from code match it.

A newcomer pastes the README's blocks in order: install, Quick start, Python.
This test does the same in a fresh copy of the repository (tracked files only,
as a clone would have), with the block text unchanged: a real venv, a real
``pip install .``, real daemons. Blocks it cannot run here carry a
``<!-- not run by tests/test_readme.py: reason -->`` line, and only those.

The README's demo learning root is ``/tmp/oj-demo``; this test empties it before
and after.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from environment import missing

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO_HOME = Path("/tmp/oj-demo")  # the README's OPENJARVIS_HOME
SKIP_MARK = re.compile(r"<!-- not run by tests/test_readme\.py: .+ -->")


@dataclass(frozen=True)
class Block:
    section: str
    language: str
    text: str
    skipped: bool


def readme_blocks() -> list[Block]:
    blocks, section, skip_next = [], "", False
    lines = iter(README.read_text().splitlines())
    for line in lines:
        if line.startswith("## "):
            section = line[3:].strip()
        elif SKIP_MARK.fullmatch(line.strip()):
            skip_next = True
        elif line.startswith("```") and line[3:].strip():
            body = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            blocks.append(Block(section, line[3:].strip(), "\n".join(body) + "\n", skip_next))
            skip_next = False
        elif line.strip():
            skip_next = False
    return blocks


def blocks_of(section: str, language: str) -> list[str]:
    return [
        b.text
        for b in readme_blocks()
        if b.section.startswith(section) and b.language == language and not b.skipped
    ]


def test_every_runnable_block_is_run_here() -> None:
    """A new sh or python block must be run below, or say why not."""
    run = {
        "Install and run",
        "Quick start: a daemon, two writers, one reader",
        "Use from Python",
        "Use it from OpenJarvis",
    }
    for block in readme_blocks():
        if block.language in {"sh", "python"} and not block.skipped:
            assert block.section in run, f"a block in '{block.section}' is run by no test"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh copy of the repository's tracked files, as a clone would have them."""
    target = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    shutil.rmtree(DEMO_HOME, ignore_errors=True)
    yield target
    shutil.rmtree(DEMO_HOME, ignore_errors=True)


def shell_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONSTORE_", "VIRTUAL"))}
    env.pop("OPENJARVIS_HOME", None)
    env.pop("PYTHONPATH", None)
    return {**env, "HOME": str(home)}


def run_shell(script: str, cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.mark.timeout(900)
def test_install_quick_start_and_python_blocks_run_as_pasted(
    checkout: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = shell_env(home)

    # Install and run: the one command, in the foreground; then Ctrl-C, as a user would.
    (install,) = blocks_of("Install and run", "sh")
    serve = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", install],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert serve.stdout is not None
        seen = []
        for line in serve.stdout:
            seen.append(line)
            if " ready at ipc://" in line:
                break
        else:
            pytest.fail(f"`sessionstore serve` never said ready: {''.join(seen)[-3000:]}")
        assert str(DEMO_HOME / "learning") in "".join(seen)
        os.killpg(serve.pid, signal.SIGINT)
        assert serve.wait(60) == 0, "".join(seen)[-3000:]
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()

    # Quick start: its blocks in order, in one shell.
    output = run_shell("\n".join(blocks_of("Quick start", "sh")), checkout, env, timeout=300)
    assert "writer 1: done" in output and "writer 2: done" in output
    assert "run-1" in output and "run-2" in output

    # Use from Python: the direct block, then the client block against a daemon.
    direct, through_daemon = blocks_of("Use from Python", "python")
    python = checkout / ".venv" / "bin" / "python"
    run_shell(f"{python} - <<'PY'\n{direct}PY\n", checkout, env, timeout=120)
    assert (home / "analysis.db").exists()
    script = (
        "export OPENJARVIS_HOME=/tmp/oj-demo\n"
        ".venv/bin/sessionstore serve & daemon=$!\n"
        f"{python} - <<'PY'\n{through_daemon}PY\n"
        ".venv/bin/sessionstore show run-1 --json | grep -c late- || true\n"
        "kill $daemon; wait $daemon\n"
    )
    output = run_shell(script, checkout, env, timeout=120)
    assert "executing" in output


def test_the_openjarvis_block_runs_as_pasted() -> None:
    """Run with this interpreter: the released openjarvis is installed beside the tests."""
    try:
        import openjarvis.learning.spec_search.models  # noqa: F401
    except ImportError as err:
        missing(f"openjarvis 1.0.4 is not installed ({err}); .ci/run installs it")
    (block,) = blocks_of("Use it from OpenJarvis", "python")
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    store = namespace["session_store"]
    assert type(store).__name__ == "SessionStoreClient"
    store.close()  # type: ignore[attr-defined]


def test_configuration_reference_in_the_docs_is_the_generated_one() -> None:
    from sessionstore.cli_render import config_reference_markdown

    assert config_reference_markdown() in (ROOT / "docs" / "configuration.md").read_text()


def test_docs_linked_from_the_readme_exist() -> None:
    for target in re.findall(r"\]\((docs/[^)#]+)", README.read_text()):
        assert (ROOT / target).is_file(), f"README links to a missing {target}"
