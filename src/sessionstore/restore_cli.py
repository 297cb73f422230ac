"""``sessionstore restore``: the index back from its Litestream replica, then a reconcile."""

from __future__ import annotations

from sessionstore.cli_render import print_json, render_result
from sessionstore.config import Settings
from sessionstore.replica import restore


def run_restore(settings: Settings, *, force: bool, as_json: bool) -> int:
    report = restore(settings, force=force)
    if as_json:
        print_json(report)
    else:
        render_result(f"restored {report['index']} from {report['restored_from']}", report)
    return 0
