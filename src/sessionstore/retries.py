"""How a client names and times its saves: request ids and deadlines.

A save carries a request id (the caller's, or a new one) that the daemon remembers
once applied, so saving again under it applies it once; and a deadline, the Unix
time after which the daemon refuses it unapplied, because its caller has given up
and reported it failed by then. See docs/retries.md.
"""

from __future__ import annotations

import time

from sessionstore import protocol
from sessionstore.errors import InvalidRecord

# A save's deadline on the wire is this much before its call gives up (a share of the
# timeout, at most the cap): a save the daemon takes just in time still has that long
# to commit and be acknowledged before the caller stops listening.
DEADLINE_MARGIN_SHARE = 0.1
DEADLINE_MARGIN_MAX = 1.0


def save_deadline(timeout: float) -> float:
    """The wire deadline (Unix time) of a save whose call may take ``timeout`` from now."""
    return time.time() + timeout - min(timeout * DEADLINE_MARGIN_SHARE, DEADLINE_MARGIN_MAX)


def checked_request_id(request_id: str | None) -> str:
    """The caller's request id, checked as the daemon would, or a new one."""
    if request_id is None:
        return protocol.new_request_id()
    if not isinstance(request_id, str) or not 0 < len(request_id) <= protocol.MAX_ID_LENGTH:
        raise InvalidRecord(
            f"request_id: expected a string of 1-{protocol.MAX_ID_LENGTH} characters, "
            f"got {request_id!r:.60}"
        )
    return request_id
