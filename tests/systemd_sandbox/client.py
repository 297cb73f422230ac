"""A distillation process in a systemd sandbox: talks to the unit's daemon through its socket.

Run inside a sandbox (:mod:`systemd_sandbox`) by the sandbox venv's Python, as
one of the sandbox's accounts: ``python -c "$(cat client.py)" COMMAND ADDRESS ...``.
It needs only ``sessionstore`` (no pytest, no test helpers). Results go to
stdout as JSON (``load``: one acknowledged edit id per line, flushed the moment
the ack arrives); exit status 3 means the daemon could not be reached.

- ``save ADDRESS SESSION N [TIMEOUT]``: save a session and N outcomes, one call each
- ``load ADDRESS SESSION``: save outcomes until the daemon goes away
- ``outcomes ADDRESS SESSION``: the edit ids stored for a session
- ``status ADDRESS``: the daemon's status report
- ``matrix ADDRESS``: every kind of request the daemon serves, from many threads
- ``reject ADDRESS``: one malformed frame; prints the error code of the reply
- ``connect PATH``: a bare AF_UNIX connect to the socket file; prints ok or the errno name
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import zmq

from sessionstore import SessionStoreClient
from sessionstore.errors import DaemonUnavailable, SessionStoreError, ShuttingDown
from sessionstore.models import BenchmarkSnapshot, EditOutcome, LearningSession

UNREACHABLE = 3
EDIT = {
    "pillar": "agent",
    "op": "patch_system_prompt",
    "target": "agents.simple.system_prompt",
    "risk_tier": "auto",
}
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def session(session_id: str, n: int = 0) -> LearningSession:
    return LearningSession(
        id=session_id,
        trigger="on_demand",
        status="executing",
        autonomy_mode="auto",
        started_at=START + timedelta(seconds=n),
        diagnosis_path=f"sessions/{session_id}/diagnosis.md",
        plan_path=f"sessions/{session_id}/plan.json",
        benchmark_before=BenchmarkSnapshot(
            benchmark_version="v1", overall_score=0.5, task_count=10, elapsed_seconds=1.0
        ),
        git_checkpoint_pre="0" * 40,
        teacher_cost_usd=0.1,
    )


def outcome(edit_id: str) -> EditOutcome:
    return EditOutcome(edit_id=edit_id, status="applied", benchmark_delta=0.01)


def save(address: str, session_id: str, count: str, timeout: str = "10") -> None:
    with SessionStoreClient(address, timeout=float(timeout)) as client:
        client.save_session(session(session_id))
        acked = []
        for i in range(int(count)):
            edit_id = f"{session_id}-{i:05d}"
            client.save_outcome(session_id, outcome(edit_id), **EDIT)
            acked.append(edit_id)
    print(json.dumps(acked))


def load(address: str, session_id: str) -> None:
    """Save until the daemon stops answering; every printed id was acknowledged."""
    with SessionStoreClient(address, timeout=3) as client:
        client.save_session(session(session_id))
        print("session", flush=True)
        i = 0
        try:
            while True:
                edit_id = f"{session_id}-{i:06d}"
                client.save_outcome(session_id, outcome(edit_id), **EDIT)
                print(edit_id, flush=True)
                i += 1
        except (DaemonUnavailable, ShuttingDown) as err:
            print(f"load stopped: {type(err).__name__}: {err}", file=sys.stderr)


def outcomes(address: str, session_id: str) -> None:
    with SessionStoreClient(address, timeout=10) as client:
        print(json.dumps([o.edit_id for o in client.list_outcomes(session_id)]))


def status(address: str) -> None:
    with SessionStoreClient(address, timeout=10) as client:
        print(json.dumps(client.status(), default=str))


def reject(address: str) -> None:
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    sock.send(b'{"v": 1, "id": "sandbox-bad-frame", "op": "save_session", "session": 7}')
    if not sock.poll(10_000):
        raise DaemonUnavailable(f"no reply to a malformed frame from {address}")
    reply = json.loads(sock.recv())
    sock.close()
    print(json.dumps(reply["error"]["code"]))


def connect(path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        print(json.dumps("ok"))
    except OSError as err:
        print(json.dumps(errno.errorcode.get(err.errno or 0, str(err))))
    finally:
        sock.close()


def matrix(address: str) -> None:
    """Every request kind, the read paths from several threads at once (both reader
    threads busy), many connections at once; reports what each returned."""
    report: dict[str, Any] = {}
    with SessionStoreClient(address, timeout=30) as client:
        for n in range(5):
            client.save_session(session(f"matrix-{n}", n))
            for i in range(20):
                client.save_outcome(f"matrix-{n}", outcome(f"matrix-{n}-{i:03d}"), **EDIT)
        with client.pipeline() as pipe:
            for i in range(2000):
                pipe.save_outcome("matrix-0", outcome(f"piped-{i:05d}"), **EDIT)
        reads: list[Callable[[], Any]] = [
            lambda: len(client.list_sessions()),
            lambda: len(client.list_sessions(status="executing", limit=3)),
            lambda: len(client.list_outcomes("matrix-0")),
            lambda: client.get_session("matrix-1") is not None,
            lambda: client.get_session("no-such-session") is None,
        ]
        with ThreadPoolExecutor(8) as pool:  # each thread its own connection
            results = list(pool.map(lambda f: f(), reads * 8))
        report["reads"] = results[: len(reads)]
        report["reads_consistent"] = results == results[: len(reads)] * 8
        big = session("matrix-big")  # near the frame limit: big buffers, overflow pages
        big.trigger_metadata = {"notes": "x" * 900_000}
        client.save_session(big)
        fetched = client.get_session("matrix-big")
        report["big_session_bytes"] = len(fetched.trigger_metadata["notes"]) if fetched else 0
        report["oversized_dropped"] = _oversized_frame(address)
        report["checkpoint"] = client.checkpoint()["mode"]
        report["reconcile"] = client.reconcile(full=True)
        # a scheduled pass may have indexed them first: what counts is that they are there
        report["on_disk_indexed"] = [
            client.get_session(f"on-disk-{n}") is not None for n in range(3)
        ]
        report["integrity"] = client.integrity_check()
        report["status_applied"] = client.status()["saves_applied"]
    report["connections"] = _many_connections(address, 64)
    print(json.dumps(report, default=str))


def _oversized_frame(address: str) -> bool:
    """A frame over max_message_bytes: the daemon drops that connection, answers nothing."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    sock.send(b'{"v": 1, "id": "huge", "op": "status", "pad": "' + b"x" * (2 << 20) + b'"}')
    answered = bool(sock.poll(2000))
    sock.close()
    return not answered


def _many_connections(address: str, count: int) -> int:
    """``count`` clients at once, each its own socket and session; how many were acked."""
    acked = 0
    lock = threading.Lock()

    def one(n: int) -> None:
        nonlocal acked
        with SessionStoreClient(address, timeout=30) as client:
            client.save_session(session(f"conn-{n:03d}", n))
        with lock:
            acked += 1

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acked


COMMANDS: dict[str, Callable[..., None]] = {
    "save": save,
    "load": load,
    "outcomes": outcomes,
    "status": status,
    "matrix": matrix,
    "reject": reject,
    "connect": connect,
}


def main() -> int:
    command, *args = sys.argv[1:]
    try:
        COMMANDS[command](*args)
    except DaemonUnavailable as err:
        print(f"{command}: {err}", file=sys.stderr)
        return UNREACHABLE
    except SessionStoreError as err:
        print(f"{command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
