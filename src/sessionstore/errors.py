"""One exception hierarchy for the whole package.

Every class that can cross the wire carries a ``code``; the daemon puts that code
in its error reply and the client raises the same class again, so a caller sees
the same exception whether it talks to ``SessionStore`` or ``SessionStoreClient``.
"""

from __future__ import annotations


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
    """Nobody answered at the daemon's address within the timeout."""

    code = "unavailable"


class ShuttingDown(SessionStoreError):
    """The daemon is draining for shutdown and takes no new requests."""

    code = "shutting_down"


class InternalError(SessionStoreError):
    """The daemon hit an unexpected error; the request was not applied."""

    code = "internal"


class PipelineError(SessionStoreError):
    """One or more saves sent through ``client.pipeline()`` failed."""

    code = "pipeline"

    def __init__(self, failures: list[tuple[str, SessionStoreError]]) -> None:
        self.failures = failures
        listed = "; ".join(f"{what}: {err}" for what, err in failures[:10])
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        super().__init__(f"{len(failures)} pipelined save(s) failed: {listed}{more}")


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
        InternalError,
    )
}

ERROR_CODES: frozenset[str] = frozenset(_WIRE_ERRORS)


def error_for_code(code: str, message: str) -> SessionStoreError:
    """Rebuild the exception a daemon reply describes (unknown codes become InternalError)."""
    cls = _WIRE_ERRORS.get(code, InternalError)
    return cls(message)
