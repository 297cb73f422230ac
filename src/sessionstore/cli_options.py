"""Options of the ``sessionstore`` command that are not one command's own.

``--config``, ``--address``, ``--timeout``, ``--json`` and ``--debug`` may come
before the command name (``sessionstore --json status``) or after it, as in
``git`` and ``docker``. Each command takes only those it has a use for; one
given to another command is refused, not silently ignored. Values are checked
as they are parsed: a timeout of 0, -1 or "soon" is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from sessionstore.config import Settings

GLOBAL_HELP = {
    "config": "TOML config file (default: $SESSIONSTORE_CONFIG, then <learning root>/sessiond.toml)",
    "address": "daemon address, ipc://PATH or tcp://HOST:PORT (default: the address setting, "
    "ipc://<learning root>/sessiond.sock)",
    "timeout": "seconds to wait for the daemon (default: the client_timeout setting, "
    f"{Settings.model_fields['client_timeout'].default:g})",
    "json": "print the exact result as JSON, for scripts",
    "debug": "show the traceback of an error",
}
# Which of the global options each command takes; given to another, they are refused.
CLIENT_OPTIONS = ("config", "address", "timeout", "json", "debug")
ACCEPTS = {
    "serve": ("config", "address", "debug"),
    "rebuild": ("config", "json", "debug"),
    "restore": ("config", "json", "debug"),
    "bench": ("config", "timeout", "json", "debug"),
    "keygen": ("json", "debug"),
    "config": ("config", "json", "debug"),
}


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return seconds


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def add_global_options(parser: argparse.ArgumentParser, names: Sequence[str], *, top: bool) -> None:
    """The options that may come before or after the command name.

    On the main parser they have real defaults; on a command's parser they default
    to nothing (SUPPRESS), so a value given before the command name is not undone.
    """
    defaults: dict[str, Any] = {"config": None, "address": None, "timeout": None}
    for name in names:
        flag, help_text = f"--{name}", GLOBAL_HELP[name]
        default = defaults.get(name, False) if top else argparse.SUPPRESS
        if name in {"json", "debug"}:
            parser.add_argument(flag, action="store_true", default=default, help=help_text)
        elif name == "timeout":
            parser.add_argument(
                flag, type=_seconds, metavar="SECONDS", default=default, help=help_text
            )
        else:
            metavar = "FILE" if name == "config" else "ADDRESS"
            parser.add_argument(flag, metavar=metavar, default=default, help=help_text)


def parse_command_line(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse, refusing a shared option the command has no use for, wherever it was given.

    Before the command name the main parser takes it; after it, the command's parser
    does not know it. Either way the message names the option and says why.
    """
    args, extra = parser.parse_known_args(argv)
    command_parser: argparse.ArgumentParser = getattr(args, "command_parser", parser)
    for word in extra:
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag[2:] in GLOBAL_HELP:
            command_parser.error(f"{flag} does not apply to this command")
    if extra:
        command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    for name in ("config", "address", "timeout", "json"):
        if name not in args.accepts and getattr(args, name) not in (None, False):
            command_parser.error(f"--{name} does not apply to this command")
    return args
