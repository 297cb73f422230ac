"""The guarantee mutations stay applicable, and the README's Guarantees table names
exactly the tests that kill them (``tests/mutations/run.py`` runs them; CI too)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mutations"))
from catalog import GUARANTEES, Guarantee, Mutation  # noqa: E402

MUTATIONS = [(g, m) for g in GUARANTEES for m in g.mutations]


@pytest.mark.parametrize(("guarantee", "mutation"), MUTATIONS, ids=[m.name for _, m in MUTATIONS])
def test_each_mutation_applies_to_the_code_as_it_is(
    guarantee: Guarantee, mutation: Mutation
) -> None:
    text = (ROOT / mutation.path).read_text()
    for old, new in mutation.edits:
        assert text.count(old) == 1, f"{mutation.path} no longer holds exactly one {old!r}"
        assert old != new
        text = text.replace(old, new)
    if mutation.path.endswith(".py"):
        compile(text, mutation.path, "exec")  # a mutation must break behaviour, not syntax


def test_mutation_names_are_unique_and_every_row_has_tests_and_mutations() -> None:
    names = [m.name for _, m in MUTATIONS]
    assert len(names) == len(set(names))
    for guarantee in GUARANTEES:
        assert guarantee.tests and guarantee.mutations, guarantee.title


@pytest.mark.parametrize("guarantee", GUARANTEES, ids=[g.title for g in GUARANTEES])
def test_each_rows_tests_exist(guarantee: Guarantee) -> None:
    for node in guarantee.tests:
        path, name = node.split("::")
        source = (ROOT / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{node} does not exist"


def readme_rows() -> dict[str, set[str]]:
    """Guarantees table: each row's bold promise -> the ``file::test`` names it cites."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Guarantees", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        title = re.match(r"^\| \*\*(.+?)\*\*", line)
        if title:
            cited = re.findall(r"(test_\w+\.py)::(test_\w+)", line)
            rows[title.group(1)] = {f"tests/{path}::{name}" for path, name in cited}
    return rows


def test_the_readme_table_names_exactly_the_tests_that_kill_each_rows_mutations() -> None:
    rows = readme_rows()
    assert set(rows) == {g.title for g in GUARANTEES}
    for guarantee in GUARANTEES:
        assert rows[guarantee.title] == set(guarantee.tests), guarantee.title
