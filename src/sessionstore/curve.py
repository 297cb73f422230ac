"""CURVE key pairs for serving tcp:// beyond loopback (``sessionstore keygen``)."""

from __future__ import annotations

import os
from pathlib import Path

import zmq.auth


def write_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, share it) and ``NAME.key_secret`` (0600, keep it)."""
    target = Path(directory).expanduser()
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = (target / f"{name}.key", target / f"{name}.key_secret")
    if public.exists() or secret.exists():
        raise FileExistsError(f"{public} or {secret} already exists; not overwriting a key")
    public_file, secret_file = zmq.auth.create_certificates(str(target), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)
