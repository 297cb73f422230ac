"""``sessionstore rebuild``: refuse while a daemon owns the index, then rebuild with progress.

A rebuild that would lose sessions only the old index holds raises RebuildRefused,
which the CLI prints as one line with a non-zero exit (``--files-only`` allows it).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sessionstore.cli_render import print_json, render_result
from sessionstore.config import Settings
from sessionstore.lock import IndexLock
from sessionstore.rebuild import rebuild

log = logging.getLogger("sessionstore.rebuild")
# Plain progress lines (no terminal) every this many files.
LOG_EVERY = 1000


@contextmanager
def _progress(interactive: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on a terminal; a log line every LOG_EVERY files otherwise."""
    if interactive:
        from rich.progress import Progress

        with Progress(transient=False) as bar:
            task = bar.add_task("rebuilding index", total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return

    def report(done: int, total: int) -> None:
        if done == total or done % LOG_EVERY == 0:
            print(f"rebuild: {done}/{total} session files", file=sys.stderr, flush=True)

    yield report


def run_rebuild(settings: Settings, as_json: bool, *, files_only: bool = False) -> int:
    settings.index_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with IndexLock(settings.index_path), _progress(sys.stderr.isatty() and not as_json) as progress:
        result = rebuild(
            settings.index_path, settings.learning_root, progress=progress, files_only=files_only
        )
    report = result.to_dict()
    print_json(report) if as_json else render_result(f"rebuilt {settings.index_path}", report)
    return 0
