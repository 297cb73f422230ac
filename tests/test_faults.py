"""Fault injection: the disk fills or a write fails mid-commit, files vanish, files are junk.

Two real failures of the WAL write at COMMIT, through the live daemon:

* ``disk_full``: the learning root is a small tmpfs that a filler file fills up
  (ENOSPC, SQLite's "database or disk is full"); space returns when the filler
  is deleted. Needs ``mount`` (root); skipped otherwise.
* ``file_too_large``: the daemon's RLIMIT_FSIZE is lowered with ``prlimit`` so
  the WAL cannot grow (EFBIG, SQLite's "disk I/O error"; Python ignores SIGXFSZ);
  the limit is lifted again afterwards. Works for any user on Linux.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from daemon_helpers import EDIT, Daemon, outcome, session
from environment import missing
from sessionfiles import edit_dict, outcome_dict, plan_dict, session_dict, write_session
from stress_helpers import (
    duplicated_outcomes,
    integrity,
    outcome_ids,
    raw_socket,
    session_ids,
    wait_until,
)

from sessionstore import SessionStoreClient, protocol
from sessionstore.errors import StorageFailure
from sessionstore.models import EditOutcome, LearningSession
from sessionstore.store import SessionStore

QUIET_JOBS = {  # no scheduled job may touch the files while a test watches them
    "SESSIONSTORE_CHECKPOINT_INTERVAL": "3600",
    "SESSIONSTORE_RECONCILE_INTERVAL": "3600",
    "SESSIONSTORE_RECONCILE_ON_START": "false",
}
BLOB = 300_000  # bytes per big save: more than any slack the fault leaves


class Fault:
    """Makes the daemon's next WAL growth fail, and undoes that."""

    kind = ""
    root: Path

    def on(self, daemon: Daemon) -> None:
        raise NotImplementedError

    def off(self, daemon: Daemon) -> None:
        raise NotImplementedError


class DiskFull(Fault):
    kind = "disk_full"

    def __init__(self, mountpoint: Path) -> None:
        self.root = mountpoint / "learning"
        self.filler = mountpoint / "filler"

    def on(self, daemon: Daemon) -> None:
        with open(self.filler, "wb", buffering=0) as f:
            for chunk in (1 << 16, 1 << 12, 1):  # down to the last byte the tmpfs has
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError as err:
                    assert err.errno == errno.ENOSPC, err
        assert shutil.disk_usage(self.filler.parent).free == 0

    def off(self, daemon: Daemon) -> None:
        self.filler.unlink()


class FileTooLarge(Fault):
    kind = "file_too_large"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._saved: tuple[int, int] | None = None

    def on(self, daemon: Daemon) -> None:
        assert daemon.proc is not None
        self._saved = resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE)
        # room for the daemon's own log lines (its stderr is a file), not for the batch
        limit = daemon.stderr_path.stat().st_size + (64 << 10)
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (limit, self._saved[1]))

    def off(self, daemon: Daemon) -> None:
        assert daemon.proc is not None and self._saved is not None
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, self._saved)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 8 MiB tmpfs of our own; skipped where mounting is not allowed."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        missing(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


@pytest.fixture(params=["disk_full", "file_too_large"])
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Fault:
    if request.param == "disk_full":
        return DiskFull(request.getfixturevalue("tmpfs"))
    return FileTooLarge(tmp_path / "learning")


def big_session_frame(request_id: str, n: int) -> bytes:
    big = session(f"big-{n}", n, trigger_metadata={"blob": "x" * BLOB})
    return protocol.encode_save_session(request_id, big)


def exchange(address: str, frames: dict[str, bytes], timeout_ms: int = 20_000) -> dict[str, dict]:
    """Send every frame back to back (so they share batches), then collect one reply each."""
    sock = raw_socket(address)
    try:
        for frame in frames.values():
            sock.send(frame)
        replies: dict[str, dict] = {}
        while len(replies) < len(frames):
            assert sock.poll(timeout_ms), f"only {len(replies)} of {len(frames)} replies"
            reply = json.loads(sock.recv())
            replies[reply["id"]] = reply
        return replies
    finally:
        sock.close()


def test_failed_commit_is_refused_with_storage_errors_and_writes_resume_after(
    fault: Fault, daemon_factory: Callable[..., Daemon]
) -> None:
    d = daemon_factory(fault.root, extra_env=QUIET_JOBS).start()
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("s"))
    acked = []
    for i in range(20):
        client.save_outcome("s", outcome(f"before-{i}"), **EDIT)
        acked.append(f"before-{i}")
    assert client.checkpoint("TRUNCATE")["wal_bytes_after"] == 0  # the next commit must grow it

    fault.on(d)
    frames = {f"big-{n}": big_session_frame(f"big-{n}", n) for n in range(4)}
    replies = exchange(d.address, frames)
    for rid, reply in replies.items():
        assert reply["ok"] is False, f"{rid} was acknowledged although its commit failed"
        assert reply["error"]["code"] == "storage", reply
        assert "not committed" in reply["error"]["message"]
    with pytest.raises(StorageFailure, match="not committed"):  # not retried as if unavailable
        client.save_session(session("big-client", trigger_metadata={"blob": "y" * BLOB}))
    assert d.proc is not None and d.proc.poll() is None
    status = client.status()
    assert status["saves_rejected"].get("storage", 0) >= len(frames) + 1
    assert status["outcomes"] == len(acked)
    assert re.search(r"ERROR .*batch of \d+ save\(s\) not committed", d.stderr())

    fault.off(d)
    # the very same requests, re-sent: applied now, and not mistaken for duplicates
    replies = exchange(d.address, frames)
    for rid, reply in replies.items():
        assert reply["ok"] is True, reply
        assert not reply.get("duplicate"), f"{rid} was never applied, yet called a duplicate"
    for i in range(20):
        client.save_outcome("s", outcome(f"after-{i}"), **EDIT)
        acked.append(f"after-{i}")
    assert d.stop() == 0

    assert integrity(d.db_path) == ["ok"]
    assert outcome_ids(d.db_path, "s") == acked
    assert duplicated_outcomes(d.db_path) == []
    assert session_ids(d.db_path) == {"s", *frames}
    assert "big-client" not in session_ids(d.db_path)


def test_lost_wal_loses_exactly_the_commits_after_the_last_checkpoint(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """Defined outcome: kill -9, delete the -wal, restart. The daemon starts, the index is
    sound and holds exactly what was checkpointed; a reconcile brings back what the
    session.json files hold of the rest (the files win)."""
    d = daemon_factory(extra_env=QUIET_JOBS).start()
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("early"))
    for i in range(10):
        client.save_outcome("early", outcome(f"early-{i}"), **EDIT)
    assert client.checkpoint("TRUNCATE")["wal_bytes_after"] == 0
    late = ["late-a", "late-b"]
    for n, sid in enumerate(late):  # as a distillation run does: the file, then the index
        write_session(
            d.learning_root,
            sid,
            session_dict(sid, outcomes=("e1", "e2")),
            plan=plan_dict(sid, ("e1", "e2")),
        )
        client.save_session(session(sid, n))
        for edit in ("e1", "e2"):
            client.save_outcome(sid, outcome(edit), **EDIT)
    client.save_session(session("late-no-file"))
    wal = Path(f"{d.db_path}-wal")
    assert wal.stat().st_size > 0

    d.kill()
    wal.unlink()
    d.start()
    client = SessionStoreClient(d.address, timeout=10)
    assert client.integrity_check()["ok"] is True
    assert [o.edit_id for o in client.list_outcomes("early")] == [f"early-{i}" for i in range(10)]
    assert {s.id for s in client.list_sessions()} == {"early"}  # nothing after the checkpoint

    result = client.reconcile(timeout=30)
    assert result["inserted"] == len(late) and result["invalid"] == []
    for sid in late:
        assert [o.edit_id for o in client.list_outcomes(sid)] == ["e1", "e2"]
    assert client.get_session("late-no-file") is None  # in no file: gone with its WAL
    assert d.stop() == 0
    assert integrity(d.db_path) == ["ok"]


def test_index_deleted_while_running_is_refused_not_acknowledged_into_a_dead_file(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """Proposed defined outcome: once the index file at db_path is gone (or is another
    file), every save is refused with a storage error naming the path, an ERROR line
    says so, and the daemon keeps answering queries and status until it is restarted."""
    d = daemon_factory(extra_env=QUIET_JOBS).start()
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(session("s"))
    d.db_path.unlink()

    with pytest.raises(StorageFailure, match=re.escape(str(d.db_path))):
        client.save_outcome("s", outcome("after-delete"), **EDIT)
    assert d.proc is not None and d.proc.poll() is None
    assert client.status()["db_bytes"] == 0
    assert re.search(rf"ERROR .*{re.escape(str(d.db_path))}", d.stderr())


@pytest.mark.parametrize("query_threads", ["2", "0"], ids=["readers", "reads-on-loop"])
def test_index_replaced_while_running_refuses_saves_keeps_reads_and_loses_nothing_acknowledged(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, query_threads: str
) -> None:
    """``os.replace`` of another database over the index while the daemon runs (a backup
    restored under it). Nothing may be acknowledged into the file that is no longer the
    index: every save is refused with a storage error naming the path. Reads keep
    answering from the index the daemon opened, until it restarts. After the restart the
    index is the new file, and reconcile brings back what the session.json files hold,
    so every save acknowledged before the replacement is there again."""
    d = daemon_factory(extra_env={**QUIET_JOBS, "SESSIONSTORE_QUERY_THREADS": query_threads})
    write_session(d.learning_root, "kept", session_dict("kept"), plan=plan_dict("kept"))
    d.start()
    client = SessionStoreClient(d.address, timeout=10)
    client.save_session(LearningSession.model_validate(session_dict("kept")))
    for n, edit_id in enumerate(("e1", "e2")):
        edit = edit_dict(edit_id, n)
        client.save_outcome(
            "kept",
            EditOutcome.model_validate(outcome_dict(edit_id)),
            **{key: edit[key] for key in ("pillar", "op", "target", "risk_tier", "rationale")},
        )
    before = client.get_session("kept")
    assert before is not None and [o.edit_id for o in before.edit_outcomes] == ["e1", "e2"]

    replacement = tmp_path / "replacement.db"
    with closing(SessionStore(replacement)) as other:
        other.save_session(session("restored"))
    os.replace(replacement, d.db_path)

    with pytest.raises(StorageFailure, match=re.escape(str(d.db_path))):
        client.save_outcome("kept", outcome("after-replace"), **EDIT)
    with pytest.raises(StorageFailure, match="replaced"):
        client.save_session(session("new-after-replace"))
    assert re.search(rf"ERROR .*{re.escape(str(d.db_path))}", d.stderr())
    # reads keep working, from the index the daemon opened
    assert client.get_session("kept") == before
    assert [s.id for s in client.list_sessions()] == ["kept"]
    assert client.get_session("restored") is None
    assert d.stop() == 0

    d.start()
    client = SessionStoreClient(d.address, timeout=10)
    assert client.get_session("restored") is not None  # the new file is the index now
    assert client.get_session("new-after-replace") is None  # refused: never acknowledged
    assert client.reconcile(timeout=30)["inserted"] == 1  # the files win
    assert client.get_session("kept") == before  # outcomes included; "after-replace" is not
    assert d.stop() == 0
    assert integrity(d.db_path) == ["ok"]


UNREADABLE = {
    "b-directory": "not a regular file",
    "c-fifo": "not a regular file",
    "d-bad-bytes": "not UTF-8",
    "e-truncated": "not valid JSON",
    "f-empty": "empty file",
    "g-dangling-link": "broken symlink",
    "h-not-a-session": "not a valid session",
}


def test_reconcile_reports_unreadable_session_files_and_indexes_the_rest(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory(extra_env=QUIET_JOBS)
    root = d.learning_root
    for sid in ("a-good", "z-good"):
        write_session(root, sid, session_dict(sid), plan=plan_dict(sid))
    sessions = root / "sessions"
    (sessions / "b-directory" / "session.json").mkdir(parents=True)
    (sessions / "c-fifo").mkdir()
    os.mkfifo(sessions / "c-fifo" / "session.json")  # a reader that opened it would block
    good = json.dumps(session_dict("d-bad-bytes")).encode()
    write_session(root, "d-bad-bytes", good[:40] + b"\xff\xfe" + good[40:])
    write_session(root, "e-truncated", json.dumps(session_dict("e-truncated"))[:-20])
    write_session(root, "f-empty", b"")
    (sessions / "g-dangling-link").mkdir()
    (sessions / "g-dangling-link" / "session.json").symlink_to(sessions / "nowhere.json")
    write_session(root, "h-not-a-session", {"id": "h-not-a-session", "status": "sleepy"})
    d.start()
    client = SessionStoreClient(d.address, timeout=10)

    result = client.reconcile(timeout=30)  # a FIFO read would hang here until the timeout

    reasons = {item["path"]: item["reason"] for item in result["invalid"]}
    assert set(reasons) == {f"sessions/{name}/session.json" for name in UNREADABLE}
    for name, reason in UNREADABLE.items():
        assert reason in reasons[f"sessions/{name}/session.json"], reasons
    assert result["inserted"] == 2
    assert {s.id for s in client.list_sessions()} == {"a-good", "z-good"}
    wait_until(
        lambda: "reconcile: 2 more unusable files" in d.stderr(), 10, "the reconcile log lines"
    )  # one line for each of the first five files, then how many more
    named = [line for line in d.stderr().splitlines() if "reconcile: cannot use sessions/" in line]
    assert len(named) == 5, named
    client.save_session(session("still-serving"))  # and the daemon carries on
    assert d.stop(signal.SIGTERM) == 0
