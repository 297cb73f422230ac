"""sessionstore: the storage service for distillation learning-session records.

``SessionStore`` is the SQLite index itself (a drop-in for OpenJarvis's
distillation store); ``SessionStoreClient`` has the same methods and talks to the
``sessionstore serve`` daemon, which owns the only write connection.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from sessionstore.client import SessionStoreClient
from sessionstore.models import (
    AutonomyMode,
    BenchmarkSnapshot,
    EditOp,
    EditOutcome,
    EditPillar,
    EditRiskTier,
    LearningSession,
    SessionStatus,
    TriggerKind,
)
from sessionstore.store import SessionStore

try:
    __version__ = version("sessionstore")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AutonomyMode",
    "BenchmarkSnapshot",
    "EditOp",
    "EditOutcome",
    "EditPillar",
    "EditRiskTier",
    "LearningSession",
    "SessionStatus",
    "SessionStore",
    "SessionStoreClient",
    "TriggerKind",
    "__version__",
]
