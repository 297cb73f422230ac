"""The ``sessionstore`` command: parse, call the library or the daemon, print.

A result is a table on a terminal, plain unwrapped lines when piped, and exact
JSON with ``--json`` (:mod:`sessionstore.cli_render`). A failure is one line on
stderr (a traceback only with ``--debug``). Exit statuses:

====  ==============================================================================
0     done
1     failed: the command could not do its work (no daemon, unknown session, I/O)
2     usage or configuration error (bad option or value, invalid setting)
3     done, but found a problem you must fix: session.json files that reconcile or
      rebuild could not use (listed on stderr and in ``--json``), a failed
      integrity check
130   interrupted (Ctrl-C)
====  ==============================================================================

``serve`` is found through the ``sessionstore.daemon`` entry point, so this
library never imports the daemon package.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import zmq

from sessionstore import __version__
from sessionstore.cli_options import (
    ACCEPTS,
    CLIENT_OPTIONS,
    add_global_options,
    parse_command_line,
    positive_int,
)
from sessionstore.cli_render import (
    config_reference,
    config_reference_markdown,
    listing_words,
    note,
    print_fields,
    print_json,
    print_problems,
    rebuild_progress,
    render_result,
    render_session,
    render_sessions,
    render_status,
    serve_banner,
)
from sessionstore.client import SessionStoreClient
from sessionstore.config import CONFIG_ENV, Settings, check_ipc_path, ipc_path, load_settings
from sessionstore.errors import ConfigError, DaemonUnavailable, SessionStoreError, shorten
from sessionstore.models import SessionStatus

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PROBLEMS = 3
EXIT_INTERRUPTED = 130
# Reconcile and integrity checks of a big tree can take minutes; they are not "unavailable".
LONG_JOB_TIMEOUT = 3600.0
# `ls` shows the newest this many sessions unless told --limit N or --all.
LS_LIMIT = 20
# Fields of a reconcile result that say nothing about a rebuild (a new index from the files).
NOT_REBUILD = frozenset(
    {"parsed", "unchanged", "updated", "placeholders_upgraded", "outcomes_corrected"}
    | {"index_only", "dry_run", "full"}
)
START_HINT = "start one with `sessionstore serve`"
# Longest wait for a Unix socket to accept the probe connection (a listener accepts at once).
PROBE_TIMEOUT = 1.0


# -- talking to the daemon ----------------------------------------------------------


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(
        args.config, address=args.address, client_timeout=args.timeout, **overrides
    )


def _connect(args: argparse.Namespace) -> SessionStoreClient:
    """A client for the configured daemon, after checking that one can be there at all."""
    settings = _settings(args)
    require_listener(settings.endpoint)
    if args.config:  # the client reads its CURVE keys and size limits from the same file
        os.environ[CONFIG_ENV] = str(Path(args.config).expanduser())
    return SessionStoreClient(settings.endpoint, timeout=settings.client_timeout)


def require_listener(address: str) -> None:
    """Fail at once when an ipc:// address cannot have a daemon behind it.

    Without a socket file (or with one a killed daemon left, where nothing accepts)
    a client would wait out its whole timeout. The library client keeps waiting,
    because during a daemon restart the file is briefly absent; the command is
    asked by a person now, and "no daemon" is the useful answer.
    """
    check_ipc_path(address)
    path = ipc_path(address)
    if path is None:
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DaemonUnavailable(f"no daemon at {address} (no socket file); {START_HINT}") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"address {address}: {path} is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(os.fspath(path))
        except ConnectionRefusedError:
            raise DaemonUnavailable(
                f"no daemon at {address} (its socket file is left from one that is gone); "
                f"{START_HINT}"
            ) from None
        except PermissionError:
            raise DaemonUnavailable(
                f"cannot connect to {address}: permission denied (see socket_mode)"
            ) from None
        except (TimeoutError, BlockingIOError):
            return  # a daemon with a full backlog: it is there; the client waits its turn
        except OSError as err:
            raise DaemonUnavailable(f"cannot connect to {address}: {err.strerror}") from None


# -- the commands --------------------------------------------------------------------


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
    check_ipc_path(settings.endpoint)
    if sys.stderr.isatty():  # a person started it: say where it works and how to stop it
        print(serve_banner(settings, os.getpid()), file=sys.stderr, flush=True)
    (daemon,) = entry_points(group="sessionstore.daemon", name="serve")
    serve: Callable[..., int] = daemon.load()
    return serve(settings, reload_settings=load)


def cmd_status(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        report = client.status()
    print_json(report) if args.json else render_status(report)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    status = SessionStatus(args.status) if args.status else None
    limit = None if args.all else args.limit or LS_LIMIT
    with _connect(args) as client:
        # One more than shown says whether there are more; status says how many.
        sessions = client.list_sessions(status=status, limit=None if limit is None else limit + 1)
        more = limit is not None and len(sessions) > limit
        sessions = sessions[:limit]
        total = client.status()["sessions"] if more and status is None else None
    title, remark = listing_words(len(sessions), more, total, status)
    if args.json:
        exclude = None if args.outcomes else {"edit_outcomes"}
        print_json([s.model_dump(mode="json", exclude=exclude) for s in sessions])
        if remark:
            print(remark, file=sys.stderr)
    else:
        render_sessions(sessions, title, remark)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        session = client.get_session(args.session_id)
    if session is None:
        raise SessionStoreError(f"no session {shorten(args.session_id)} in the index")
    print_json(session.model_dump(mode="json")) if args.json else render_session(session)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        result = client.checkpoint("TRUNCATE")
    if args.json:
        print_json(result)
        return 0
    render_result("checkpoint", result)
    if result.get("blocked_by_readers"):
        note("a reader kept the WAL from being truncated; run again when it is done")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        client.status()  # nobody answers: fail within the timeout; the pass itself may take long
        result = client.reconcile(
            dry_run=args.dry_run, full=args.full, timeout=max(client.timeout, LONG_JOB_TIMEOUT)
        )
    title = "reconcile" + (" (dry run: nothing changed)" if args.dry_run else "")
    return _report_files_result("reconcile", title, result, args.json)


def _report_files_result(command: str, title: str, result: dict[str, Any], as_json: bool) -> int:
    """Print a reconcile or rebuild result; unusable files are the user's to fix (exit 3)."""
    if as_json:
        print_json(result)
    else:
        render_result(title, result)
        print_problems(command, result["invalid"])
    return EXIT_PROBLEMS if result["invalid"] else 0


def cmd_integrity(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        client.status()  # nobody answers: fail within the timeout; the check itself may take long
        result = client.integrity_check(timeout=max(client.timeout, LONG_JOB_TIMEOUT))
    if args.json:
        print_json(result)
    else:
        shown = {"ok": result.get("ok"), "messages": "; ".join(result.get("messages", []))}
        render_result("integrity check", shown)
    return 0 if result.get("ok") else EXIT_PROBLEMS


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Refuse while a daemon owns the index (its lock), then rebuild with progress."""
    from sessionstore.lock import IndexLock
    from sessionstore.rebuild import rebuild

    settings = _settings(args, learning_root=args.learning_root, db_path=args.db)
    settings.index_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    interactive = sys.stderr.isatty() and not args.json
    with IndexLock(settings.index_path), rebuild_progress(interactive) as progress:
        result = rebuild(
            settings.index_path,
            settings.learning_root,
            progress=progress,
            files_only=args.files_only,
        )
    report = {k: v for k, v in result.to_dict().items() if k not in NOT_REBUILD}
    return _report_files_result("rebuild", f"rebuilt {settings.index_path}", report, args.json)


def cmd_restore(args: argparse.Namespace) -> int:
    """The index back from its Litestream replica (daemon stopped), then a full reconcile."""
    from sessionstore.replica import restore

    report = restore(
        _settings(args, learning_root=args.learning_root, db_path=args.db), force=args.force
    )
    if args.json:
        print_json(report)
    else:
        render_result(f"restored {report['index']} from {report['restored_from']}", report)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from sessionstore.benchmarks.run import run_from_cli

    if args.timeout is None:
        args.timeout = _settings(args).client_timeout
    return run_from_cli(args)


def cmd_keygen(args: argparse.Namespace) -> int:
    from sessionstore.curve import write_keypair

    public, secret = write_keypair(args.directory, args.name)
    result = {"public_key_file": str(public), "secret_key_file": str(secret)}
    print_json(result) if args.json else render_result("keygen", result)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        print_json(config_reference()) if args.json else print(config_reference_markdown())
        return 0
    settings = _settings(args)
    values = settings.model_dump(mode="json")
    values["socket_mode"] = f"{settings.socket_mode:04o}"  # a file mode reads in octal
    if args.json:
        print_json(values)
    else:
        rows = [(key, "unset" if raw is None else str(raw)) for key, raw in values.items()]
        print_fields("effective settings", rows)
    return 0


# -- the command line ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionstore",
        description="Storage service for distillation learning-session records. "
        "Options below may also come after the command name.",
        epilog="Exit status: 0 done, 1 failed, 2 usage or configuration error, 3 done but "
        "found problems to fix (unusable session.json files, failed integrity check).",
    )
    parser.add_argument("--version", action="version", version=f"sessionstore {__version__}")
    add_global_options(parser, CLIENT_OPTIONS, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        accepts = ACCEPTS.get(name, CLIENT_OPTIONS)
        add_global_options(p, accepts, top=False)
        p.set_defaults(func=func, accepts=accepts, command_parser=p)
        return p

    root_help = "learning root (default: $OPENJARVIS_HOME/learning, ~/.openjarvis/learning)"
    db_help = "index database (default: <learning root>/distillation.db)"
    p = add(
        "serve",
        cmd_serve,
        "run the daemon in the foreground until Ctrl-C or SIGTERM (SIGHUP: reload settings)",
    )
    p.add_argument("--learning-root", metavar="DIR", help=root_help)
    p.add_argument("--db", metavar="FILE", help=db_help)
    p.add_argument(
        "--durability",
        choices=["full", "normal"],
        help="SQLite synchronous level: full survives power loss (default: the durability setting)",
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="least severe daemon log lines shown, any case (default: the log_level setting, "
        f"{Settings.model_fields['log_level'].default})",
    )
    add("status", cmd_status, "show the running daemon's counters, jobs and index size")
    p = add("ls", cmd_ls, f"list sessions, newest first (the newest {LS_LIMIT} unless told)")
    statuses = [s.value for s in SessionStatus]
    p.add_argument(
        "--status",
        choices=statuses,
        metavar="STATUS",
        help=f"only sessions in this status: {', '.join(statuses)}",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help=f"the newest N sessions (default {LS_LIMIT})",
    )
    shown.add_argument("--all", action="store_true", help="every session")
    p.add_argument(
        "--outcomes",
        action="store_true",
        help="with --json: include each session's edit_outcomes (the table shows their count)",
    )
    p = add("show", cmd_show, "show one session with its outcomes")
    p.add_argument("session_id", metavar="ID", help="the session's id, as `ls` shows it")
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
    p = add(
        "rebuild",
        cmd_rebuild,
        "recreate the index from session.json files, keeping sessions only the index has "
        "(daemon stopped)",
    )
    p.add_argument("--learning-root", metavar="DIR", help=root_help)
    p.add_argument("--db", metavar="FILE", help=db_help)
    p.add_argument(
        "--files-only",
        action="store_true",
        help="build from the session.json files alone: sessions only the old index holds "
        "(no session.json) are dropped, also when the old index cannot be read",
    )
    p = add(
        "restore",
        cmd_restore,
        "bring the index back from its Litestream replica, then reconcile (daemon stopped)",
    )
    p.add_argument("--learning-root", metavar="DIR", help=root_help)
    p.add_argument("--db", metavar="FILE", help=db_help)
    p.add_argument(
        "--force",
        action="store_true",
        help="restore over an index that holds records (it is kept as <index>.before-restore-…)",
    )
    p = add("bench", cmd_bench, "measure the daemon against direct SQLite writers")
    from sessionstore.benchmarks.options import add_bench_arguments

    add_bench_arguments(p)
    p = add("keygen", cmd_keygen, "create a CURVE key pair for tcp:// beyond loopback")
    p.add_argument(
        "directory", metavar="DIR", help="directory to write NAME.key and NAME.key_secret into"
    )
    p.add_argument(
        "--name",
        default="sessionstore",
        help="base name of the key files (default: sessionstore)",
    )
    p = add("config", cmd_config, "print the effective settings")
    p.add_argument(
        "--reference",
        action="store_true",
        help="print the settings reference instead (Markdown; a JSON list with --json)",
    )
    return parser


class _Formatter(logging.Formatter):
    """``sessionstore ls: warning: ...``, like the error lines."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        return f"sessionstore {self.command}: {record.levelname.lower()}: {record.getMessage()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_command_line(parser, argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter(args.command))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `sessionstore ls | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConfigError as err:
        return _fail(args, err, EXIT_USAGE)
    except (SessionStoreError, ValueError, OSError, zmq.ZMQError) as err:
        return _fail(args, err, EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _fail(args: argparse.Namespace, err: BaseException, code: int) -> int:
    if args.debug:
        import traceback

        traceback.print_exception(err)
    message = " ".join(str(err).split("\n"))
    print(f"sessionstore {args.command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
