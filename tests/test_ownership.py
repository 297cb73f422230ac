"""One daemon per index file and per address, and an inherited index made owner-only.

A second daemon must never share the first's index under another name (a hard
link made SQLite keep two WALs for one database and corrupted it) nor take its
socket away (same ipc address, another index: the second deleted the first's
socket file). An index the original library made 0644 is tightened to 0600.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_helpers import Daemon, session
from environment import missing
from stress_helpers import helper_env, integrity, session_ids

from sessionstore import SessionStoreClient

Factory = Callable[..., Daemon]
REFUSAL_TIMEOUT = 20.0


def serve_refused(learning_root: Path, address: str, *args: str, cwd: Path | None = None) -> str:
    """Start ``sessionstore serve``, expect it to refuse and exit 1; return its stderr."""
    command = [
        sys.executable, "-m", "sessionstore", "serve",
        "--learning-root", str(learning_root), "--address", address, *args,
    ]  # fmt: skip
    env = helper_env(OPENJARVIS_HOME=str(learning_root.parent))
    env.pop("NOTIFY_SOCKET", None)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=REFUSAL_TIMEOUT, env=env, cwd=cwd
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"a second daemon started and kept running: {err.stderr!r}")
    assert done.returncode == 1, done.stderr
    return done.stderr


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path, for ipc sockets (at most ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ss-"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- the index lock follows the file ---------------------------------------------------------


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Bind-mount a directory elsewhere (skipped where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(source: Path) -> Path:
        target = tmp_path / "bound"
        target.mkdir()
        done = subprocess.run(
            ["mount", "--bind", str(source), str(target)], capture_output=True, text=True
        )
        if done.returncode != 0:
            missing(f"cannot bind-mount here: {done.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


@pytest.mark.parametrize("name", ["hard link", "symlink", "relative path", "bind mount"])
def test_a_second_daemon_on_the_index_under_another_name_is_refused_naming_the_first(
    daemon_factory: Factory,
    tmp_path: Path,
    short_dir: Path,
    bind_mount: Callable[[Path], Path],
    name: str,
) -> None:
    first = daemon_factory().start()
    client = SessionStoreClient(first.address, timeout=10)
    client.save_session(session("before"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = None
    if name == "hard link":
        db = elsewhere / "linked.db"
        os.link(first.db_path, db)
    elif name == "symlink":
        db = elsewhere / "linked.db"
        db.symlink_to(first.db_path)
    elif name == "relative path":
        cwd = elsewhere
        db = Path(os.path.relpath(first.db_path, cwd))
    else:
        db = bind_mount(first.db_path.parent) / first.db_path.name
    stderr = serve_refused(
        elsewhere / "learning", f"ipc://{short_dir}/second.sock", "--db", str(db), cwd=cwd
    )
    assert f"is in use by a running sessiond or rebuild (pid {first.proc.pid})" in stderr
    assert not (short_dir / "second.sock").exists()
    client.save_session(session("after"))  # the first serves on, alone
    assert first.stop() == 0
    assert integrity(first.db_path) == ["ok"]
    assert session_ids(first.db_path) == {"before", "after"}


def test_rebuild_through_a_hard_link_is_refused_while_the_daemon_runs(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    d = daemon_factory().start()
    SessionStoreClient(d.address, timeout=10).save_session(session("kept"))
    link = tmp_path / "linked.db"
    os.link(d.db_path, link)
    done = subprocess.run(
        [sys.executable, "-m", "sessionstore", "rebuild", "--db", str(link),
         "--learning-root", str(d.learning_root)],
        capture_output=True, text=True, timeout=60, env=helper_env(),
    )  # fmt: skip
    assert done.returncode == 1
    assert f"pid {d.proc.pid}" in done.stderr
    assert os.stat(link).st_ino == os.stat(d.db_path).st_ino  # not swapped for a new file
    assert SessionStoreClient(d.address, timeout=10).get_session("kept") is not None


# -- the socket of a running daemon is never taken ----------------------------------------------


def test_a_second_daemon_at_the_same_address_is_refused_and_the_first_keeps_serving(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    first = daemon_factory().start()
    client = SessionStoreClient(first.address, timeout=10)
    client.save_session(session("first"))
    sock_path = Path(first.address[len("ipc://") :])
    inode = sock_path.stat().st_ino
    stderr = serve_refused(tmp_path / "other" / "learning", first.address)
    assert f"is in use by a running sessiond, pid {first.proc.pid}" in stderr
    assert f"(index {first.db_path})" in stderr
    assert sock_path.stat().st_ino == inode  # the same socket file, still the first's
    client.save_session(session("second"))
    assert first.stop() == 0
    assert session_ids(first.db_path) == {"first", "second"}


def test_a_stale_socket_file_is_replaced_and_a_foreign_listener_is_named(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    d = daemon_factory()
    sock_path = Path(d.address[len("ipc://") :])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as foreign:
        foreign.bind(str(sock_path))
        foreign.listen(1)  # not a sessiond: it never answers a status request
        stderr = serve_refused(d.learning_root, d.address)
        assert f"is in use by pid {os.getpid()} (it does not answer as a sessiond" in stderr
    # closed now: a stale file, as a daemon killed with SIGKILL leaves behind
    assert sock_path.exists()
    d.start()
    SessionStoreClient(d.address, timeout=10).save_session(session("s"))


def test_a_file_that_is_not_a_socket_is_never_removed(daemon_factory: Factory) -> None:
    d = daemon_factory()
    path = Path(d.address[len("ipc://") :])
    path.write_text("not a socket")
    stderr = serve_refused(d.learning_root, d.address)
    assert "exists and is not a socket; not removing it" in stderr
    assert path.read_text() == "not a socket"


# -- an inherited index is made owner-only ------------------------------------------------------


def test_an_index_made_0644_by_the_original_library_is_made_owner_only_with_its_side_files(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    d = daemon_factory()
    d.learning_root.mkdir(mode=0o700)
    writer = (
        "import os, signal, sqlite3, sys\n"
        "os.umask(0o022)\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('PRAGMA journal_mode=WAL')\n"
        "conn.execute('CREATE TABLE IF NOT EXISTS t (x)')\n"
        "conn.execute('INSERT INTO t VALUES (1)')\n"
        "os.kill(os.getpid(), signal.SIGKILL)  # leaves -wal and -shm behind\n"
    )  # the original library's SessionStore opens the file the same way, under the same umask
    subprocess.run([sys.executable, "-c", writer, str(d.db_path)], timeout=30, check=False)
    side = [Path(f"{d.db_path}{suffix}") for suffix in ("-wal", "-shm")]
    assert [mode(p) for p in (d.db_path, *side)] == [0o644, 0o644, 0o644]
    d.start()
    assert [mode(p) for p in (d.db_path, *side)] == [0o600, 0o600, 0o600]
    assert "made the index files owner-only: distillation.db 0644 -> 0600" in d.stderr()
    SessionStoreClient(d.address, timeout=10).save_session(session("s"))
    conn = sqlite3.connect(d.db_path)
    try:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]  # nothing else changed
    finally:
        conn.close()
