"""The released OpenJarvis package, imported for the tests that compare against it.

The compatibility target is ``openjarvis`` 1.0.4 from PyPI, module
``openjarvis.learning.spec_search`` (the same code as the older
``openjarvis.learning.distillation``). It is imported, never copied: ``.ci/run``
installs it with ``pip install --no-deps openjarvis==1.0.4`` plus the ``compat``
extra (the few small dependencies those modules import). Where it is missing, the
tests that need it call :func:`environment.missing`: a skip on a developer's
machine, a failure in CI.
"""

from __future__ import annotations

import importlib
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any

from environment import missing
from pydantic import BaseModel

RELEASE = "1.0.4"
PACKAGE = "openjarvis.learning.spec_search"
INSTALL = f"pip install --no-deps openjarvis=={RELEASE} && pip install -e '.[compat]'"


def module(name: str) -> ModuleType:
    """``openjarvis.learning.spec_search.<name>`` from the released package, or a skip/fail."""
    try:
        installed = version("openjarvis")
    except PackageNotFoundError:
        missing(f"the released openjarvis package is not installed ({INSTALL})")
    if installed != RELEASE:
        missing(f"openjarvis {installed} is installed; these tests target {RELEASE} ({INSTALL})")
    try:
        return importlib.import_module(f"{PACKAGE}.{name}")
    except ImportError as err:
        missing(f"openjarvis {RELEASE} is installed but {PACKAGE}.{name} does not import: {err}")


def models() -> ModuleType:
    return module("models")


def session_store_class() -> type:
    """OpenJarvis's own SQLite ``SessionStore``."""
    return module("storage.session_store").SessionStore  # type: ignore[no-any-return]


def as_theirs(value: Any) -> Any:
    """Our model object as the same object of OpenJarvis's classes, values untouched.

    Built with ``model_construct`` (no validation), so a value set after construction
    (inf, a plain string for an enum) reaches OpenJarvis's code as it would from a
    caller of its own; anything that is not one of our records is returned as is.
    """
    theirs = models()
    if isinstance(value, list):
        return [as_theirs(item) for item in value]
    if isinstance(value, Enum) and hasattr(theirs, type(value).__name__):
        return getattr(theirs, type(value).__name__)(value.value)
    if not isinstance(value, BaseModel) or not type(value).__module__.startswith("sessionstore"):
        return value
    cls = getattr(theirs, type(value).__name__)
    fields = {name: as_theirs(getattr(value, name)) for name in type(value).model_fields}
    return cls.model_construct(**fields)


class OriginalStore:
    """OpenJarvis's SessionStore, handed OpenJarvis objects where a test passes ours."""

    def __init__(self, path: Path) -> None:
        self.inner = session_store_class()(path)

    def save_session(self, session: Any) -> None:
        self.inner.save_session(as_theirs(session))

    def save_outcome(self, session_id: Any, outcome: Any, **edit: Any) -> None:
        self.inner.save_outcome(session_id, as_theirs(outcome), **edit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
