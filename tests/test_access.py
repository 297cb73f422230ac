"""Access: owner-only files, no unauthenticated network listener, CURVE, and no path escapes."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq.auth
from daemon_helpers import EDIT, Daemon, outcome, session
from sessionfiles import plan_dict, session_dict, snapshot, write_session
from stress_helpers import helper_env, wait_until

from sessionstore import SessionStoreClient
from sessionstore.errors import DaemonUnavailable, InvalidRecord
from sessionstore.reconcile import PLACEHOLDER_TARGET

INDEX_FILES = {
    "distillation.db",
    "distillation.db-wal",
    "distillation.db-shm",
    "distillation.db.lock",
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def sessionstore(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessionstore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=helper_env(),
    )


def non_loopback_ip() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        ip = probe.getsockname()[0]
    return None if ipaddress.ip_address(ip).is_loopback else ip


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- files and sockets are the owner's alone --------------------------------------------------


def test_learning_root_index_and_socket_are_owner_only_whatever_the_umask(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    root = tmp_path / "home" / "learning"  # neither exists yet: the daemon creates both
    d = daemon_factory(root)
    d.address = f"ipc://{root}/sessiond.sock"  # the default address, inside the root
    previous = os.umask(0)  # a careless parent: the daemon must not rely on our umask
    try:
        d.start()
    finally:
        os.umask(previous)
    SessionStoreClient(d.address, timeout=10).save_session(session("s"))

    assert mode(root) == 0o700
    for name in INDEX_FILES:
        assert mode(root / name) & 0o077 == 0, f"{name} has mode {mode(root / name):o}"
    assert mode(d.db_path) == 0o600
    sock = root / "sessiond.sock"
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    assert mode(sock) == 0o600, f"socket has mode {mode(sock):o}"


def test_socket_mode_setting_admits_the_daemons_group_and_nobody_else(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """socket_mode 0660 (the system unit's) lets the daemon's group connect; the index
    and its side files stay the owner's alone."""
    d = daemon_factory(extra_env={"SESSIONSTORE_SOCKET_MODE": "0660"}).start()
    SessionStoreClient(d.address, timeout=10).save_session(session("s"))
    assert mode(Path(d.address.removeprefix("ipc://"))) == 0o660
    assert mode(d.db_path) == 0o600


def test_existing_learning_root_open_to_others_is_warned_about(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    root = tmp_path / "learning"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    d = daemon_factory(root).start()
    assert f"learning root {root} has mode 755" in d.stderr()


# -- no network listener without authentication ----------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "this-machine"])
def test_non_loopback_tcp_without_curve_refuses_to_start(tmp_path: Path, host: str) -> None:
    if host == "this-machine":
        host = non_loopback_ip() or pytest.skip("no non-loopback IPv4 address here")
    address = f"tcp://{host}:{free_port(host)}"
    root = tmp_path / "learning"

    run = sessionstore("serve", "--learning-root", str(root), "--address", address)

    assert run.returncode != 0
    assert address in run.stderr and "curve" in run.stderr.lower(), run.stderr
    assert not root.exists()  # refused before touching anything
    with socket.socket() as s:  # and nothing listens there
        assert (
            s.connect_ex(
                (host if host != "0.0.0.0" else "127.0.0.1", int(address.rsplit(":", 1)[1]))
            )
            != 0
        )


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """server, client and intruder key pairs made by `sessionstore keygen`; only client allowed."""
    made = tmp_path / "keys"
    for name in ("server", "client", "intruder"):
        run = sessionstore("keygen", str(made), "--name", name)
        assert run.returncode == 0, run.stderr
        assert mode(made / f"{name}.key_secret") == 0o600
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(made / "client.key", allowed / "client.key")
    return {
        "dir": made,
        "allowed": allowed,
        **{
            f"{n}{s}": made / f"{n}.key{s}"
            for n in ("server", "client", "intruder")
            for s in ("", "_secret")
        },
    }


@pytest.fixture
def curve_daemon(
    daemon_factory: Callable[..., Daemon], keys: dict[str, Path]
) -> Iterator[tuple[Daemon, str]]:
    """A daemon bound beyond loopback with CURVE; yields it and the address to connect to."""
    host = non_loopback_ip() or "0.0.0.0"
    port = free_port(host)
    d = daemon_factory(
        extra_env={
            "SESSIONSTORE_CURVE_SECRET_KEY": str(keys["server_secret"]),
            "SESSIONSTORE_CURVE_ALLOWED_DIR": str(keys["allowed"]),
        }
    )
    d.address = f"tcp://{host}:{port}"
    d.start()
    yield d, f"tcp://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"


def curve_client(
    monkeypatch: pytest.MonkeyPatch,
    address: str,
    server: Path | None,
    secret: Path | None,
    timeout: float,
) -> SessionStoreClient:
    for name, value in (("SERVER_KEY", server), ("CLIENT_SECRET_KEY", secret)):
        if value is None:
            monkeypatch.delenv(f"SESSIONSTORE_CURVE_{name}", raising=False)
        else:
            monkeypatch.setenv(f"SESSIONSTORE_CURVE_{name}", str(value))
    return SessionStoreClient(address, timeout=timeout)


def test_curve_client_with_an_allowed_key_is_served(
    curve_daemon: tuple[Daemon, str], keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, address = curve_daemon
    client = curve_client(monkeypatch, address, keys["server"], keys["client_secret"], 10)
    client.save_session(session("over-curve"))
    client.save_outcome("over-curve", outcome("e1"), **EDIT)
    assert [o.edit_id for o in client.list_outcomes("over-curve")] == ["e1"]
    assert "refused client" not in d.stderr()


def test_curve_client_with_an_unknown_key_is_refused_and_logged(
    curve_daemon: tuple[Daemon, str], keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, address = curve_daemon
    intruder = curve_client(monkeypatch, address, keys["server"], keys["intruder_secret"], 2)
    with pytest.raises(DaemonUnavailable):
        intruder.save_session(session("from-intruder"))
    public, _ = zmq.auth.load_certificate(str(keys["intruder"]))
    line = f"refused client with unknown CURVE key {public.decode()}"
    wait_until(lambda: line in d.stderr(), 10, "the refusal in the daemon's log")
    allowed = curve_client(monkeypatch, address, keys["server"], keys["client_secret"], 10)
    assert allowed.get_session("from-intruder") is None


def test_client_without_curve_is_refused(
    curve_daemon: tuple[Daemon, str], keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, address = curve_daemon
    plain = curve_client(monkeypatch, address, None, None, 2)
    with pytest.raises(DaemonUnavailable):
        plain.save_session(session("from-plain"))
    allowed = curve_client(monkeypatch, address, keys["server"], keys["client_secret"], 10)
    assert allowed.get_session("from-plain") is None
    assert d.proc is not None and d.proc.poll() is None


# -- session ids and files never lead outside the learning root -----------------------------

TRICKY_IDS = [
    "../x", "../../escape", "/etc/passwd", "a/b", "..", ".", "sessions/../../y", "~",
    "x/../../../../tmp/evil", "..\\..\\win", "sessions", "distillation.db", "-rf",
]  # fmt: skip


def tree(path: Path) -> dict[str, tuple[str, bytes | None, int]]:
    """Everything under ``path`` but the index files, which saves legitimately change."""
    return {k: v for k, v in snapshot(path).items() if Path(k).name not in INDEX_FILES}


def test_path_like_session_ids_are_index_rows_only(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "x").mkdir(parents=True)
    (outside / "x" / "keep.txt").write_text("untouched")
    d = daemon_factory().start()
    client = SessionStoreClient(d.address, timeout=10)
    before = tree(tmp_path)
    passwd = Path("/etc/passwd").read_bytes(), Path("/etc/passwd").stat().st_mtime_ns

    for sid in TRICKY_IDS:
        try:
            client.save_session(session(sid))
        except InvalidRecord:
            assert client.get_session(sid) is None
            continue
        client.save_outcome(sid, outcome(f"e-{sid}"), **EDIT)
        stored = client.get_session(sid)
        assert stored is not None and stored.id == sid
        assert [o.edit_id for o in client.list_outcomes(sid)] == [f"e-{sid}"]
    client.reconcile(timeout=30)

    assert tree(tmp_path) == before  # nothing created, changed or removed anywhere
    assert not (d.learning_root / "sessions").exists()
    assert (Path("/etc/passwd").read_bytes(), Path("/etc/passwd").stat().st_mtime_ns) == passwd


def test_reconcile_never_follows_links_or_plan_paths_out_of_sessions(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = daemon_factory()
    root, outside = d.learning_root, tmp_path / "outside"
    sessions = root / "sessions"
    write_session(root, "good", session_dict("good"), plan=plan_dict("good"))
    # a whole session directory that is a link to a valid session kept outside
    write_session(outside, "evil", session_dict("evil"), plan=plan_dict("evil"))
    (sessions / "evil").symlink_to(outside / "sessions" / "evil", target_is_directory=True)
    # a session.json that is a link to a valid file outside
    write_session(outside, "linked", session_dict("linked"))
    (sessions / "linked").mkdir()
    (sessions / "linked" / "session.json").symlink_to(
        outside / "sessions" / "linked" / "session.json"
    )
    # a session whose plan_path points at a plan outside: only the sibling plan.json counts
    write_session(outside, "lure", session_dict("lure"), plan=plan_dict("planned", ("e1", "e2")))
    write_session(
        root,
        "planned",
        session_dict("planned", plan_path=str(outside / "sessions" / "lure" / "plan.json")),
    )
    # an alias inside sessions/ is read once, under its own name
    (sessions / "alias-of-good").symlink_to(sessions / "good", target_is_directory=True)
    before = snapshot(outside)
    d.start()
    client = SessionStoreClient(d.address, timeout=10)

    result = client.reconcile(timeout=30)

    assert {s.id for s in client.list_sessions()} == {"good", "planned"}
    reasons = {item["path"]: item["reason"] for item in result["invalid"]}
    assert "outside sessions/" in reasons["sessions/evil/session.json"]
    assert "outside sessions/" in reasons["sessions/linked/session.json"]
    assert set(reasons) == {"sessions/evil/session.json", "sessions/linked/session.json"}
    assert [o.edit_id for o in client.list_outcomes("planned")] == ["e1", "e2"]
    assert result["outcomes_placeholder"] == 2  # the lure's plan was not read
    conn = sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True)
    try:
        targets = {
            row[0]
            for row in conn.execute("SELECT target FROM edit_outcomes WHERE session_id = 'planned'")
        }
    finally:
        conn.close()
    assert targets == {PLACEHOLDER_TARGET}
    assert snapshot(outside) == before
