"""One exception hierarchy for the whole package.

Every class that can cross the wire carries a ``code``; the daemon puts that code
in its error reply and the client raises the same class again, so a caller sees
the same exception whether it talks to ``SessionStore`` or ``SessionStoreClient``.
Messages echo a caller's value through :func:`shorten`, never whole.
"""

from __future__ import annotations

ECHO_LIMIT = 60
"""Longest echo of a caller's value in a message (see :func:`shorten`)."""


def shorten(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for an error message, cut in the middle when it is long.

    A message echoes what it refuses (an id, a field's value) so the caller can
    find it, but a 100 KB id echoed whole buries the message and bloats every log
    line that repeats it. The head and the tail stay, and the length is stated,
    so the value is still recognisable: ``'run-aaaa…aaaa-42' (100000 characters)``.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    tail = max(1, limit // 4)
    head = limit - tail - 1
    if isinstance(value, str):
        size = f"{len(value)} characters"
    elif isinstance(value, bytes):
        size = f"{len(value)} bytes"
    else:
        size = f"{type(value).__name__}, {len(text)} characters"
    return f"{text[:head]}…{text[-tail:]} ({size})"


class SessionStoreError(Exception):
    """Base of every error this package raises on purpose."""

    code = "internal"


class InvalidRecord(SessionStoreError, ValueError):
    """A record or argument failed validation (wrong type, bad enum, out of range)."""

    code = "invalid"


class UnknownSession(SessionStoreError, LookupError):
    """A write refers to a session (or parent session) the index does not hold."""

    code = "unknown_session"


class IntegrityViolation(SessionStoreError):
    """SQLite refused a write for a constraint other than an unknown session."""

    code = "integrity"


class ReadOnlyStore(SessionStoreError):
    """A write was attempted through a store opened read-only."""

    code = "readonly"


class StorageFailure(SessionStoreError, OSError):
    """The database could not be written (disk full, I/O error, file gone)."""

    code = "storage"


class SchemaError(SessionStoreError):
    """The database file has a schema this version cannot use."""

    code = "schema"


class MalformedRequest(SessionStoreError):
    """A wire frame that is not a valid request (not JSON, unknown op, bad fields)."""

    code = "malformed"


class RequestTooLarge(SessionStoreError):
    """A wire frame larger than the daemon's message size limit."""

    code = "too_large"


class DaemonUnavailable(SessionStoreError, ConnectionError):
    """Nobody answered at the daemon's address within the timeout.

    ``unknown_request_ids`` holds the ids of the saves this failure leaves not known
    to be applied: they may or may not have been (a save the daemon took just before
    its deadline can commit after the caller gave up). Saving the same record again
    with ``request_id=`` one of them applies it exactly once.
    """

    code = "unavailable"

    def __init__(self, message: str, *, unknown_request_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unknown_request_ids = unknown_request_ids


class DeadlineExpired(DaemonUnavailable):
    """The daemon reached a save after its deadline and refused it: not applied.

    The deadline is a little before the caller's timeout, so this is what a caller
    sees whose save waited out (nearly) all of its timeout in a stalled daemon, or
    whose clock is behind the daemon's. A kind of :class:`DaemonUnavailable`, with the
    same ``unknown_request_ids``: saving again under them applies the save once.
    """

    code = "expired"


class ShuttingDown(SessionStoreError):
    """The daemon is draining for shutdown and takes no new requests."""

    code = "shutting_down"


class RequestIdConflict(SessionStoreError):
    """A save reused the request id of an applied save with different content: refused.

    A request id names one save; acknowledging a different save under it as a
    duplicate would drop that save silently.
    """

    code = "id_conflict"


class InternalError(SessionStoreError):
    """The daemon hit an unexpected error; the request was not applied."""

    code = "internal"


class PipelineError(SessionStoreError):
    """One or more saves sent through ``client.pipeline()`` failed."""

    code = "pipeline"

    def __init__(self, failures: list[tuple[str, SessionStoreError]]) -> None:
        self.failures = failures
        self.unknown_request_ids = unknown_request_ids(failures)
        """The failed saves that may still have been applied; re-save them with these ids."""
        listed = "; ".join(f"{what}: {err}" for what, err in failures[:10])
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        unknown = self.unknown_request_ids
        doubt = (
            f"; outcome unknown for {len(unknown)} (request ids {', '.join(unknown[:3])}"
            f"{', …' if len(unknown) > 3 else ''}: re-save with the same ids)"
            if unknown
            else ""
        )
        super().__init__(f"{len(failures)} pipelined save(s) failed: {listed}{more}{doubt}")


def unknown_request_ids(failures: list[tuple[str, SessionStoreError]]) -> tuple[str, ...]:
    """The request ids of failed saves whose fate is unknown (the others were refused)."""
    return tuple(
        rid
        for _, err in failures
        if isinstance(err, DaemonUnavailable)
        for rid in err.unknown_request_ids
    )


class RebuildRefused(SessionStoreError):
    """A rebuild would lose sessions only the old index holds; nothing was swapped in."""

    code = "rebuild_refused"


class ConfigError(SessionStoreError):
    """A setting is missing or has an invalid value."""

    code = "config"


_WIRE_ERRORS: dict[str, type[SessionStoreError]] = {
    cls.code: cls
    for cls in (
        InvalidRecord,
        UnknownSession,
        IntegrityViolation,
        ReadOnlyStore,
        StorageFailure,
        SchemaError,
        MalformedRequest,
        RequestTooLarge,
        DaemonUnavailable,
        ShuttingDown,
        DeadlineExpired,
        RequestIdConflict,
        InternalError,
    )
}

ERROR_CODES: frozenset[str] = frozenset(_WIRE_ERRORS)


def error_for_code(code: str, message: str) -> SessionStoreError:
    """Rebuild the exception a daemon reply describes (unknown codes become InternalError)."""
    cls = _WIRE_ERRORS.get(code, InternalError)
    return cls(message)
