"""Break each guarantee's mechanism on purpose and check that its tests notice.

    python tests/mutations/run.py                 every mutation of every row
    python tests/mutations/run.py --only ack      mutations (or rows) whose name contains "ack"
    python tests/mutations/run.py --list          what would run, without running it
    python tests/mutations/run.py --json          one JSON report on stdout

The tree (tracked and untracked files, as they are now) is copied to a scratch
directory. The rows' tests first run there unchanged and must pass: a mutation
that fails tests which already failed proves nothing. Then each mutation of
``catalog.GUARANTEES`` is applied to the copy, its row's tests run
(imports come from the copy: ``PYTHONPATH`` wins over the editable install), and
the file is restored. A mutation is *killed* when a test fails, *survives* when
every test passes; a run that errs otherwise (a collection error, a crash of
pytest itself) means the mutation or the tests are broken, and fails the check
too. A row that names a test which none of its mutations makes fail names a test
that proves nothing of it: that fails the check as well. Exit status 0 only when
every mutation was killed and every named test killed one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from catalog import GUARANTEES, Guarantee, Mutation  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 900.0
"""Seconds one pytest run may take; a mutation that hangs its tests past this counts as killed."""


@dataclass
class Outcome:
    guarantee: str
    mutation: str
    verdict: str  # killed | survived | error
    seconds: float
    killed_by: list[str]
    detail: str = ""


def tracked_files(root: Path) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


def copy_tree(root: Path, target: Path) -> None:
    for name in tracked_files(root):
        source = root / name
        if not source.is_file():
            continue  # deleted in the work tree but still in the index
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)


def apply(tree: Path, mutation: Mutation) -> str:
    """Apply ``mutation`` in ``tree``; returns the file's original text (to restore it)."""
    path = tree / mutation.path
    original = path.read_text()
    text = original
    for old, new in mutation.edits:
        found = text.count(old)
        if found != 1:
            raise ValueError(
                f"{mutation.name}: {mutation.path} holds {found} copies of {old[:60]!r} (want 1)"
            )
        text = text.replace(old, new)
    path.write_text(text)
    return original


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree / "src"), str(tree / "service")]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("SESSIONSTORE_LONG_TESTS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
    except subprocess.TimeoutExpired as err:
        output = (
            (err.stdout or b"").decode(errors="replace")
            if isinstance(err.stdout, bytes)
            else (err.stdout or "")
        )
        return -1, output + f"\n(timed out after {RUN_TIMEOUT:.0f}s)", time.monotonic() - started
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def failed_tests(output: str) -> list[str]:
    """The failed tests' node ids, parameters dropped (``test_x[user]`` is ``test_x``)."""
    failed = re.findall(r"^(?:FAILED|ERROR) ([^\s\[]+)", output, re.MULTILINE)
    return sorted(set(failed))


def mutate(tree: Path, guarantee: Guarantee, mutation: Mutation) -> Outcome:
    original = apply(tree, mutation)
    try:
        code, output, seconds = run_tests(tree, guarantee.tests)
    finally:
        (tree / mutation.path).write_text(original)
    failed = failed_tests(output)
    if code == 1 and failed or code == -1:
        return Outcome(guarantee.title, mutation.name, "killed", seconds, failed or ["(timeout)"])
    if code == 0:
        return Outcome(guarantee.title, mutation.name, "survived", seconds, [])
    return Outcome(guarantee.title, mutation.name, "error", seconds, failed, output[-3000:])


def selected(pattern: str | None) -> list[tuple[Guarantee, Mutation]]:
    return [
        (g, m)
        for g in GUARANTEES
        for m in g.mutations
        if pattern is None or pattern in m.name or pattern.lower() in g.title.lower()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", metavar="TEXT", help="run the mutations or rows naming TEXT")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON report on stdout")
    args = parser.parse_args(argv)
    plan = selected(args.only)
    if not plan:
        parser.error(f"no mutation or row matches {args.only!r}")
    if args.list:
        for guarantee, mutation in plan:
            print(f"{guarantee.title}\t{mutation.name}\t{mutation.breaks}")
        return 0

    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print
    with tempfile.TemporaryDirectory(prefix="sessionstore-mutations-") as scratch:
        tree = Path(scratch)
        copy_tree(ROOT, tree)
        rows = {g.title: g for g, _ in plan}
        tests = tuple(dict.fromkeys(t for g in rows.values() for t in g.tests))
        say(f"baseline: {len(tests)} test(s) of {len(rows)} row(s), unmutated")
        code, output, seconds = run_tests(tree, tests)
        if code != 0:
            say(output[-4000:])
            say(f"baseline FAILED in {seconds:.0f}s: fix the tests before mutating")
            return 2
        say(f"baseline passed in {seconds:.0f}s")
        outcomes = []
        for guarantee, mutation in plan:
            outcome = mutate(tree, guarantee, mutation)
            outcomes.append(outcome)
            by = f" by {', '.join(outcome.killed_by)}" if outcome.killed_by else ""
            say(f"{outcome.verdict:8} {mutation.name} ({outcome.seconds:.0f}s){by}")
            if outcome.verdict == "error":
                say(outcome.detail)
    survivors = [o for o in outcomes if o.verdict != "killed"]
    whole_rows = [g for g in rows.values() if all((g, m) in plan for m in g.mutations)]
    idle = idle_tests(whole_rows, outcomes)
    if args.json:
        print(
            json.dumps({"mutations": [o.__dict__ for o in outcomes], "idle_tests": idle}, indent=2)
        )
    say(
        f"{len(outcomes) - len(survivors)} of {len(outcomes)} mutations killed"
        + (f"; not killed: {', '.join(o.mutation for o in survivors)}" if survivors else "")
    )
    for row, test in idle:
        say(f"'{row}' names {test}, which none of its mutations made fail")
    return 1 if survivors or idle else 0


def idle_tests(rows: Iterable[Guarantee], outcomes: list[Outcome]) -> list[tuple[str, str]]:
    """(row, test) for each named test that no mutation of its row made fail."""
    idle = []
    for guarantee in rows:
        killers = {t for o in outcomes if o.guarantee == guarantee.title for t in o.killed_by}
        idle += [(guarantee.title, test) for test in guarantee.tests if test not in killers]
    return idle


if __name__ == "__main__":
    sys.exit(main())
