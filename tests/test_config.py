"""Settings: defaults < TOML file < environment < flags, and every bad value named in one line.

Settings are read from ``os.environ`` at call time, so each test runs with a private
``$OPENJARVIS_HOME`` and no ``SESSIONSTORE_*`` variables from the outer environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_helpers import Daemon

from sessionstore import SessionStoreClient
from sessionstore import config as config_module
from sessionstore.config import IPC_PATH_MAX, Settings, is_loopback, load_settings
from sessionstore.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "service" / "sessiond.example.toml"
# `key = value` lines of the example, active or commented out.
ASSIGNMENT = re.compile(r"^(#\s*)?([a-z_]+)\s*=\s*(.+)$")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $OPENJARVIS_HOME and an environment without SESSIONSTORE_* variables."""
    for name in list(os.environ):
        if name.startswith("SESSIONSTORE_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("OPENJARVIS_HOME", str(home))
    return home


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONSTORE_")}
    return {**env, "OPENJARVIS_HOME": str(home), "SESSIONSTORE_CONFIG": "", **extra}


def run_cli(*args: str, env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sessionstore", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- precedence ---------------------------------------------------------------------


def test_defaults_derive_every_path_from_openjarvis_home(home: Path) -> None:
    s = load_settings()
    learning = home / "learning"
    assert s.learning_root == learning
    assert s.db_path == learning / "distillation.db"
    assert s.address == f"ipc://{learning}/sessiond.sock"
    assert s.sessions_dir == learning / "sessions"
    assert (s.batch_max, s.batch_wait_ms, s.durability) == (512, 0.0, "full")


def test_openjarvis_home_defaults_to_dot_openjarvis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENJARVIS_HOME", raising=False)
    monkeypatch.setenv("SESSIONSTORE_CONFIG", "")
    assert load_settings().learning_root == Path("~/.openjarvis/learning").expanduser()


def test_default_toml_file_under_the_learning_root_is_read_when_present(home: Path) -> None:
    assert load_settings().batch_max == 512
    write_toml(home / "learning" / "sessiond.toml", "batch_max = 64\n")
    assert load_settings().batch_max == 64


def test_sessionstore_config_env_beats_the_default_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(home / "learning" / "sessiond.toml", "batch_max = 64\n")
    chosen = write_toml(tmp_path / "chosen.toml", "batch_max = 32\n")
    monkeypatch.setenv("SESSIONSTORE_CONFIG", str(chosen))
    assert load_settings().batch_max == 32
    monkeypatch.setenv("SESSIONSTORE_CONFIG", "")  # empty means unset: back to the default file
    assert load_settings().batch_max == 64


def test_explicit_config_beats_sessionstore_config(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "SESSIONSTORE_CONFIG", str(write_toml(tmp_path / "env.toml", "batch_max = 32\n"))
    )
    explicit = write_toml(tmp_path / "flag.toml", "batch_max = 16\n")
    assert load_settings(explicit).batch_max == 16
    assert load_settings(str(explicit)).batch_max == 16


def test_environment_beats_file_and_overrides_beat_environment(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_toml(
        tmp_path / "s.toml", 'batch_max = 3\nbatch_wait_ms = 7.5\ndurability = "normal"\n'
    )
    monkeypatch.setenv("SESSIONSTORE_BATCH_MAX", "5")
    s = load_settings(config)
    assert (s.batch_max, s.batch_wait_ms, s.durability) == (5, 7.5, "normal")
    s = load_settings(config, batch_max=7, durability=None)  # None: flag not given
    assert (s.batch_max, s.batch_wait_ms, s.durability) == (7, 7.5, "normal")


def test_address_env_var_and_flag(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONSTORE_ADDRESS", "tcp://127.0.0.1:6001")
    assert load_settings().address == "tcp://127.0.0.1:6001"
    assert load_settings(address="ipc:///tmp/x.sock").address == "ipc:///tmp/x.sock"


# -- derived values --------------------------------------------------------------------


def test_db_path_and_address_follow_a_configured_learning_root(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "elsewhere"
    s = load_settings(write_toml(tmp_path / "s.toml", f'learning_root = "{root}"\n'))
    assert s.db_path == root / "distillation.db"
    assert s.address == f"ipc://{root}/sessiond.sock"


def test_explicit_db_path_is_kept_and_tilde_expanded(home: Path) -> None:
    s = load_settings(db_path="~/index.db", learning_root="~/lr")
    assert s.db_path == Path("~/index.db").expanduser()
    assert s.learning_root == Path("~/lr").expanduser()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("tcp://:5555", "tcp://127.0.0.1:5555"),
        ("tcp://0.0.0.0:5555", "tcp://0.0.0.0:5555"),
        ("tcp://[::1]:5555", "tcp://[::1]:5555"),
        ("ipc:///run/sessiond.sock", "ipc:///run/sessiond.sock"),
    ],
)
def test_address_is_normalised(home: Path, given: str, expected: str) -> None:
    assert load_settings(address=given).address == expected


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("ipc:///x.sock", True),
        ("tcp://127.0.0.1:1", True),
        ("tcp://localhost:1", True),
        ("tcp://[::1]:1", True),
        ("tcp://0.0.0.0:1", False),
        ("tcp://10.1.2.3:1", False),
        ("tcp://example.org:1", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


# -- invalid values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("batch_wait_ms = -1\n", ["batch_wait_ms", "greater than or equal to 0", "-1"]),
        ("batch_max = 0\n", ["batch_max", "greater than or equal to 1"]),
        ('batch_max = "many"\n', ["batch_max", "many"]),
        ('durability = "sometimes"\n', ["durability", "sometimes"]),
        ("batch_max = 5\nnonsense = 1\n", ["nonsense: unknown setting"]),
        ('address = "udp://host:1"\n', ["address", "must start with ipc:// or tcp://"]),
        ('address = "tcp://host"\n', ["address", "needs a port"]),
        ('address = "tcp://host:70000"\n', ["address", "needs a port"]),
        ('address = "ipc://"\n', ["address", "needs a socket path"]),
        ('socket_mode = "rwx"\n', ["socket_mode", "octal"]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_value_in_file_names_key_problem_and_file(
    home: Path, tmp_path: Path, toml: str, expected: list[str]
) -> None:
    path = write_toml(tmp_path / "bad.toml", toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    for part in expected:
        assert part in message


def test_malformed_toml_names_file_and_line(home: Path, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "broken.toml", "batch_max = 1\nbatch_wait_ms = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml.*line 2") as caught:
        load_settings(path)
    assert "\n" not in str(caught.value)


def test_missing_config_file_is_an_error_not_a_silent_default(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"{re.escape(str(missing))} does not exist"):
        load_settings(missing)
    monkeypatch.setenv("SESSIONSTORE_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_invalid_environment_value_names_the_key(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONSTORE_BATCH_WAIT_MS", "-3")
    with pytest.raises(ConfigError, match=r"batch_wait_ms: .*greater than or equal to 0"):
        load_settings()


def test_invalid_override_names_the_key(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"reconcile_interval: .*greater than 0"):
        load_settings(reconcile_interval=0)


@pytest.mark.parametrize(
    ("args", "env", "key"),
    [
        (["--config", "{bad}"], {}, "batch_wait_ms"),
        ([], {"SESSIONSTORE_BATCH_MAX": "0"}, "batch_max"),
        (["--address", "udp://host:1"], {}, "address"),
        (["--config", "{missing}"], {}, "does not exist"),
    ],
    ids=["file", "env", "flag", "missing-file"],
)
def test_serve_with_a_bad_value_exits_with_one_line_naming_the_key(
    home: Path, tmp_path: Path, args: list[str], env: dict[str, str], key: str
) -> None:
    bad = write_toml(tmp_path / "bad.toml", "batch_wait_ms = -1\n")
    paths = {"bad": str(bad), "missing": str(tmp_path / "missing.toml")}
    argv = ["serve", *(a.format(**paths) for a in args)]
    done = run_cli(*argv, env=cli_env(home, **env))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sessionstore serve: error:")
    assert key in lines[0]
    assert "Traceback" not in done.stderr
    assert not (home / "learning" / "distillation.db").exists()  # nothing was started


# -- the example config and the reference ----------------------------------------------------


def example_assignments() -> dict[str, tuple[bool, str]]:
    """key -> (active, value text) for every `key = value` line of the example."""
    found: dict[str, tuple[bool, str]] = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = ASSIGNMENT.match(line)
        if match:
            key = match.group(2)
            assert key not in found, f"{key} appears twice in {EXAMPLE.name}"
            found[key] = (match.group(1) is None, match.group(3))
    return found


def test_example_config_covers_every_setting_exactly_once() -> None:
    assert set(example_assignments()) == set(Settings.model_fields)


def test_example_config_loads_and_restates_the_defaults(home: Path) -> None:
    from_example = load_settings(EXAMPLE)
    assert from_example.model_dump() == load_settings().model_dump()
    active = {key for key, (on, _) in example_assignments().items() if on}
    assert active == set(tomllib.loads(EXAMPLE.read_text(encoding="utf-8")))


def test_example_config_with_everything_uncommented_sets_every_key(
    home: Path, tmp_path: Path
) -> None:
    text = "\n".join(
        line.lstrip("#").strip() if ASSIGNMENT.match(line) else line
        for line in EXAMPLE.read_text(encoding="utf-8").splitlines()
    )
    assert set(tomllib.loads(text)) == set(Settings.model_fields)
    full = load_settings(write_toml(tmp_path / "full.toml", text))
    for name, field in Settings.model_fields.items():
        if field.default is None:
            assert getattr(full, name) is not None, name


def test_every_setting_has_a_description() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_config_reference_prints_a_markdown_row_for_every_field(home: Path) -> None:
    done = run_cli("config", "--reference", env=cli_env(home))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "| key | env var | default | meaning |"
    assert lines[1] == "|---|---|---|---|"
    rows = {line.split("|")[1].strip().strip("`"): line for line in lines[2:]}
    assert set(rows) == set(Settings.model_fields)
    for name, row in rows.items():
        assert f"`SESSIONSTORE_{name.upper()}`" in row
        assert Settings.model_fields[name].description in row
    assert "`512`" in rows["batch_max"]


def test_config_command_prints_the_effective_settings(home: Path, tmp_path: Path) -> None:
    import json

    config = write_toml(tmp_path / "s.toml", "batch_max = 3\nreconcile_slice = 9\n")
    env = cli_env(home, SESSIONSTORE_BATCH_MAX="5")
    done = run_cli("config", "--json", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout)
    assert set(values) == set(Settings.model_fields)
    assert (values["batch_max"], values["reconcile_slice"]) == (5, 9)
    assert values["db_path"] == str(home / "learning" / "distillation.db")


# -- ~, letter case, stray variables, socket path length ------------------------------------


def test_tilde_is_the_home_in_every_path_setting_and_in_an_ipc_address(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    config = write_toml(
        tmp_path / "s.toml",
        'curve_secret_key = "~/keys/server.key_secret"\ncurve_allowed_dir = "~/keys/clients"\n'
        'curve_server_key = "~/keys/server.key"\ncurve_client_secret_key = "~/keys/c.key_secret"\n',
    )
    s = load_settings(config, learning_root="~/lr", db_path="~/db/i.db", address="ipc://~/s.sock")
    me = tmp_path / "me"
    assert (s.learning_root, s.db_path, s.address) == (
        me / "lr",
        me / "db/i.db",
        f"ipc://{me}/s.sock",
    )
    assert s.curve_secret_key == me / "keys/server.key_secret"
    assert s.curve_allowed_dir == me / "keys/clients"
    assert s.curve_server_key == me / "keys/server.key"
    assert s.curve_client_secret_key == me / "keys/c.key_secret"


def test_session_store_opens_a_path_starting_with_tilde_in_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionstore import SessionStore

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".openjarvis" / "learning").mkdir(parents=True)
    store = SessionStore("~/.openjarvis/learning/distillation.db")  # the README's first line
    store.close()
    assert (tmp_path / ".openjarvis" / "learning" / "distillation.db").is_file()


def test_log_level_is_accepted_in_any_case(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONSTORE_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"
    monkeypatch.delenv("SESSIONSTORE_LOG_LEVEL")
    assert load_settings(write_toml(tmp_path / "s.toml", 'log_level = "Warning"\n')).log_level == (
        "WARNING"
    )
    assert load_settings(log_level="error").log_level == "ERROR"
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(log_level="chatty")


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which variables this process already warned about."""
    monkeypatch.setattr(config_module, "_warned_env", set())


def test_an_unknown_sessionstore_variable_is_warned_about_once_naming_the_close_match(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_warnings: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SESSIONSTORE_BATCH_MAXX", "5")
    monkeypatch.setenv("sessionstore_reconcile_intervall", "5")  # the prefix in any case, too
    monkeypatch.setenv("SESSIONSTORE_FROBNICATE", "1")
    with caplog.at_level("WARNING", logger="sessionstore.config"):
        assert load_settings().batch_max == 512  # ignored, as before, but not silently
        load_settings()  # a second load in the same process says nothing new
    messages = sorted(r.getMessage() for r in caplog.records)
    assert messages == [
        "unknown environment variable SESSIONSTORE_BATCH_MAXX ignored "
        "(did you mean SESSIONSTORE_BATCH_MAX?)",
        "unknown environment variable SESSIONSTORE_FROBNICATE ignored",
        "unknown environment variable sessionstore_reconcile_intervall ignored "
        "(did you mean SESSIONSTORE_RECONCILE_INTERVAL?)",
    ]


def test_settings_and_the_known_other_variables_are_not_warned_about(fresh_warnings: None) -> None:
    environ = {f"SESSIONSTORE_{name.upper()}": "x" for name in Settings.model_fields}
    environ |= {name: "1" for name in config_module.OTHER_ENV} | {"PATH": "/bin"}
    environ["sessionstore_batch_max"] = "4"  # pydantic-settings reads names in any case
    assert config_module.warn_unknown_environment(environ) == []


def test_the_command_warns_about_a_mistyped_variable_on_stderr(home: Path) -> None:
    done = run_cli("config", "--json", env=cli_env(home, SESSIONSTORE_BATCH_MAXX="5"))
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "sessionstore config: warning: unknown environment variable SESSIONSTORE_BATCH_MAXX "
        "ignored (did you mean SESSIONSTORE_BATCH_MAX?)"
    ]


def long_ipc_address(directory: Path, size: int) -> str:
    """An ipc:// address whose socket path is exactly ``size`` bytes."""
    prefix = f"{directory}/"
    return f"ipc://{prefix}{'s' * (size - len(prefix))}"


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ss-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_socket_path_of_107_bytes_serves_and_108_is_refused_naming_the_limit(
    home: Path, sockdir: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    longest = daemon_factory()
    longest.address = long_ipc_address(sockdir, IPC_PATH_MAX)
    longest.start()
    assert SessionStoreClient(longest.address, timeout=10).status()["sessions"] == 0

    too_long = long_ipc_address(sockdir, IPC_PATH_MAX + 1)
    for argv in (["serve", "--learning-root", str(home / "learning")], ["status"]):
        done = run_cli(*argv, "--address", too_long, env=cli_env(home))
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"sessionstore {argv[0]}: error: socket path ")
        assert "108 bytes, over the 107-byte limit" in line and "SESSIONSTORE_ADDRESS" in line
    assert not (home / "learning").exists()  # serve refused before creating anything


def test_a_learning_root_too_deep_for_the_default_socket_still_rebuilds(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    env = cli_env(deep)
    done = run_cli("status", env=env)
    assert done.returncode == 2 and "SESSIONSTORE_ADDRESS" in done.stderr
    assert run_cli("config", env=env).returncode == 0
    rebuilt = run_cli("rebuild", "--json", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (deep / "learning" / "distillation.db").is_file()
