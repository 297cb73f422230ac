"""CURVE authentication for a daemon that listens beyond loopback.

A non-loopback ``tcp://`` bind is refused at start-up unless the daemon has a
CURVE secret key and a directory of allowed client public keys (made with
``sessionstore keygen``). Each refused client is logged (rate-limited) with its key.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from sessiond.logs import RateLimited
from sessionstore.config import Settings
from sessionstore.errors import ConfigError

log = logging.getLogger("sessiond.auth")


class AllowList:
    """The client public keys (z85) found in ``*.key`` files of one directory, read at start."""

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise ConfigError(f"curve_allowed_dir: {directory} is not a directory")
        self.keys = set(zmq.auth.load_certificates(str(directory)))
        self._refusal_log = RateLimited(log.warning)
        log.info("CURVE: %d allowed client key(s) from %s", len(self.keys), directory)

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys
        if not allowed:
            self._refusal_log(
                "curve", f"refused client with unknown CURVE key {key.decode(errors='replace')}"
            )
        return allowed


def enable_curve(context: zmq.Context, sock: zmq.Socket, settings: Settings) -> ThreadAuthenticator:
    """Make ``sock`` a CURVE server that admits only allowed keys; call before bind."""
    if settings.curve_secret_key is None or settings.curve_allowed_dir is None:
        raise ConfigError("CURVE needs both curve_secret_key and curve_allowed_dir")
    try:
        public, secret = zmq.auth.load_certificate(str(settings.curve_secret_key))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"curve_secret_key: cannot read {settings.curve_secret_key}: {err}"
        ) from err
    if secret is None:
        raise ConfigError(f"curve_secret_key: {settings.curve_secret_key} holds no secret key")
    allow = AllowList(settings.curve_allowed_dir)
    auth = ThreadAuthenticator(context, log=logging.getLogger("sessiond.zap"))
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=allow)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth
