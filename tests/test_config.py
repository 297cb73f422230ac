"""Settings: defaults < TOML file < environment < flags, and every bad value named in one line.

Settings are read from ``os.environ`` at call time, so each test runs with a private
``$OPENJARVIS_HOME`` and no ``SESSIONSTORE_*`` variables from the outer environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sessionstore.config import Settings, is_loopback, load_settings
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
