"""The ``sessionstore`` command: parse, call the library or the daemon, print.

Every command prints a human-readable table by default and JSON with ``--json``;
a failure is one line on stderr and a non-zero exit (a traceback only with
``--debug``). ``serve`` is found through the ``sessionstore.daemon`` entry point,
so this library never imports the daemon package.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from sessionstore import __version__
from sessionstore.cli_render import (
    print_json,
    render_result,
    render_session,
    render_sessions,
    render_status,
)
from sessionstore.client import SessionStoreClient
from sessionstore.config import Settings, load_settings
from sessionstore.errors import ConfigError, SessionStoreError
from sessionstore.models import SessionStatus

EXIT_FAILURE = 1
EXIT_USAGE = 2
# Reconcile and integrity checks of a big tree can take minutes; they are not "unavailable".
LONG_JOB_TIMEOUT = 3600.0


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(args.config, address=args.address, **overrides)


def _client(args: argparse.Namespace) -> SessionStoreClient:
    return SessionStoreClient(_settings(args).endpoint, timeout=args.timeout)


def cmd_serve(args: argparse.Namespace) -> int:
    def load() -> Settings:  # again on SIGHUP: flags still win over the edited file
        return _settings(
            args,
            learning_root=args.learning_root,
            db_path=args.db,
            durability=args.durability,
            log_level=args.log_level,
        )

    settings = load()
    (daemon,) = entry_points(group="sessionstore.daemon", name="serve")
    serve: Callable[..., int] = daemon.load()
    return serve(settings, reload_settings=load)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report = client.status()
    print_json(report) if args.json else render_status(report)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    status = SessionStatus(args.status) if args.status else None
    with _client(args) as client:
        sessions = client.list_sessions(status=status, limit=args.limit)
    if args.json:
        print_json([s.model_dump(mode="json") for s in sessions])
    else:
        render_sessions(sessions)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        session = client.get_session(args.session_id)
    if session is None:
        raise SessionStoreError(f"no session {args.session_id!r} in the index")
    print_json(session.model_dump(mode="json")) if args.json else render_session(session)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.checkpoint("TRUNCATE")
    if args.json:
        print_json(result)
    else:
        render_result("checkpoint (TRUNCATE)", result)
        if result.get("blocked_by_readers"):
            print("note: a reader kept the WAL from being truncated; run again when it is done")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.status()  # no daemon: fail within --timeout; the job itself may take long
        result = client.reconcile(
            dry_run=args.dry_run, full=args.full, timeout=max(args.timeout, LONG_JOB_TIMEOUT)
        )
    if args.json:
        print_json(result)
    else:
        render_result("reconcile" + (" (dry run: nothing changed)" if args.dry_run else ""), result)
    return 0


def cmd_integrity(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.status()  # no daemon: fail within --timeout; the check itself may take long
        result = client.integrity_check(timeout=max(args.timeout, LONG_JOB_TIMEOUT))
    print_json(result) if args.json else render_result("integrity check", result)
    return 0 if result.get("ok") else EXIT_FAILURE


def cmd_rebuild(args: argparse.Namespace) -> int:
    from sessionstore.rebuild_cli import run_rebuild

    return run_rebuild(
        _settings(args, learning_root=args.learning_root, db_path=args.db), args.json
    )


def cmd_restore(args: argparse.Namespace) -> int:
    from sessionstore.restore_cli import run_restore

    settings = _settings(args, learning_root=args.learning_root, db_path=args.db)
    return run_restore(settings, force=args.force, as_json=args.json)


def cmd_bench(args: argparse.Namespace) -> int:
    from sessionstore.benchmarks.run import run_from_cli

    return run_from_cli(args)


def cmd_keygen(args: argparse.Namespace) -> int:
    from sessionstore.curve import write_keypair

    public, secret = write_keypair(args.directory, args.name)
    result = {"public_key_file": str(public), "secret_key_file": str(secret)}
    print_json(result) if args.json else render_result("keygen", result)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        from sessionstore.cli_render import config_reference

        print(config_reference())
        return 0
    settings = _settings(args)
    values = settings.model_dump(mode="json")
    print_json(values) if args.json else render_result("effective settings", values)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file (default: $SESSIONSTORE_CONFIG, then <learning root>/sessiond.toml)",
    )
    common.add_argument("--address", help="daemon address (ipc://PATH or tcp://HOST:PORT)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the daemon (default 10)"
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")

    parser = argparse.ArgumentParser(
        prog="sessionstore",
        description="Storage service for distillation learning-session records.",
    )
    parser.add_argument("--version", action="version", version=f"sessionstore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("serve", cmd_serve, "run the daemon until SIGTERM/SIGINT (SIGHUP: reload settings)")
    p.add_argument("--learning-root", help="learning root (default $OPENJARVIS_HOME/learning)")
    p.add_argument("--db", help="index database path (default <learning root>/distillation.db)")
    p.add_argument("--durability", choices=["full", "normal"], help="SQLite synchronous level")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add("status", cmd_status, "show the running daemon's counters, jobs and index size")
    p = add("ls", cmd_ls, "list sessions, newest first")
    p.add_argument(
        "--status", choices=[s.value for s in SessionStatus], help="only sessions in this status"
    )
    p.add_argument("--limit", type=int, help="at most this many sessions")
    p = add("show", cmd_show, "show one session with its outcomes")
    p.add_argument("session_id")
    add("checkpoint", cmd_checkpoint, "ask the daemon for a TRUNCATE WAL checkpoint now")
    p = add("reconcile", cmd_reconcile, "make the index agree with the session.json files now")
    p.add_argument(
        "--dry-run", action="store_true", help="report what would change, change nothing"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="parse every session.json, also those unchanged since the last pass",
    )
    add("integrity", cmd_integrity, "run PRAGMA quick_check in the daemon now")
    p = add("rebuild", cmd_rebuild, "recreate the index from session.json files (daemon stopped)")
    p.add_argument("--learning-root", help="learning root (default $OPENJARVIS_HOME/learning)")
    p.add_argument("--db", help="index database path (default <learning root>/distillation.db)")
    p = add(
        "restore",
        cmd_restore,
        "bring the index back from its Litestream replica, then reconcile (daemon stopped)",
    )
    p.add_argument("--learning-root", help="learning root (default $OPENJARVIS_HOME/learning)")
    p.add_argument("--db", help="index database path (default <learning root>/distillation.db)")
    p.add_argument(
        "--force",
        action="store_true",
        help="restore over an index that holds records (it is kept as <index>.before-restore-…)",
    )
    p = add("bench", cmd_bench, "measure the daemon against direct SQLite writers")
    from sessionstore.benchmarks.options import add_bench_arguments

    add_bench_arguments(p)
    p = add("keygen", cmd_keygen, "create a CURVE key pair for tcp:// beyond loopback")
    p.add_argument("directory", help="directory to write NAME.key and NAME.key_secret into")
    p.add_argument("--name", default="sessionstore", help="key file base name")
    p = add("config", cmd_config, "print the effective settings")
    p.add_argument(
        "--reference", action="store_true", help="print the settings reference (Markdown)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="sessionstore: %(message)s")
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `sessionstore ls | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConfigError as err:
        return _fail(args, err, EXIT_USAGE)
    except (SessionStoreError, ValueError, OSError) as err:
        return _fail(args, err, EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, err: BaseException, code: int) -> int:
    if getattr(args, "debug", False):
        import traceback

        traceback.print_exception(err)
    print(f"sessionstore {args.command}: error: {err}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
