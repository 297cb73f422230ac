"""A whole listing from the daemon, one page at a time.

The daemon answers a listing in pages of at most ``max_reply_bytes`` (a reply it
has to hold until the client reads it is memory it cannot bound otherwise). Each
page is one request and one read transaction, and names the key of its last
record; the next page is asked for ``after`` that key. Sessions are keyed by
(``started_at`` as stored, id), the listing's order; outcomes by their row id.

What a paged listing guarantees (it is not one snapshot):

* every record that exists, with the same key, from the first page to the last is
  listed exactly once, in order, whatever is saved meanwhile: paging by key, not
  by offset, so a session saved between two pages shifts nothing;
* a record saved during the listing is listed if its key falls after the page
  being read when it was committed (new outcomes always do: their ids grow);
* a session whose status changed during a ``status=`` listing is listed or not
  according to the page that reached it; one whose ``started_at`` changed may be
  missed, or met twice, of which only the first is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sessionstore.errors import InvalidRecord, MalformedRequest

Query = Callable[..., Any]
"""``query(op, **params)``: one request to the daemon, returning its ``result``."""


def list_sessions(query: Query, status: str | None, limit: int | None) -> list[Any]:
    """Every session of the listing (at most ``limit``), as the daemon encoded them."""
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**63
    ):  # as SessionStore refuses it: the pages below count down from it
        raise InvalidRecord(f"limit: expected a non-negative integer, got {limit!r}")
    records: list[Any] = []
    seen: set[str] = set()
    after = None
    while limit is None or len(records) < limit:
        want = None if limit is None else limit - len(records)
        page = _page(
            query("list_sessions_page", status=status, limit=want, after=after), "sessions"
        )
        for record in page["sessions"]:
            key = record.get("id") if isinstance(record, dict) else None
            if key in seen:
                continue  # its started_at moved past the page boundary: keep the first
            if isinstance(key, str):
                seen.add(key)
            records.append(record)
        after = page["next"]
        if after is None:
            break
    return records if limit is None else records[:limit]


def list_outcomes(query: Query, session_id: str) -> list[Any]:
    """Every outcome of the session in insertion order, as the daemon encoded them."""
    records: list[Any] = []
    after = None
    while True:
        page = _page(query("list_outcomes_page", session_id=session_id, after=after), "outcomes")
        records += page["outcomes"]
        after = page["next"]
        if after is None:
            return records


def _page(result: Any, field: str) -> dict[str, Any]:
    """A page reply checked for shape; one that makes no sense is the daemon's fault."""
    if (
        not isinstance(result, dict)
        or not isinstance(result.get(field), list)
        or "next" not in result
        or (result["next"] is not None and not result[field])
    ):
        raise MalformedRequest(
            f"list_{field} reply from sessiond: expected a page "
            f'({{"{field}": [...], "next": ...}}), got {type(result).__name__}'
        )
    return result
