"""The Prometheus endpoint: scraped over HTTP from a live daemon, parsed by prometheus_client.

Counters are checked to move with what was done between two scrapes (saves, a
save_batch, a duplicate, refusals, jobs), each in its own unit: frames are not
saves. A scraper that stalls holds up only its own thread: saves go on.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import sqlite3
import stat
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import EDIT, Daemon, outcome, session
from prometheus_client.parser import text_string_to_metric_families
from sessiond.metrics import SCRAPES_MAX
from stress_helpers import ask, raw_socket

from sessionstore import SessionStoreClient, protocol
from sessionstore.config import load_settings
from sessionstore.errors import ConfigError, StorageFailure

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Factory = Callable[..., Daemon]


def metrics_url(d: Daemon) -> str:
    """The endpoint the daemon logged (it was told port 0: the kernel picked one)."""
    match = re.search(r"metrics at (http://\S+/metrics)", d.stderr_path.read_text())
    assert match, d.stderr()
    return match.group(1)


def scrape(url: str) -> tuple[dict[str, str], Samples]:
    """(metric family name -> type, (sample name, labels) -> value), as Prometheus reads them."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(daemon_factory: Factory) -> Daemon:
    """A daemon serving metrics on a loopback port of the kernel's choosing."""
    return daemon_factory(
        extra_env={"SESSIONSTORE_METRICS_ADDRESS": "127.0.0.1:0", "SESSIONSTORE_QUERY_THREADS": "2"}
    ).start()


# -- what a scrape holds -----------------------------------------------------------------


def test_scrape_has_every_metric_with_its_prometheus_type(metered: Daemon) -> None:
    types, samples = scrape(metrics_url(metered))
    expected = {
        "sessionstore_frames_received": "counter",
        "sessionstore_frames_rejected": "counter",
        "sessionstore_saves_applied": "counter",
        "sessionstore_saves_duplicate": "counter",
        "sessionstore_saves_rejected": "counter",
        "sessionstore_replies_dropped": "counter",
        "sessionstore_batches_failed": "counter",
        "sessionstore_batch_size": "histogram",
        "sessionstore_commit_duration_seconds": "histogram",
        "sessionstore_loop_last_turn_timestamp_seconds": "gauge",
        "sessionstore_wal_size_bytes": "gauge",
        "sessionstore_index_size_bytes": "gauge",
        "sessionstore_sessions": "gauge",
        "sessionstore_outcomes": "gauge",
        "sessionstore_reads_pending": "gauge",
        "sessionstore_job_runs": "counter",
        "sessionstore_job_failures": "counter",
        "sessionstore_job_last_duration_seconds": "gauge",
        "sessionstore_job_last_success_timestamp_seconds": "gauge",
        "sessionstore_build_info": "gauge",
        "process_resident_memory_bytes": "gauge",
        "process_start_time_seconds": "gauge",
        "process_open_fds": "gauge",
        "python_info": "gauge",
    }
    assert {name: types.get(name) for name in expected} == expected
    from sessionstore import __version__

    info = [labels for (name, labels), _ in samples.items() if name == "sessionstore_build_info"]
    assert dict(info[0])["version"] == __version__
    assert value(samples, "process_resident_memory_bytes") > 0
    for job in ("checkpoint", "reconcile", "integrity", "prune_request_ids"):
        assert ("sessionstore_job_runs_total", (("job", job),)) in samples, job
    assert "sessionstore_integrity_ok" not in types  # no check has run yet: unknown, not 1
    assert "sessionstore_replication_up" not in types  # no replica set


def test_counters_move_with_saves_each_in_its_own_unit(metered: Daemon) -> None:
    url = metrics_url(metered)
    client = SessionStoreClient(metered.address, timeout=10)
    client.save_session(session("s"))
    _, before = scrape(url)

    sock = raw_socket(metered.address)
    items = [
        protocol.encode_save_outcome(f"b-{i}", "s", outcome(f"b-{i}"), rationale="", **EDIT)
        for i in range(50)
    ]
    reply = ask(sock, protocol.encode_save_batch("batch-1", items))  # one frame, 50 saves
    assert reply["ok"] and all(item["ok"] for item in reply["result"])
    again = ask(sock, items[0])  # a re-send of an applied save
    assert again["ok"] and again["duplicate"] is True
    orphan = protocol.encode_save_outcome("orphan", "nope", outcome("x"), rationale="", **EDIT)
    assert ask(sock, orphan)["error"]["code"] == "unknown_session"
    assert ask(sock, b"{not json")["error"]["code"] == "malformed"
    sock.close()
    _, after = scrape(url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("sessionstore_frames_received_total") == 4  # 4 frames…
    assert moved("sessionstore_saves_applied_total") == 50  # …holding 52 saves
    assert moved("sessionstore_saves_duplicate_total") == 1
    assert moved("sessionstore_saves_rejected_total", code="unknown_session") == 1
    assert moved("sessionstore_frames_rejected_total", code="unknown_session") == 1
    assert moved("sessionstore_frames_rejected_total", code="malformed") == 1
    assert moved("sessionstore_saves_rejected_total", code="malformed") == 0  # not a save
    # three write transactions: the batch, the duplicate and the orphan (rolled back)
    assert moved("sessionstore_batch_size_count") == 3
    assert (
        moved("sessionstore_batch_size_bucket", le="50")
        - moved("sessionstore_batch_size_bucket", le="20")
        == 1
    )  # the save_batch's 50 saves went in one transaction
    assert moved("sessionstore_commit_duration_seconds_count") == 3
    assert moved("sessionstore_commit_duration_seconds_sum") > 0
    assert value(after, "sessionstore_last_commit_timestamp_seconds") >= value(
        before, "sessionstore_last_commit_timestamp_seconds"
    )
    assert (value(after, "sessionstore_sessions"), value(after, "sessionstore_outcomes")) == (1, 50)
    assert value(after, "sessionstore_index_size_bytes") == os.stat(metered.db_path).st_size
    assert value(after, "sessionstore_wal_size_bytes") > 0
    # `status` counts the same things under the same names
    status = client.status()
    assert status["saves_applied"] == value(after, "sessionstore_saves_applied_total")
    assert status["frames_rejected"] == {"malformed": 1, "unknown_session": 1}
    assert status["saves_rejected"] == {"unknown_session": 1}


def test_job_counters_move_with_runs_failures_and_integrity(metered: Daemon) -> None:
    url = metrics_url(metered)
    client = SessionStoreClient(metered.address, timeout=10)
    _, before = scrape(url)
    client.checkpoint("TRUNCATE")
    assert client.integrity_check()["ok"] is True
    client.reconcile()
    # A real fault (as in test_service): the table reconcile records file states in is
    # dropped under it by another process; the next reconcile fails.
    damage = sqlite3.connect(metered.db_path, timeout=10)
    damage.execute("DROP TABLE reconcile_files")
    damage.commit()
    damage.close()
    with pytest.raises(StorageFailure, match="reconcile_files"):
        client.reconcile()
    _, after = scrape(url)

    def moved(name: str, job: str) -> float:
        return value(after, name, job=job) - value(before, name, job=job)

    assert moved("sessionstore_job_runs_total", "checkpoint") == 1
    assert moved("sessionstore_job_failures_total", "checkpoint") == 0
    assert moved("sessionstore_job_runs_total", "reconcile") == 2
    assert moved("sessionstore_job_failures_total", "reconcile") == 1
    assert moved("sessionstore_job_runs_total", "integrity") == 1
    assert moved("sessionstore_job_failures_total", "integrity") == 0
    success = value(after, "sessionstore_job_last_success_timestamp_seconds", job="integrity")
    assert time.time() - 60 < success <= time.time()
    assert value(after, "sessionstore_job_last_duration_seconds", job="checkpoint") >= 0
    assert (
        "sessionstore_job_last_success_timestamp_seconds",
        (("job", "prune_request_ids"),),
    ) not in after
    assert value(after, "sessionstore_integrity_ok") == 1


# -- a scrape never holds up a save ----------------------------------------------------------


def test_stalled_scrapers_do_not_delay_saves(metered: Daemon) -> None:
    """Every scrape slot held by a scraper that sent half a request and stopped: saves
    are acknowledged as before, a scrape beyond the slots is closed, not queued behind
    them, and once the stalled ones go a scrape is answered again."""
    url = metrics_url(metered)
    host, port = url.split("/")[2].rsplit(":", 1)
    client = SessionStoreClient(metered.address, timeout=5)
    client.save_session(session("s"))
    stalled = []
    for _ in range(SCRAPES_MAX):
        conn = socket.create_connection((host, int(port)), timeout=10)
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        stalled.append(conn)
    try:
        extra = socket.create_connection((host, int(port)), timeout=10)
        extra.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra.recv(1024) == b"", "a scrape beyond the slots was answered or kept waiting"
        extra.close()
        took = []
        for i in range(200):
            started = time.perf_counter()
            client.save_outcome("s", outcome(f"e{i}"), **EDIT)  # times out after 5 s
            took.append(time.perf_counter() - started)
        assert client.status()["saves_applied"] == 201
    finally:
        for conn in stalled:
            conn.close()
    print(f"saves with {SCRAPES_MAX} stalled scrapers: max {max(took) * 1000:.1f} ms")
    deadline = time.monotonic() + 10
    while True:  # the stalled threads see their peers gone and free their slots
        try:
            _, samples = scrape(url)
            break
        except (ConnectionError, http.client.RemoteDisconnected):
            assert time.monotonic() < deadline, "the slots were never freed"
            time.sleep(0.05)
    assert value(samples, "sessionstore_saves_applied_total") == 201


def test_save_latency_while_scraped_continuously(metered: Daemon) -> None:
    """Measured, not asserted beyond "every save acknowledged": scrapers in a loop on
    the daemon's own CPU (the GIL is shared) next to a writer, against the same writer alone."""
    url = metrics_url(metered)
    client = SessionStoreClient(metered.address, timeout=10)
    client.save_session(session("s"))

    def saves(prefix: str) -> list[float]:
        took = []
        for i in range(300):
            started = time.perf_counter()
            client.save_outcome("s", outcome(f"{prefix}-{i}"), **EDIT)
            took.append(time.perf_counter() - started)
        return sorted(took)

    alone = saves("alone")
    stop, scrapes = threading.Event(), [0]

    def scraper() -> None:
        while not stop.is_set():
            scrape(url)
            scrapes[0] += 1

    threads = [threading.Thread(target=scraper) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        scraped = saves("scraped")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert client.status()["saves_applied"] == 601
    p99 = int(len(alone) * 0.99)
    print(
        f"save latency p50/p99 alone {alone[len(alone) // 2] * 1000:.2f}/{alone[p99] * 1000:.2f} ms, "
        f"while scraped {scraped[len(scraped) // 2] * 1000:.2f}/{scraped[p99] * 1000:.2f} ms "
        f"({scrapes[0]} scrapes)"
    )


# -- the address ---------------------------------------------------------------------------


def test_metrics_are_off_unless_an_address_is_set(daemon: Daemon) -> None:
    assert load_settings().metrics_address is None
    assert "metrics at" not in daemon.stderr_path.read_text()


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        (":9464", "127.0.0.1:9464"),
        ("localhost:9464", "localhost:9464"),
        ("[::1]:9464", "[::1]:9464"),
        ("unix:/run/sessionstore/metrics.sock", "unix:/run/sessionstore/metrics.sock"),
    ],
)
def test_metrics_address_binds_loopback_unless_told(
    given: str, normalised: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONSTORE_METRICS_ADDRESS", given)
    assert load_settings().metrics_address == normalised


@pytest.mark.parametrize("bad", ["9464", "host:", ":99999", "unix:relative.sock", "http://x:1"])
def test_a_bad_metrics_address_is_refused_naming_the_setting(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONSTORE_METRICS_ADDRESS", bad)
    with pytest.raises(ConfigError, match="metrics_address"):
        load_settings()


def test_a_taken_port_fails_the_start_with_the_address(daemon_factory: Factory) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        d = daemon_factory(extra_env={"SESSIONSTORE_METRICS_ADDRESS": f":{port}"})
        with pytest.raises(pytest.fail.Exception, match="daemon exited with 1"):
            d.start()
        assert f"metrics: cannot listen at 127.0.0.1:{port}" in d.stderr()
    finally:
        taken.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def test_unix_socket_endpoint_is_owner_only_and_survives_a_kill(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """``unix:PATH`` is for a unit with PrivateNetwork=yes (a proxy forwards to it); a
    socket file left by a daemon killed outright does not stop the next one."""
    path = tmp_path / "metrics.sock"
    d = daemon_factory(extra_env={"SESSIONSTORE_METRICS_ADDRESS": f"unix:{path}"}).start()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    d.kill()
    assert path.exists()
    d.start()
    SessionStoreClient(d.address, timeout=10).save_session(session("s"))
    conn = UnixHTTPConnection(str(path))
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200
    families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    conn.close()
    assert families["sessionstore_saves_applied"].samples[0].value == 1
    assert d.stop() == 0
    assert not path.exists()
